"""The problems an evaluation refuses a registration with: `evaluation_failed` (which limit or
fault, with a bounded excerpt of the model's output) and a measured value below the bar."""

from __future__ import annotations

import re

from app.config import Settings
from app.errors import AppError, EvaluationFailed, MetricBelowBaseline
from app.evaluation.sandbox import SandboxFailure
from app.scoring import MetricCheck, require_passed
from app.scoring.validation import format_number

MAX_EXCERPT = 500
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
REASONS = {
    "load_failed": "the model did not load",
    "raised": "the model raised an error",
    "wrong_row_count": "the model returned the wrong number of rows",
    "non_finite": "the model returned non-finite values",
    "bad_output": "the model's output is not usable for the metric",
    "timeout": "the evaluation ran past its time limit",
    "memory": "the model exceeded its memory limit",
    "output_too_large": "the model's output exceeded its size limit",
    "no_output": "the model exited without output",
    "killed": "the sandbox stopped the model",
}


def failure_detail(failure: SandboxFailure, settings: Settings) -> str:
    """`evaluation_failed`'s detail: which limit or fault, and a bounded excerpt of the model's."""
    text = REASONS.get(failure.reason, "the model could not be evaluated")
    if failure.reason == "timeout":
        text += f" of {format_number(settings.evaluation_timeout_seconds)} s"
    elif failure.reason == "memory":
        text += f" of {settings.evaluation_memory_mb} MiB"
    detail = f"{text} ({failure.reason})"
    excerpt = _CONTROL.sub("", failure.excerpt or "").strip()
    if excerpt:
        if len(excerpt) > MAX_EXCERPT:
            excerpt = "…" + excerpt[-MAX_EXCERPT:]
        detail += f": {excerpt}"
    return detail


def evaluation_failed(failure: SandboxFailure, settings: Settings) -> EvaluationFailed:
    return EvaluationFailed(failure_detail(failure, settings), extra={"reason": failure.reason})


def refusal_for_check(check: MetricCheck, interval_reason: str | None) -> AppError:
    """The 422 of a measured value that does not clear the bar."""
    if interval_reason is not None:
        return MetricBelowBaseline(interval_reason, extra={"metric": check.as_dict()})
    try:
        require_passed(check)
    except MetricBelowBaseline as e:
        return e
    raise AssertionError("a passing check is not a refusal")  # pragma: no cover
