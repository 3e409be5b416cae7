"""The warm spare: one sandbox started ahead of the next evaluation."""

from __future__ import annotations

import atexit
import os
import threading

from app.evaluation.sandbox.failures import SandboxFailure
from app.evaluation.sandbox.kinds import SandboxInfo, SandboxLimits, SandboxMode
from app.evaluation.sandbox.launcher import LAUNCHER, Sandbox, discard, start_sandbox_here


class Spares:
    """At most one sandbox started ahead of time, so the next evaluation skips the interpreter's
    start and the imports of numpy, pandas and scikit-learn. It holds only the runtime's own
    modules until its job arrives, and exits when this process does (its stdin closes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spare: Sandbox | None = None
        self._enabled = True
        # Bumped when spares are switched off, so a spare still starting then is thrown away.
        self._generation = 0

    def take(self, info: SandboxInfo, limits: SandboxLimits) -> Sandbox | None:
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is None:
            return None
        fits = spare.key == (info.mode, limits) and spare.owner == os.getpid()
        if fits and spare.proc.poll() is None:
            return spare
        discard(spare)
        return None

    def refill(self, info: SandboxInfo, limits: SandboxLimits) -> None:
        with self._lock:
            if not self._enabled:
                return
            generation = self._generation
        try:
            fresh = start_sandbox_here(info, limits)  # runs on the launcher's thread
        except (SandboxFailure, OSError):
            return
        with self._lock:
            if self._enabled and generation == self._generation:
                old, self._spare = self._spare, fresh
            else:
                old = fresh
        if old is not None:
            discard(old)

    def switch(self, enabled: bool) -> None:
        with self._lock:
            self._enabled = enabled
            if not enabled:
                self._generation += 1
        if not enabled:
            self.close()

    def close(self) -> None:
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            discard(spare)

    def forget(self) -> None:
        """After fork(): the spare belongs to the parent process."""
        self._spare = None
        self._lock = threading.Lock()


SPARES = Spares()
atexit.register(SPARES.close)
os.register_at_fork(after_in_child=SPARES.forget)


def keep_warm(enabled: bool) -> None:
    """Keep one sandbox started ahead of the next evaluation (the default), or none.

    A spare costs one idle interpreter with the numeric libraries imported (about 150 MB) and saves
    the next evaluation their start-up, typically 0.5 to 2 seconds.
    """
    SPARES.switch(enabled)


def prewarm(sandbox: SandboxInfo, limits: SandboxLimits) -> None:
    """Start the spare sandbox now (at start-up), so the first evaluation is warm too."""
    if sandbox.mode is not SandboxMode.NONE:
        LAUNCHER.post(SPARES.refill, sandbox, limits)
