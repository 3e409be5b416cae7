"""Starting a sandbox: its job folder and process, started from one long-lived thread, waiting on
its stdin for its job; and discarding it afterwards."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from app.evaluation.sandbox.failures import SandboxFailure
from app.evaluation.sandbox.jobs import new_job_folder, remove_job_folder
from app.evaluation.sandbox.kinds import SandboxInfo, SandboxLimits, SandboxMode
from app.evaluation.sandbox.launch import Launch, plan
from app.evaluation.sandbox.supervisor import kill

_T = TypeVar("_T")


@dataclass
class Sandbox:
    """One started sandbox, waiting on its stdin for its job. Each one runs one model only."""

    key: tuple[SandboxMode, SandboxLimits]
    job: Path
    proc: subprocess.Popen[bytes]
    launch: Launch
    read_end: int
    result_fd: int  # the result channel's number inside the sandbox
    owner: int = field(default_factory=os.getpid)


class Launcher:
    """The one long-lived thread that starts every sandbox.

    bubblewrap's `--die-with-parent` (PR_SET_PDEATHSIG) fires when the *thread* that started it
    ends, not the process. A sandbox started from a short-lived thread (a spare started in the
    background, a worker thread of a pool that shrinks) would be killed under its model's feet;
    a thread that lives as long as the process does not end before its sandboxes.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

    def _get(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="sandbox-launcher")
            return self._executor

    def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        return self._get().submit(fn, *args).result()

    def post(self, fn: Callable[..., object], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # shutting down: nothing to start any more
            self._get().submit(fn, *args)

    def forget(self) -> None:
        """After fork(): the parent's thread does not exist here."""
        self._lock = threading.Lock()
        self._executor = None


LAUNCHER = Launcher()
os.register_at_fork(after_in_child=LAUNCHER.forget)


def start_sandbox(info: SandboxInfo, limits: SandboxLimits) -> Sandbox:
    return LAUNCHER.run(start_sandbox_here, info, limits)


def start_sandbox_here(info: SandboxInfo, limits: SandboxLimits) -> Sandbox:
    """Start a sandbox from the calling thread (the launcher's: see `Launcher`)."""
    job = new_job_folder()
    try:
        launch = plan(info, job=job, limits=limits, python_argv=[])
        inside = launch.job_inside
        read_end, write_end = os.pipe()
        argv = [*launch.argv, f"{inside}/runner.py", f"{inside}/job.json", str(write_end)]
        try:
            proc = subprocess.Popen(  # noqa: S603 - argv built by this module from fixed tools
                argv,
                env=launch.env,
                cwd=launch.cwd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                # The result channel keeps its number through bwrap, unshare, prlimit, setpriv.
                pass_fds=(write_end,),
                start_new_session=True,
            )
        except OSError as e:
            os.close(read_end)
            raise SandboxFailure("killed", f"the sandbox could not start: {e}") from None
        finally:
            os.close(write_end)
    except BaseException:
        remove_job_folder(job)
        raise
    return Sandbox((info.mode, limits), job, proc, launch, read_end, write_end)


def discard(box: Sandbox) -> None:
    if box.owner == os.getpid():
        if box.proc.poll() is None:
            kill(box.proc, box.launch.uid)
        for stream in (box.proc.stdin, box.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        with contextlib.suppress(OSError):
            os.close(box.read_end)
    remove_job_folder(box.job)
