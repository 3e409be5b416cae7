"""The command line of the `bubblewrap` mode: bwrap with its own namespaces and an empty root
holding read-only binds of the runtime and the job folder, fresh /proc and /dev, a size-capped /tmp.
"""

from __future__ import annotations

import os
from pathlib import Path

from app.evaluation.sandbox.host import (
    JOB_INSIDE,
    SCRATCH_INSIDE,
    TMP_INSIDE,
    environment,
    runtime_dirs,
    system_entries,
    which,
)
from app.evaluation.sandbox.kinds import SandboxLimits

BWRAP = "bwrap"


def bwrap_argv(
    *, job_in: Path | None, limits: SandboxLimits, uid: int | None, inner: list[str]
) -> list[str]:
    argv = [which(BWRAP) or BWRAP]
    if uid is not None:
        # As root: no user namespace (it would map the sandbox's uid onto root outside); the command
        # drops to `uid` itself.
        argv += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts"]
        argv += ["--unshare-cgroup-try"]
    else:
        argv += ["--unshare-all", "--unshare-user", "--disable-userns", "--uid", "65534"]
        argv += ["--gid", "65534"]
    argv += ["--die-with-parent", "--new-session", "--hostname", "sandbox"]
    argv += ["--tmpfs", "/"]
    made: set[str] = {"/"}

    def parents(path: str) -> None:
        parts = Path(path).parts[1:-1]
        current = ""
        for part in parts:
            current += "/" + part
            if current not in made:
                argv.extend(["--perms", "0755", "--dir", current])
                made.add(current)

    for kind, path in system_entries():
        if kind == "symlink":
            argv += ["--symlink", os.readlink(path), path]
        else:
            parents(path)
            argv += ["--ro-bind", path, path]
            made.add(path)
    argv += ["--proc", "/proc", "--dev", "/dev"]
    for scratch in SCRATCH_INSIDE:
        argv += ["--perms", "1777", "--size", str(int(limits.tmp_bytes)), "--tmpfs", scratch]
    made.update(("/proc", "/dev", *SCRATCH_INSIDE))
    # The runtime after the scratch mounts: an interpreter installed under /tmp (a checkout
    # there) is bound on top of the sandbox's own /tmp rather than hidden by it.
    for path in runtime_dirs():
        if not any(path == m or path.startswith(m + "/") for m in ("/usr",)):
            parents(path)
            argv += ["--ro-bind", path, path]
            made.add(path)
    if job_in is not None:
        argv += ["--ro-bind", str(job_in), JOB_INSIDE]
    argv += ["--remount-ro", "/", "--chdir", TMP_INSIDE, "--clearenv"]
    for key, value in environment(limits).items():
        argv += ["--setenv", key, value]
    argv += ["--"]
    return argv + inner
