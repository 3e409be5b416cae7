"""Registrations: every attempt, accepted or not, with its outcome."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from app.db import JSONType, StatusType, UTCDateTime, empty_list, utcnow


class RegistrationStatus(StrEnum):
    IN_PROGRESS = "in_progress"
    REGISTERED = "registered"
    REJECTED = "rejected"
    FAILED = "failed"
    EVALUATING = "evaluating"


class Registration(SQLModel, table=True):
    __tablename__ = "registrations"

    id: str = Field(primary_key=True, max_length=36)
    token_id: str = Field(max_length=64)
    status: RegistrationStatus = Field(sa_type=StatusType(RegistrationStatus))
    principal_id: str | None = Field(default=None, max_length=32)
    idempotency_key: str | None = Field(default=None, max_length=255)
    request_fingerprint: str | None = Field(default=None, max_length=64)
    response_status: int | None = None

    metric_name: str | None = Field(default=None, max_length=64)
    metric_value: float | None = None
    baseline: float | None = None
    min_improvement: float | None = None
    improvement: float | None = None
    higher_is_better: bool | None = None
    passed: bool | None = None
    metric_source: str | None = Field(default=None, max_length=16)
    # Verified evaluation: what the registrant claimed, the measured value's 95% interval, the
    # evaluation's progress and its signed receipt ({"payload", "jws"}).
    metric_reported_value: float | None = None
    metric_ci95: list[float] | None = Field(default=None, sa_type=JSONType)
    evaluation: dict[str, Any] | None = Field(default=None, sa_type=JSONType)
    receipt: dict[str, Any] | None = Field(default=None, sa_type=JSONType)

    artifact_filename: str | None = Field(default=None, max_length=255)
    artifact_size_bytes: int | None = Field(default=None, sa_type=sa.BigInteger)
    artifact_sha256: str | None = Field(default=None, max_length=64)
    artifact_format: str | None = Field(default=None, max_length=32)
    api_schema: dict[str, Any] | None = Field(default=None, sa_type=JSONType)
    # The signature as JSON Schema ({inputSchema, outputSchema}), made once at registration so a
    # delivery to the site never needs MLflow; None without a column-based signature.
    api_json_schema: dict[str, Any] | None = Field(default=None, sa_type=JSONType)

    # Optional fields of the Hokusai SDK's registration request, kept as sent (checked).
    proposal_identifier: str | None = Field(default=None, max_length=255)
    eval_spec: str | None = Field(default=None, max_length=255)
    scorer_ref: str | None = Field(default=None, max_length=255)
    primary_metric: str | None = Field(default=None, max_length=255)
    benchmark_spec_id: str | None = Field(default=None, max_length=255)

    model_name: str | None = Field(default=None, max_length=256)
    model_version: str | None = Field(default=None, max_length=32)
    model_uri: str | None = Field(default=None, max_length=512)
    mlflow_run_id: str | None = Field(default=None, max_length=64)
    tags: dict[str, str] = Field(default_factory=dict, sa_type=JSONType)

    error: dict[str, Any] | None = Field(default=None, sa_type=JSONType)
    event_ids: list[str] = Field(default_factory=empty_list, sa_type=JSONType)
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    registered_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)

    __table_args__ = (
        sa.ForeignKeyConstraint(["token_id"], ["tokens.token_id"], ondelete="CASCADE"),
        sa.Index("ix_registrations_token_id_created_at", "token_id", "created_at"),
        # One attempt per principal and idempotency key (NULL keys never collide).
        sa.UniqueConstraint(
            "principal_id", "idempotency_key", name="uq_registrations_principal_id_idempotency_key"
        ),
    )
