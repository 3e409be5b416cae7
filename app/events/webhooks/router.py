"""HTTP endpoints of the webhooks API."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path, Query, status

from app.auth.models import Scope
from app.deps import DatabaseDep, SettingsDep, WebhooksManage
from app.errors import (
    DeliveryNotFound,
    PayloadTooLarge,
    StaticWebhookReadOnly,
    ValidationFailed,
    WebhookInactive,
    WebhookNotFound,
    WebhookUrlNotAllowed,
)
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
from app.openapi import REQUEST_NOT_VALID, invalid_field, problem_responses

router = APIRouter(prefix="/webhooks", tags=["webhooks"])

_BAD_URL = invalid_field(
    "body", "url", msg="Value error, url must be http:// or https://", type_="value_error"
)
WebhookIdPath = Annotated[str, Path(description="the webhook endpoint's `id`")]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Create a webhook endpoint",
    response_description="The new endpoint with its signing secret (shown only here)",
    responses=problem_responses(
        PayloadTooLarge, _BAD_URL, WebhookUrlNotAllowed, scope=Scope.WEBHOOKS_MANAGE
    ),
)
async def create_webhook(
    body: WebhookCreate, database: DatabaseDep, settings: SettingsDep, _: WebhooksManage
) -> WebhookCreated:
    """Register a webhook endpoint; the answer holds its signing secret, shown only this once.

    Events whose type matches `event_types` (`["*"]`: all) are POSTed to `url`, signed per the
    Standard Webhooks spec and with `X-Hokusai-Signature`. In production the URL must be https;
    internal addresses are refused unless the service allows them. With `payload_format`
    `hokusai_site` the endpoint receives `model_registered` only, in the Hokusai site's format;
    give the site's shared secret as `secret`.
    """
    return await service.create_webhook(database, settings, body)


@router.get(
    "",
    summary="List webhook endpoints",
    responses=problem_responses(scope=Scope.WEBHOOKS_MANAGE),
)
async def list_webhooks(database: DatabaseDep, _: WebhooksManage) -> WebhookList:
    """List every webhook endpoint, the static one (`HOKUSAI_WEBHOOK_URL`) included."""
    return await service.list_webhooks(database)


@router.get(
    "/{webhook_id}",
    summary="Get a webhook endpoint",
    responses=problem_responses(WebhookNotFound, REQUEST_NOT_VALID, scope=Scope.WEBHOOKS_MANAGE),
)
async def get_webhook(
    webhook_id: WebhookIdPath, database: DatabaseDep, _: WebhooksManage
) -> WebhookPublic:
    """Show one webhook endpoint (never its secret)."""
    return await service.get_webhook(database, webhook_id)


@router.patch(
    "/{webhook_id}",
    summary="Change a webhook endpoint",
    responses=problem_responses(
        WebhookNotFound,
        StaticWebhookReadOnly,
        PayloadTooLarge,
        _BAD_URL,
        WebhookUrlNotAllowed,
        scope=Scope.WEBHOOKS_MANAGE,
    ),
)
async def update_webhook(
    webhook_id: WebhookIdPath,
    body: WebhookUpdate,
    database: DatabaseDep,
    settings: SettingsDep,
    _: WebhooksManage,
) -> WebhookPublic:
    """Change an endpoint's URL, event types, description, active flag or payload format.

    Fields left out stay as they are. Setting `active` to true again clears the
    `disabled_reason` of an endpoint the service switched off after a 410. A `hokusai_site`
    endpoint subscribes to `["model_registered"]` only (422 otherwise). The static endpoints
    are read-only (409).
    """
    return await service.update_webhook(database, settings, webhook_id, body)


@router.post(
    "/{webhook_id}/rotate-secret",
    summary="Rotate a webhook's signing secret",
    response_description="The endpoint with its new signing secret (shown only here)",
    responses=problem_responses(
        WebhookNotFound,
        StaticWebhookReadOnly,
        PayloadTooLarge,
        invalid_field(
            "body",
            "overlap_seconds",
            msg="Input should be less than or equal to 604800",
            type_="less_than_equal",
        ),
        scope=Scope.WEBHOOKS_MANAGE,
    ),
)
async def rotate_webhook_secret(
    webhook_id: WebhookIdPath,
    database: DatabaseDep,
    _: WebhooksManage,
    body: Annotated[
        WebhookRotateSecret | None,
        Body(
            openapi_examples={
                "generated": {
                    "summary": "A generated secret; the old one signs too for a day",
                    "value": {},
                },
                "immediate": {
                    "summary": "A generated secret; the old one stops signing at once",
                    "value": {"overlap_seconds": 0},
                },
            }
        ),
    ] = None,
) -> WebhookCreated:
    """Switch to a new signing secret, shown only this once; the old one signs too for a while.

    During `overlap_seconds` (default one day) each delivery carries a signature made with each
    secret, so the receiver can switch over without dropping events. The body is optional.
    """
    return await service.rotate_secret(database, webhook_id, body or WebhookRotateSecret())


@router.delete(
    "/{webhook_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a webhook endpoint",
    response_description="Deleted",
    responses=problem_responses(
        WebhookNotFound, StaticWebhookReadOnly, REQUEST_NOT_VALID, scope=Scope.WEBHOOKS_MANAGE
    ),
)
async def delete_webhook(
    webhook_id: WebhookIdPath, database: DatabaseDep, _: WebhooksManage
) -> None:
    """Delete an endpoint together with its deliveries; the static endpoint cannot be deleted."""
    await service.delete_webhook(database, webhook_id)


@router.get(
    "/{webhook_id}/deliveries",
    summary="List a webhook's deliveries",
    responses=problem_responses(
        WebhookNotFound,
        invalid_field(
            "query",
            "status",
            msg="Input should be 'pending', 'delivered' or 'dead'",
            type_="enum",
        ),
        scope=Scope.WEBHOOKS_MANAGE,
    ),
)
async def list_deliveries(
    webhook_id: WebhookIdPath,
    database: DatabaseDep,
    _: WebhooksManage,
    status: Annotated[
        DeliveryStatus | None, Query(description="only deliveries in this status")
    ] = None,
    limit: Annotated[
        int, Query(ge=1, le=service.MAX_DELIVERIES_PAGE, description="most deliveries returned")
    ] = 50,
) -> DeliveryList:
    """List an endpoint's deliveries, newest first, each with its attempts.

    One delivery per event and endpoint; `attempt_log` shows every try with its status code or
    error, for debugging a receiver.
    """
    return await service.list_deliveries(database, webhook_id, status=status, limit=limit)


@router.post(
    "/{webhook_id}/deliveries/{delivery_id}/retry",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Retry a delivery",
    response_description="The delivery, due now; the dispatcher sends it shortly",
    responses=problem_responses(
        WebhookNotFound,
        DeliveryNotFound,
        WebhookInactive,
        REQUEST_NOT_VALID,
        scope=Scope.WEBHOOKS_MANAGE,
    ),
)
async def retry_delivery(
    webhook_id: WebhookIdPath,
    delivery_id: Annotated[str, Path(description="the delivery's `id`")],
    database: DatabaseDep,
    _: WebhooksManage,
) -> DeliveryPublic:
    """Send a delivery again now, even a dead one; its attempt count carries on.

    The endpoint must be active (409 `webhook_inactive` otherwise), except for `ping`
    deliveries. The receiver may see the event again: `webhook-id` stays the same.
    """
    return await service.retry_delivery(database, webhook_id, delivery_id)


@router.post(
    "/{webhook_id}/test",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Send a test ping",
    response_description="The `ping` event is queued for this endpoint",
    responses=problem_responses(
        WebhookNotFound,
        (
            ValidationFailed,
            "webhook 8c2d4e6f-1a3b-4c5d-9e7f-2b4d6f8a0c1e uses the hokusai_site format, which "
            "carries model_registered only; it cannot be sent a ping",
        ),
        REQUEST_NOT_VALID,
        scope=Scope.WEBHOOKS_MANAGE,
    ),
)
async def ping_webhook(
    webhook_id: WebhookIdPath, database: DatabaseDep, _: WebhooksManage
) -> WebhookTestQueued:
    """Queue a `ping` event for this endpoint alone, even an inactive one.

    Use it to check a receiver's URL and signature verification; the outcome shows in the
    endpoint's deliveries. A `hokusai_site` endpoint cannot be pinged (422).
    """
    return await service.send_test(database, webhook_id)
