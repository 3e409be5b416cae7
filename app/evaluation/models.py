"""Tables of verified evaluation: sealed benchmarks and the durable queue of evaluation jobs."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from app.db import JSONType, StatusType, UTCDateTime, utcnow


class Benchmark(SQLModel, table=True):
    """One version of a token's held-out data set; the rows live in files, never in a response.

    The files are under `DATA_DIR/benchmarks/<id>/`: `features.csv` (the feature columns only,
    what a model is shown) and `labels.npy` (the label column, read by the service alone).
    """

    __tablename__ = "benchmarks"

    id: str = Field(primary_key=True, max_length=36)
    token_id: str = Field(max_length=64)
    version: int
    sha256: str = Field(max_length=64)
    size_bytes: int = Field(sa_type=sa.BigInteger)
    rows: int
    label_column: str = Field(max_length=200)
    metric: str = Field(max_length=64)
    features: list[dict[str, str]] = Field(default_factory=list, sa_type=JSONType)
    classes: list[Any] | None = Field(default=None, sa_type=JSONType)
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)

    __table_args__ = (
        sa.ForeignKeyConstraint(["token_id"], ["tokens.token_id"], ondelete="CASCADE"),
        sa.UniqueConstraint("token_id", "version", name="uq_benchmarks_token_id_version"),
    )


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


LIVE_JOB_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)


class EvaluationJob(SQLModel, table=True):
    """The evaluation of one registration: queued, claimed with a lease, finished once.

    A process takes a job by setting `lease_owner` and `lease_expires_at` and renews the lease
    while the sandbox runs; a job whose lease ran out (its process died) is taken again, up to
    the attempt limit.
    """

    __tablename__ = "evaluation_jobs"

    registration_id: str = Field(primary_key=True, max_length=36)
    token_id: str = Field(max_length=64)
    status: JobStatus = Field(sa_type=StatusType(JobStatus))
    benchmark_id: str = Field(max_length=36)
    benchmark_version: int
    model_kind: str = Field(max_length=16)
    # The model, relative to DATA_DIR/evaluations/<registration_id>/.
    model_path: str = Field(max_length=512)
    # The registration's text fields, as the request sent them (MLflow tags are made from them).
    request_fields: dict[str, str] = Field(default_factory=dict, sa_type=JSONType)
    # The status the token had before the claim: a refused model leaves it as it was.
    previous_token_status: str = Field(max_length=16)
    confidence: float | None = None
    attempts: int = 0
    lease_owner: str | None = Field(default=None, max_length=64)
    lease_expires_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    error: dict[str, Any] | None = Field(default=None, sa_type=JSONType)
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    started_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    finished_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)

    __table_args__ = (
        sa.ForeignKeyConstraint(["registration_id"], ["registrations.id"], ondelete="CASCADE"),
        sa.Index("ix_evaluation_jobs_status_created_at", "status", "created_at"),
    )
