"""Webhooks and their deliveries (`/webhooks`, `/webhooks/{id}/deliveries`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

from hokusai_client.client.base import ClientBase, _path
from hokusai_client.transport import ServiceJSON


class WebhooksAPI(ClientBase):
    """`/webhooks` and their deliveries."""

    def create_webhook(
        self,
        url: str,
        *,
        event_types: Sequence[str] | None = None,
        description: str | None = None,
        payload_format: str | None = None,
        secret: str | None = None,
    ) -> ServiceJSON:
        """POST /webhooks; the answer holds the signing secret, shown only this once."""
        body: dict[str, Any] = {"url": url, "event_types": list(event_types or ["*"])}
        for key, value in (
            ("description", description),
            ("payload_format", payload_format),
            ("secret", secret),
        ):
            if value is not None:
                body[key] = value
        return self._json("POST", "/webhooks", json=body, expected=(201,), idempotent=False)

    def list_webhooks(self) -> ServiceJSON:
        """GET /webhooks."""
        return self._json("GET", "/webhooks")

    def get_webhook(self, webhook_id: str) -> ServiceJSON:
        """GET /webhooks/{webhook_id}."""
        return self._json("GET", _path("webhooks", webhook_id))

    def update_webhook(self, webhook_id: str, **fields: Any) -> ServiceJSON:
        """PATCH /webhooks/{webhook_id} (`url`, `event_types`, `active`, `payload_format`, ...)."""
        return self._json("PATCH", _path("webhooks", webhook_id), json=fields, idempotent=False)

    def delete_webhook(self, webhook_id: str) -> httpx.Response:
        """DELETE /webhooks/{webhook_id}."""
        return self.request(
            "DELETE", _path("webhooks", webhook_id), expected=(200, 204), idempotent=False
        )

    def list_deliveries(
        self, webhook_id: str, *, status: str | None = None, limit: int | None = None
    ) -> ServiceJSON:
        """GET /webhooks/{webhook_id}/deliveries, newest first."""
        return self._json(
            "GET",
            _path("webhooks", webhook_id, "deliveries"),
            params={"status": status, "limit": limit},
        )

    def retry_delivery(self, webhook_id: str, delivery_id: str) -> httpx.Response:
        """POST /webhooks/{id}/deliveries/{delivery_id}/retry: send it again now."""
        return self.request(
            "POST",
            _path("webhooks", webhook_id, "deliveries", delivery_id, "retry"),
            expected=(202,),
            idempotent=False,
        )

    def test_webhook(self, webhook_id: str) -> httpx.Response:
        """POST /webhooks/{webhook_id}/test: a `ping` event to this endpoint alone."""
        return self.request(
            "POST", _path("webhooks", webhook_id, "test"), expected=(202,), idempotent=False
        )
