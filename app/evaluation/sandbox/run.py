"""Running one model on a benchmark's features in a sandbox: the job handed over, the run watched,
the values checked."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from app.evaluation.sandbox.jobs import copy_inputs
from app.evaluation.sandbox.kinds import (
    ModelKind,
    OutputKind,
    SandboxInfo,
    SandboxLimits,
    SandboxMode,
    SandboxResult,
)
from app.evaluation.sandbox.launcher import LAUNCHER, Sandbox, discard, start_sandbox
from app.evaluation.sandbox.results import read_result
from app.evaluation.sandbox.spare import SPARES
from app.evaluation.sandbox.supervisor import supervise


def run_model(
    *,
    model_path: Path,
    model_kind: ModelKind,
    features_path: Path,
    dtypes: Mapping[str, str],
    output: OutputKind,
    expected_rows: int,
    limits: SandboxLimits,
    sandbox: SandboxInfo,
) -> SandboxResult:
    """Run the model on the features in the sandbox and return its values, checked.

    Blocking (run it in a worker thread). Raises `SandboxFailure` when the model cannot be
    evaluated; `ValueError` when the call itself is wrong (no sandbox, bad dtypes).
    """
    if sandbox.mode is SandboxMode.NONE:
        raise ValueError(f"no sandbox to run the model in: {sandbox.detail}")
    model_kind, output = ModelKind(model_kind), OutputKind(output)
    checked = _check_dtypes(dtypes)
    box = SPARES.take(sandbox, limits) or start_sandbox(sandbox, limits)
    try:
        _write_job(box, Path(model_path), model_kind, Path(features_path), checked, output)
        go = _go(box)
        waiting = time.monotonic()
        outcome = supervise(
            box.proc,
            box.read_end,
            limits,
            box.launch.uid,
            go=go,
            sweep=sandbox.mode is SandboxMode.PROCESS,
        )
        seconds = time.monotonic() - outcome.go_at
        values, stages = read_result(outcome, limits, output, expected_rows)
        # Measured here: how long the job waited for its sandbox to come up (0 for a warm spare).
        stages["startup"] = max(0.0, outcome.go_at - waiting)
    finally:
        discard(box)
        # The next spare starts off the caller's path (starting a process costs a few ms).
        LAUNCHER.post(SPARES.refill, sandbox, limits)
    return SandboxResult(values=values, seconds=seconds, sandbox=sandbox, stages=stages)


def _check_dtypes(dtypes: Mapping[str, str]) -> dict[str, str]:
    allowed = {"int64", "float64", "object", "bool", "string", "str"}
    checked: dict[str, str] = {}
    for name, dtype in dtypes.items():
        if not isinstance(name, str) or not isinstance(dtype, str) or dtype not in allowed:
            raise ValueError(f"unsupported feature dtype {dtype!r} for column {name!r}")
        checked[name] = "object" if dtype in {"string", "str"} else dtype
    return checked


def _write_job(
    box: Sandbox,
    model_path: Path,
    model_kind: ModelKind,
    features_path: Path,
    dtypes: dict[str, str],
    output: OutputKind,
) -> None:
    """The model and the features copied in, and the job description the runner reads."""
    name = copy_inputs(box.job, model_path, model_kind, features_path)
    inside = box.launch.job_inside
    spec = {
        "model": f"{inside}/{name}",
        "kind": model_kind.value,
        "features": f"{inside}/features.csv",
        "dtypes": dtypes,
        "output": output.value,
    }
    (box.job / "in" / "job.json").write_text(json.dumps(spec), encoding="utf-8")
    (box.job / "in" / "job.json").chmod(0o644)


def _go(box: Sandbox) -> Callable[[], None]:
    """What starts the sandbox's job once it is ready: `go` on its stdin."""
    stdin = box.proc.stdin
    assert stdin is not None

    def go() -> None:
        try:
            stdin.write(b"go\n")
            stdin.close()
        except OSError:
            pass  # it died waiting; what it said is read next

    return go
