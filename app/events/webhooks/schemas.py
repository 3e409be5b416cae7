"""Request and response bodies of the webhooks API."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import secrets
from typing import Annotated, Any, Self
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from app.events.models import Delivery, DeliveryAttempt, DeliveryStatus, WebhookEndpoint
from app.events.outbox import EventType

MAX_URL_LENGTH = 2048
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64
ALL_EVENTS = "*"
DEFAULT_OVERLAP_SECONDS = 24 * 3600
MAX_OVERLAP_SECONDS = 7 * 24 * 3600
EXAMPLE_WEBHOOK: dict[str, Any] = {
    "id": "5b1e8f2a-3c4d-4e5f-8a9b-0c1d2e3f4a5b",
    "url": "https://site.example/hooks/hokusai",
    "event_types": ["model_registered", "token_ready_for_deploy"],
    "description": "the site's deploy trigger",
    "active": True,
    "disabled_reason": None,
    "is_static": False,
    "previous_secret_expires_at": None,
    "created_at": "2026-11-27T09:00:00.000000Z",
    "updated_at": "2026-11-27T09:00:00.000000Z",
}
EXAMPLE_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw2c3wZs8Q4Y0="
EXAMPLE_DELIVERY: dict[str, Any] = {
    "id": "c3d4e5f6-a7b8-4c9d-8e0f-1a2b3c4d5e6f",
    "event_id": "0b7f4c5e-2d7a-4d8e-9a3b-5f6c7d8e9f01",
    "event_type": "model_registered",
    "status": "delivered",
    "attempts": 2,
    "last_status_code": 200,
    "last_error": None,
    "next_attempt_at": None,
    "delivered_at": "2026-11-27T10:42:13.402000Z",
    "last_attempt_at": "2026-11-27T10:42:13.380000Z",
    "created_at": "2026-11-27T10:42:07.123000Z",
    "attempt_log": [
        {
            "attempt": 1,
            "started_at": "2026-11-27T10:42:07.310000Z",
            "duration_ms": 10003.4,
            "status_code": None,
            "error": "timeout (no answer within 10 s)",
            "response_excerpt": None,
            "outcome": "retry",
        },
        {
            "attempt": 2,
            "started_at": "2026-11-27T10:42:13.380000Z",
            "duration_ms": 21.7,
            "status_code": 200,
            "error": None,
            "response_excerpt": "ok",
            "outcome": "delivered",
        },
    ],
}
KNOWN_EVENT_TYPES = tuple(
    value for name, value in vars(EventType).items() if name.isupper() and isinstance(value, str)
)


def generate_secret() -> str:
    """A new `whsec_<base64>` signing secret of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def check_secret(secret: str) -> str:
    """`secret` if it is `whsec_` and standard base64 of 24-64 bytes; ValueError otherwise."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("secret must look like whsec_<base64>")
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError("secret must be whsec_ followed by standard base64") from e
    if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
        raise ValueError(
            f"secret must encode {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes, not {len(key)}"
        )
    return secret


def check_url(url: str) -> str:
    """A well-formed http(s) URL with a host and no credentials; ValueError otherwise."""
    url = url.strip()
    if len(url) > MAX_URL_LENGTH:
        raise ValueError(f"url must be at most {MAX_URL_LENGTH} characters")
    if any(ord(char) < 0x21 or ord(char) == 0x7F for char in url):
        raise ValueError("url must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises for a port that is not a number in range
    except ValueError as e:
        raise ValueError(f"url is malformed: {e}") from e
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError("url must be http:// or https://")
    if "@" in parts.netloc:
        raise ValueError("url must not carry credentials (user:password@)")
    if not parts.hostname:
        raise ValueError("url must name a host")
    return url


def check_event_types(event_types: list[str]) -> list[str]:
    """Known event types or `*`, without duplicates; `*` alone stands for all of them."""
    unknown = [name for name in event_types if name not in (*KNOWN_EVENT_TYPES, ALL_EVENTS)]
    if unknown:
        raise ValueError(
            f"unknown event type {unknown[0]!r}; use '*' or any of {', '.join(KNOWN_EVENT_TYPES)}"
        )
    if ALL_EVENTS in event_types:
        return [ALL_EVENTS]
    return list(dict.fromkeys(event_types))


WebhookUrl = Annotated[
    str,
    Field(max_length=MAX_URL_LENGTH, description="http(s) URL to POST events to"),
    AfterValidator(check_url),
]
EventTypes = Annotated[
    list[str],
    Field(min_length=1, max_length=32, description='event types to send, or `["*"]` for all'),
    AfterValidator(check_event_types),
]


class WebhookCreate(BaseModel):
    """A new webhook endpoint; the secret is generated when not given."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "url": "https://site.example/hooks/hokusai",
                    "event_types": ["model_registered", "token_ready_for_deploy"],
                    "description": "the site's deploy trigger",
                }
            ]
        },
    )

    url: WebhookUrl
    event_types: EventTypes = Field(default_factory=lambda: [ALL_EVENTS])
    description: str | None = Field(default=None, max_length=500)
    active: bool = True
    secret: SecretStr | None = Field(
        default=None,
        description="`whsec_<base64>` of 24-64 bytes; generated when absent. Shown only in the "
        "answer to this request.",
    )

    @field_validator("secret")
    @classmethod
    def _secret_format(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_secret(value.get_secret_value())
        return value


class WebhookUpdate(BaseModel):
    """Fields to change; absent ones stay as they are. Re-activating clears `disabled_reason`."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"active": True}]})

    url: WebhookUrl | None = None
    event_types: EventTypes | None = None
    description: str | None = Field(default=None, max_length=500)
    active: bool | None = None

    @model_validator(mode="after")
    def _no_nulls(self) -> Self:
        for name in ("url", "event_types", "active"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self


class WebhookRotateSecret(BaseModel):
    """A new signing secret (generated when absent); the old one keeps signing for the overlap."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{}]})

    secret: SecretStr | None = Field(
        default=None,
        description="`whsec_<base64>` of 24-64 bytes; generated when absent. Shown only in the "
        "answer to this request.",
    )
    overlap_seconds: int = Field(
        default=DEFAULT_OVERLAP_SECONDS,
        ge=0,
        le=MAX_OVERLAP_SECONDS,
        description="how long deliveries stay signed with the old secret as well (at most 7 days)",
    )

    @field_validator("secret")
    @classmethod
    def _secret_format(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_secret(value.get_secret_value())
        return value


class WebhookPublic(BaseModel):
    """A webhook endpoint as the API shows it (never with its secret)."""

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE_WEBHOOK]})

    id: str
    url: str
    event_types: list[str]
    description: str | None
    active: bool
    disabled_reason: str | None = Field(
        description="why the service switched the endpoint off (a 410 Gone), if it did"
    )
    is_static: bool = Field(description="configured by HOKUSAI_WEBHOOK_URL; read-only here")
    previous_secret_expires_at: dt.datetime | None = Field(
        default=None,
        description="after a secret rotation: until when deliveries also carry a signature made "
        "with the previous secret",
    )
    created_at: dt.datetime
    updated_at: dt.datetime

    @classmethod
    def of(cls, endpoint: WebhookEndpoint) -> Self:
        return cls(
            id=endpoint.id,
            url=endpoint.url,
            event_types=list(endpoint.event_types),
            description=endpoint.description,
            active=endpoint.active,
            disabled_reason=endpoint.disabled_reason,
            is_static=endpoint.is_static,
            previous_secret_expires_at=endpoint.previous_secret_expires_at
            if endpoint.previous_secret is not None
            else None,
            created_at=endpoint.created_at,
            updated_at=endpoint.updated_at,
        )


