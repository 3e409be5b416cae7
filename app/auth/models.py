"""API keys, stored as SHA-256 hashes of their secret part."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from app.db import JSONType, UTCDateTime, empty_list, utcnow


class Scope(StrEnum):
    TOKENS_READ = "tokens:read"
    TOKENS_WRITE = "tokens:write"
    MODELS_REGISTER = "models:register"
    EVENTS_READ = "events:read"
    WEBHOOKS_MANAGE = "webhooks:manage"
    BENCHMARKS_MANAGE = "benchmarks:manage"
    ADMIN = "admin"


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"

    id: str = Field(primary_key=True, max_length=32, description="public key id, part of the key")
    name: str = Field(max_length=200)
    key_hash: str = Field(max_length=64, description="hex SHA-256 of the whole key")
    scopes: list[str] = Field(default_factory=empty_list, sa_type=JSONType)
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_used_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    revoked_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)

    __table_args__ = (sa.Index("ix_api_keys_name", "name"),)
