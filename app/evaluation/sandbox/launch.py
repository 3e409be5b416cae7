"""The command line that starts a sandbox in a given mode: the mode's wrapper, the rlimits, the uid
drop, then the interpreter."""

from __future__ import annotations

import secrets
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from app.evaluation.sandbox.bubblewrap import bwrap_argv
from app.evaluation.sandbox.failures import SandboxFailure
from app.evaluation.sandbox.host import JOB_INSIDE, environment, is_root
from app.evaluation.sandbox.kinds import SandboxInfo, SandboxLimits, SandboxMode
from app.evaluation.sandbox.limits import UID_BASE, UID_SPAN, drop_argv, rlimit_argv
from app.evaluation.sandbox.unshare import unshare_argv


@dataclass
class Launch:
    argv: list[str]
    env: dict[str, str] | None
    uid: int | None
    job_inside: str
    cwd: str
    scratch: Path | None = None  # a folder of the probe's own, removed after it


def plan(
    info: SandboxInfo,
    *,
    job: Path | None,
    limits: SandboxLimits,
    python_argv: list[str],
) -> Launch:
    """The command line that runs `python_argv` (after the interpreter) in the given mode."""
    uid = UID_BASE + secrets.randbelow(UID_SPAN) if is_root() else None
    python = [sys.executable, "-I", "-B", *python_argv]
    inner = rlimit_argv(limits) + drop_argv(uid) + python
    job_in = job / "in" if job is not None else None
    if info.mode is SandboxMode.BUBBLEWRAP:
        argv = bwrap_argv(job_in=job_in, limits=limits, uid=uid, inner=inner)
        return Launch(argv, None, uid, JOB_INSIDE, "/")
    if info.mode is SandboxMode.UNSHARE:
        scratch = None
        if job is None:
            root = scratch = Path(tempfile.mkdtemp(prefix="hokusai-probe-"))
        else:
            root = job / "root"
            root.mkdir(exist_ok=True)
        argv = unshare_argv(job_in=job_in, root=root, limits=limits, inner=inner)
        return Launch(argv, environment(limits), uid, JOB_INSIDE, "/", scratch)
    if info.mode is SandboxMode.PROCESS:
        env = environment(limits)
        scratch_dir = tempfile.gettempdir()
        if job is not None:
            # Not size-capped beyond RLIMIT_FSIZE per file: one more reason this mode is for
            # development only.
            (job / "tmp").mkdir(exist_ok=True)
            (job / "tmp").chmod(0o1777)
            scratch_dir = str(job / "tmp")
        env["HOME"] = env["TMPDIR"] = env["MPLCONFIGDIR"] = scratch_dir
        inside = str(job_in) if job_in is not None else "/"
        return Launch(inner, env, uid, inside, scratch_dir)
    raise SandboxFailure("killed", "this host cannot run a sandbox")
