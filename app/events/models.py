"""The event outbox: every event the service announces, written in the transaction it announces."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from app.db import JSONType, UTCDateTime, utcnow


class OutboxEvent(SQLModel, table=True):
    __tablename__ = "events"

    # The envelope's `sequence`. It is assigned while the writer holds the outbox lock (see
    # app.events.outbox), so it increases in commit order, not merely in insert order.
    sequence: int | None = Field(
        default=None,
        sa_column=sa.Column(
            sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True
        ),
    )
    event_id: str = Field(max_length=36, unique=True)
    event_type: str = Field(max_length=64, index=True)
    token_id: str | None = Field(default=None, max_length=64, index=True)
    payload: dict[str, Any] = Field(default_factory=dict, sa_type=JSONType)
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
