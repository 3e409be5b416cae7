"""The limits every sandboxed process runs under: rlimits (prlimit) and the uid and capability drop
(setpriv). The seccomp filter is installed by the runner itself (runner.py)."""

from __future__ import annotations

import math

from app.evaluation.sandbox.host import which
from app.evaluation.sandbox.kinds import SandboxLimits

# An unused, unnamed uid per run (when the service runs as root): the processes of one sandbox
# can then be counted (RLIMIT_NPROC) and killed (kill -1 as that uid) apart from everything else.
UID_BASE = 1_000_000_000
UID_SPAN = 1_000_000_000


def rlimit_argv(limits: SandboxLimits) -> list[str]:
    prlimit = which("prlimit") or "/usr/bin/prlimit"
    memory = max(64, int(limits.memory_mb)) * 2**20
    cpu = max(1, math.ceil(limits.cpu_seconds))
    return [
        prlimit,
        f"--as={memory}",
        # SIGXCPU at the soft limit, SIGKILL a little after if it is caught.
        f"--cpu={cpu}:{cpu + 2}",
        f"--nproc={max(1, int(limits.max_processes))}",
        f"--nofile={max(16, int(limits.max_open_files))}",
        f"--fsize={max(4096, int(limits.tmp_bytes))}",
        "--core=0",
        "--",
    ]


def drop_argv(uid: int | None) -> list[str]:
    setpriv = which("setpriv") or "/usr/bin/setpriv"
    argv = [setpriv]
    if uid is not None:
        argv += [f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    argv += ["--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
    return argv
