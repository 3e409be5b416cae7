"""The webhook endpoints configured by settings rather than through the API.

HOKUSAI_WEBHOOK_URL / HOKUSAI_WEBHOOK_SECRET make the endpoint `static` (every event, as the
envelope), HOKUSAI_SITE_WEBHOOK_URL / HOKUSAI_SITE_WEBHOOK_SECRET the endpoint `static-site`
(`model_registered` in the Hokusai site's format). The dispatcher brings them in step with the
settings when it starts.
"""

from __future__ import annotations

from pydantic import SecretStr
from sqlmodel.ext.asyncio.session import AsyncSession

from app.config import Settings
from app.db import Database, utcnow
from app.events.models import PayloadFormat, WebhookEndpoint
from app.events.webhooks.schemas import SITE_EVENT_TYPES

STATIC_ENDPOINT_ID = "static"
STATIC_SITE_ENDPOINT_ID = "static-site"


async def sync_static_endpoint(database: Database, settings: Settings) -> None:
    """Keep the static endpoints in step with their settings.

    HOKUSAI_WEBHOOK_URL / HOKUSAI_WEBHOOK_SECRET: every event, as the envelope.
    HOKUSAI_SITE_WEBHOOK_URL / HOKUSAI_SITE_WEBHOOK_SECRET: `model_registered` in the Hokusai
    site's format.
    """
    async with database.transaction() as session:
        await _sync_static(
            session,
            STATIC_ENDPOINT_ID,
            url=settings.webhook_url,
            secret=settings.webhook_secret,
            setting="HOKUSAI_WEBHOOK_URL",
            payload_format=PayloadFormat.STANDARD,
            event_types=["*"],
        )
        await _sync_static(
            session,
            STATIC_SITE_ENDPOINT_ID,
            url=settings.site_webhook_url,
            secret=settings.site_webhook_secret,
            setting="HOKUSAI_SITE_WEBHOOK_URL",
            payload_format=PayloadFormat.HOKUSAI_SITE,
            event_types=list(SITE_EVENT_TYPES),
        )


async def _sync_static(
    session: AsyncSession,
    endpoint_id: str,
    *,
    url: str | None,
    secret: SecretStr | None,
    setting: str,
    payload_format: PayloadFormat,
    event_types: list[str],
) -> None:
    endpoint = await session.get(WebhookEndpoint, endpoint_id)
    if url is None or secret is None:
        if endpoint is not None and endpoint.active:
            endpoint.active = False
            endpoint.disabled_reason = f"{setting} is no longer set"
            endpoint.updated_at = utcnow()
            session.add(endpoint)
        return
    if endpoint is None:
        endpoint = WebhookEndpoint(id=endpoint_id, url=url, secret="")
    endpoint.url = url
    endpoint.secret = secret.get_secret_value()
    endpoint.event_types = event_types
    endpoint.payload_format = payload_format
    endpoint.active = True
    endpoint.disabled_reason = None
    endpoint.is_static = True
    endpoint.description = f"configured by {setting}"
    endpoint.updated_at = utcnow()
    session.add(endpoint)
