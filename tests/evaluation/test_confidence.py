"""The bootstrap interval: each resample's metric is scikit-learn's on the same drawn rows."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import pytest
from sklearn import metrics as sk

from app.evaluation.confidence import RESAMPLES, bootstrap_values, interval, seed_for
from app.scoring import resolve_metric

SKLEARN: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": sk.accuracy_score,
    "auroc": sk.roc_auc_score,
    "f1": sk.f1_score,
    "precision": lambda t, p: sk.precision_score(t, p, zero_division=0.0),
    "recall": lambda t, p: sk.recall_score(t, p, zero_division=0.0),
    "log_loss": lambda t, p: sk.log_loss(t, p, labels=[0, 1]),
    "mse": sk.mean_squared_error,
    "rmse": lambda t, p: math.sqrt(sk.mean_squared_error(t, p)),
    "mae": sk.mean_absolute_error,
    "r2": sk.r2_score,
}


def _columns(name: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    y = (rng.random(n) < 0.4).astype(np.float64)
    if name in ("accuracy", "f1", "precision", "recall"):
        return y, np.where(rng.random(n) < 0.75, y, 1 - y)
    if name == "auroc":
        # Rounded scores: many ties, which count one half.
        return y, np.round(y * 0.4 + rng.random(n), 2)
    if name == "log_loss":
        return y, np.clip(y * 0.5 + rng.random(n) * 0.5, 0, 1)
    target = rng.normal(size=n)
    return target, target + rng.normal(scale=0.5, size=n)


class TestResamplesMatchScikitLearn:
    @pytest.mark.parametrize("name", list(SKLEARN))
    def test_each_resample_is_the_metric_on_the_drawn_rows(self, name: str) -> None:
        rng = np.random.default_rng(11)
        y, other = _columns(name, 301, rng)
        spec = resolve_metric(name)
        values = bootstrap_values(spec, y, other, seed=42, resamples=25)
        draws = np.random.Generator(np.random.PCG64(42)).integers(0, y.size, size=(25, y.size))
        for value, rows in zip(values, draws, strict=True):
            assert value == pytest.approx(SKLEARN[name](y[rows], other[rows]), abs=1e-9)

    def test_draws_do_not_depend_on_the_block_size(self) -> None:
        # 200,000 rows are drawn 25 resamples a block; one call drawing all 40 gives the same.
        rng = np.random.default_rng(5)
        y, other = _columns("mae", 200_000, rng)
        values = bootstrap_values(resolve_metric("mae"), y, other, seed=9, resamples=40)
        generator = np.random.Generator(np.random.PCG64(9))
        draws = generator.integers(0, y.size, size=(40, y.size))
        for k in (0, 24, 25, 39):
            expected = float(np.mean(np.abs(other[draws[k]] - y[draws[k]])))
            assert values[k] == pytest.approx(expected, abs=1e-12)


class TestInterval:
    def test_same_inputs_same_interval(self) -> None:
        rng = np.random.default_rng(1)
        y, score = _columns("auroc", 500, rng)
        spec = resolve_metric("auroc")
        seed = seed_for("a" * 64, "b" * 64, "auroc")
        first = interval(bootstrap_values(spec, y, score, seed=seed), 0.95)
        second = interval(bootstrap_values(spec, y, score, seed=seed), 0.95)
        assert first == second
        other = interval(
            bootstrap_values(spec, y, score, seed=seed_for("c" * 64, "b" * 64, "auroc")), 0.95
        )
        assert other != first

    def test_interval_brackets_the_value_and_narrows_with_rows(self) -> None:
        rng = np.random.default_rng(2)
        spec = resolve_metric("accuracy")
        widths = []
        for n in (200, 20_000):
            y, pred = _columns("accuracy", n, rng)
            low, high = interval(bootstrap_values(spec, y, pred, seed=3), 0.95)
            value = sk.accuracy_score(y, pred)
            assert low <= value <= high
            widths.append(high - low)
        assert widths[1] < widths[0] / 5

    def test_a_wider_level_gives_a_wider_interval(self) -> None:
        rng = np.random.default_rng(4)
        y, pred = _columns("mse", 400, rng)
        values = bootstrap_values(resolve_metric("mse"), y, pred, seed=1)
        low90, high90 = interval(values, 0.90)
        low99, high99 = interval(values, 0.99)
        assert low99 < low90 < high90 < high99

    def test_resamples_with_one_class_are_left_out(self) -> None:
        y = np.array([1.0] + [0.0] * 9)
        score = np.linspace(0, 1, 10)
        values = bootstrap_values(resolve_metric("auroc"), y, score, seed=7, resamples=200)
        assert np.isnan(values).any()
        low, high = interval(values, 0.95)
        assert 0 <= low <= high <= 1


def test_figures_for_100k_rows(capsys: pytest.CaptureFixture[str]) -> None:
    """Prints how long 1,000 resamples of 100k rows take (a figure, not an assertion)."""
    rng = np.random.default_rng(0)
    y, score = _columns("auroc", 100_000, rng)
    began = time.perf_counter()
    values = bootstrap_values(resolve_metric("auroc"), y, score, seed=1)
    with capsys.disabled():
        print(
            f"\nauroc bootstrap, {RESAMPLES} resamples of 100k rows: "
            f"{time.perf_counter() - began:.2f} s"
        )
    assert values.shape == (RESAMPLES,)