class WebhookCreated(WebhookPublic):
    """The new endpoint, with the signing secret: the only time the API shows it."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{**EXAMPLE_WEBHOOK, "secret": EXAMPLE_SECRET}]}
    )

    secret: str


class WebhookList(BaseModel):
    """Every webhook endpoint."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [EXAMPLE_WEBHOOK]}]})

    items: list[WebhookPublic]


class DeliveryAttemptPublic(BaseModel):
    """One try of a delivery."""

    attempt: int
    started_at: dt.datetime
    duration_ms: float
    status_code: int | None
    error: str | None
    response_excerpt: str | None
    outcome: str = Field(description="delivered, retry, dead or disabled")

    @classmethod
    def of(cls, row: DeliveryAttempt) -> Self:
        return cls(
            attempt=row.attempt,
            started_at=row.started_at,
            duration_ms=row.duration_ms,
            status_code=row.status_code,
            error=row.error,
            response_excerpt=row.response_excerpt,
            outcome=row.outcome,
        )


class DeliveryPublic(BaseModel):
    """One event on its way to one endpoint, with every attempt so far."""

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE_DELIVERY]})

    id: str
    event_id: str
    event_type: str
    status: DeliveryStatus
    attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: dt.datetime | None
    delivered_at: dt.datetime | None
    last_attempt_at: dt.datetime | None
    created_at: dt.datetime
    attempt_log: list[DeliveryAttemptPublic]

    @classmethod
    def of(cls, delivery: Delivery, attempts: list[DeliveryAttempt]) -> Self:
        return cls(
            id=delivery.id,
            event_id=delivery.event_id,
            event_type=delivery.event_type,
            status=delivery.status,
            attempts=delivery.attempts,
            last_status_code=delivery.last_status_code,
            last_error=delivery.last_error,
            next_attempt_at=delivery.next_attempt_at,
            delivered_at=delivery.delivered_at,
            last_attempt_at=delivery.last_attempt_at,
            created_at=delivery.created_at,
            attempt_log=[DeliveryAttemptPublic.of(row) for row in attempts],
        )


class DeliveryList(BaseModel):
    """An endpoint's deliveries, newest first."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [EXAMPLE_DELIVERY]}]})

    items: list[DeliveryPublic]


class WebhookTestQueued(BaseModel):
    """The `ping` event written for the endpoint; the dispatcher sends it to that endpoint alone."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "event_id": "3e0c7f8b-5a0d-4b1c-8d6e-8c9f0a1b2c34",
                    "webhook_id": EXAMPLE_WEBHOOK["id"],
                }
            ]
        }
    )

    event_id: str
    webhook_id: str
