"""The unit of work on SQLite: writers take the lock up front, readers never wait for them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import sqlalchemy as sa

from app.db import Database


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
