"""Response bodies of the registration API."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, Field

from app.registration.models import Registration, RegistrationStatus


class MetricResult(BaseModel):
    name: str
    value: float
    baseline: float
    min_improvement: float
    improvement: float = Field(description="positive means better than the baseline")
    higher_is_better: bool
    passed: bool
    source: str | None = Field(
        default=None, description="`reported` (metric_value) or `computed` (from predictions)"
    )


class ArtifactResult(BaseModel):
    filename: str
    size_bytes: int
    sha256: str
    format: str


class RegistrationPublic(BaseModel):
    """One registration attempt and its outcome."""

    registration_id: str
    token_id: str
    status: RegistrationStatus
    model_name: str | None
    model_version: str | None
    model_uri: str | None
    mlflow_run_id: str | None
    metric: MetricResult | None
    artifact: ArtifactResult | None
    api_schema: dict[str, Any] | None
    tags: dict[str, str]
    event_ids: list[str]
    error: dict[str, Any] | None
    created_at: dt.datetime
    registered_at: dt.datetime | None

    @classmethod
    def of(cls, row: Registration) -> RegistrationPublic:
        metric = None
        if (
            row.metric_name is not None
            and row.metric_value is not None
            and row.baseline is not None
            and row.improvement is not None
        ):
            metric = MetricResult(
                name=row.metric_name,
                value=row.metric_value,
                baseline=row.baseline,
                min_improvement=row.min_improvement or 0.0,
                improvement=row.improvement,
                higher_is_better=bool(row.higher_is_better),
                passed=bool(row.passed),
                source=row.metric_source,
            )
        artifact = None
        if row.artifact_filename is not None and row.artifact_sha256 is not None:
            artifact = ArtifactResult(
                filename=row.artifact_filename,
                size_bytes=row.artifact_size_bytes or 0,
                sha256=row.artifact_sha256,
                format=row.artifact_format or "binary",
            )
        return cls(
            registration_id=row.id,
            token_id=row.token_id,
            status=row.status,
            model_name=row.model_name,
            model_version=row.model_version,
            model_uri=row.model_uri,
            mlflow_run_id=row.mlflow_run_id,
            metric=metric,
            artifact=artifact,
            api_schema=row.api_schema,
            tags=row.tags,
            event_ids=row.event_ids,
            error=row.error,
            created_at=row.created_at,
            registered_at=row.registered_at,
        )


class RegistrationList(BaseModel):
    items: list[RegistrationPublic]
