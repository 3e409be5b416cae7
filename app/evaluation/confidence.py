"""Confidence intervals of an evaluated metric: a seeded percentile bootstrap.

The method, in full (docs/evaluation.md says the same): draw `RESAMPLES` (1,000) bootstrap samples
of the benchmark's rows, each `n` rows drawn uniformly with replacement by numpy's PCG64 generator
seeded with the first 8 bytes (big-endian) of SHA-256 over `"<model sha256>:<benchmark
sha256>:<metric>"`; compute the metric on each sample exactly as on the whole benchmark; the
interval at level c is the pair of (1 - c) / 2 and (1 + c) / 2 quantiles of the 1,000 values
(numpy's default linear interpolation). The same model on the same benchmark therefore gets the
same interval every time, and anyone with the predictions and labels can recompute it.

Per-row quantities (squared errors, outcome codes, score groups) are computed once; a block of
samples then costs a gather and a sum (or one `bincount`), vectorised over the block. AUROC uses
the rank-sum form over groups of equal score, found once by sorting; ties count one half, as in
`app.scoring.compute`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from app.scoring.registry import MetricSpec

FloatArray = npt.NDArray[np.float64]

RESAMPLES = 1000
# Samples drawn together: the draws are BLOCK x n int64 (about 40 MB).
_BLOCK_CELLS = 5_000_000


def seed_for(model_sha256: str, benchmark_sha256: str, metric: str) -> int:
    """The generator seed of an evaluation: the same model, benchmark and metric, the same seed."""
    digest = hashlib.sha256(f"{model_sha256}:{benchmark_sha256}:{metric}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def bootstrap_values(
    spec: MetricSpec,
    y_true: FloatArray,
    y_other: FloatArray,
    *,
    seed: int,
    resamples: int = RESAMPLES,
) -> FloatArray:
    """The metric on each of `resamples` bootstrap samples (NaN where it is undefined).

    Sample k is row `draws[k]` of `rng.integers(0, n, size=(resamples, n))`, drawn a block of
    samples at a time (the generator's stream does not depend on the block size).
    """
    n = y_true.size
    weighted = _ON_DRAWS[spec.name]
    prepared = _prepare(spec.name, y_true, y_other)
    rng = np.random.Generator(np.random.PCG64(seed))
    block = max(1, min(resamples, _BLOCK_CELLS // max(n, 1)))
    out = np.empty(resamples, dtype=np.float64)
    done = 0
    while done < resamples:
        size = min(block, resamples - done)
        draws = rng.integers(0, n, size=(size, n))
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            out[done : done + size] = weighted(prepared, draws)
        done += size
    return out


def interval(values: FloatArray, level: float) -> tuple[float, float]:
    """The percentile interval at `level` (e.g. 0.95) of bootstrap values; NaNs are skipped."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return (math.nan, math.nan)
    low, high = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


# Metrics of samples ----------------------------------------------------------------------------
# `prepared` holds per-row quantities computed once; `draws` is (samples, n) of drawn row indices.

Prepared = dict[str, npt.NDArray[Any]]
IntArray = npt.NDArray[np.int64]

# Outcome codes of a binary prediction, so one bincount gives a sample's confusion counts.
_TN, _FP, _FN, _TP = 0, 1, 2, 3


def _prepare(name: str, y_true: FloatArray, y_other: FloatArray) -> Prepared:
    if name == "auroc":
        # Rows of equal score form a group; groups are numbered in increasing score order.
        order = np.argsort(y_other, kind="stable")
        scores = y_other[order]
        group_sorted = np.concatenate(([0], np.cumsum(np.diff(scores) != 0)))
        group = np.empty(y_other.size, dtype=np.int64)
        group[order] = group_sorted
        # One slot per (group, class): a sample's class counts per group are one bincount.
        return {
            "slot": 2 * group + (y_true == 1),
            "groups": np.array([int(group_sorted[-1]) + 1]),
        }
    if name == "log_loss":
        eps = np.finfo(np.float64).eps
        p_one = np.clip(y_other, eps, 1 - eps)
        p_zero = np.clip(1 - y_other, eps, 1 - eps)
        return {"value": -np.log(np.where(y_true == 1, p_one, p_zero))}
    if name == "accuracy":
        return {"value": (y_true == y_other).astype(np.float64)}
    if name in ("f1", "precision", "recall"):
        actual = (y_true == 1).astype(np.int64)
        predicted = (y_other == 1).astype(np.int64)
        return {"code": 2 * actual + predicted}
    if name == "mae":
        return {"value": np.abs(y_other - y_true)}
    return {"value": (y_true - y_other) ** 2, "y": y_true}


def _mean(p: Prepared, draws: IntArray) -> FloatArray:
    result: FloatArray = p["value"][draws].mean(axis=1)
    return result


def _confusion(p: Prepared, draws: IntArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    size = draws.shape[0]
    codes = p["code"][draws] + 4 * np.arange(size, dtype=np.int64)[:, None]
    counts = np.bincount(codes.ravel(), minlength=4 * size).reshape(size, 4).astype(np.float64)
    return counts[:, _TP], counts[:, _FP], counts[:, _FN]


def _ratio(numerator: FloatArray, denominator: FloatArray) -> FloatArray:
    # An undefined ratio scores 0.0, as scikit-learn's default zero_division does.
    safe = np.where(denominator > 0, denominator, 1.0)
    result: FloatArray = np.where(denominator > 0, numerator / safe, 0.0)
    return result


def _precision(p: Prepared, draws: IntArray) -> FloatArray:
    tp, fp, _ = _confusion(p, draws)
    return _ratio(tp, tp + fp)


def _recall(p: Prepared, draws: IntArray) -> FloatArray:
    tp, _, fn = _confusion(p, draws)
    return _ratio(tp, tp + fn)


def _f1(p: Prepared, draws: IntArray) -> FloatArray:
    tp, fp, fn = _confusion(p, draws)
    return _ratio(2 * tp, 2 * tp + fp + fn)


def _auroc(p: Prepared, draws: IntArray) -> FloatArray:
    size = draws.shape[0]
    groups = int(p["groups"][0])
    slots = (p["slot"][draws] + 2 * groups * np.arange(size, dtype=np.int64)[:, None]).ravel()
    counts = np.bincount(slots, minlength=2 * groups * size).reshape(size, groups, 2)
    group_neg, group_pos = counts[:, :, 0], counts[:, :, 1]
    # Counted in integers, as app.scoring.compute does: the one division is the only rounding.
    neg_below = np.cumsum(group_neg, axis=1) - group_neg
    half_points = np.sum(group_pos * (2 * neg_below + group_neg), axis=1)
    positives = group_pos.sum(axis=1)
    negatives = group_neg.sum(axis=1)
    # A sample that drew one class only has no AUROC: NaN, left out of the quantiles.
    result: FloatArray = half_points / (2.0 * positives * negatives)
    return result


def _rmse(p: Prepared, draws: IntArray) -> FloatArray:
    result: FloatArray = np.sqrt(_mean(p, draws))
    return result


def _r2(p: Prepared, draws: IntArray) -> FloatArray:
    y = p["y"][draws]
    spread = np.sum((y - y.mean(axis=1, keepdims=True)) ** 2, axis=1)
    residual = p["value"][draws].sum(axis=1)
    defined = spread > 0
    result: FloatArray = np.where(defined, 1 - residual / np.where(defined, spread, 1), np.nan)
    return result


_ON_DRAWS: dict[str, Callable[[Prepared, IntArray], FloatArray]] = {
    "accuracy": _mean,
    "auroc": _auroc,
    "f1": _f1,
    "precision": _precision,
    "recall": _recall,
    "log_loss": _mean,
    "mse": _mean,
    "rmse": _rmse,
    "mae": _mean,
    "r2": _r2,
}
