"""Every query of event delivery: fan-out, claims with a lease, results, retention."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Sequence

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.db import table_of
from app.events.models import (
    Channel,
    Delivery,
    DeliveryAttempt,
    DeliveryStatus,
    DispatchCursor,
    OutboxEvent,
    WebhookEndpoint,
)

FANOUT_CURSOR = "fanout"


# The statements of every dispatcher round are built once, with bound parameters: one built per
# call is keyed again for the compiled cache each time, which costs more than running it.
_LOCK_CURSOR = (
    select(DispatchCursor)
    .where(DispatchCursor.name == FANOUT_CURSOR)
    .with_for_update(skip_locked=True)
)
_CURSORS = table_of(DispatchCursor)
_MOVE_CURSOR = (
    _CURSORS.update()
    .where(_CURSORS.c.name == FANOUT_CURSOR)
    .values(position=sa.bindparam("to_position"), updated_at=sa.bindparam("moved_at"))
)
_EVENTS_AFTER = (
    select(OutboxEvent)
    .where(col(OutboxEvent.sequence) > sa.bindparam("position"))
    .order_by(col(OutboxEvent.sequence))
    .limit(sa.bindparam("limit"))
)
_ENDPOINTS = select(WebhookEndpoint)


async def lock_cursor(session: AsyncSession) -> DispatchCursor | None:
    """The fan-out cursor (created by the migrations), locked for this transaction.

    None while another worker holds it: that worker is fanning out, this one need not.
    """
    return (await session.exec(_LOCK_CURSOR)).first()


async def move_cursor(session: AsyncSession, position: int, now: dt.datetime) -> None:
    """Move the fan-out cursor (locked by `lock_cursor` in this transaction) to `position`."""
    await session.execute(_MOVE_CURSOR, {"to_position": position, "moved_at": now})


async def events_after(session: AsyncSession, position: int, limit: int) -> Sequence[OutboxEvent]:
    return (await session.exec(_EVENTS_AFTER, params={"position": position, "limit": limit})).all()


async def endpoints(session: AsyncSession) -> Sequence[WebhookEndpoint]:
    return (await session.exec(_ENDPOINTS)).all()


def new_delivery(event: OutboxEvent, channel: Channel, endpoint_id: str | None) -> Delivery:
    assert event.sequence is not None
    return Delivery(
        id=str(uuid.uuid4()),
        event_sequence=event.sequence,
        event_id=event.event_id,
        event_type=event.event_type,
        channel=channel,
        endpoint_id=endpoint_id,
        next_attempt_at=event.created_at,
    )


async def claim_due(
    session: AsyncSession, *, worker: str, now: dt.datetime, lease_until: dt.datetime, limit: int
) -> Sequence[Delivery]:
    """Lease up to `limit` due deliveries to `worker`.

    On PostgreSQL, `FOR UPDATE SKIP LOCKED` lets concurrent workers claim disjoint rows without
    waiting on each other; SQLite has one writer at a time, so the same statement is atomic there.
    An expired lease (a worker that died mid-delivery) makes the row claimable again.
    """
    parameters = {"worker": worker, "now": now, "lease_until": lease_until, "limit": limit}
    result = await session.execute(_CLAIM_DUE, parameters)
    return list(result.scalars().all())


async def next_due(session: AsyncSession) -> dt.datetime | None:
    """When the earliest pending delivery can next be claimed (due, and not leased)."""
    value = (await session.execute(_NEXT_DUE)).scalar_one_or_none()
    if value is None:
        return None
    # An aggregate comes back without the column type's conversion on SQLite.
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _claim_due_statement() -> sa.Update:
    now = sa.bindparam("now", type_=table_of(Delivery).c.next_attempt_at.type)
    due = (
        select(Delivery.id)
        .where(Delivery.status == DeliveryStatus.PENDING)
        .where(col(Delivery.next_attempt_at) <= now)
        .where(
            sa.or_(col(Delivery.lease_expires_at).is_(None), col(Delivery.lease_expires_at) < now)
        )
        .order_by(col(Delivery.next_attempt_at), col(Delivery.event_sequence))
        .limit(sa.bindparam("limit"))
        .with_for_update(skip_locked=True)
    )
    return (
        sa.update(Delivery)
        .where(col(Delivery.id).in_(due.scalar_subquery()))
        .values(
            lease_owner=sa.bindparam("worker"),
            lease_expires_at=sa.bindparam("lease_until"),
            updated_at=now,
        )
        .returning(Delivery)
    )


def _next_due_statement() -> sa.Select[tuple[dt.datetime | None]]:
    claimable_at = sa.case(
        (
            col(Delivery.lease_expires_at) > col(Delivery.next_attempt_at),
            col(Delivery.lease_expires_at),
        ),
        else_=col(Delivery.next_attempt_at),
    )
    return sa.select(sa.func.min(claimable_at)).where(
        col(Delivery.status) == DeliveryStatus.PENDING
    )


_CLAIM_DUE = _claim_due_statement()
_NEXT_DUE = _next_due_statement()


async def events_by_id(session: AsyncSession, event_ids: Iterable[str]) -> dict[str, OutboxEvent]:
    ids = list(set(event_ids))
    if not ids:
        return {}
    rows = (await session.exec(select(OutboxEvent).where(col(OutboxEvent.event_id).in_(ids)))).all()
    return {row.event_id: row for row in rows}


async def endpoints_by_id(
    session: AsyncSession, endpoint_ids: Iterable[str | None]
) -> dict[str, WebhookEndpoint]:
    ids = list({i for i in endpoint_ids if i is not None})
    if not ids:
        return {}
    statement = select(WebhookEndpoint).where(col(WebhookEndpoint.id).in_(ids))
    return {row.id: row for row in (await session.exec(statement)).all()}


async def record_result(
    session: AsyncSession,
    *,
    delivery: Delivery,
    worker: str,
    attempt: DeliveryAttempt,
    values: dict[str, object],
) -> bool:
    """Store an attempt and the delivery's new state, if `worker` still holds the lease."""
    result = await session.execute(
        sa.update(Delivery)
        .where(col(Delivery.id) == delivery.id)
        .where(col(Delivery.lease_owner) == worker)
        .values(**values, lease_owner=None, lease_expires_at=None)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    session.add(attempt)
    return True


async def disable_endpoint(
    session: AsyncSession, endpoint_id: str, *, reason: str, now: dt.datetime
) -> None:
    await session.execute(
        sa.update(WebhookEndpoint)
        .where(col(WebhookEndpoint.id) == endpoint_id)
        .values(active=False, disabled_reason=reason, updated_at=now)
    )


async def counts(session: AsyncSession) -> dict[str, int]:
    """Deliveries by status, and outbox events not yet fanned out."""
    rows = (
        await session.execute(
            sa.select(col(Delivery.status), sa.func.count()).group_by(col(Delivery.status))
        )
    ).all()
    by_status = {str(getattr(status, "value", status)): int(n) for status, n in rows}
    cursor = await session.get(DispatchCursor, FANOUT_CURSOR)
    position = cursor.position if cursor is not None else 0
    unfanned = (
        await session.execute(
            sa.select(sa.func.count()).where(col(OutboxEvent.sequence) > position)
        )
    ).scalar_one()
    by_status["unfanned"] = int(unfanned)
    return by_status


async def delete_expired(
    session: AsyncSession, *, deliveries_before: dt.datetime, events_before: dt.datetime
) -> tuple[int, int]:
    """Drop finished deliveries and fully delivered events past their retention."""
    finished = sa.delete(Delivery).where(
        col(Delivery.status).in_([DeliveryStatus.DELIVERED.value, DeliveryStatus.DEAD.value]),
        col(Delivery.updated_at) < deliveries_before,
    )
    deleted_deliveries = (await session.execute(finished)).rowcount  # type: ignore[attr-defined]
    cursor = await session.get(DispatchCursor, FANOUT_CURSOR)
    position = cursor.position if cursor is not None else 0
    pending = select(Delivery.event_id).where(Delivery.status == DeliveryStatus.PENDING)
    old_events = sa.delete(OutboxEvent).where(
        col(OutboxEvent.created_at) < events_before,
        col(OutboxEvent.sequence) <= position,
        col(OutboxEvent.event_id).not_in(pending),
    )
    deleted_events = (await session.execute(old_events)).rowcount  # type: ignore[attr-defined]
    return int(deleted_deliveries or 0), int(deleted_events or 0)
