"""Real sandboxes, a benchmark's features on disk, and models (honest and hostile) to run in them.

The sandbox modes are probed for real; a mode this host cannot run is skipped with the probe's
reason, except bubblewrap under CI (`CI=true`), where its absence is a failure.
"""

from __future__ import annotations

import os
import pickle
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from app.evaluation import sandbox
from app.evaluation.sandbox import (
    ModelKind,
    OutputKind,
    SandboxInfo,
    SandboxLimits,
    SandboxMode,
    SandboxResult,
    detect_sandbox,
    run_model,
)

ROWS = 240
DTYPES = {"a": "float64", "b": "float64", "c": "int64"}
# Generous for a loaded two-core machine; the hostile tests that need a short clock set their own.
# One set of limits for most tests, so that the warm spare sandbox fits the next run.
LIMITS = SandboxLimits(
    wall_seconds=60, memory_mb=2048, cpu_seconds=120, max_output_bytes=16 * 2**20
)


def _require(mode: SandboxMode) -> SandboxInfo:
    info = detect_sandbox(mode.value)
    if info.mode is not mode:
        if mode is SandboxMode.BUBBLEWRAP and os.environ.get("CI"):
            pytest.fail(f"bubblewrap must work under CI: {info.detail}")
        pytest.skip(f"the {mode} sandbox does not work here: {info.detail}")
    return info


@pytest.fixture(scope="session")
def bubblewrap() -> SandboxInfo:
    return _require(SandboxMode.BUBBLEWRAP)


@pytest.fixture(scope="session")
def unshare() -> SandboxInfo:
    return _require(SandboxMode.UNSHARE)


@pytest.fixture(scope="session")
def process() -> SandboxInfo:
    return _require(SandboxMode.PROCESS)


@pytest.fixture(scope="module", params=[SandboxMode.BUBBLEWRAP, SandboxMode.UNSHARE], ids=str)
def isolated(request: pytest.FixtureRequest) -> SandboxInfo:
    """Each isolating mode in turn (module scope: pytest groups the tests by mode, so the warm
    spare sandbox of one run fits the next)."""
    return _require(request.param)


@pytest.fixture(scope="session", autouse=True)
def _no_spare_left() -> Iterator[None]:
    yield
    sandbox.keep_warm(False)
    sandbox.keep_warm(True)


@dataclass(frozen=True)
class Features:
    path: Path
    frame: pd.DataFrame  # what the sandbox reads from `path`, read the same way
    train: pd.DataFrame
    labels: np.ndarray


@pytest.fixture(scope="session")
def features() -> Iterator[Features]:
    """A benchmark's feature columns on disk (no labels), and a training set like it."""
    folder = Path(tempfile.mkdtemp(prefix="hokusai-test-features-"))
    rng = np.random.default_rng(13)

    def frame(n: int) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "a": rng.normal(size=n),
                "b": rng.normal(size=n) * 3.0,
                "c": rng.integers(0, 5, size=n),
            }
        )

    train = frame(600)
    labels = (train["a"] + train["b"] / 3 + rng.normal(scale=0.5, size=600) > 0).astype(int)
    holdout = frame(ROWS)
    path = folder / "features.csv"
    holdout.to_csv(path, index=False)
    try:
        yield Features(path, pd.read_csv(path, dtype=DTYPES), train, labels.to_numpy())
    finally:
        shutil.rmtree(folder, ignore_errors=True)


Run = Callable[..., SandboxResult]


@pytest.fixture
def run(features: Features) -> Run:
    """Run a model file on the test features: run(path, sandbox=..., kind=, output=, limits=)."""

    def _run(
        model_path: Path,
        *,
        sandbox: SandboxInfo,
        kind: ModelKind = ModelKind.PICKLE,
        output: OutputKind = OutputKind.SCORE,
        limits: SandboxLimits = LIMITS,
        rows: int = ROWS,
    ) -> SandboxResult:
        return run_model(
            model_path=model_path,
            model_kind=kind,
            features_path=features.path,
            dtypes=DTYPES,
            output=output,
            expected_rows=rows,
            limits=limits,
            sandbox=sandbox,
        )

    return _run


# A hostile model is a pickle whose loading runs `code` (which must bind `model`); whatever the
# code's classes do in predict runs inside the sandbox too. `rows(X, items)` lets a model report
# what it saw as its string predictions, so a test can check what it could not see.
PRELUDE = """
import os, sys, numpy as np
def rows(X, items):
    items = [str(i)[:300] for i in items][: len(X)]
    return np.array(items + [""] * (len(X) - len(items)), dtype=str)
"""


class _Payload:
    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple[object, tuple[str, dict[str, object]]]:
        expr = f"(lambda g: (exec({self.code!r}, g), g['model'])[1])({{}})"
        return (eval, (expr, {}))


HostileModel = Callable[[str], Path]


@pytest.fixture
def hostile_model(tmp_path: Path) -> HostileModel:
    def make(code: str) -> Path:
        path = tmp_path / f"hostile-{len(list(tmp_path.iterdir()))}.pkl"
        path.write_bytes(pickle.dumps(_Payload(PRELUDE + code)))
        return path

    return make


def sandbox_processes() -> dict[int, list[int]]:
    """Live (not zombie) processes of this interpreter running as a sandbox's own uid, by uid.

    Other checkouts on the same machine may run sandboxes too: only ours count."""
    found: dict[int, list[int]] = {}
    ours = sys.executable.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            if not (entry / "cmdline").read_bytes().startswith(ours + b"\0"):
                continue
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        uid = int(fields.get("Uid", "0").split()[0])
        state = fields.get("State", "").strip()[:1]
        if sandbox.UID_BASE <= uid < sandbox.UID_BASE + sandbox.UID_SPAN and state != "Z":
            found.setdefault(uid, []).append(int(entry.name))
    return found


def _describe(found: dict[int, list[int]]) -> list[str]:
    lines = []
    for pids in found.values():
        for pid in pids:
            try:
                status = Path(f"/proc/{pid}/status").read_text().splitlines()
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            keep = [line for line in status if line.split(":")[0] in {"State", "PPid", "NSpid"}]
            lines.append(f"{pid} {' '.join(keep)} {cmdline[:120]!r}")
    return lines


@pytest.fixture
def assert_nothing_left() -> Callable[[], None]:
    """Check that no sandbox process outlived its run (the one warm spare aside)."""

    def check() -> None:
        sandbox.keep_warm(False)  # the spare is a sandbox process by design
        try:
            left: dict[int, list[int]] = {}
            for _ in range(40):
                left = sandbox_processes()
                if not left:
                    return
                time.sleep(0.05)
            raise AssertionError(f"sandbox processes left running: {_describe(left)}")
        finally:
            sandbox.keep_warm(True)

    return check
