"""Alembic environment: migrates the database the service is configured for."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool
from sqlmodel import SQLModel

import app.auth.models
import app.evaluation.models
import app.events.models
import app.registration.models
import app.tokens.models  # noqa: F401  (registers the tables on the metadata)
from app.config import get_settings
from app.db import sync_url

target_metadata = SQLModel.metadata


def _url() -> str:
    # Callers (the CLI, tests) may pass an explicit URL; else the service's settings decide.
    explicit = context.config.attributes.get("database_url")
    return str(explicit or get_settings().resolved_database_url)


def run_migrations_offline() -> None:
    context.configure(
        url=sync_url(_url()).render_as_string(hide_password=False),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = sync_url(_url())
    if url.get_backend_name() == "sqlite" and url.database:
        from pathlib import Path

        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            # SQLite alters tables by copying them; batch mode does that for us.
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
