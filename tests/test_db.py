"""The unit of work on SQLite: writers take the lock up front, readers never wait for them, and
the pool resets a returned connection only when it is inside a transaction."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from app.db import Database
from app.errors import DatabaseUnavailable


async def test_read_only_unit_does_not_wait_for_a_writer(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        async with database.transaction() as session:
            await session.execute(sa.text("CREATE TABLE t (x INTEGER)"))
        writer_holds_lock = asyncio.Event()
        release = asyncio.Event()

        async def writer() -> None:
            async with database.transaction() as session:
                await session.execute(sa.text("INSERT INTO t VALUES (1)"))
                writer_holds_lock.set()
                await release.wait()

        task = asyncio.create_task(writer())
        await writer_holds_lock.wait()
        started = time.perf_counter()
        async with database.transaction(read_only=True) as session:
            rows = (await session.execute(sa.text("SELECT count(*) FROM t"))).scalar_one()
        waited = time.perf_counter() - started
        release.set()
        await task
        assert rows == 0  # the writer had not committed yet
        assert waited < 1.0, f"the reader waited {waited:.2f} s for the writer"
        async with database.transaction(read_only=True) as session:
            assert (await session.execute(sa.text("SELECT count(*) FROM t"))).scalar_one() == 1
    finally:
        await database.dispose()


async def test_a_writer_that_cannot_get_the_lock_is_told_the_database_is_unavailable(
    tmp_path: Path,
) -> None:
    path = tmp_path / "db.sqlite"
    database = Database(f"sqlite:///{path}")

    @sa.event.listens_for(database.engine.sync_engine, "connect")
    def _short_wait(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=50")  # after the service's own 30 s
        cursor.close()

    holder = sqlite3.connect(path, isolation_level=None)
    try:
        async with database.transaction() as session:
            await session.execute(sa.text("CREATE TABLE t (x INTEGER)"))
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(DatabaseUnavailable) as refused:
            async with database.transaction() as session:
                await session.execute(sa.text("INSERT INTO t VALUES (1)"))
        assert isinstance(refused.value.__cause__, sa.exc.OperationalError)
        holder.execute("ROLLBACK")
        async with database.transaction() as session:  # the same pooled connection, usable
            await session.execute(sa.text("INSERT INTO t VALUES (2)"))
        async with database.transaction(read_only=True) as session:
            assert (await session.execute(sa.text("SELECT x FROM t"))).scalars().all() == [2]
    finally:
        holder.close()
        await database.dispose()


class TestSqliteReset:
    """The pool's reset on SQLite: no ROLLBACK after a commit, one for an open transaction."""

    @staticmethod
    def traced(database: Database) -> list[str]:
        statements: list[str] = []

        @sa.event.listens_for(database.engine.sync_engine, "connect")
        def _trace(dbapi_connection: Any, _record: Any) -> None:
            # Called on aiosqlite's thread for every statement SQLite runs, COMMIT and ROLLBACK too.
            dbapi_connection.run_async(lambda c: c.set_trace_callback(statements.append))
            # The driver skips a ROLLBACK outside a transaction, but the call itself is a round
            # trip to aiosqlite's thread: note every call.
            driver = dbapi_connection.driver_connection
            rollback = driver.rollback

            async def noted_rollback() -> None:
                statements.append("rollback()")
                await rollback()

            driver.rollback = noted_rollback

        return statements

    async def test_no_rollback_after_a_commit(self, tmp_path: Path) -> None:
        database = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
        statements = self.traced(database)
        try:
            async with database.transaction() as session:
                await session.execute(sa.text("CREATE TABLE t (x INTEGER)"))
            for read_only in (False, True):
                statements.clear()
                async with database.transaction(read_only=read_only) as session:
                    await session.execute(sa.text("SELECT count(*) FROM t"))
                assert statements == [
                    "BEGIN" if read_only else "BEGIN IMMEDIATE",
                    "SELECT count(*) FROM t",
                    "COMMIT",
                ]
        finally:
            await database.dispose()

    async def test_a_failed_unit_is_rolled_back(self, tmp_path: Path) -> None:
        database = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
        statements = self.traced(database)
        try:
            async with database.transaction() as session:
                await session.execute(sa.text("CREATE TABLE t (x INTEGER)"))

            async def fail() -> None:
                async with database.transaction() as session:
                    await session.execute(sa.text("INSERT INTO t VALUES (1)"))
                    raise RuntimeError("abandon")

            with pytest.raises(RuntimeError):
                await fail()
            assert statements[-2:] == ["rollback()", "ROLLBACK"]
            async with database.transaction(read_only=True) as session:
                assert (await session.execute(sa.text("SELECT count(*) FROM t"))).scalar_one() == 0
        finally:
            await database.dispose()

    async def test_a_connection_returned_inside_a_transaction_is_rolled_back(
        self, tmp_path: Path
    ) -> None:
        # A transaction SQLAlchemy does not know of (begun on the raw connection) is still open
        # when the connection goes back to the pool: the reset must roll it back, or the next
        # user of that connection would inherit it and its write lock.
        database = Database(f"sqlite:///{tmp_path / 'db.sqlite'}")
        statements = self.traced(database)
        try:
            async with database.transaction() as session:
                await session.execute(sa.text("CREATE TABLE t (x INTEGER)"))

            def abandon(connection: sa.Connection) -> None:
                raw = connection.engine.raw_connection()
                cursor = raw.cursor()
                cursor.execute("BEGIN IMMEDIATE")
                cursor.execute("INSERT INTO t VALUES (1)")
                cursor.close()
                raw.close()

            async with database.engine.connect() as connection:
                await connection.run_sync(abandon)
            assert statements[-2:] == ["rollback()", "ROLLBACK"]
            for _ in range(3):  # every pooled connection is free to write, none holds the lock
                async with database.transaction() as session:
                    await session.execute(sa.text("INSERT INTO t VALUES (2)"))
            async with database.transaction(read_only=True) as session:
                assert (
                    await session.execute(sa.text("SELECT x FROM t ORDER BY x"))
                ).scalars().all() == [2, 2, 2]
        finally:
            await database.dispose()
