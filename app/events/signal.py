"""Waking up whoever waits for new events (the dispatcher, long-polling feed readers).

Within a process, committing a transaction that wrote events calls `new_events.notify()` (see
app.events.outbox). Across processes on PostgreSQL, each such commit also sends
`NOTIFY hokusai_events`, and a listener task (app.events.listener) relays it here. Waiters always
re-check the database after waking, so a lost or spurious signal only costs latency, never an event.
"""

from __future__ import annotations

import asyncio
from contextlib import suppress


class EventSignal:
    """A broadcast wake-up: every waiter at the time of `notify()` returns."""

    def __init__(self) -> None:
        self._waiters: set[asyncio.Future[None]] = set()
        self._listeners: dict[asyncio.Event, asyncio.AbstractEventLoop] = {}

    def add_listener(self, event: asyncio.Event) -> None:
        """Set `event` on every notification until removed (a waiter that never misses one)."""
        self._listeners[event] = asyncio.get_running_loop()

    def remove_listener(self, event: asyncio.Event) -> None:
        self._listeners.pop(event, None)

    def notify(self) -> None:
        """Wake every current waiter and listener. Safe from any thread."""
        for event, event_loop in list(self._listeners.items()):
            if event_loop.is_closed():
                self._listeners.pop(event, None)
                continue
            with suppress(RuntimeError):  # the listener's loop stopped meanwhile
                event_loop.call_soon_threadsafe(event.set)
        for waiter in list(self._waiters):
            loop = waiter.get_loop()
            if loop.is_closed():
                self._waiters.discard(waiter)
                continue
            try:
                loop.call_soon_threadsafe(_resolve, waiter)
            except RuntimeError:  # the waiter's loop stopped meanwhile
                self._waiters.discard(waiter)

    async def wait(self, seconds: float) -> bool:
        """Wait until notified or `seconds` pass; True when notified."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            await asyncio.wait_for(waiter, seconds)
            return True
        except TimeoutError:
            return False
        finally:
            self._waiters.discard(waiter)


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


# One per process: every writer and waiter in it shares this.
new_events = EventSignal()
