"""OpenAPI helpers: the problem+json schema on every documented error response."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.errors import PROBLEM_CONTENT_TYPE


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(examples=["https://hokusai.ai/problems/token_not_found"])
    title: str = Field(examples=["Token not found"])
    status: int = Field(examples=[404])
    detail: str = Field(examples=["no token XRAY"])
    code: str = Field(examples=["token_not_found"])
    request_id: str | None = Field(examples=["4f1c2b0e9a8d4c7e"])


_DESCRIPTIONS = {
    400: "Malformed request",
    401: "Missing or unknown API key (`unauthorized`)",
    403: "The key lacks the endpoint's scope (`forbidden`)",
    404: "Not found",
    409: "Conflict with the resource's current state",
    413: "The upload is too large (`payload_too_large`)",
    415: "Unsupported content type",
    422: "Validation failed; `code` says which check",
    429: "Too many failed authentications from this address; retry after `Retry-After` seconds",
    503: "A dependency is unavailable; retry after `Retry-After` seconds",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries documenting each status as problem+json.

    An endpoint that can answer 401 authenticates, so it can also answer 429 (an address that
    failed authentication too often is refused): that is documented along with it.
    """
    if 401 in statuses and 429 not in statuses:
        statuses = (*statuses, 429)
    return {
        status: {
            "description": _DESCRIPTIONS[status],
            "model": Problem,
            "content": {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }
