"""Writing events to the outbox, inside the caller's transaction.

Events are the last thing a transaction writes. On PostgreSQL the writer first takes a
transaction-scoped advisory lock, so the `sequence` numbers it draws are handed out in commit order:
a concurrent writer waits on the lock until this transaction has committed, then draws higher
numbers. A feed consumer reading `sequence > after` therefore never skips a row that commits late.
SQLite has a single writer at a time, which gives the same guarantee on its own.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session
from sqlmodel.ext.asyncio.session import AsyncSession

from app.db import table_of
from app.events.models import OutboxEvent
from app.events.signal import new_events

EVENT_SOURCE = "hokusai-ml-platform"
NOTIFY_CHANNEL = "hokusai_events"
# An arbitrary constant naming the outbox's advisory lock ("hokusai" in ASCII).
OUTBOX_LOCK_KEY = 0x686F6B75736169


class EventType:
    MODEL_REGISTERED = "model_registered"
    TOKEN_READY_FOR_DEPLOY = "token_ready_for_deploy"
    MODEL_VALIDATION_FAILED = "model_validation_failed"
    REGISTRATION_FAILED = "registration_failed"
    MODEL_DEPLOYED = "model_deployed"
    PING = "ping"


@dataclass(frozen=True, slots=True)
class NewEvent:
    event_type: str
    token_id: str | None
    payload: Mapping[str, Any]
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))


async def write_events(
    session: AsyncSession, events: list[NewEvent], *, audience: str | None = None
) -> list[OutboxEvent]:
    """Add events to the outbox in the session's transaction; returns them with sequences."""
    if not events:
        return []
    bind = session.get_bind()
    on_postgres = bind.dialect.name == "postgresql"
    if on_postgres:
        await session.execute(sa.select(sa.func.pg_advisory_xact_lock(OUTBOX_LOCK_KEY)))
    rows = [
        OutboxEvent(
            event_id=event.event_id,
            event_type=event.event_type,
            token_id=event.token_id,
            payload=dict(event.payload),
            audience=audience,
        )
        for event in events
    ]
    # One INSERT for all of them (the rows become one multi-row VALUES), their sequences read
    # back by event id; the unit of work would insert them one statement at a time.
    inserted = await session.execute(
        _INSERT, [{name: getattr(row, name) for name in _INSERTED} for row in rows]
    )
    sequences: dict[str, int] = dict(inserted.tuples().all())
    for row in rows:
        row.sequence = sequences[row.event_id]
    _notify_after_commit(session)
    if on_postgres:
        # Delivered by PostgreSQL at commit, and only if the transaction commits. Listeners only
        # wake up and read the outbox, so one notification per transaction is enough.
        await session.execute(sa.select(sa.func.pg_notify(NOTIFY_CHANNEL, rows[-1].event_id)))
    return rows


_EVENTS = table_of(OutboxEvent)
_INSERTED = [column.key for column in _EVENTS.columns if column.key != "sequence"]
_INSERT = _EVENTS.insert().returning(_EVENTS.c.event_id, _EVENTS.c.sequence)


def envelope(event: OutboxEvent) -> dict[str, Any]:
    """The event as every channel carries it."""
    return {
        "event_id": event.event_id,
        "event_type": event.event_type,
        "source": EVENT_SOURCE,
        "timestamp": event.created_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "sequence": event.sequence,
        "token_id": event.token_id,
        "payload": event.payload,
    }


def _notify_after_commit(session: AsyncSession) -> None:
    """Wake this process's waiters once the transaction has committed (not before)."""
    sync_session = session.sync_session
    if not event.contains(sync_session, "after_commit", _wake):
        event.listen(sync_session, "after_commit", _wake, once=True)


def _wake(_session: Session) -> None:
    new_events.notify()
