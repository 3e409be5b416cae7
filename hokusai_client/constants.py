"""What the client shares with the service: metrics, statuses, scopes, error codes.

Plain data, importable without httpx or anything of the server. `tests/cli/test_constants.py`
compares every table here with the service's own definitions and its OpenAPI document, so a
change on one side that the other does not follow fails a test.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final


@dataclass(frozen=True, slots=True)
class Metric:
    """One supported metric (the contract's "Supported metrics" table)."""

    name: str
    aliases: tuple[str, ...]
    lower: float
    upper: float
    higher_is_better: bool
    computable: bool  # the service can score it from predictions (and evaluate it on a benchmark)


_INF = math.inf
METRICS: Final = MappingProxyType(
    {
        m.name: m
        for m in (
            Metric("accuracy", (), 0.0, 1.0, True, True),
            Metric("auroc", ("auc", "roc_auc"), 0.0, 1.0, True, True),
            Metric("f1", ("f1_score",), 0.0, 1.0, True, True),
            Metric("precision", (), 0.0, 1.0, True, True),
            Metric("recall", (), 0.0, 1.0, True, True),
            Metric("log_loss", (), 0.0, _INF, False, True),
            Metric("mse", (), 0.0, _INF, False, True),
            Metric("rmse", (), 0.0, _INF, False, True),
            Metric("mae", (), 0.0, _INF, False, True),
            Metric("r2", (), -_INF, 1.0, True, True),
            Metric("reply_rate", (), 0.0, 1.0, True, False),
            Metric("conversion_rate", (), 0.0, 1.0, True, False),
            Metric("engagement_score", (), 0.0, _INF, True, False),
        )
    }
)


def resolve_metric(name: str) -> Metric | None:
    """The metric for a name or alias (case-insensitive), or None."""
    key = name.strip().lower()
    for metric in METRICS.values():
        if key == metric.name or key in metric.aliases:
            return metric
    return None


class TokenStatus(enum.StrEnum):
    DRAFT = "draft"
    REGISTERING = "registering"
    REGISTERED = "registered"
    DEPLOYED = "deployed"
    FAILED = "failed"
    ARCHIVED = "archived"


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


TOKEN_STATUSES: Final = tuple(TokenStatus)
REGISTRATION_STATUSES: Final = ("in_progress", "evaluating", "registered", "rejected", "failed")
# A registration in one of these will not change any more.
FINAL_REGISTRATION_STATUSES: Final = frozenset({"registered", "rejected", "failed"})
EVALUATION_STATUSES: Final = ("queued", "running", "succeeded", "failed")
DELIVERY_STATUSES: Final = tuple(DeliveryStatus)
PAYLOAD_FORMATS: Final = ("standard", "hokusai_site")
EVENT_TYPES: Final = (
    "model_registered",
    "token_ready_for_deploy",
    "model_validation_failed",
    "registration_failed",
    "model_deployed",
    "ping",
)
SCOPES: Final = (
    "tokens:read",
    "tokens:write",
    "models:register",
    "events:read",
    "webhooks:manage",
    "benchmarks:manage",
    "admin",
)

# Every `code` a problem+json from the service can carry, with its HTTP status.
ERROR_CODES: Final = MappingProxyType(
    {
        "bad_request": 400,
        "upload_incomplete": 400,
        "request_timeout": 408,
        "unauthorized": 401,
        "forbidden": 403,
        "not_found": 404,
        "token_not_found": 404,
        "registration_not_found": 404,
        "webhook_not_found": 404,
        "delivery_not_found": 404,
        "benchmark_not_found": 404,
        "receipt_not_found": 404,
        "method_not_allowed": 405,
        "conflict": 409,
        "token_already_exists": 409,
        "token_not_registrable": 409,
        "invalid_status_transition": 409,
        "registration_in_progress": 409,
        "static_webhook_readonly": 409,
        "webhook_inactive": 409,
        "payload_too_large": 413,
        "unsupported_media_type": 415,
        "too_many_requests": 429,
        "request_header_fields_too_large": 431,
        "validation_error": 422,
        "unsupported_metric": 422,
        "invalid_baseline": 422,
        "invalid_metric_value": 422,
        "benchmark_mismatch": 422,
        "metric_below_baseline": 422,
        "invalid_model_file": 422,
        "invalid_predictions": 422,
        "checksum_mismatch": 422,
        "model_name_taken": 422,
        "idempotency_key_reused": 422,
        "webhook_url_not_allowed": 422,
        "invalid_benchmark": 422,
        "evaluation_failed": 422,
        "http_error": 400,
        "internal_error": 500,
        "registration_interrupted": 500,
        "mlflow_error": 502,
        "service_unavailable": 503,
        "mlflow_unavailable": 503,
        "database_unavailable": 503,
        "evaluation_unavailable": 503,
    }
)
