"""Event tables: the outbox, webhook endpoints, deliveries and their attempts.

The outbox is the source of truth. The dispatcher fans each outbox event out into one delivery per
channel and recipient (a webhook endpoint, or the Redis stream), and every try of a delivery is kept
as an attempt.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from app.db import JSONType, StatusType, UTCDateTime, utcnow

BigInt = sa.BigInteger().with_variant(sa.Integer, "sqlite")


class OutboxEvent(SQLModel, table=True):
    __tablename__ = "events"

    # The envelope's `sequence`. It is assigned while the writer holds the outbox lock (see
    # app.events.outbox), so it increases in commit order, not merely in insert order.
    sequence: int | None = Field(
        default=None, sa_column=sa.Column(BigInt, primary_key=True, autoincrement=True)
    )
    event_id: str = Field(max_length=36, unique=True)
    event_type: str = Field(max_length=64, index=True)
    token_id: str | None = Field(default=None, max_length=64, index=True)
    payload: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    # NULL: every channel. Otherwise the one webhook endpoint it is for (a `ping`); such events
    # stay out of the feed and Redis.
    audience: str | None = Field(default=None, max_length=36)
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)

    # Without AUTOINCREMENT, SQLite may hand out a deleted row's number again once retention
    # has emptied the table, and sequences must never go back.
    __table_args__ = {"sqlite_autoincrement": True}


class PayloadFormat(StrEnum):
    """How an endpoint's deliveries are shaped."""

    STANDARD = "standard"  # the envelope
    HOKUSAI_SITE = "hokusai_site"  # the site's "original MLflow event format" (model_registered)


class WebhookEndpoint(SQLModel, table=True):
    __tablename__ = "webhook_endpoints"

    id: str = Field(primary_key=True, max_length=36)
    url: str = Field(max_length=2048)
    # Needed in clear to sign each delivery; never returned after creation, never logged.
    secret: str = Field(max_length=256)
    # After a rotation the old secret also signs deliveries until it expires, so receivers can
    # switch over without losing events. Never returned, never logged.
    previous_secret: str | None = Field(default=None, max_length=256)
    previous_secret_expires_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    description: str | None = Field(default=None, max_length=500)
    event_types: list[str] = Field(default_factory=lambda: ["*"], sa_type=JSONType)
    active: bool = True
    # Set when the service switched the endpoint off (a 410 from the receiver).
    disabled_reason: str | None = Field(default=None, max_length=500)
    payload_format: PayloadFormat = Field(
        default=PayloadFormat.STANDARD,
        sa_type=StatusType(PayloadFormat),
        sa_column_kwargs={"server_default": PayloadFormat.STANDARD.value},
    )
    # An endpoint configured by HOKUSAI_WEBHOOK_URL or HOKUSAI_SITE_WEBHOOK_URL, kept in step with
    # the settings.
    is_static: bool = False
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Channel(StrEnum):
    WEBHOOK = "webhook"
    REDIS = "redis"


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


class Delivery(SQLModel, table=True):
    """One event on its way to one recipient."""

    __tablename__ = "deliveries"

    id: str = Field(primary_key=True, max_length=36)
    event_sequence: int = Field(sa_type=BigInt)
    event_id: str = Field(max_length=36)
    event_type: str = Field(max_length=64)
    channel: Channel = Field(sa_type=StatusType(Channel))
    endpoint_id: str | None = Field(default=None, max_length=36)
    status: DeliveryStatus = Field(
        default=DeliveryStatus.PENDING, sa_type=StatusType(DeliveryStatus)
    )
    attempts: int = 0
    next_attempt_at: dt.datetime | None = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_attempt_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_status_code: int | None = None
    last_error: str | None = Field(default=None, max_length=1000)
    delivered_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    # A worker's claim: nobody else attempts the delivery until the lease runs out.
    lease_owner: str | None = Field(default=None, max_length=64)
    lease_expires_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)

    __table_args__ = (
        sa.ForeignKeyConstraint(["endpoint_id"], ["webhook_endpoints.id"], ondelete="CASCADE"),
        sa.UniqueConstraint(
            "event_id", "channel", "endpoint_id", name="uq_deliveries_event_id_channel_endpoint"
        ),
        sa.Index("ix_deliveries_due", "status", "next_attempt_at"),
        sa.Index("ix_deliveries_endpoint_id_created_at", "endpoint_id", "created_at"),
    )


class DeliveryAttempt(SQLModel, table=True):
    """One try of a delivery, as it happened."""

    __tablename__ = "delivery_attempts"

    id: int | None = Field(
        default=None, sa_column=sa.Column(BigInt, primary_key=True, autoincrement=True)
    )
    delivery_id: str = Field(max_length=36)
    attempt: int
    worker: str = Field(max_length=64)
    started_at: dt.datetime = Field(sa_type=UTCDateTime)
    duration_ms: float
    status_code: int | None = None
    error: str | None = Field(default=None, max_length=1000)
    response_excerpt: str | None = Field(default=None, max_length=1000)
    outcome: str = Field(max_length=16, description="delivered, retry, dead or disabled")

    __table_args__ = (
        sa.ForeignKeyConstraint(["delivery_id"], ["deliveries.id"], ondelete="CASCADE"),
        sa.Index("ix_delivery_attempts_delivery_id", "delivery_id", "attempt"),
    )


class DispatchCursor(SQLModel, table=True):
    """How far the dispatcher has fanned the outbox out into deliveries."""

    __tablename__ = "dispatch_cursors"

    name: str = Field(primary_key=True, max_length=32)
    position: int = Field(default=0, sa_type=BigInt)
    updated_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
