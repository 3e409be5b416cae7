"""What a finished sandbox said, checked before anyone uses it: why it failed, or its `.npy` values
read field by field (`allow_pickle` never comes into it) and the runner's stage timings."""

from __future__ import annotations

import io
import json
import math
import signal
from collections.abc import Mapping
from typing import Any

import numpy as np

from app.evaluation.sandbox.failures import REASONS, SandboxFailure
from app.evaluation.sandbox.kinds import OutputKind, SandboxLimits
from app.evaluation.sandbox.supervisor import Outcome

# The runner's JSON line is a few kB; a longer first line is not the runner's.
HEADER_BYTES = 64 * 1024


def read_result(
    outcome: Outcome, limits: SandboxLimits, output: OutputKind, expected_rows: int
) -> tuple[np.ndarray, dict[str, float]]:
    """The values and the runner's stage timings; `SandboxFailure` when the run did not work."""
    failure = failure_from(outcome, limits)
    if failure is not None:
        raise failure
    status, body = _answer(outcome)
    values = _values_from(body, output, expected_rows)
    return values, _stages_from(status)


def failure_from(outcome: Outcome, limits: SandboxLimits) -> SandboxFailure | None:
    log = outcome.log_tail.decode("utf-8", errors="replace")
    if outcome.too_much:
        return SandboxFailure("output_too_large", outcome.too_much)
    if not outcome.started:
        # Nothing of the model has run yet: the sandbox itself did not come up.
        return SandboxFailure(
            "killed", f"the sandbox did not start (exit status {outcome.returncode})\n{log}"
        )
    if outcome.timed_out:
        return SandboxFailure(
            "timeout", f"still running after {limits.wall_seconds:g} seconds\n{log}"
        )
    status, _ = _answer(outcome)
    if status.get("status") == "error":
        reason = str(status.get("reason"))
        message = str(status.get("message", ""))
        if reason not in REASONS:
            reason = "raised"
        return SandboxFailure(reason, message or log)
    if status.get("status") == "ok" and outcome.returncode == 0:
        return None
    return _exit_failure(outcome, limits, log)


def _exit_failure(outcome: Outcome, limits: SandboxLimits, log: str) -> SandboxFailure:
    """The failure of a run that ended without the runner's `ok`: a signal, or no usable answer."""
    code = outcome.returncode
    if code is not None and code < 0:
        code = 128 - code
    if code is not None and code > 128:
        signo = code - 128
        if signo == signal.SIGXCPU:
            return SandboxFailure(
                "timeout", f"used more than {limits.cpu_seconds} seconds of CPU time\n{log}"
            )
        try:
            name = signal.Signals(signo).name
        except ValueError:
            name = f"signal {signo}"
        return SandboxFailure("killed", f"the model's process was killed by {name}\n{log}")
    if not outcome.result:
        return SandboxFailure(
            "no_output", f"the model exited (status {code}) without output\n{log}"
        )
    return SandboxFailure("bad_output", f"the model's process sent an unreadable answer\n{log}")


def _answer(outcome: Outcome) -> tuple[dict[str, Any], memoryview]:
    """The result channel's JSON line (an empty dict when there is none) and what follows it."""
    data = memoryview(outcome.result)
    end = outcome.result.find(b"\n", 0, HEADER_BYTES)
    if end < 0:
        return {}, data[:0]
    try:
        parsed = json.loads(bytes(data[:end]))
    except (ValueError, RecursionError):
        parsed = None
    return (parsed if isinstance(parsed, dict) else {}), data[end + 1 :]


def _values_from(body: memoryview, output: OutputKind, expected_rows: int) -> np.ndarray:
    """The `.npy` stream checked field by field before a byte of it becomes an array: numpy's own
    reader would allocate whatever size the header claims."""
    head = io.BytesIO(bytes(body[: 16 * 1024]))
    try:
        version = np.lib.format.read_magic(head)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(head)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(head)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as e:
        raise SandboxFailure("bad_output", f"the values could not be read: {e}") from None
    if len(shape) != 1:
        raise SandboxFailure("bad_output", f"the values have shape {shape}, not one per row")
    if shape[0] != expected_rows:
        raise SandboxFailure(
            "wrong_row_count", f"the model returned {shape[0]} values for {expected_rows} rows"
        )
    if dtype.hasobject or not (dtype.kind == "U" or (dtype.kind == "f" and dtype.itemsize == 8)):
        raise SandboxFailure("bad_output", f"values of dtype {dtype} are not supported")
    if output is OutputKind.SCORE and dtype.kind != "f":
        raise SandboxFailure("bad_output", f"scores must be numbers, got {dtype}")
    offset = head.tell()
    if len(body) - offset != expected_rows * dtype.itemsize:
        raise SandboxFailure("bad_output", "the values are cut short or followed by other data")
    values = np.frombuffer(body, dtype=dtype, count=expected_rows, offset=offset)
    if dtype.kind == "f":
        values = values.astype(np.float64)  # a copy, in native byte order
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            raise SandboxFailure("non_finite", f"{bad} of {expected_rows} values are not finite")
        return values
    return values.copy()


def _stages_from(status: Mapping[str, Any]) -> dict[str, float]:
    reported = status.get("seconds")
    if not isinstance(reported, dict):
        return {}
    return {
        str(k)[:32]: float(v)
        for k, v in list(reported.items())[:8]
        if isinstance(v, int | float) and math.isfinite(v)
    }
