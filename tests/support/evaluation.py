"""What the evaluation sandbox's tests share: the features, the limits, hostile model pickles and
a look at the processes the sandboxes leave behind."""

from __future__ import annotations

import pickle
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from app.evaluation.sandbox import SandboxLimits, SandboxResult
from app.evaluation.sandbox.limits import UID_BASE, UID_SPAN

ROWS = 240
DTYPES = {"a": "float64", "b": "float64", "c": "int64"}
# Generous for a loaded two-core machine; the hostile tests that need a short clock set their own.
# One set of limits for most tests, so that the warm spare sandbox fits the next run.
LIMITS = SandboxLimits(
    wall_seconds=60, memory_mb=2048, cpu_seconds=120, max_output_bytes=16 * 2**20
)


@dataclass(frozen=True)
class Features:
    path: Path
    frame: pd.DataFrame  # what the sandbox reads from `path`, read the same way
    train: pd.DataFrame
    labels: np.ndarray


Run = Callable[..., SandboxResult]


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


def hostile_pickle(code: str) -> bytes:
    """A pickle whose loading runs PRELUDE and `code`, and gives `model` as the loaded object."""
    return pickle.dumps(_Payload(PRELUDE + code))


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
        if UID_BASE <= uid < UID_BASE + UID_SPAN and state != "Z":
            found.setdefault(uid, []).append(int(entry.name))
    return found


def describe(found: dict[int, list[int]]) -> list[str]:
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
