"""Every query of the webhooks API: endpoints, their deliveries and the deliveries' attempts."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.events.models import Channel, Delivery, DeliveryAttempt, DeliveryStatus, WebhookEndpoint


async def get_endpoint(
    session: AsyncSession, endpoint_id: str, *, for_update: bool = False
) -> WebhookEndpoint | None:
    statement = select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id)
    if for_update:
        statement = statement.with_for_update()
    return (await session.exec(statement)).first()


async def list_endpoints(session: AsyncSession) -> Sequence[WebhookEndpoint]:
    """Oldest first."""
    statement = select(WebhookEndpoint).order_by(
        col(WebhookEndpoint.created_at), col(WebhookEndpoint.id)
    )
    return (await session.exec(statement)).all()


async def delete_endpoint(session: AsyncSession, endpoint_id: str) -> None:
    """Delete the endpoint; its deliveries and their attempts go with it (ON DELETE CASCADE)."""
    await session.execute(sa.delete(WebhookEndpoint).where(col(WebhookEndpoint.id) == endpoint_id))


async def list_deliveries(
    session: AsyncSession, endpoint_id: str, *, status: DeliveryStatus | None, limit: int
) -> Sequence[Delivery]:
    """The endpoint's deliveries, newest first."""
    statement = (
        select(Delivery)
        .where(Delivery.endpoint_id == endpoint_id)
        .where(Delivery.channel == Channel.WEBHOOK)
    )
    if status is not None:
        statement = statement.where(Delivery.status == status)
    statement = statement.order_by(
        col(Delivery.created_at).desc(), col(Delivery.event_sequence).desc(), col(Delivery.id)
    )
    return (await session.exec(statement.limit(limit))).all()


async def get_delivery(
    session: AsyncSession, endpoint_id: str, delivery_id: str, *, for_update: bool = False
) -> Delivery | None:
    statement = (
        select(Delivery)
        .where(Delivery.id == delivery_id)
        .where(Delivery.endpoint_id == endpoint_id)
        .where(Delivery.channel == Channel.WEBHOOK)
    )
    if for_update:
        statement = statement.with_for_update()
    return (await session.exec(statement)).first()


async def attempts_of(
    session: AsyncSession, delivery_ids: Sequence[str]
) -> dict[str, list[DeliveryAttempt]]:
    """Each delivery's attempts, in the order they were made."""
    if not delivery_ids:
        return {}
    statement = (
        select(DeliveryAttempt)
        .where(col(DeliveryAttempt.delivery_id).in_(delivery_ids))
        .order_by(col(DeliveryAttempt.delivery_id), col(DeliveryAttempt.attempt))
    )
    grouped: dict[str, list[DeliveryAttempt]] = defaultdict(list)
    for row in (await session.exec(statement)).all():
        grouped[row.delivery_id].append(row)
    return grouped
