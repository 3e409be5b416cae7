"""Two `hokusai-registry worker` processes sharing one PostgreSQL database.

Every event must reach the receiver, and no delivery may be attempted by both workers.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from app.db import Database
from app.events.models import WebhookEndpoint
from app.events.outbox import NewEvent, write_events
from app.manage import migrate
from tests.support.service import POSTGRES_ADMIN_URL, postgres_available
from tests.webhook_receiver import Reply, WebhookReceiver

BIN = Path(sys.executable).parent
EVENTS = 300
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
def fresh_postgres() -> Iterator[str]:
    if not postgres_available():
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not reachable under CI")
        pytest.skip("PostgreSQL is not reachable")
    name = f"hokusai_workers_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{POSTGRES_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    migrate(url)
    yield url
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_two_workers_deliver_everything_once(fresh_postgres: str, tmp_path: Path) -> None:
    # A receiver slower than one worker alone can keep up with, so both take a share.
    with WebhookReceiver(secret=SECRET, default=Reply.slow(0.02)) as receiver:
        database = Database(fresh_postgres)
        async with database.transaction() as session:
            session.add(WebhookEndpoint(id="ep-1", url=receiver.url, secret=SECRET))
        env = {
            **os.environ,
            "HOKUSAI_ENV": "test",
            "HOKUSAI_DATA_DIR": str(tmp_path),
            "HOKUSAI_DATABASE_URL": fresh_postgres,
            "HOKUSAI_DISPATCHER_BATCH_SIZE": "10",
            "HOKUSAI_DISPATCHER_CONCURRENCY": "4",
            "HOKUSAI_WEBHOOK_RETRY_SCHEDULE": "0.1,0.1,0.1",
            "HOKUSAI_LOG_LEVEL": "WARNING",
        }
        env.pop("HOKUSAI_REDIS_URL", None)
        workers = [
            subprocess.Popen(
                [BIN / "hokusai-registry", "worker"],
                env=env,
                stdout=(tmp_path / f"worker-{i}.log").open("wb"),
                stderr=subprocess.STDOUT,
            )
            for i in range(2)
        ]
        try:
            expected: list[str] = []
            for start in range(0, EVENTS, 10):
                async with database.transaction() as session:
                    rows = await write_events(
                        session,
                        [
                            NewEvent("model_registered", f"T{n}", {"n": n})
                            for n in range(start, start + 10)
                        ],
                    )
                    expected += [row.event_id for row in rows]
                await asyncio.sleep(0.01)
            deadline = time.monotonic() + 60
            while len({r.headers["webhook-id"] for r in receiver.requests}) < EVENTS:
                for worker in workers:
                    assert worker.poll() is None, (tmp_path / "worker-0.log").read_text()
                assert time.monotonic() < deadline, "not every event arrived in time"
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)  # room for any duplicate to show up
            received = receiver.requests
        finally:
            for worker in workers:
                worker.terminate()
            for worker in workers:
                worker.wait(timeout=30)

        assert all(worker.returncode == 0 for worker in workers), "workers did not stop cleanly"
        per_event = Counter(r.headers["webhook-id"] for r in received)
        assert sorted(per_event) == sorted(expected)
        assert set(per_event.values()) == {1}, "an event was delivered twice"
        assert all(r.signature_ok for r in received)
        async with database.transaction() as session:
            attempts = (
                await session.execute(sa.text("SELECT delivery_id, worker FROM delivery_attempts"))
            ).all()
            statuses = (
                await session.execute(
                    sa.text("SELECT status, count(*) FROM deliveries GROUP BY status")
                )
            ).all()
        await database.dispose()
        per_delivery = Counter(delivery_id for delivery_id, _ in attempts)
        assert len(per_delivery) == EVENTS
        assert set(per_delivery.values()) == {1}, "a delivery was attempted twice"
        by_worker = Counter(worker for _, worker in attempts)
        assert len(by_worker) == 2, f"both workers should have delivered: {by_worker}"
        assert dict(statuses) == {"delivered": EVENTS}
