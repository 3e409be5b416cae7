"""Measuring a model (in a worker thread): its sandboxed run on the benchmark's features, the
metric and its bootstrap intervals computed here, and the gate the registration's check applies."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from app.config import Settings
from app.errors import InvalidPredictions
from app.evaluation import benchmarks
from app.evaluation.confidence import bootstrap_values, interval, seed_for
from app.evaluation.models import Benchmark, EvaluationJob
from app.evaluation.sandbox import (
    ModelKind,
    OutputKind,
    SandboxFailure,
    SandboxInfo,
    SandboxLimits,
    run_model,
)
from app.registration.models import Registration
from app.scoring import MetricCheck, evaluate
from app.scoring.compute import COLUMNS, compute_from_columns, first_unusable
from app.scoring.registry import METRICS, MetricSpec
from app.scoring.validation import format_number

CONFIDENCE_LEVEL = 0.95
# Metrics scored from a continuous score rather than a predicted label.
SCORE_METRICS = frozenset({"auroc", "log_loss"})


@dataclass(frozen=True, slots=True)
class Measured:
    """What the service measured: the metric, its interval(s), the sandboxed run's facts."""

    value: float
    ci95: tuple[float, float]
    gate_interval: tuple[float, float] | None
    seconds: float
    sandbox: SandboxInfo


def sandbox_limits(settings: Settings) -> SandboxLimits:
    """The limits of every evaluation in this process (its warm spare is started with them)."""
    return SandboxLimits(
        wall_seconds=settings.evaluation_timeout_seconds,
        memory_mb=settings.evaluation_memory_mb,
    )


def output_kind(spec: MetricSpec) -> OutputKind:
    return OutputKind.SCORE if spec.name in SCORE_METRICS else OutputKind.PREDICT


def measure(
    settings: Settings,
    sandbox: SandboxInfo,
    *,
    job: EvaluationJob,
    row: Registration,
    benchmark: Benchmark,
) -> Measured:
    """Run the model on the benchmark's features in the sandbox and score what it returns.

    Raises `SandboxFailure` when the model could not be evaluated. The labels are read only
    after the sandbox has finished, in this (trusted) process.
    """
    spec = METRICS[benchmark.metric]
    folder = settings.benchmark_dir / benchmark.id
    result = run_model(
        model_path=settings.evaluation_dir / job.registration_id / job.model_path,
        model_kind=ModelKind(job.model_kind),
        features_path=folder / benchmarks.FEATURES_FILE,
        dtypes={column["name"]: column["dtype"] for column in benchmark.features},
        output=output_kind(spec),
        expected_rows=benchmark.rows,
        limits=sandbox_limits(settings),
        sandbox=sandbox,
    )
    predictions = _as_numbers(result.values, spec)
    labels = benchmarks.load_labels(folder)
    try:
        value = compute_from_columns(spec, labels, predictions)
    except InvalidPredictions as e:
        raise SandboxFailure("bad_output", e.detail.replace("y_true", "the labels")) from None
    samples = bootstrap_values(
        spec,
        labels,
        predictions,
        seed=seed_for(row.artifact_sha256 or "", benchmark.sha256, spec.name),
    )
    ci95 = interval(samples, CONFIDENCE_LEVEL)
    gate = interval(samples, job.confidence) if job.confidence is not None else None
    return Measured(
        value=value, ci95=ci95, gate_interval=gate, seconds=result.seconds, sandbox=result.sandbox
    )


def _as_numbers(values: np.ndarray[Any, Any], spec: MetricSpec) -> np.ndarray[Any, Any]:
    """The model's output as float64 of the kind the metric needs, or `bad_output`."""
    kind = COLUMNS[spec.name][1].kind
    if values.dtype.kind not in "fiub":
        try:
            values = np.char.strip(values.astype(str)).astype(np.float64)
        except ValueError:
            first = str(values[0])[:40] if values.size else ""
            raise SandboxFailure(
                "bad_output",
                f"{spec.name} needs numbers ({kind.value}); the model returned text such as "
                f"{first!r}",
            ) from None
    numbers = values.astype(np.float64)
    bad = first_unusable(numbers, kind)
    if bad is not None:
        raise SandboxFailure(
            "bad_output",
            f"row {bad + 1}: the model returned {numbers[bad]!r}; {spec.name} needs {kind.value}",
        )
    return numbers


def gate(
    spec: MetricSpec, row: Registration, measured: Measured, *, confidence: float | None
) -> tuple[MetricCheck, str | None]:
    """The registration's check on the measured value, and why the interval failed it, if so."""
    check = evaluate(
        spec,
        value=measured.value,
        baseline=row.baseline if row.baseline is not None else math.nan,
        min_improvement=row.min_improvement or 0.0,
    )
    if measured.gate_interval is None or confidence is None or not check.passed:
        return check, None
    low, high = measured.gate_interval
    bound = low if spec.higher_is_better else high
    at_bound = evaluate(
        spec, value=bound, baseline=check.baseline, min_improvement=check.min_improvement
    )
    if at_bound.passed and math.isfinite(bound):
        return check, None
    reason = (
        f"{spec.name} {format_number(check.value)} clears the target "
        f"{format_number(check.target)}, but its {confidence:.4g} confidence interval "
        f"[{format_number(low)}, {format_number(high)}] does not: the token requires the whole "
        "interval to clear it"
    )
    return replace(check, passed=False), reason
