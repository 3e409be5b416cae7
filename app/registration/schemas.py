"""Response bodies of the registration API."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.registration.json_schema import in_key_order
from app.registration.models import Registration, RegistrationStatus
from app.registration.sdk_fields import EXAMPLES as SDK_EXAMPLES

EXAMPLE_REGISTRATION: dict[str, Any] = {
    "registration_id": "7d9e2c41-5b0a-4f3e-9c8d-1a2b3c4d5e6f",
    "token_id": "XRAY",
    "status": "registered",
    "model_name": "hokusai-XRAY",
    "model_version": "3",
    "model_uri": "models:/hokusai-XRAY/3",
    "mlflow_run_id": "9f2b6c1d4e8a4b7f9c0d1e2f3a4b5c6d",
    "metric": {
        "name": "auroc",
        "value": 0.86,
        "baseline": 0.82,
        "min_improvement": 0.0,
        "improvement": 0.04,
        "higher_is_better": True,
        "passed": True,
        "source": "reported",
        "reported_value": None,
        "ci95": None,
    },
    "artifact": {
        "filename": "model.zip",
        "size_bytes": 48213,
        "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "format": "mlflow_zip",
    },
    "api_schema": {
        "inputs": [
            {"type": "double", "name": "age", "required": True},
            {"type": "double", "name": "bmi", "required": True},
        ],
        "outputs": [{"type": "long", "required": True}],
    },
    "api_json_schema": {
        "inputSchema": {
            "type": "object",
            "properties": {"age": {"type": "number"}, "bmi": {"type": "number"}},
            "required": ["age", "bmi"],
        },
        "outputSchema": {
            "type": "object",
            "properties": {"output": {"type": "integer"}},
            "required": ["output"],
        },
    },
    "evaluation": None,
    **SDK_EXAMPLES,
    "tags": {"framework": "sklearn", "user_id": "user-8f3a"},
    "event_ids": [
        "0b7f4c5e-2d7a-4d8e-9a3b-5f6c7d8e9f01",
        "1c8a5d6f-3e8b-4e9f-8b4c-6a7d8e9f0a12",
    ],
    "error": None,
    "created_at": "2026-11-27T10:42:05.871000Z",
    "registered_at": "2026-11-27T10:42:07.123000Z",
}
EXAMPLE_REJECTED_REGISTRATION: dict[str, Any] = {
    **EXAMPLE_REGISTRATION,
    "registration_id": "2a4c6e8f-0b1d-4f3a-8c5e-7a9b1c3d5e7f",
    "status": "rejected",
    "model_name": None,
    "model_version": None,
    "model_uri": None,
    "mlflow_run_id": None,
    "metric": {
        **EXAMPLE_REGISTRATION["metric"],
        "value": 0.8,
        "improvement": -0.02,
        "passed": False,
    },
    "api_schema": None,
    "api_json_schema": None,
    "event_ids": ["2d9b6e7a-4f9c-4a0b-9c5d-7b8e9f0a1b23"],
    "error": {
        "type": "https://hokusai.ai/problems/metric_below_baseline",
        "title": "The model does not beat the baseline",
        "status": 422,
        "detail": "auroc 0.8 is below the baseline 0.82 (higher is better)",
        "code": "metric_below_baseline",
    },
    "created_at": "2026-11-27T10:31:12.004000Z",
    "registered_at": None,
}


class MetricResult(BaseModel):
    name: str
    value: float
    baseline: float
    min_improvement: float
    improvement: float = Field(description="positive means better than the baseline")
    higher_is_better: bool
    passed: bool
    source: str | None = Field(
        default=None,
        description="`reported` (metric_value), `computed` (from predictions) or `evaluated` "
        "(measured by the service on the token's sealed benchmark)",
    )
    reported_value: float | None = Field(
        default=None,
        description="what the registrant sent (metric_value, or computed from predictions) "
        "when the service measured the metric itself; it decides nothing",
    )
    ci95: list[float] | None = Field(
        default=None,
        description="`[low, high]`: the 95% confidence interval of an evaluated value "
        "(percentile bootstrap); null when not evaluated",
    )


class EvaluationResult(BaseModel):
    """How the service's own measurement of the model went."""

    status: str = Field(description="`queued`, `running`, `succeeded` or `failed`")
    benchmark_version: int
    benchmark_sha256: str
    rows: int
    sandbox: str = Field(
        description="how the model was isolated: `bubblewrap`, `unshare`, or `process` "
        "(not isolated: development only)"
    )
    sandbox_detail: str | None = None
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    seconds: float | None = Field(default=None, description="the sandboxed run's wall time")


class ArtifactResult(BaseModel):
    filename: str
    size_bytes: int
    sha256: str
    format: str


class RegistrationPublic(BaseModel):
    """One registration attempt and its outcome."""

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE_REGISTRATION]})

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
    api_json_schema: dict[str, Any] | None = Field(
        default=None,
        description="the signature as JSON Schema (`inputSchema`, `outputSchema`), as the Hokusai "
        "site receives it; null without a column-based signature",
    )
    proposal_identifier: str | None = None
    eval_spec: str | None = None
    scorer_ref: str | None = None
    primary_metric: str | None = None
    benchmark_spec_id: str | None = None
    evaluation: EvaluationResult | None = Field(
        default=None, description="the evaluation on the token's sealed benchmark, if any"
    )
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
                reported_value=row.metric_reported_value,
                ci95=row.metric_ci95,
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
            api_json_schema=in_key_order(row.api_json_schema, row.api_schema),
            proposal_identifier=row.proposal_identifier,
            eval_spec=row.eval_spec,
            scorer_ref=row.scorer_ref,
            primary_metric=row.primary_metric,
            benchmark_spec_id=row.benchmark_spec_id,
            evaluation=EvaluationResult(**row.evaluation) if row.evaluation else None,
            tags=row.tags,
            event_ids=row.event_ids,
            error=row.error,
            created_at=row.created_at,
            registered_at=row.registered_at,
        )


class RegistrationList(BaseModel):
    """A token's registration attempts, newest first."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"items": [EXAMPLE_REGISTRATION, EXAMPLE_REJECTED_REGISTRATION]}]
        }
    )

    items: list[RegistrationPublic]
