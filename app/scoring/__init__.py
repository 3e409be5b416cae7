"""Metric rules: which metrics exist, how a value is checked against a baseline, and how a metric
is computed from a predictions file."""

from app.scoring.compute import compute_from_predictions, required_columns
from app.scoring.registry import METRICS, MetricSpec, resolve_metric, supported_metric_names
from app.scoring.validation import (
    TIE_TOLERANCE,
    MetricCheck,
    evaluate,
    parse_number,
    require_passed,
    validate_baseline,
    validate_metric_value,
    validate_min_improvement,
)

__all__ = [
    "METRICS",
    "TIE_TOLERANCE",
    "MetricCheck",
    "MetricSpec",
    "compute_from_predictions",
    "evaluate",
    "parse_number",
    "require_passed",
    "required_columns",
    "resolve_metric",
    "supported_metric_names",
    "validate_baseline",
    "validate_metric_value",
    "validate_min_improvement",
]
