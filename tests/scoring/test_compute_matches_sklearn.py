"""Property tests: every computable metric agrees with scikit-learn to 1e-9 on generated data.

The CSV reader's chunk and block sizes are shrunk for this module so that generated files of a
few dozen rows still cross chunk and read-block boundaries.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

import app.scoring.compute as compute_module
import app.scoring.lines as lines_module
from app.errors import InvalidPredictions
from app.scoring import compute_from_predictions, resolve_metric

TOLERANCE = 1e-9

SETTINGS = settings(max_examples=50, deadline=None)

Number = int | float
Rows = list[tuple[Number, Number]]


@pytest.fixture(scope="module", autouse=True)
def small_chunks() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(compute_module, "_CHUNK_ROWS", 7)
        mp.setattr(lines_module, "_READ_CHARS", 13)
        yield


@pytest.fixture(scope="module")
def csv_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Module-scoped so hypothesis can reuse it across examples; each example overwrites the file.
    return tmp_path_factory.mktemp("sklearn") / "predictions.csv"


def cell(x: Number) -> str:
    # repr round-trips a float exactly, so both sides see the same numbers.
    return str(x) if isinstance(x, int) else repr(x)


def write(path: Path, header: Sequence[str], rows: Rows) -> Path:
    lines = [",".join(header), *(f"{cell(a)},{cell(b)}" for a, b in rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def columns(rows: Rows) -> tuple[np.ndarray, np.ndarray]:
    first, second = zip(*rows, strict=True)
    return np.array(first, dtype=np.float64), np.array(second, dtype=np.float64)


def reference(fn: Callable[[], float]) -> float:
    with warnings.catch_warnings():
        # sklearn warns about zero_division and single-class inputs; the values are what matter.
        warnings.simplefilter("ignore")
        return float(fn())


def assert_agrees(name: str, path: Path, expected: float) -> None:
    spec = resolve_metric(name)
    if not math.isfinite(expected):
        with pytest.raises(InvalidPredictions):
            compute_from_predictions(spec, path)
        return
    ours = compute_from_predictions(spec, path)
    assert math.isclose(ours, expected, rel_tol=TOLERANCE, abs_tol=TOLERANCE), (ours, expected)


binary = st.sampled_from([0, 1])
labels = st.integers(min_value=-3, max_value=5)
probabilities = st.one_of(
    st.sampled_from([0.0, 1.0, 0.5, 0.25, 1e-300, 5e-324, 1 - 1e-16, 1e-17]),
    st.floats(min_value=0.0, max_value=1.0),
)
# Few distinct values make ties common, which is where AUROC implementations differ.
scores = st.one_of(
    st.sampled_from([-1.0, 0.0, 0.25, 0.5, 1.0, 2.0]),
    st.integers(min_value=-3, max_value=3),
    st.floats(min_value=-1e6, max_value=1e6),
)
reals = st.one_of(
    st.integers(min_value=-100, max_value=100),
    st.floats(min_value=-1e6, max_value=1e6),
)


def pairs(first: st.SearchStrategy[Number], second: st.SearchStrategy[Number]) -> st.SearchStrategy:
    return st.lists(st.tuples(first, second), min_size=1, max_size=40)


class TestAccuracyMatchesSklearn:
    @SETTINGS
    @given(rows=pairs(labels, labels))
    def test_matches_accuracy_score(self, csv_path: Path, rows: Rows) -> None:
        y_true, y_pred = columns(rows)
        path = write(csv_path, ["y_true", "y_pred"], rows)
        assert_agrees("accuracy", path, reference(lambda: skm.accuracy_score(y_true, y_pred)))


class TestAurocMatchesSklearn:
    @SETTINGS
    @given(rows=pairs(binary, scores))
    def test_matches_roc_auc_score_with_ties(self, csv_path: Path, rows: Rows) -> None:
        y_true, y_score = columns(rows)
        path = write(csv_path, ["y_true", "y_score"], rows)
        if len(set(y_true.tolist())) < 2:
            # sklearn returns nan with a warning; the service refuses the file instead.
            assert math.isnan(reference(lambda: skm.roc_auc_score(y_true, y_score)))
            with pytest.raises(InvalidPredictions, match="both classes"):
                compute_from_predictions(resolve_metric("auroc"), path)
            return
        assert_agrees("auroc", path, reference(lambda: skm.roc_auc_score(y_true, y_score)))


class TestBinaryScoresMatchSklearn:
    @SETTINGS
    @given(rows=pairs(binary, binary))
    def test_matches_f1_score(self, csv_path: Path, rows: Rows) -> None:
        y_true, y_pred = columns(rows)
        path = write(csv_path, ["y_true", "y_pred"], rows)
        assert_agrees("f1", path, reference(lambda: skm.f1_score(y_true, y_pred)))

    @SETTINGS
    @given(rows=pairs(binary, binary))
    def test_matches_precision_score(self, csv_path: Path, rows: Rows) -> None:
        y_true, y_pred = columns(rows)
        path = write(csv_path, ["y_true", "y_pred"], rows)
        assert_agrees("precision", path, reference(lambda: skm.precision_score(y_true, y_pred)))

    @SETTINGS
    @given(rows=pairs(binary, binary))
    def test_matches_recall_score(self, csv_path: Path, rows: Rows) -> None:
        y_true, y_pred = columns(rows)
        path = write(csv_path, ["y_true", "y_pred"], rows)
        assert_agrees("recall", path, reference(lambda: skm.recall_score(y_true, y_pred)))


class TestLogLossMatchesSklearn:
    @SETTINGS
    @given(rows=pairs(binary, probabilities))
    def test_matches_log_loss_including_clipping(self, csv_path: Path, rows: Rows) -> None:
        y_true, y_score = columns(rows)
        path = write(csv_path, ["y_true", "y_score"], rows)
        # labels= lets sklearn score a file whose y_true holds one class; it would refuse otherwise.
        expected = reference(lambda: skm.log_loss(y_true, y_score, labels=[0, 1]))
        assert_agrees("log_loss", path, expected)


class TestRegressionMatchesSklearn:
    @SETTINGS
    @given(rows=pairs(reals, reals))
    def test_matches_mean_squared_error(self, csv_path: Path, rows: Rows) -> None:
        y_true, y_pred = columns(rows)
        path = write(csv_path, ["y_true", "y_pred"], rows)
        assert_agrees("mse", path, reference(lambda: skm.mean_squared_error(y_true, y_pred)))

    @SETTINGS
    @given(rows=pairs(reals, reals))
    def test_matches_root_mean_squared_error(self, csv_path: Path, rows: Rows) -> None:
        y_true, y_pred = columns(rows)
        path = write(csv_path, ["y_true", "y_pred"], rows)
        expected = reference(lambda: skm.root_mean_squared_error(y_true, y_pred))
        assert_agrees("rmse", path, expected)

    @SETTINGS
    @given(rows=pairs(reals, reals))
    def test_matches_mean_absolute_error(self, csv_path: Path, rows: Rows) -> None:
        y_true, y_pred = columns(rows)
        path = write(csv_path, ["y_true", "y_pred"], rows)
        assert_agrees("mae", path, reference(lambda: skm.mean_absolute_error(y_true, y_pred)))

    @SETTINGS
    @given(rows=pairs(reals, reals))
    def test_matches_r2_score(self, csv_path: Path, rows: Rows) -> None:
        y_true, y_pred = columns(rows)
        path = write(csv_path, ["y_true", "y_pred"], rows)
        spread = float(np.sum((y_true - np.mean(y_true)) ** 2))
        if bool(np.all(y_true == y_true[0])) or spread == 0:
            # sklearn returns 1.0 or 0.0 by convention here, or, when rounding makes the mean of
            # equal values differ from them, a meaningless huge negative; the service refuses.
            with pytest.raises(InvalidPredictions, match="r2 is undefined"):
                compute_from_predictions(resolve_metric("r2"), path)
            return
        assert_agrees("r2", path, reference(lambda: skm.r2_score(y_true, y_pred)))
