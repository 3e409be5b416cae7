"""Tokens: the site's model tokens and where their registered model lives."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from app.db import JSONType, StatusType, UTCDateTime, utcnow


class TokenStatus(StrEnum):
    DRAFT = "draft"
    REGISTERING = "registering"
    REGISTERED = "registered"
    DEPLOYED = "deployed"
    FAILED = "failed"
    ARCHIVED = "archived"


REGISTRABLE = (TokenStatus.DRAFT, TokenStatus.FAILED)


class Token(SQLModel, table=True):
    __tablename__ = "tokens"

    token_id: str = Field(primary_key=True, max_length=64)
    name: str | None = Field(default=None, max_length=200)
    status: TokenStatus = Field(
        default=TokenStatus.DRAFT, sa_type=StatusType(TokenStatus), index=True
    )
    metric: str | None = Field(default=None, max_length=64)
    baseline: float | None = None
    # When set, an evaluated registration passes only if its whole interval at this level does.
    confidence: float | None = None
    metric_value: float | None = None
    mlflow_run_id: str | None = Field(default=None, max_length=64)
    model_name: str | None = Field(default=None, max_length=256)
    model_version: str | None = Field(default=None, max_length=32)
    model_uri: str | None = Field(default=None, max_length=512)
    # `metadata` is taken by SQLAlchemy's declarative base; the column keeps the contract's name.
    token_metadata: dict[str, Any] = Field(
        default_factory=dict, sa_column=sa.Column("metadata", JSONType, nullable=False)
    )
    # The registration holding the `registering` claim, and since when (for the recovery lease).
    current_registration_id: str | None = Field(default=None, max_length=36)
    claimed_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    registered_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
