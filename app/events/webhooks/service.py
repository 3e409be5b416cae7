"""Webhook endpoints: registration, changes, their deliveries, manual retries and test pings."""

from __future__ import annotations

import datetime as dt
import uuid
from urllib.parse import urlsplit

import structlog
from sqlmodel.ext.asyncio.session import AsyncSession

from app.config import Environment, Settings
from app.db import Database, utcnow
from app.errors import (
    DeliveryNotFound,
    StaticWebhookReadOnly,
    ValidationFailed,
    WebhookInactive,
    WebhookNotFound,
    WebhookUrlNotAllowed,
)
from app.events.models import DeliveryStatus, PayloadFormat, WebhookEndpoint
from app.events.outbox import EventType, NewEvent, write_events
from app.events.signal import new_events
from app.events.webhooks import repository
from app.events.webhooks.schemas import (
    DeliveryList,
    DeliveryPublic,
    WebhookCreate,
    WebhookCreated,
    WebhookList,
    WebhookPublic,
    WebhookRotateSecret,
    WebhookTestQueued,
    WebhookUpdate,
    check_site_event_types,
    generate_secret,
)
from app.events.webhooks.ssrf import host_reason

log = structlog.get_logger(__name__)

MAX_DELIVERIES_PAGE = 200


def check_url_policy(settings: Settings, url: str) -> None:
    """The environment's rules for a receiver URL: https in production, no internal IP literal.

    Names are resolved, and their addresses vetted, each time a delivery is sent.
    """
    parts = urlsplit(url)
    if settings.env is Environment.PRODUCTION and parts.scheme.lower() != "https":
        raise WebhookUrlNotAllowed("webhook URLs must use https in production")
    if not settings.allow_private_webhook_targets and parts.hostname:
        reason = host_reason(parts.hostname)
        if reason is not None:
            raise WebhookUrlNotAllowed(f"webhooks may not target internal addresses: {reason}")


async def create_webhook(
    database: Database, settings: Settings, body: WebhookCreate
) -> WebhookCreated:
    check_url_policy(settings, body.url)
    secret = body.secret.get_secret_value() if body.secret is not None else generate_secret()
    endpoint = WebhookEndpoint(
        id=str(uuid.uuid4()),
        url=body.url,
        secret=secret,
        description=body.description,
        event_types=body.event_types,
        active=body.active,
        payload_format=body.payload_format,
    )
    async with database.transaction() as session:
        session.add(endpoint)
        await session.flush()
    log.info(
        "webhook_created",
        webhook_id=endpoint.id,
        event_types=endpoint.event_types,
        payload_format=endpoint.payload_format.value,
    )
    return WebhookCreated(**WebhookPublic.of(endpoint).model_dump(), secret=secret)


async def list_webhooks(database: Database) -> WebhookList:
    async with database.transaction(read_only=True) as session:
        endpoints = await repository.list_endpoints(session)
    return WebhookList(items=[WebhookPublic.of(endpoint) for endpoint in endpoints])


async def get_webhook(database: Database, webhook_id: str) -> WebhookPublic:
    async with database.transaction() as session:
        endpoint = await _endpoint(session, webhook_id)
    return WebhookPublic.of(endpoint)


async def update_webhook(
    database: Database, settings: Settings, webhook_id: str, body: WebhookUpdate
) -> WebhookPublic:
    if body.url is not None:
        check_url_policy(settings, body.url)
    async with database.transaction() as session:
        endpoint = await _endpoint(session, webhook_id, for_update=True)
        _refuse_static(endpoint, "changed")
        changes = body.model_dump(exclude_unset=True)
        if "url" in changes:
            endpoint.url = changes["url"]
        if "event_types" in changes:
            endpoint.event_types = changes["event_types"]
        if "description" in changes:
            endpoint.description = changes["description"]
        if "active" in changes:
            if changes["active"] and not endpoint.active:
                endpoint.disabled_reason = None
            endpoint.active = changes["active"]
        if "payload_format" in changes:
            endpoint.payload_format = PayloadFormat(changes["payload_format"])
        try:
            check_site_event_types(endpoint.payload_format, list(endpoint.event_types))
        except ValueError as e:
            # Nothing is stored: the transaction rolls back with this error.
            raise ValidationFailed(str(e), extra={"event_types": list(endpoint.event_types)}) from e
        endpoint.updated_at = utcnow()
        session.add(endpoint)
    log.info("webhook_updated", webhook_id=webhook_id, fields=sorted(changes))
    return WebhookPublic.of(endpoint)


