"""Each computable metric's formula over two aligned float columns (`FORMULAS`, by metric name).

Each follows scikit-learn's formula and order of operations, so results agree to float rounding
rather than merely to a tolerance. AUROC is the exception in form, not in value: the rank-sum
count below equals sklearn's trapezoidal area under roc_curve, ties included.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from app.errors import InvalidPredictions

FloatArray = npt.NDArray[np.float64]


def _accuracy(y_true: FloatArray, y_pred: FloatArray) -> float:
    return float(np.mean(y_true == y_pred))


def _confusion(y_true: FloatArray, y_pred: FloatArray) -> tuple[int, int, int]:
    actual = y_true == 1
    predicted = y_pred == 1
    tp = int(np.count_nonzero(actual & predicted))
    return tp, int(np.count_nonzero(predicted)) - tp, int(np.count_nonzero(actual)) - tp


# sklearn's default zero_division ("warn") scores an undefined ratio as 0.0; so do these.
def _precision(y_true: FloatArray, y_pred: FloatArray) -> float:
    tp, fp, _ = _confusion(y_true, y_pred)
    return tp / (tp + fp) if tp + fp else 0.0


def _recall(y_true: FloatArray, y_pred: FloatArray) -> float:
    tp, _, fn = _confusion(y_true, y_pred)
    return tp / (tp + fn) if tp + fn else 0.0


def _f1(y_true: FloatArray, y_pred: FloatArray) -> float:
    tp, fp, fn = _confusion(y_true, y_pred)
    denominator = 2 * tp + fp + fn
    return 2 * tp / denominator if denominator else 0.0


def _auroc(y_true: FloatArray, y_score: FloatArray) -> float:
    n = y_true.size
    positives = int(np.count_nonzero(y_true == 1))
    negatives = n - positives
    if positives == 0 or negatives == 0:
        only = "1" if positives else "0"
        raise InvalidPredictions(
            f"auroc needs both classes in y_true, but every row has y_true = {only}"
        )
    # Mann-Whitney form of the area under the ROC curve: each positive scores one point per
    # negative ranked below it and half a point per negative tied with it. Counting half-points
    # as integers keeps the sum exact; the one division at the end is the only rounding.
    order = np.argsort(y_score, kind="stable")
    scores = y_score[order]
    labels = (y_true[order] == 1).astype(np.int64)
    starts = np.concatenate(([0], np.flatnonzero(np.diff(scores)) + 1))
    group_pos = np.add.reduceat(labels, starts)
    group_neg = np.diff(np.append(starts, n)) - group_pos
    neg_below = np.cumsum(group_neg) - group_neg
    half_points = int(np.sum(group_pos * (2 * neg_below + group_neg)))
    return half_points / (2 * positives * negatives)


def _log_loss(y_true: FloatArray, y_score: FloatArray) -> float:
    # sklearn clips both columns of [1 - p, p] to [eps, 1 - eps], so a confident wrong 0 or 1
    # costs -log(eps) ≈ 36.04 instead of infinity.
    eps = np.finfo(np.float64).eps
    p_one = np.clip(y_score, eps, 1 - eps)
    p_zero = np.clip(1 - y_score, eps, 1 - eps)
    return float(np.mean(-np.log(np.where(y_true == 1, p_one, p_zero))))


def _mse(y_true: FloatArray, y_pred: FloatArray) -> float:
    return float(np.mean((y_true - y_pred) ** 2))


def _rmse(y_true: FloatArray, y_pred: FloatArray) -> float:
    return math.sqrt(_mse(y_true, y_pred))


def _mae(y_true: FloatArray, y_pred: FloatArray) -> float:
    return float(np.mean(np.abs(y_pred - y_true)))


def _r2(y_true: FloatArray, y_pred: FloatArray) -> float:
    # sklearn returns 1.0 or 0.0 by convention for a constant y_true; neither says anything about
    # the model, so refuse instead.
    if bool(np.all(y_true == y_true[0])):
        raise InvalidPredictions("r2 is undefined when every y_true is the same value")
    numerator = float(np.sum((y_true - y_pred) ** 2))
    denominator = float(np.sum((y_true - np.mean(y_true)) ** 2))
    if denominator == 0:
        raise InvalidPredictions("r2 is undefined: y_true varies too little to measure")
    return 1 - numerator / denominator


FORMULAS: dict[str, Callable[[FloatArray, FloatArray], float]] = {
    "accuracy": _accuracy,
    "auroc": _auroc,
    "f1": _f1,
    "precision": _precision,
    "recall": _recall,
    "log_loss": _log_loss,
    "mse": _mse,
    "rmse": _rmse,
    "mae": _mae,
    "r2": _r2,
}
