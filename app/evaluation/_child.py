"""The sandboxed side of an evaluation: load one model, run it on the features, return the values.

This file runs inside the sandbox as a script (`python -I runner.py`), never as part of the service:
it imports nothing of the service, only the standard library, numpy and pandas, and whatever the
model itself needs (scikit-learn through unpickling, joblib, mlflow). Everything from the moment
the model is loaded is the model author's code; this process is trusted with nothing, and the
parent validates everything it sends.

Protocol: `runner.py JOB_JSON RESULT_FD`. The runner imports the numeric libraries, writes
`ready` to RESULT_FD and waits for `go` on stdin (so a sandbox can be started ahead of its job);
then it reads the job description and writes to RESULT_FD one JSON line and, on success, the
values as a `.npy` stream (`numpy.save(..., allow_pickle=False)`). On failure the JSON line carries
the reason and a message.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
import time
import traceback
from typing import Any

# Reasons this process can report itself; the parent adds the ones only it can see (timeout,
# output_too_large by size, no_output, killed) and the checks of the values.
LOAD_FAILED = "load_failed"
RAISED = "raised"
BAD_OUTPUT = "bad_output"
MEMORY = "memory"
OUTPUT_TOO_LARGE = "output_too_large"

MESSAGE_CHARS = 4000


class Refusal(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _describe(exc: BaseException) -> str:
    text = "".join(traceback.format_exception(exc))
    return text[-MESSAGE_CHARS:]


def _reason_for(exc: BaseException, default: str) -> str:
    if isinstance(exc, MemoryError):
        return MEMORY
    if isinstance(exc, OSError) and exc.errno in (errno.EFBIG, errno.ENOSPC, errno.EDQUOT):
        return OUTPUT_TOO_LARGE
    return default


def _read_features(path: str, dtypes: dict[str, str]) -> Any:
    import pandas as pd

    bools = [name for name, dtype in dtypes.items() if dtype == "bool"]
    parse = {name: ("object" if dtype == "bool" else dtype) for name, dtype in dtypes.items()}
    frame = pd.read_csv(path, dtype=parse, keep_default_na=True)
    for name in bools:
        # CSV spells booleans as text; map the usual spellings exactly, refuse anything else.
        mapped = frame[name].map(
            lambda v: {"true": True, "false": False, "1": True, "0": False}.get(str(v).lower())
        )
        if mapped.isna().any():
            raise Refusal(LOAD_FAILED, f"feature column {name!r} is not boolean")
        frame[name] = mapped.astype(bool)
    return frame[list(dtypes)]


def _load_model(path: str, kind: str) -> Any:
    if kind == "pickle":
        import pickle

        with open(path, "rb") as fh:
            return pickle.load(fh)  # noqa: S301 - the reason this runs in a sandbox
    if kind == "joblib":
        import joblib

        return joblib.load(path)
    if kind == "mlflow":
        import mlflow.pyfunc

        return mlflow.pyfunc.load_model(path)
    raise Refusal(LOAD_FAILED, f"unknown model kind {kind!r}")


def _call(model: Any, kind: str, output: str, features: Any) -> Any:
    import numpy as np

    if output == "predict":
        return model.predict(features)
    target = model
    if kind == "mlflow":
        # A scikit-learn model inside an MLflow archive scores like a bare one; anything else
        # (a custom python_model) answers through pyfunc predict.
        try:
            raw = model.get_raw_model()
        except Exception:
            raw = None
        if raw is not None and callable(getattr(raw, "predict_proba", None)):
            target = raw
        else:
            return model.predict(features)
    proba = getattr(target, "predict_proba", None)
    if callable(proba):
        values = np.asarray(proba(features))
        if values.ndim == 2 and values.shape[1] == 2:
            return values[:, 1]
        if values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1):
            return values.reshape(-1)
        raise Refusal(
            BAD_OUTPUT,
            f"predict_proba returned shape {values.shape}; a score needs a binary classifier",
        )
    decision = getattr(target, "decision_function", None)
    if callable(decision):
        return decision(features)
    return target.predict(features)


def _to_array(values: Any, output: str) -> Any:
    import numpy as np

    if hasattr(values, "to_numpy"):  # pandas Series / DataFrame
        values = values.to_numpy()
    array = np.asarray(values)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array.reshape(-1)
    if array.ndim != 1:
        raise Refusal(BAD_OUTPUT, f"the model returned an array of shape {array.shape}")
    if output == "score" or array.dtype.kind in "biuf":
        try:
            return array.astype(np.float64)
        except (TypeError, ValueError) as e:
            raise Refusal(
                BAD_OUTPUT, f"scores must be numbers, got {array.dtype}: {str(e)[:200]}"
            ) from e
    if array.dtype.kind in "US":
        return array.astype(str)
    if array.dtype.kind == "O":
        if not all(isinstance(v, str | int | float | bool | np.generic) for v in array.tolist()):
            raise Refusal(BAD_OUTPUT, "predictions must be numbers or strings")
        return np.array([str(v) for v in array.tolist()], dtype=str)
    raise Refusal(BAD_OUTPUT, f"predictions of dtype {array.dtype} are not supported")


def _send(out: Any, header: dict[str, Any], array: Any = None) -> None:
    out.write(json.dumps(header).encode() + b"\n")
    if array is not None:
        import io

        import numpy as np

        # numpy writes arrays to real files with tofile(), which a pipe cannot take.
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        out.write(buffer.getbuffer())
    out.flush()


def _warm_up() -> None:
    """Import what most models need while waiting for the job (the service's own runtime only)."""
    import numpy  # noqa: F401
    import pandas

    try:
        import joblib  # noqa: F401
        import sklearn.ensemble
        import sklearn.linear_model
        import sklearn.pipeline
        import sklearn.preprocessing
        import sklearn.tree
    except ImportError:
        return
    with contextlib.suppress(Exception):
        # scikit-learn imports what it needs for DataFrames on the first call; make that call here,
        # on a toy model of our own, not on the clock of the model under evaluation.
        frame = pandas.DataFrame({"a": [0.0, 1.0, 2.0, 3.0], "b": [1, 0, 1, 0]})
        toy = sklearn.linear_model.LogisticRegression().fit(frame, [0, 0, 1, 1])
        toy.predict_proba(frame)
        toy.predict(frame)


def main(argv: list[str]) -> int:
    out = os.fdopen(int(argv[2]), "wb", buffering=1 << 16)
    _warm_up()
    out.write(b"ready\n")
    out.flush()
    # The job is there when the parent says so; end of input means it no longer needs this one.
    if sys.stdin.buffer.readline().strip() != b"go":
        return 0
    with open(argv[1], encoding="utf-8") as fh:
        job = json.load(fh)
    stage, reason_default = "features", LOAD_FAILED
    clock = time.perf_counter
    seconds: dict[str, float] = {}
    try:
        mark = clock()
        features = _read_features(job["features"], job["dtypes"])
        seconds["features"], mark = clock() - mark, clock()
        stage = "load"
        model = _load_model(job["model"], job["kind"])
        seconds["load"], mark = clock() - mark, clock()
        stage, reason_default = "predict", RAISED
        values = _call(model, job["kind"], job["output"], features)
        array = _to_array(values, job["output"])
        seconds["predict"] = clock() - mark
    except Refusal as refusal:
        _send(out, {"status": "error", "reason": refusal.reason, "message": refusal.message})
        return 1
    except BaseException as exc:  # the model's own code: anything at all may come out of it
        message = f"while {'loading the model' if stage == 'load' else stage}:\n{_describe(exc)}"
        reason = _reason_for(exc, reason_default)
        _send(out, {"status": "error", "reason": reason, "message": message})
        return 1
    _send(out, {"status": "ok", "rows": int(array.shape[0]), "seconds": seconds}, array)
    return 0


if __name__ == "__main__":
    code = main(sys.argv)
    sys.stdout.flush()
    sys.stderr.flush()
    # Straight out: tearing down an interpreter with the numeric libraries loaded takes longer
    # than the evaluation itself, and there is nothing here to clean up.
    os._exit(code)
