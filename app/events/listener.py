"""Relaying PostgreSQL's `NOTIFY hokusai_events` to this process's waiters.

Every transaction that writes events sends `NOTIFY hokusai_events` as it commits (see
app.events.outbox), whichever process it runs in. A dedicated connection LISTENs for them and
wakes `new_events`, so a long poll here returns as soon as another process (a worker, another
replica) commits an event. On SQLite there are no other writers to hear from: the in-process
signal is enough, and nothing runs.

A notification says only "look again"; waiters re-read the database, so a lost one (while the
connection is down) costs latency, never an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import psycopg
import structlog

from app.db import Database, sync_url
from app.events.outbox import NOTIFY_CHANNEL
from app.events.signal import new_events

log = structlog.get_logger(__name__)

APPLICATION_NAME = "hokusai-events-listener"
RECONNECT_INITIAL_SECONDS = 0.5
RECONNECT_MAX_SECONDS = 30.0
# A connection that lasted this long resets the backoff; one dropped sooner keeps it growing.
STABLE_SECONDS = 10.0
# An idle connection is checked this often, so a silently dead one is noticed and replaced.
HEALTH_CHECK_SECONDS = 30.0
CONNECT_TIMEOUT_SECONDS = 10


class EventListener:
    """A background task holding a `LISTEN hokusai_events` connection, reconnecting as needed."""

    def __init__(self, database: Database) -> None:
        url = sync_url(database.url).set(drivername="postgresql")
        # psycopg takes a libpq URL: no SQLAlchemy driver suffix.
        self._conninfo = url.render_as_string(hide_password=False)
        self._password = url.password or ""
        self._where = {"host": url.host, "port": url.port, "database": url.database}
        self._enabled = database.backend == "postgresql"
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        """Start listening in the background; on SQLite there is nothing to listen to."""
        if self._task is None and self._enabled:
            self._task = asyncio.create_task(self._run(), name="events-listener")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        delay = RECONNECT_INITIAL_SECONDS
        while True:
            connected_at: float | None = None
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._conninfo,
                    autocommit=True,
                    application_name=APPLICATION_NAME,
                    connect_timeout=CONNECT_TIMEOUT_SECONDS,
                )
                try:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    connected_at = time.monotonic()
                    self.connected.set()
                    log.info("events_listener_connected", channel=NOTIFY_CHANNEL, **self._where)
                    # Whatever committed while nobody listened: let every waiter look again.
                    new_events.notify()
                    await _relay(conn)
                finally:
                    self.connected.clear()
                    with contextlib.suppress(Exception):
                        await conn.close()
            except Exception as e:  # any failure: report it, wait, and connect again
                if connected_at is not None and time.monotonic() - connected_at >= STABLE_SECONDS:
                    delay = RECONNECT_INITIAL_SECONDS
                log.warning(
                    "events_listener_disconnected"
                    if connected_at is not None
                    else "events_listener_connect_failed",
                    error=self._redact(f"{type(e).__name__}: {e}")[:300],
                    retry_in=delay,
                    **self._where,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_SECONDS)

    def _redact(self, text: str) -> str:
        return text.replace(self._password, "***") if self._password else text


async def _relay(conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
    """Wake the waiters on every notification; returns only by raising when the link breaks."""
    while True:
        async with contextlib.aclosing(conn.notifies(timeout=HEALTH_CHECK_SECONDS)) as notifies:
            async for _ in notifies:
                new_events.notify()
        # Quiet for a while: make sure the connection is still alive (this raises if not).
        await conn.execute("SELECT 1")


def start_listener(database: Database) -> EventListener:
    """A started listener (idle on SQLite); `await listener.stop()` at shutdown."""
    listener = EventListener(database)
    listener.start()
    return listener


@contextlib.asynccontextmanager
async def listen_for_events(database: Database) -> AsyncIterator[EventListener]:
    """The listener, running for the block's duration (idle on SQLite)."""
    listener = start_listener(database)
    try:
        yield listener
    finally:
        await listener.stop()
