"""The service as the in-process tests see it: its settings, the app with a client, PostgreSQL."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
from fastapi import FastAPI

from app.auth.service import create_api_key
from app.config import Environment, Settings
from app.db import Database

POSTGRES_ADMIN_URL = os.environ.get(
    "HOKUSAI_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def postgres_available() -> bool:
    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3):
            return True
    except psycopg.OperationalError:
        return False


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
