"""Request and response bodies of the tokens API."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.errors import ValidationFailed
from app.tokens.models import Token, TokenStatus

TOKEN_ID_PATTERN = r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?$"
_TOKEN_ID = re.compile(TOKEN_ID_PATTERN)
TOKEN_ID_RULE = (
    "token_id must be 1-64 characters of A-Z, a-z, 0-9 and '-', with no leading or trailing hyphen"
)
MAX_METADATA_BYTES = 16 * 1024

EXAMPLE_TOKEN: dict[str, Any] = {
    "token_id": "XRAY",
    "name": "Chest X-ray classifier",
    "status": "registered",
    "metric": "auroc",
    "baseline": 0.82,
    "confidence": None,
    "metric_value": 0.86,
    "mlflow_run_id": "9f2b6c1d4e8a4b7f9c0d1e2f3a4b5c6d",
    "model_name": "hokusai-XRAY",
    "model_version": "3",
    "model_uri": "models:/hokusai-XRAY/3",
    "created_at": "2026-11-27T10:40:00.000000Z",
    "updated_at": "2026-11-27T10:42:07.123000Z",
    "registered_at": "2026-11-27T10:42:07.123000Z",
    "metadata": {"team": "radiology"},
}
EXAMPLE_DRAFT_TOKEN: dict[str, Any] = {
    **EXAMPLE_TOKEN,
    "status": "draft",
    "metric_value": None,
    "mlflow_run_id": None,
    "model_name": None,
    "model_version": None,
    "model_uri": None,
    "updated_at": EXAMPLE_TOKEN["created_at"],
    "registered_at": None,
}


def normalize_token_id(raw: str) -> str:
    """The canonical (upper-case) token id; `ValidationFailed` for a malformed one."""
    if not _TOKEN_ID.fullmatch(raw):
        raise ValidationFailed(TOKEN_ID_RULE, extra={"token_id": raw[:80]})
    return raw.upper()


class TokenCreate(BaseModel):
    """A new draft token, optionally with the benchmark a registration must meet."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "token_id": "XRAY",
                    "name": "Chest X-ray classifier",
                    "metric": "auroc",
                    "baseline": 0.82,
                    "metadata": {"team": "radiology"},
                }
            ]
        },
    )

    token_id: str = Field(pattern=TOKEN_ID_PATTERN, max_length=64)
    name: str | None = Field(default=None, max_length=200)
    metric: str | None = Field(default=None, max_length=64)
    baseline: float | None = None
    confidence: float | None = Field(
        default=None,
        gt=0.5,
        lt=1,
        description="a level in (0.5, 1), e.g. 0.95: an evaluated registration passes only if "
        "its whole confidence interval at this level clears the bar",
    )
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("metadata")
    @classmethod
    def _metadata_is_small(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _small_metadata(value)


def _small_metadata(value: dict[str, Any]) -> dict[str, Any]:
    """The cap on token metadata, the same on create and on update."""
    if len(json.dumps(value).encode()) > MAX_METADATA_BYTES:
        raise ValueError(f"metadata must serialise to at most {MAX_METADATA_BYTES} bytes")
    return value


class TokenUpdate(BaseModel):
    """A status change (`deployed` or `archived`), and optionally a new name or metadata."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"status": "deployed"}]}
    )

    status: Literal["deployed", "archived"] | None = None
    name: str | None = Field(default=None, max_length=200)
    confidence: float | None = Field(
        default=None,
        gt=0.5,
        lt=1,
        description="a level in (0.5, 1); null clears it (then the measured value alone decides)",
    )
    metadata: dict[str, Any] | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata_is_small(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if value is None else _small_metadata(value)


class TokenPublic(BaseModel):
    """A token as the API shows it."""

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE_TOKEN]})

    token_id: str
    name: str | None
    status: TokenStatus
    metric: str | None
    baseline: float | None
    confidence: float | None = None
    metric_value: float | None
    mlflow_run_id: str | None
    model_name: str | None
    model_version: str | None
    model_uri: str | None
    created_at: dt.datetime
    updated_at: dt.datetime
    registered_at: dt.datetime | None
    metadata: dict[str, Any]

    @classmethod
    def of(cls, token: Token) -> TokenPublic:
        return cls(
            token_id=token.token_id,
            name=token.name,
            status=token.status,
            metric=token.metric,
            baseline=token.baseline,
            confidence=token.confidence,
            metric_value=token.metric_value,
            mlflow_run_id=token.mlflow_run_id,
            model_name=token.model_name,
            model_version=token.model_version,
            model_uri=token.model_uri,
            created_at=token.created_at,
            updated_at=token.updated_at,
            registered_at=token.registered_at,
            metadata=token.token_metadata,
        )


class TokenPage(BaseModel):
    """A page of tokens, newest first."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": [EXAMPLE_TOKEN],
                    "next_cursor": "WyIyMDI2LTExLTI3VDEwOjQwOjAwKzAwOjAwIiwgIlhSQVkiXQ",
                }
            ]
        }
    )

    items: list[TokenPublic]
    next_cursor: str | None = Field(
        description="pass as `cursor` for the next page; null at the end"
    )
