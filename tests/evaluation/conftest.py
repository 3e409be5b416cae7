"""Real sandboxes, a benchmark's features on disk, and models (honest and hostile) to run in them.

The sandbox modes are probed for real; a mode this host cannot run is skipped with the probe's
reason, except bubblewrap under CI (`CI=true`), where its absence is a failure.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
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
from tests.support.evaluation import (
    DTYPES,
    LIMITS,
    ROWS,
    Features,
    HostileModel,
    Run,
    describe,
    hostile_pickle,
    sandbox_processes,
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


@pytest.fixture
def hostile_model(tmp_path: Path) -> HostileModel:
    def make(code: str) -> Path:
        path = tmp_path / f"hostile-{len(list(tmp_path.iterdir()))}.pkl"
        path.write_bytes(hostile_pickle(code))
        return path

    return make


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
            raise AssertionError(f"sandbox processes left running: {describe(left)}")
        finally:
            sandbox.keep_warm(True)

    return check
