"""HTTP endpoints of the webhooks API."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from app.deps import DatabaseDep, SettingsDep, WebhooksManage
from app.events.models import DeliveryStatus
from app.events.webhooks import service
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
)
from app.openapi import error_responses

router = APIRouter(prefix="/webhooks", tags=["webhooks"])


@router.post("", status_code=status.HTTP_201_CREATED, responses=error_responses(401, 403, 422))
async def create_webhook(
    body: WebhookCreate, database: DatabaseDep, settings: SettingsDep, _: WebhooksManage
) -> WebhookCreated:
    """Register a webhook endpoint; the answer holds its signing secret, shown only this once."""
    return await service.create_webhook(database, settings, body)


@router.get("", responses=error_responses(401, 403))
async def list_webhooks(database: DatabaseDep, _: WebhooksManage) -> WebhookList:
    """List every webhook endpoint, the static one included."""
    return await service.list_webhooks(database)


@router.get("/{webhook_id}", responses=error_responses(401, 403, 404))
async def get_webhook(webhook_id: str, database: DatabaseDep, _: WebhooksManage) -> WebhookPublic:
    """Show one webhook endpoint."""
    return await service.get_webhook(database, webhook_id)


@router.patch("/{webhook_id}", responses=error_responses(401, 403, 404, 409, 422))
async def update_webhook(
    webhook_id: str,
    body: WebhookUpdate,
    database: DatabaseDep,
    settings: SettingsDep,
    _: WebhooksManage,
) -> WebhookPublic:
    """Change an endpoint's URL, event types, description or active flag."""
    return await service.update_webhook(database, settings, webhook_id, body)


@router.post("/{webhook_id}/rotate-secret", responses=error_responses(401, 403, 404, 409, 422))
async def rotate_webhook_secret(
    webhook_id: str,
    database: DatabaseDep,
    _: WebhooksManage,
    body: WebhookRotateSecret | None = None,
) -> WebhookCreated:
    """Switch to a new signing secret, shown only this once; the old one signs too for a while."""
    return await service.rotate_secret(database, webhook_id, body or WebhookRotateSecret())


@router.delete(
    "/{webhook_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(401, 403, 404, 409),
)
async def delete_webhook(webhook_id: str, database: DatabaseDep, _: WebhooksManage) -> None:
    """Delete an endpoint together with its deliveries."""
    await service.delete_webhook(database, webhook_id)


@router.get("/{webhook_id}/deliveries", responses=error_responses(401, 403, 404, 422))
async def list_deliveries(
    webhook_id: str,
    database: DatabaseDep,
    _: WebhooksManage,
    status: DeliveryStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=service.MAX_DELIVERIES_PAGE)] = 50,
) -> DeliveryList:
    """List an endpoint's deliveries, newest first, each with its attempts."""
    return await service.list_deliveries(database, webhook_id, status=status, limit=limit)


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    responses=error_responses(401, 403, 404, 409),
)
async def retry_delivery(
    webhook_id: str, delivery_id: str, database: DatabaseDep, _: WebhooksManage
) -> DeliveryPublic:
    """Send a delivery again now, even a dead one; its attempt count carries on."""
    return await service.retry_delivery(database, webhook_id, delivery_id)


@router.post(
    "/{webhook_id}/test",
    status_code=status.HTTP_202_ACCEPTED,
    responses=error_responses(401, 403, 404),
)
async def ping_webhook(
    webhook_id: str, database: DatabaseDep, _: WebhooksManage
) -> WebhookTestQueued:
    """Queue a `ping` event for this endpoint alone."""
    return await service.send_test(database, webhook_id)
