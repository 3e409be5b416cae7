"""Database engines, the unit of work, and column types shared by every table.

The same code runs on SQLite (the embedded default) and PostgreSQL. The service talks to the
database through an async engine (aiosqlite or psycopg); Alembic uses a synchronous engine on
the same URL.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import URL, AdaptedConnection, Dialect, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import PoolResetState
from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

from app.errors import DatabaseUnavailable

# Set before any table is declared, so constraint names are stable across SQLite and PostgreSQL.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSONType = sa.JSON().with_variant(JSONB(), "postgresql")


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def empty_list() -> list[Any]:
    """The `default_factory` of a list column.

    pydantic inspects a default factory's signature each time it makes a default, and for the
    builtin `list` that inspection fails slowly (about 70 µs, against 4 µs for a function).
    """
    return []


def table_of(model: type[SQLModel]) -> sa.Table:
    """The table a table model maps, for Core statements a repository builds once and reuses.

    A statement built per call is keyed again each time to find its compiled form, and an
    ORM-enabled UPDATE also looks for the rows it changes among the session's objects: together
    they cost more than the round trip to the database on the few writes every registration
    makes. A module-level statement with bound parameters is keyed once.
    """
    table = sa.inspect(model).local_table
    assert isinstance(table, sa.Table)
    return table


class UTCDateTime(sa.TypeDecorator[dt.datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite stores no offset)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; use UTC-aware values")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def StatusType(enum: type[StrEnum]) -> sa.Enum:
    """A status column: VARCHAR(16) holding the enum's values, loaded back as the enum."""
    return sa.Enum(
        enum,
        native_enum=False,
        create_constraint=False,
        length=16,
        values_callable=lambda members: [member.value for member in members],
    )


def sync_url(raw: str) -> URL:
    """The URL for synchronous use (Alembic): PostgreSQL goes through psycopg 3."""
    url = make_url(raw)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url


def async_url(raw: str) -> URL:
    """The URL for the service's async engine."""
    url = sync_url(raw)
    if url.drivername in ("sqlite", "sqlite+pysqlite"):
        url = url.set(drivername="sqlite+aiosqlite")
    return url


def _configure_sqlite(engine: sa.Engine) -> None:
    """WAL, a busy timeout, and write transactions that take the lock up front.

    pysqlite/aiosqlite start transactions lazily and SQLite upgrades a reader to a writer only if
    nobody wrote in between, failing at once with "database is locked" otherwise. `BEGIN IMMEDIATE`
    takes the write lock when the transaction starts, so concurrent requests queue on the busy
    timeout instead of failing.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # WAL with synchronous=NORMAL, the usual choice for an embedded database: a commit
        # appends to the write-ahead log without waiting for the disk, which is synced at each
        # checkpoint. The database never corrupts; a process crash loses nothing, but a power
        # loss or OS crash may roll back the last transactions committed before it (they are
        # then undone as a whole, events with their token). FULL would sync every commit.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: sa.Connection) -> None:
        # A read-only unit of work takes no lock up front: under WAL it reads a snapshot and
        # never waits for writers.
        read_only = connection.get_execution_options().get(READ_ONLY_OPTION, False)
        statement = "BEGIN" if read_only else "BEGIN IMMEDIATE"
        # Straight to the aiosqlite connection (`run_async`, SQLAlchemy's documented way to
        # await the driver in an event handler): exec_driver_sql would add a cursor of its own,
        # one more round trip to aiosqlite's thread and an execution context, on every unit of
        # work. Its failure is raised as exec_driver_sql would raise it (OperationalError when
        # the lock is not free within the busy timeout).
        adapted = connection.connection.dbapi_connection
        assert isinstance(adapted, AdaptedConnection)
        try:
            adapted.run_async(lambda driver: driver.execute(statement))
        except sqlite3.Error as e:
            raise DBAPIError.instance(statement, None, e, sqlite3.Error) from e

    # The engine is made with `pool_reset_on_return=None`, so this handler is the pool's whole
    # reset (SQLAlchemy's documented custom reset scheme). A connection that comes back after
    # its commit is outside any transaction, and a ROLLBACK there would only cost a round trip
    # to aiosqlite's thread; one still inside a transaction is rolled back as the pool would.
    @event.listens_for(engine, "reset")
    def _on_reset(dbapi_connection: Any, record: Any, state: PoolResetState) -> None:
        if state.terminate_only or not state.asyncio_safe or state.transaction_was_reset:
            return  # discarded, or garbage-collected outside the loop, or already rolled back
        driver = record.driver_connection  # the aiosqlite connection
        if driver is not None and not driver.in_transaction:
            return
        dbapi_connection.rollback()


READ_ONLY_OPTION = "hokusai_read_only"


def create_engine_for(raw_url: str, *, pool_size: int = 10) -> AsyncEngine:
    url = async_url(raw_url)
    if url.get_backend_name() == "sqlite":
        engine = create_async_engine(url, connect_args={"timeout": 30}, pool_reset_on_return=None)
        _configure_sqlite(engine.sync_engine)
        return engine
    return create_async_engine(
        url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, pool_recycle=1800
    )


class Database:
    """The engine and the unit of work: `async with db.transaction() as session`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = create_engine_for(url)
        self._sessions = async_sessionmaker(
            self.engine, class_=AsyncSession, expire_on_commit=False, autoflush=False
        )
        self._read_sessions = async_sessionmaker(
            self.engine.execution_options(**{READ_ONLY_OPTION: True}),
            class_=AsyncSession,
            expire_on_commit=False,
            autoflush=False,
        )

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    @asynccontextmanager
    async def transaction(self, *, read_only: bool = False) -> AsyncIterator[AsyncSession]:
        """One transaction: committed when the block ends, rolled back when it raises.

        `read_only` units only read; on SQLite they do not take the write lock.
        """
        sessions = self._read_sessions if read_only else self._sessions
        try:
            async with sessions() as session, session.begin():
                yield session
        except DBAPIError as e:
            # Connection-level failures (server gone, SQLite locked past the timeout) are an
            # outage the client can retry; anything else is a bug and stays a 500.
            if isinstance(e, OperationalError) or e.connection_invalidated:
                raise DatabaseUnavailable("the database did not answer; try again shortly") from e
            raise
        except (ConnectionError, TimeoutError) as e:
            raise DatabaseUnavailable("the database did not answer; try again shortly") from e

    async def ping(self) -> None:
        async with self.transaction(read_only=True) as session:
            await session.exec(sa.select(1))  # type: ignore[call-overload]

    async def dispose(self) -> None:
        await self.engine.dispose()
