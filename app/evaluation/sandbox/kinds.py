"""What a sandboxed run is asked for and what it answers: modes, limits, model and output kinds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np


class SandboxMode(StrEnum):
    BUBBLEWRAP = "bubblewrap"
    UNSHARE = "unshare"
    PROCESS = "process"
    NONE = "none"


@dataclass(frozen=True)
class SandboxInfo:
    mode: SandboxMode
    isolated: bool
    detail: str


@dataclass(frozen=True)
class SandboxLimits:
    wall_seconds: float = 300.0
    memory_mb: int = 2048
    cpu_seconds: int = 600
    max_processes: int = 64
    max_open_files: int = 256
    max_output_bytes: int = 256 * 2**20
    # The sandbox's private /tmp lives in memory; this caps it (and the largest file written there).
    tmp_bytes: int = 64 * 2**20


class OutputKind(StrEnum):
    PREDICT = "predict"
    SCORE = "score"


class ModelKind(StrEnum):
    PICKLE = "pickle"
    JOBLIB = "joblib"
    MLFLOW = "mlflow"


@dataclass(frozen=True)
class SandboxResult:
    values: np.ndarray
    seconds: float
    sandbox: SandboxInfo
    # Where the time went, for reports only: `features`, `load` and `predict` as the sandboxed
    # runner measured them (untrusted), and `startup`, how long the job waited for its sandbox to
    # come up (not part of `seconds`, which runs from the moment the job was handed over).
    stages: Mapping[str, float] = field(default_factory=dict)
