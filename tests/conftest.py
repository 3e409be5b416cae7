"""Shared fixtures: real SQLite and PostgreSQL databases, a real MLflow store, the app in process.

API tests take the `api` fixture, which is parametrised over both databases, so the same test runs
on SQLite and on PostgreSQL. Each backend's schema comes from `alembic upgrade head`. PostgreSQL is
skipped when it cannot be reached, except under CI (`CI=true`), where that is a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import sqlalchemy as sa
from sqlmodel import SQLModel

from app.main import create_app
from app.manage import migrate
from tests.support.service import POSTGRES_ADMIN_URL, Api, make_settings, postgres_available

# Tables the migrations fill with rows the service needs: reset, not emptied.
RESET = {"dispatch_cursors": "UPDATE dispatch_cursors SET position = 0"}
# Every other table of the models (app.main imports them all), children before their parents.
TABLES = tuple(
    table.name for table in reversed(SQLModel.metadata.sorted_tables) if table.name not in RESET
)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    if not postgres_available():
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
        for statement in RESET.values():
            await conn.execute(sa.text(statement))
    _api_session.admin_key = await _api_session.key_with("admin")
    return _api_session
