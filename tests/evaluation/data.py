"""Builders for evaluation tests: a benchmark CSV, real scikit-learn models, hostile models."""

from __future__ import annotations

import csv
import io
import pickle
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
from sklearn.linear_model import LinearRegression, LogisticRegression

FEATURES = ("age", "bmi", "dose", "score")


@dataclass(frozen=True)
class Dataset:
    """Training rows and held-out rows of one synthetic problem."""

    x_train: npt.NDArray[np.float64]
    y_train: npt.NDArray[np.float64]
    x_test: npt.NDArray[np.float64]
    y_test: npt.NDArray[np.float64]


def classification(*, rows: int = 400, seed: int = 7) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows * 2, len(FEATURES))).round(4)
    logits = x @ np.array([1.2, -0.8, 0.5, 0.0]) + rng.normal(scale=1.0, size=rows * 2)
    y = (logits > 0).astype(np.float64)
    return Dataset(x[:rows], y[:rows], x[rows:], y[rows:])


def regression(*, rows: int = 300, seed: int = 3) -> Dataset:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows * 2, len(FEATURES))).round(4)
    y = (x @ np.array([2.0, -1.0, 0.5, 0.0]) + rng.normal(scale=0.5, size=rows * 2)).round(4)
    return Dataset(x[:rows], y[:rows], x[rows:], y[rows:])


def benchmark_csv(data: Dataset, *, label: str = "y_true", label_first: bool = False) -> bytes:
    """The held-out rows as a CSV with a header: the features and the label column."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = [*FEATURES, label]
    if label_first:
        header = [label, *FEATURES]
    writer.writerow(header)
    for features, label_value in zip(data.x_test, data.y_test, strict=True):
        cells = [repr(float(v)) for v in features]
        label_cell = repr(float(label_value))
        if float(label_value).is_integer():
            label_cell = str(int(label_value))
        writer.writerow([label_cell, *cells] if label_first else [*cells, label_cell])
    return out.getvalue().encode()


def frame(x: npt.NDArray[np.float64]) -> Any:
    import pandas as pd

    return pd.DataFrame(x, columns=list(FEATURES))


def logistic(data: Dataset, *, c: float = 1.0) -> LogisticRegression:
    model = LogisticRegression(C=c)
    model.fit(frame(data.x_train), data.y_train)
    return model


def linear(data: Dataset) -> LinearRegression:
    model = LinearRegression()
    model.fit(frame(data.x_train), data.y_train)
    return model


def pickled(model: object) -> bytes:
    return pickle.dumps(model, protocol=5)


class _Reduce:
    """A pickle whose loading runs `code` (what every hostile upload is)."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (exec, (self.code,))


def hostile_pickle(code: str) -> bytes:
    """A pickle that runs `code` when it is loaded; the loaded object is None."""
    return pickle.dumps(_Reduce(code), protocol=5)


async def put_benchmark(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    token_id: str,
    content: bytes,
    *,
    label_column: str | None = None,
    filename: str = "holdout.csv",
) -> httpx.Response:
    data = {"label_column": label_column} if label_column is not None else {}
    return await client.put(
        f"/tokens/{token_id}/benchmark",
        data=data,
        files={"dataset": (filename, content, "text/csv")},
        headers=headers,
    )


class _Eval:
    def __init__(self, expression: str) -> None:
        self.expression = expression

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (eval, (self.expression,))


def model_from_expression(predict: str, *, proba: str | None = None) -> bytes:
    """A pickle of a self-contained object whose `predict(X)` is the lambda body `predict`.

    Nothing from the tests is needed to load it, so it loads inside the sandbox too.
    """
    methods = f"'predict': lambda self, X: {predict}"
    if proba is not None:
        methods += f", 'predict_proba': lambda self, X: {proba}"
    return pickle.dumps(_Eval(f"type('Model', (), {{{methods}}})()"), protocol=5)
