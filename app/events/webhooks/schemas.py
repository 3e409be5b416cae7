"""Request and response bodies of the webhooks API."""

from __future__ import annotations

import base64
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

from app.events.models import (
    Delivery,
    DeliveryAttempt,
    DeliveryStatus,
    PayloadFormat,
    WebhookEndpoint,
)
from app.events.outbox import EventType

MAX_URL_LENGTH = 2048
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
MIN_SECRET_CHARS = 16
MAX_SECRET_CHARS = 256
# The only event type the Hokusai site's format carries.
SITE_EVENT_TYPES = ["model_registered"]
ALL_EVENTS = "*"
DEFAULT_OVERLAP_SECONDS = 24 * 3600
MAX_OVERLAP_SECONDS = 7 * 24 * 3600
EXAMPLE_WEBHOOK: dict[str, Any] = {
    "id": "5b1e8f2a-3c4d-4e5f-8a9b-0c1d2e3f4a5b",
    "url": "https://site.example/hooks/hokusai",
    "event_types": ["model_registered", "token_ready_for_deploy"],
    "description": "the site's deploy trigger",
    "active": True,
    "payload_format": "standard",
    "disabled_reason": None,
    "is_static": False,
    "previous_secret_expires_at": None,
    "created_at": "2026-11-27T09:00:00.000000Z",
    "updated_at": "2026-11-27T09:00:00.000000Z",
}
EXAMPLE_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw2c3wZs8Q4Y0="
EXAMPLE_SITE_WEBHOOK: dict[str, Any] = {
    **EXAMPLE_WEBHOOK,
    "id": "8c2d4e6f-1a3b-4c5d-9e7f-2b4d6f8a0c1e",
    "url": "https://hokus.ai/api/webhooks/model-registration",
    "event_types": SITE_EVENT_TYPES,
    "description": "the Hokusai site",
    "payload_format": "hokusai_site",
}
# A shared secret the site already has (any 16-256 printable characters).
EXAMPLE_SHARED_SECRET = "3q8Zk2Vn7Rt5Lw9Px4Hm6Jc1Bd0Fg2Ys"
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


def check_shared_secret(secret: str) -> str:
    """Any 16-256 printable characters (a receiver's existing shared secret, or `whsec_...`)."""
    if not MIN_SECRET_CHARS <= len(secret) <= MAX_SECRET_CHARS:
        raise ValueError(
            f"secret must be {MIN_SECRET_CHARS} to {MAX_SECRET_CHARS} characters, not {len(secret)}"
        )
    if not secret.isprintable():
        raise ValueError("secret must hold printable characters only (no control characters)")
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


SECRET_DESCRIPTION = (
    "The shared secret: any 16-256 printable characters, for a receiver that already has one "
    "(the Hokusai site's), or a `whsec_<base64>` Standard Webhooks secret; generated "
    "(`whsec_`, 32 random bytes) when absent. Shown only in the answer to this request."
)
PAYLOAD_FORMAT_DESCRIPTION = (
    "`standard`: the event envelope. `hokusai_site`: the Hokusai site's \"original MLflow event "
    'format"; such an endpoint receives `model_registered` only.'
)


def check_site_event_types(payload_format: PayloadFormat | None, event_types: list[str]) -> None:
    """A hokusai_site endpoint subscribes to `model_registered` and nothing else."""
    if payload_format is PayloadFormat.HOKUSAI_SITE and event_types != SITE_EVENT_TYPES:
        raise ValueError(
            "a hokusai_site endpoint receives model_registered only: event_types must be "
            '["model_registered"]'
        )


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
                },
                {
                    "url": EXAMPLE_SITE_WEBHOOK["url"],
                    "payload_format": "hokusai_site",
                    "secret": EXAMPLE_SHARED_SECRET,
                    "description": "the Hokusai site",
                },
            ]
        },
    )

    url: WebhookUrl
    event_types: EventTypes = Field(default_factory=lambda: [ALL_EVENTS])
    description: str | None = Field(default=None, max_length=500)
    active: bool = True
    payload_format: PayloadFormat = Field(
        default=PayloadFormat.STANDARD,
        description=PAYLOAD_FORMAT_DESCRIPTION
        + ' Without `event_types`, it subscribes to `["model_registered"]`.',
    )
    secret: SecretStr | None = Field(default=None, description=SECRET_DESCRIPTION)

    @field_validator("secret")
    @classmethod
    def _secret_format(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_shared_secret(value.get_secret_value())
        return value

    @model_validator(mode="after")
    def _site_events(self) -> Self:
        if self.payload_format is PayloadFormat.HOKUSAI_SITE:
            if "event_types" not in self.model_fields_set:
                self.event_types = list(SITE_EVENT_TYPES)
            check_site_event_types(self.payload_format, self.event_types)
        return self


class WebhookUpdate(BaseModel):
    """Fields to change; absent ones stay as they are. Re-activating clears `disabled_reason`."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"active": True}]})

    url: WebhookUrl | None = None
    event_types: EventTypes | None = None
    description: str | None = Field(default=None, max_length=500)
    active: bool | None = None
    payload_format: PayloadFormat | None = Field(
        default=None,
        description=PAYLOAD_FORMAT_DESCRIPTION
        + ' Switching to it needs `"event_types": ["model_registered"]` unless the endpoint '
        "already has exactly that.",
    )

    @model_validator(mode="after")
    def _no_nulls(self) -> Self:
        for name in ("url", "event_types", "active", "payload_format"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self


class WebhookRotateSecret(BaseModel):
    """A new signing secret (generated when absent); the old one keeps signing for the overlap."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{}]})

    secret: SecretStr | None = Field(default=None, description=SECRET_DESCRIPTION)
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
            check_shared_secret(value.get_secret_value())
        return value


class WebhookPublic(BaseModel):
    """A webhook endpoint as the API shows it (never with its secret)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [EXAMPLE_WEBHOOK, EXAMPLE_SITE_WEBHOOK]}
    )

    id: str
    url: str
    event_types: list[str]
    description: str | None
    active: bool
    payload_format: PayloadFormat = Field(
        default=PayloadFormat.STANDARD, description=PAYLOAD_FORMAT_DESCRIPTION
    )
    disabled_reason: str | None = Field(
        description="why the service switched the endpoint off (a 410 Gone), if it did"
    )
    is_static: bool = Field(
        description="configured by HOKUSAI_WEBHOOK_URL or HOKUSAI_SITE_WEBHOOK_URL; read-only here"
    )
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
            payload_format=endpoint.payload_format,
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
        json_schema_extra={
            "examples": [
                {**EXAMPLE_WEBHOOK, "secret": EXAMPLE_SECRET},
                {**EXAMPLE_SITE_WEBHOOK, "secret": EXAMPLE_SHARED_SECRET},
            ]
        }
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
