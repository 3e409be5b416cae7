"""Shared fixtures: real SQLite and PostgreSQL databases, a real MLflow store, the app in process.

API tests take the `api` fixture, which is parametrised over both databases, so the same test runs
on SQLite and on PostgreSQL. Each backend's schema comes from `alembic upgrade head`. PostgreSQL is
skipped when it cannot be reached, except under CI (`CI=true`), where that is a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from app.auth.service import create_api_key
from app.config import Environment, Settings
from app.db import Database
from app.main import create_app
from app.manage import migrate

POSTGRES_ADMIN_URL = os.environ.get(
    "HOKUSAI_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
TABLES = (
    "evaluation_jobs",
    "benchmarks",
    "delivery_attempts",
    "deliveries",
    "webhook_endpoints",
    "registrations",
    "events",
    "tokens",
    "api_keys",
)


def _postgres_available() -> bool:
    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    if not _postgres_available():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL} under CI")
        pytest.skip("PostgreSQL is not reachable")
    name = f"hokusai_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def mlflow_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One local MLflow store (SQLite + files) shared by the session's in-process tests."""
    return tmp_path_factory.mktemp("mlflow")


def make_settings(
    data_dir: Path, database_url: str, mlflow_dir: Path, **overrides: object
) -> Settings:
    values: dict[str, object] = {
        "env": Environment.TEST,
        "data_dir": data_dir,
        "database_url": database_url,
        "mlflow_tracking_uri": f"sqlite:///{mlflow_dir / 'mlflow.db'}",
        "mlflow_artifact_root": (mlflow_dir / "artifacts").as_uri(),
        "mlflow_retry_seconds": 2.0,
        "log_json": False,
        "log_level": "WARNING",
        # Tests that deliver events run their own dispatcher, so nothing races them for work.
        "run_dispatcher": False,
        # The session-wide app sees many deliberate 401s; the limit has its own tests.
        "auth_failure_limit": 1_000_000,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@dataclass
class Api:
    """The app in process, a client, and keys for it."""

    app: FastAPI
    client: httpx.AsyncClient
    settings: Settings
    database: Database
    admin_key: str
    backend: str

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.admin_key}"}

    async def key_with(self, *scopes: str) -> str:
        async with self.database.transaction() as session:
            _, key = await create_api_key(session, name="test", scopes=scopes)
        return key


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
async def _api_session(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    mlflow_dir: Path,
) -> AsyncIterator[Api]:
    backend: str = request.param
    data_dir = tmp_path_factory.mktemp(f"data-{backend}")
    if backend == "sqlite":
        url = f"sqlite:///{data_dir / 'hokusai.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    migrate(url)
    settings = make_settings(data_dir, url, mlflow_dir)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield Api(
                app=app,
                client=client,
                settings=settings,
                database=app.state.database,
                admin_key="",
                backend=backend,
            )


@pytest.fixture
async def api(_api_session: Api) -> Api:
    """The app on a clean database (every table emptied), with an admin key."""
    database = _api_session.database
    async with database.engine.begin() as conn:
        if database.backend == "postgresql":
            await conn.execute(sa.text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        else:
            for table in TABLES:
                await conn.execute(sa.text(f"DELETE FROM {table}"))
        await conn.execute(sa.text("UPDATE dispatch_cursors SET position = 0"))
    _api_session.admin_key = await _api_session.key_with("admin")
    return _api_session
