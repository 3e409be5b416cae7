"""Watching a started sandbox: its start, its job's wall clock, its output and result read with
caps, and killing its whole process tree when it is over."""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from app.evaluation.sandbox.kinds import SandboxLimits

LOG_TAIL_BYTES = 16 * 1024
READ_CHUNK = 1 << 16
KILL_SWEEPS = 50
READY = b"ready\n"
# How long a sandbox may take to start (interpreter, imports) before its job's clock starts.
STARTUP_SECONDS = 120.0
# After the sandboxed process exits, how long to wait for anything it left holding its pipes.
DRAIN_SECONDS = 1.0


@dataclass
class Outcome:
    returncode: int | None = None
    started: bool = False
    go_at: float = 0.0
    ended_at: float = 0.0
    timed_out: bool = False
    too_much: str = ""
    log_bytes: int = 0
    log_tail: bytearray = field(default_factory=bytearray)
    result: bytearray = field(default_factory=bytearray)


def supervise(
    proc: subprocess.Popen[bytes],
    result_fd: int,
    limits: SandboxLimits,
    uid: int | None,
    *,
    go: Callable[[], None],
    sweep: bool,
) -> Outcome:
    """Wait for the sandbox to be ready, start its job, then read its output and its result with
    caps until both close or time is up. The wall clock of the job starts at `go`."""
    outcome = Outcome()
    deadline = time.monotonic() + STARTUP_SECONDS
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout.fileno(), selectors.EVENT_READ, "log")
    selector.register(result_fd, selectors.EVENT_READ, "result")
    try:
        deadline = _pump(proc, selector, outcome, limits, deadline=deadline, go=go)
        if not outcome.timed_out and not outcome.too_much:
            try:
                outcome.returncode = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                outcome.timed_out = True
    finally:
        selector.close()
        if outcome.returncode is None:
            kill(proc, uid)
        elif uid is not None and sweep:
            # Anything the model left running in the background goes too. (In a pid namespace
            # that is automatic: its processes die with it.)
            sweep_uid(uid)
        if outcome.returncode is None:
            outcome.returncode = proc.returncode
    return outcome


def _pump(
    proc: subprocess.Popen[bytes],
    selector: selectors.BaseSelector,
    outcome: Outcome,
    limits: SandboxLimits,
    *,
    deadline: float,
    go: Callable[[], None],
) -> float:
    """Read both channels until they close, time is up or a cap is passed; the last deadline."""
    open_fds = 2
    while open_fds:
        now = time.monotonic()
        if not outcome.started and outcome.result.startswith(READY):
            del outcome.result[: len(READY)]
            outcome.started, outcome.go_at = True, now
            deadline = now + limits.wall_seconds
            go()
        if proc.poll() is not None and outcome.ended_at == 0.0:
            outcome.ended_at = now
            deadline = min(deadline, now + DRAIN_SECONDS)
        remaining = deadline - now
        if remaining <= 0:
            outcome.timed_out = outcome.ended_at == 0.0
            break
        for key, _ in selector.select(timeout=min(remaining, 0.25)):
            chunk = os.read(key.fd, READ_CHUNK)
            if not chunk:
                selector.unregister(key.fd)
                open_fds -= 1
                continue
            _take(outcome, key.data, chunk, limits)
            if outcome.too_much:
                break
        if outcome.too_much:
            break
    return deadline


def _take(outcome: Outcome, channel: str, chunk: bytes, limits: SandboxLimits) -> None:
    """Keep a chunk of the log (its tail only) or of the result, noting when a cap is passed."""
    if channel == "log":
        outcome.log_bytes += len(chunk)
        outcome.log_tail += chunk
        del outcome.log_tail[:-LOG_TAIL_BYTES]
        if outcome.log_bytes > limits.max_output_bytes:
            outcome.too_much = f"the model printed more than {limits.max_output_bytes} bytes"
    else:
        outcome.result += chunk
        if len(outcome.result) > limits.max_output_bytes + 4096:
            outcome.too_much = f"the model's output is larger than {limits.max_output_bytes} bytes"


def sweep_uid(uid: int) -> None:
    """Kill every process of the sandbox's own uid, wherever it went (setsid, daemonised)."""
    code = (
        "import os, sys\n"
        f"os.setgroups([]); os.setgid({uid}); os.setuid({uid})\n"
        f"for _ in range({KILL_SWEEPS}):\n"
        "    try:\n"
        "        os.kill(-1, 9)\n"
        "    except ProcessLookupError:\n"
        "        sys.exit(0)\n"
    )
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(  # noqa: S603 - our own interpreter with fixed code
            [sys.executable, "-I", "-S", "-c", code],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=10,
            check=False,
        )


def kill(proc: subprocess.Popen[bytes], uid: int | None) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if uid is not None:
        sweep_uid(uid)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
