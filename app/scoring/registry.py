"""The metrics the service accepts: canonical names, aliases, valid ranges and direction.

This table is the contract's "Supported metrics" table in code; everything else in the service asks
it rather than hard-coding a metric's range or direction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from app.errors import UnsupportedMetric

# Echoing a whole client-supplied string back in an error would let a caller inflate every problem
# body (and log line) with whatever they sent.
_MAX_ECHO = 64


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One supported metric."""

    name: str
    aliases: tuple[str, ...]
    lower: float
    upper: float
    higher_is_better: bool
    computable: bool

    def range_text(self) -> str:
        """The valid range in interval notation, e.g. "[0, 1]" or "[0, ∞)"."""
        left = "(-∞" if self.lower == -math.inf else f"[{_bound_text(self.lower)}"
        right = "∞)" if self.upper == math.inf else f"{_bound_text(self.upper)}]"
        return f"{left}, {right}"

    def contains(self, x: float) -> bool:
        """Whether x is a finite number inside the valid range (finite bounds are inclusive)."""
        return math.isfinite(x) and self.lower <= x <= self.upper


def _bound_text(bound: float) -> str:
    return f"{bound:g}"


def _spec(
    name: str,
    *,
    aliases: tuple[str, ...] = (),
    lower: float,
    upper: float,
    higher_is_better: bool,
    computable: bool,
) -> MetricSpec:
    return MetricSpec(
        name=name,
        aliases=aliases,
        lower=lower,
        upper=upper,
        higher_is_better=higher_is_better,
        computable=computable,
    )


_INF = math.inf

_SPECS: tuple[MetricSpec, ...] = (
    _spec("accuracy", lower=0.0, upper=1.0, higher_is_better=True, computable=True),
    _spec(
        "auroc",
        aliases=("auc", "roc_auc"),
        lower=0.0,
        upper=1.0,
        higher_is_better=True,
        computable=True,
    ),
    _spec(
        "f1", aliases=("f1_score",), lower=0.0, upper=1.0, higher_is_better=True, computable=True
    ),
    _spec("precision", lower=0.0, upper=1.0, higher_is_better=True, computable=True),
    _spec("recall", lower=0.0, upper=1.0, higher_is_better=True, computable=True),
    _spec("log_loss", lower=0.0, upper=_INF, higher_is_better=False, computable=True),
    _spec("mse", lower=0.0, upper=_INF, higher_is_better=False, computable=True),
    _spec("rmse", lower=0.0, upper=_INF, higher_is_better=False, computable=True),
    _spec("mae", lower=0.0, upper=_INF, higher_is_better=False, computable=True),
    _spec("r2", lower=-_INF, upper=1.0, higher_is_better=True, computable=True),
    _spec("reply_rate", lower=0.0, upper=1.0, higher_is_better=True, computable=False),
    _spec("conversion_rate", lower=0.0, upper=1.0, higher_is_better=True, computable=False),
    _spec("engagement_score", lower=0.0, upper=_INF, higher_is_better=True, computable=False),
)

METRICS: Mapping[str, MetricSpec] = MappingProxyType({spec.name: spec for spec in _SPECS})

_BY_ANY_NAME: Mapping[str, MetricSpec] = MappingProxyType(
    {key: spec for spec in _SPECS for key in (spec.name, *spec.aliases)}
)


def supported_metric_names() -> list[str]:
    """Canonical names of every supported metric, in the contract's order."""
    return list(METRICS)


def resolve_metric(name: str) -> MetricSpec:
    """The spec for a metric name or alias (case-insensitive, surrounding whitespace ignored)."""
    key = name.strip().lower() if isinstance(name, str) else ""
    spec = _BY_ANY_NAME.get(key)
    if spec is not None:
        return spec
    supported = supported_metric_names()
    if not key:
        detail = "metric is required; supported metrics: " + ", ".join(supported)
    else:
        shown = name.strip()
        if len(shown) > _MAX_ECHO:
            shown = shown[:_MAX_ECHO] + "…"
        detail = f"unsupported metric {shown!r}; supported metrics: " + ", ".join(supported)
    raise UnsupportedMetric(
        detail,
        extra={
            "supported_metrics": supported,
            "metric_aliases": {alias: s.name for s in _SPECS for alias in s.aliases},
        },
    )
