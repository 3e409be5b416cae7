"""The events feed (`GET /events`): read the outbox after a sequence number, or wait for it.

A consumer that passes back each page's `next_after` sees every event exactly once, in sequence
order, whatever the filters and however many writers commit meanwhile. That rests on one property
of the outbox (app.events.outbox): a writer draws its sequence numbers while holding a lock that is
released only when its transaction commits, so sequences become visible in increasing order. Once
a statement sees the row numbered W, every lower-numbered row that will ever exist is visible too
(or was rolled back and never will be). Each read therefore takes that watermark W in a first
statement and then returns matching rows in `(after, W]` from a second one: no row can later
appear inside a range already reported, so `next_after` may move to W even when none matched.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.db import Database
from app.events import feed_repository as repository
from app.events.models import OutboxEvent
from app.events.outbox import EVENT_SOURCE, envelope
from app.events.signal import new_events
from app.tokens.schemas import normalize_token_id

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_WAIT_SECONDS = 30.0
# A long poll re-reads the database at least this often even without a wake-up, so a lost signal
# (another process without the listener, a dropped LISTEN connection) costs latency, not events.
RECHECK_SECONDS = 1.0

_EXAMPLE_ENVELOPE: dict[str, Any] = {
    "event_id": "0b7f4c5e-2d7a-4d8e-9a3b-5f6c7d8e9f01",
    "event_type": "model_deployed",
    "source": EVENT_SOURCE,
    "timestamp": "2026-11-27T10:42:07.123Z",
    "sequence": 42,
    "token_id": "XRAY",
    "payload": {"token_id": "XRAY", "model_name": "hokusai-XRAY", "model_version": "3"},
}


class Envelope(BaseModel):
    """An event, exactly as every channel (feed, webhooks, Redis) carries it."""

    model_config = ConfigDict(json_schema_extra={"examples": [_EXAMPLE_ENVELOPE]})

    event_id: str = Field(
        description="UUID of the event; the consumer's de-duplication key",
        json_schema_extra={"format": "uuid"},
    )
    event_type: str = Field(examples=["model_registered"])
    source: str = Field(examples=[EVENT_SOURCE])
    timestamp: str = Field(
        description="when the event was written: ISO 8601, UTC, with a `Z`",
        json_schema_extra={"format": "date-time"},
    )
    sequence: int = Field(description="increases in commit order; pass it as `after` to resume")
    token_id: str | None = Field(examples=["XRAY"])
    payload: dict[str, Any]

    @classmethod
    def of(cls, event: OutboxEvent) -> Envelope:
        return cls.model_validate(envelope(event))


class EventFeed(BaseModel):
    """A page of the feed."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"events": [_EXAMPLE_ENVELOPE], "next_after": 42}]}
    )

    events: list[Envelope]
    next_after: int = Field(
        description="pass as `after` for the next page; following it never misses or repeats an "
        "event, even when this page is empty"
    )


async def read_feed(
    database: Database,
    *,
    after: int,
    limit: int,
    event_type: str | None,
    token_id: str | None,
    wait: float,
) -> EventFeed:
    """Events after `after`; when none match yet, wait up to `wait` seconds for one."""
    token = normalize_token_id(token_id) if token_id is not None else None
    limit = min(limit, MAX_LIMIT)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + min(wait, MAX_WAIT_SECONDS)
    while True:
        remaining = deadline - loop.time()
        waiter: asyncio.Task[bool] | None = None
        if remaining > 0:
            # Subscribe before reading, so a commit that lands while the read runs still wakes
            # the wait below instead of being noticed only at the next re-check.
            waiter = asyncio.create_task(new_events.wait(min(remaining, RECHECK_SECONDS)))
            await asyncio.sleep(0)
        try:
            page = await _read_page(
                database, after=after, limit=limit, event_type=event_type, token_id=token
            )
        except BaseException:
            if waiter is not None:
                waiter.cancel()
            raise
        if page.events or waiter is None:
            if waiter is not None:
                waiter.cancel()
            return page
        # No transaction is open here: each round is a fresh, short read.
        await waiter


async def _read_page(
    database: Database, *, after: int, limit: int, event_type: str | None, token_id: str | None
) -> EventFeed:
    async with database.transaction(read_only=True) as session:
        # Two statements on purpose: the second must see at least what the first did (see the
        # module docstring), which holds for separate statements under READ COMMITTED too.
        mark = await repository.watermark(session)
        rows = await repository.list_public(
            session,
            after=after,
            upto=mark,
            event_type=event_type,
            token_id=token_id,
            limit=limit + 1,
        )
    return _page(rows, after=after, limit=limit, watermark=mark)


def _page(rows: Sequence[OutboxEvent], *, after: int, limit: int, watermark: int) -> EventFeed:
    if len(rows) > limit:
        rows = rows[:limit]
        # More matched than fit: resume right after the last one returned.
        last = rows[-1].sequence
        assert last is not None
        next_after = last
    else:
        # Everything matching up to the watermark is in this page.
        next_after = max(after, watermark)
    return EventFeed(events=[Envelope.of(row) for row in rows], next_after=next_after)
