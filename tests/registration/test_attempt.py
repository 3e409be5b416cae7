"""An attempt becomes its registration row: every field lands in its column."""

from __future__ import annotations

import datetime as dt

from app.registration.artifacts import ModelFormat
from app.registration.attempt import Attempt
from app.registration.models import Registration, RegistrationStatus
from app.scoring import MetricCheck

# Columns an attempt never fills: the outcome's, written when the attempt is settled or evaluated.
SETTLED_COLUMNS = {
    "response_status",
    "metric_ci95",
    "evaluation",
    "receipt",
    "error",
    "event_ids",
    "updated_at",
    "registered_at",
}
CREATED = dt.datetime(2026, 11, 27, 10, 42, tzinfo=dt.UTC)


def full_attempt() -> Attempt:
    return Attempt(
        id="7d9e2c41-5b0a-4f3e-9c8d-1a2b3c4d5e6f",
        token_id="XRAY",
        principal_id="key-1",
        idempotency_key="retry-1",
        fingerprint="f" * 64,
        created_at=CREATED,
        metric_source="reported",
        reported_value=0.9,
        model_name="hokusai-XRAY",
        tags={"framework": "sklearn"},
        filename="model.zip",
        size_bytes=48213,
        sha256="a" * 64,
        format=ModelFormat.MLFLOW_ZIP,
        api_schema={"inputs": []},
        api_json_schema={"inputSchema": {}},
        sdk_fields={"eval_spec": "holdout"},
        extra_run_tags={"hokusai.extra": "x"},
        run_id="run-1",
        model_version="3",
        model_uri="models:/hokusai-XRAY/3",
    )


class TestRow:
    def test_every_field_lands_in_its_column(self) -> None:
        attempt = full_attempt()
        attempt.check = MetricCheck(
            name="auroc",
            value=0.86,
            baseline=0.82,
            min_improvement=0.01,
            improvement=0.04,
            higher_is_better=True,
            passed=True,
        )
        row = attempt.row(RegistrationStatus.IN_PROGRESS)
        assert isinstance(row, Registration)
        assert row.model_dump(exclude=SETTLED_COLUMNS) == {
            "id": attempt.id,
            "token_id": "XRAY",
            "status": RegistrationStatus.IN_PROGRESS,
            "principal_id": "key-1",
            "idempotency_key": "retry-1",
            "request_fingerprint": "f" * 64,
            "metric_name": "auroc",
            "metric_value": 0.86,
            "baseline": 0.82,
            "min_improvement": 0.01,
            "improvement": 0.04,
            "higher_is_better": True,
            "passed": True,
            "metric_source": "reported",
            "metric_reported_value": 0.9,
            "artifact_filename": "model.zip",
            "artifact_size_bytes": 48213,
            "artifact_sha256": "a" * 64,
            "artifact_format": "mlflow_zip",
            "api_schema": {"inputs": []},
            "api_json_schema": {"inputSchema": {}},
            "proposal_identifier": None,
            "eval_spec": "holdout",
            "scorer_ref": None,
            "primary_metric": None,
            "benchmark_spec_id": None,
            "model_name": "hokusai-XRAY",
            "model_version": "3",
            "model_uri": "models:/hokusai-XRAY/3",
            "mlflow_run_id": "run-1",
            "tags": {"framework": "sklearn"},
            "created_at": CREATED,
        }

    def test_fills_every_column_but_the_outcome(self) -> None:
        row = full_attempt().row(RegistrationStatus.REJECTED)
        filled = {name for name, value in row.model_dump().items() if value is not None}
        unfilled = set(Registration.model_fields) - filled - SETTLED_COLUMNS
        # Without a check the metric's comparison is unknown; the SDK fields are optional.
        assert unfilled == {
            "metric_name",
            "metric_value",
            "baseline",
            "min_improvement",
            "improvement",
            "higher_is_better",
            "passed",
            "proposal_identifier",
            "scorer_ref",
            "primary_metric",
            "benchmark_spec_id",
        }

    def test_without_a_check_keeps_what_was_sent(self) -> None:
        attempt = full_attempt()
        attempt.metric_name, attempt.metric_value, attempt.baseline = "auroc", 0.5, 0.82
        row = attempt.row(RegistrationStatus.REJECTED, response_status=422)
        assert (row.metric_name, row.metric_value, row.baseline) == ("auroc", 0.5, 0.82)
        assert (row.improvement, row.passed, row.response_status) == (None, None, 422)

    def test_binds_the_key_only_to_a_request_read_whole(self) -> None:
        attempt = full_attempt()
        attempt.fingerprint = None
        assert attempt.row(RegistrationStatus.REJECTED).idempotency_key is None
