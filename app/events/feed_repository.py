"""Every query of the events feed."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.events.models import OutboxEvent


async def watermark(session: AsyncSession) -> int:
    """The highest sequence this statement can see, over every row (private pings included)."""
    statement = sa.select(sa.func.coalesce(sa.func.max(col(OutboxEvent.sequence)), 0))
    return int((await session.execute(statement)).scalar_one())


async def list_public(
    session: AsyncSession,
    *,
    after: int,
    upto: int,
    event_type: str | None,
    token_id: str | None,
    limit: int,
) -> Sequence[OutboxEvent]:
    """Events for every channel with `after < sequence <= upto`, in sequence order."""
    statement = (
        select(OutboxEvent)
        .where(col(OutboxEvent.sequence) > after)
        .where(col(OutboxEvent.sequence) <= upto)
        .where(col(OutboxEvent.audience).is_(None))
    )
    if event_type is not None:
        statement = statement.where(OutboxEvent.event_type == event_type)
    if token_id is not None:
        statement = statement.where(OutboxEvent.token_id == token_id)
    statement = statement.order_by(col(OutboxEvent.sequence)).limit(limit)
    return (await session.exec(statement)).all()