async def rotate_secret(
    database: Database, webhook_id: str, body: WebhookRotateSecret
) -> WebhookCreated:
    """Sign with a new secret; the current one keeps signing too for `overlap_seconds`.

    A rotation during an overlap drops the oldest secret: only the last two ever sign.
    """
    secret = body.secret.get_secret_value() if body.secret is not None else generate_secret()
    now = utcnow()
    async with database.transaction() as session:
        endpoint = await _endpoint(session, webhook_id, for_update=True)
        _refuse_static(endpoint, "rotated")
        if body.overlap_seconds > 0:
            endpoint.previous_secret = endpoint.secret
            endpoint.previous_secret_expires_at = now + dt.timedelta(seconds=body.overlap_seconds)
        else:
            endpoint.previous_secret = None
            endpoint.previous_secret_expires_at = None
        endpoint.secret = secret
        endpoint.updated_at = now
        session.add(endpoint)
    log.info(
        "webhook_secret_rotated",
        webhook_id=webhook_id,
        overlap_seconds=body.overlap_seconds,
        previous_secret_expires_at=endpoint.previous_secret_expires_at,
    )
    return WebhookCreated(**WebhookPublic.of(endpoint).model_dump(), secret=secret)


async def delete_webhook(database: Database, webhook_id: str) -> None:
    async with database.transaction() as session:
        endpoint = await _endpoint(session, webhook_id, for_update=True)
        _refuse_static(endpoint, "deleted")
        await repository.delete_endpoint(session, webhook_id)
    log.info("webhook_deleted", webhook_id=webhook_id)


async def list_deliveries(
    database: Database, webhook_id: str, *, status: DeliveryStatus | None, limit: int
) -> DeliveryList:
    async with database.transaction() as session:
        await _endpoint(session, webhook_id)
        deliveries = await repository.list_deliveries(
            session, webhook_id, status=status, limit=min(limit, MAX_DELIVERIES_PAGE)
        )
        attempts = await repository.attempts_of(session, [d.id for d in deliveries])
    return DeliveryList(items=[DeliveryPublic.of(d, attempts.get(d.id, [])) for d in deliveries])


async def retry_delivery(database: Database, webhook_id: str, delivery_id: str) -> DeliveryPublic:
    """Make a delivery due now, whatever its state; its attempt count carries on."""
    now = utcnow()
    async with database.transaction() as session:
        endpoint = await _endpoint(session, webhook_id)
        delivery = await repository.get_delivery(session, webhook_id, delivery_id, for_update=True)
        if delivery is None:
            raise DeliveryNotFound(f"no delivery {delivery_id} for webhook {webhook_id}")
        # The dispatcher sends only pings to an inactive endpoint; anything else would just fail.
        if not endpoint.active and delivery.event_type != EventType.PING:
            raise WebhookInactive(
                f"webhook {webhook_id} is inactive; re-activate it before retrying",
                extra={"disabled_reason": endpoint.disabled_reason},
            )
        previous = delivery.status
        delivery.status = DeliveryStatus.PENDING
        delivery.next_attempt_at = now
        delivery.delivered_at = None
        delivery.lease_owner = None
        delivery.lease_expires_at = None
        delivery.updated_at = now
        session.add(delivery)
        attempts = await repository.attempts_of(session, [delivery.id])
    new_events.notify()
    log.info(
        "delivery_retry_requested",
        webhook_id=webhook_id,
        delivery_id=delivery_id,
        previous_status=previous.value,
    )
    return DeliveryPublic.of(delivery, attempts.get(delivery.id, []))


async def send_test(database: Database, webhook_id: str) -> WebhookTestQueued:
    """Write a `ping` event addressed to this endpoint alone (it goes out even when inactive).

    A hokusai_site endpoint is refused: the site's format has no shape for a ping.
    """
    async with database.transaction() as session:
        endpoint = await _endpoint(session, webhook_id)
        if endpoint.payload_format is PayloadFormat.HOKUSAI_SITE:
            raise ValidationFailed(
                f"webhook {webhook_id} uses the hokusai_site format, which carries "
                "model_registered only; it cannot be sent a ping"
            )
        (event,) = await write_events(
            session,
            [NewEvent(EventType.PING, None, {"webhook_id": endpoint.id})],
            audience=endpoint.id,
        )
    log.info("webhook_ping_queued", webhook_id=webhook_id, event_id=event.event_id)
    return WebhookTestQueued(event_id=event.event_id, webhook_id=endpoint.id)


async def _endpoint(
    session: AsyncSession, webhook_id: str, *, for_update: bool = False
) -> WebhookEndpoint:
    endpoint = await repository.get_endpoint(session, webhook_id, for_update=for_update)
    if endpoint is None:
        raise WebhookNotFound(f"no webhook {webhook_id}")
    return endpoint


def _refuse_static(endpoint: WebhookEndpoint, verb: str) -> None:
    if endpoint.is_static:
        prefix = (
            "HOKUSAI_SITE" if endpoint.payload_format is PayloadFormat.HOKUSAI_SITE else "HOKUSAI"
        )
        raise StaticWebhookReadOnly(
            f"webhook {endpoint.id} is configured by {prefix}_WEBHOOK_URL and "
            f"{prefix}_WEBHOOK_SECRET; it cannot be {verb} through the API"
        )
