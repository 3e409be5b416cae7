"""Checking a metric value against a baseline, and parsing the numbers a client sends.

The rule (contract, "Supported metrics"): a value passes when it is at least as good as the baseline
moved by `min_improvement` in the better direction; a shortfall within `TIE_TOLERANCE` still passes,
so a value that equals the target up to float rounding is never rejected.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from app.errors import (
    AppError,
    InvalidBaseline,
    InvalidMetricValue,
    MetricBelowBaseline,
    ValidationFailed,
)
from app.scoring.registry import MetricSpec

TIE_TOLERANCE = 1e-9

MAX_NUMBER_TEXT = 64

# Plain decimal notation with ASCII digits only. `float()` also takes "nan", "inf", "1_000" and
# non-ASCII digits; none of those is a sensible way to write a score, and accepting them would make
# the same form field mean different things to different clients.
NUMBER_PATTERN = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)


@dataclass(frozen=True, slots=True)
class MetricCheck:
    """The outcome of comparing a metric value with a baseline."""

    name: str
    value: float
    baseline: float
    min_improvement: float
    improvement: float
    higher_is_better: bool
    passed: bool

    def as_dict(self) -> dict[str, Any]:
        """The registration's `metric` object, as the contract names its fields."""
        return {
            "name": self.name,
            "value": self.value,
            "baseline": self.baseline,
            "min_improvement": self.min_improvement,
            "improvement": self.improvement,
            "higher_is_better": self.higher_is_better,
            "passed": self.passed,
        }

    @property
    def target(self) -> float:
        """The least good value that passes (before the tie tolerance)."""
        if self.higher_is_better:
            return self.baseline + self.min_improvement
        return self.baseline - self.min_improvement


def format_number(x: float) -> str:
    """A number for a human message: 12 significant digits hide float noise but keep real gaps."""
    return f"{x:.12g}"


def _shown(raw: str) -> str:
    if len(raw) > MAX_NUMBER_TEXT:
        raw = raw[:MAX_NUMBER_TEXT] + "…"
    return repr(raw)


def parse_number(raw: str | float | int | None, *, field: str, error: type[AppError]) -> float:
    """Parse a finite number from form text (or pass a number through), raising `error` if not."""
    extra = {"field": field}
    if raw is None:
        raise error(f"{field} is required", extra=extra)
    # bool is an int subclass; True as a baseline is a client bug, not the number 1.
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise error(f"{field} must be a number; got {type(raw).__name__}", extra=extra)
    if isinstance(raw, str):
        if len(raw) > MAX_NUMBER_TEXT:
            raise error(
                f"{field} is too long to be a number ({len(raw)} characters; at most "
                f"{MAX_NUMBER_TEXT})",
                extra=extra,
            )
        text = raw.strip()
        if not text:
            raise error(f"{field} is required", extra=extra)
        if NUMBER_PATTERN.fullmatch(text) is None:
            raise error(
                f"{field} must be a finite number written in decimal notation; got {_shown(raw)}",
                extra=extra,
            )
        value = float(text)
        if not math.isfinite(value):
            raise error(
                f"{field} is too large to be a finite number; got {_shown(raw)}", extra=extra
            )
        return value
    try:
        value = float(raw)
    except OverflowError:
        raise error(f"{field} is too large to be a finite number", extra=extra) from None
    if not math.isfinite(value):
        raise error(f"{field} must be a finite number; got {value!r}", extra=extra)
    return value


def _check_in_range(spec: MetricSpec, x: float, *, field: str, error: type[AppError]) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float) or not spec.contains(x):
        shown = repr(float(x)) if isinstance(x, int | float) else type(x).__name__
        raise error(
            f"{field} must be a finite number in {spec.range_text()} for {spec.name}; got {shown}",
            extra={"metric_name": spec.name, "valid_range": spec.range_text()},
        )
    return float(x)


def validate_baseline(spec: MetricSpec, baseline: float) -> float:
    """The baseline as a float; `InvalidBaseline` unless finite and inside the metric's range."""
    return _check_in_range(spec, baseline, field="baseline", error=InvalidBaseline)


def validate_metric_value(spec: MetricSpec, value: float) -> float:
    """The metric value as a float; `InvalidMetricValue` unless finite and inside the range."""
    return _check_in_range(spec, value, field="metric_value", error=InvalidMetricValue)


def validate_min_improvement(raw: float) -> float:
    """The minimum improvement as a float; `ValidationFailed` unless finite and not negative."""
    ok = isinstance(raw, int | float) and not isinstance(raw, bool)
    if not ok or not math.isfinite(raw) or raw < 0:
        shown = repr(float(raw)) if ok else type(raw).__name__
        raise ValidationFailed(
            f"min_improvement must be a finite number >= 0; got {shown}",
            extra={"field": "min_improvement"},
        )
    # Adding 0.0 turns -0.0 into 0.0, so "-0" is not echoed back as a negative improvement.
    return float(raw) + 0.0


def evaluate(
    spec: MetricSpec, *, value: float, baseline: float, min_improvement: float = 0.0
) -> MetricCheck:
    """Compare value with baseline in the metric's better direction; never raises."""
    improvement = value - baseline if spec.higher_is_better else baseline - value
    # Comparing the improvement rather than value against baseline±min_improvement gives the same
    # answer for both directions; the tolerance absorbs rounding in either subtraction.
    passed = improvement >= min_improvement - TIE_TOLERANCE
    return MetricCheck(
        name=spec.name,
        value=value,
        baseline=baseline,
        min_improvement=min_improvement,
        improvement=improvement,
        higher_is_better=spec.higher_is_better,
        passed=bool(passed),
    )


def require_passed(check: MetricCheck) -> None:
    """Raise `MetricBelowBaseline` unless the check passed."""
    if check.passed:
        return
    direction = "higher" if check.higher_is_better else "lower"
    value = format_number(check.value)
    baseline = format_number(check.baseline)
    if check.min_improvement == 0:
        worse = "below" if check.higher_is_better else "above"
        detail = f"{check.name} {value} is {worse} the baseline {baseline} ({direction} is better)"
    else:
        bound = "at least" if check.higher_is_better else "at most"
        detail = (
            f"{check.name} {value} does not improve on the baseline {baseline} by at least "
            f"{format_number(check.min_improvement)} ({direction} is better, so it must be "
            f"{bound} {format_number(check.target)}; "
            f"improvement {format_number(check.improvement)})"
        )
    raise MetricBelowBaseline(detail, extra={"metric": check.as_dict()})
