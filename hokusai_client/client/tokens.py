"""Tokens: create, read, list and update (`POST`, `GET`, `PATCH /tokens`)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from hokusai_client.client.base import ClientBase, _path
from hokusai_client.transport import ServiceJSON


class TokensAPI(ClientBase):
    """`POST`, `GET` and `PATCH /tokens`."""

    def create_token(
        self,
        token_id: str,
        *,
        name: str | None = None,
        metric: str | None = None,
        baseline: float | None = None,
        metadata: Mapping[str, str] | None = None,
        confidence: float | None = None,
    ) -> ServiceJSON:
        """POST /tokens: a draft token, optionally with the benchmark its model must beat."""
        body: dict[str, Any] = {"token_id": token_id}
        for key, value in (
            ("name", name),
            ("metric", metric),
            ("baseline", baseline),
            ("metadata", dict(metadata) if metadata else None),
            ("confidence", confidence),
        ):
            if value is not None:
                body[key] = value
        return self._json("POST", "/tokens", json=body, expected=(201,), idempotent=False)

    def get_token(self, token_id: str) -> ServiceJSON:
        """GET /tokens/{token_id}."""
        return self._json("GET", _path("tokens", token_id))

    def list_tokens(
        self, *, status: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> ServiceJSON:
        """GET /tokens: one page, `{"items": [...], "next_cursor": ...}`."""
        params = {"status": status, "limit": limit, "cursor": cursor}
        return self._json("GET", "/tokens", params=params)

    def iter_tokens(
        self, *, status: str | None = None, limit: int | None = None
    ) -> Iterator[ServiceJSON]:
        """Every token, following `next_cursor` page by page."""
        cursor = None
        while True:
            page = self.list_tokens(status=status, limit=limit, cursor=cursor)
            for item in page.get("items") or []:
                if isinstance(item, dict):
                    yield ServiceJSON(item, text=json.dumps(item), status_code=200)
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def update_token(self, token_id: str, **fields: Any) -> ServiceJSON:
        """PATCH /tokens/{token_id} (`status`: deployed or archived; `confidence`)."""
        return self._json("PATCH", _path("tokens", token_id), json=fields, idempotent=False)
