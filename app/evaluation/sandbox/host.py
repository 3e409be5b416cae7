"""What of the host a sandbox is built from: its tools, the runtime's folders, the system folders,
the paths inside, and the environment the model starts with."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from app.evaluation.sandbox.kinds import SandboxLimits

JOB_INSIDE = "/job"
# The sandbox's own, private, size-capped scratch folders (tmpfs inside its mount namespace).
TMP_INSIDE = "/tmp"  # noqa: S108
SCRATCH_INSIDE = (TMP_INSIDE, "/dev/shm")  # noqa: S108


def which(name: str) -> str | None:
    found = shutil.which(name)
    if found is None:
        for folder in ("/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"):
            candidate = Path(folder, name)
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return found


def is_root() -> bool:
    return os.geteuid() == 0


def runtime_dirs() -> list[str]:
    """The folders the interpreter and its packages live in, outermost only."""
    candidates = {
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        sys.base_exec_prefix,
        str(Path(sys.executable).parent.parent),
        str(Path(os.path.realpath(sys.executable)).parent.parent),
    }
    resolved = set()
    for path in candidates:
        for variant in (path, os.path.realpath(path)):
            if variant and os.path.isdir(variant) and variant != "/":
                resolved.add(os.path.normpath(variant))
    result: list[str] = []
    for path in sorted(resolved, key=len):
        if not any(path == kept or path.startswith(kept + "/") for kept in result):
            result.append(path)
    return result


def system_entries() -> list[tuple[str, str]]:
    """(kind, path) for the system folders the runtime's shared libraries need.

    `/usr` whole (libraries, and the few tools the sandbox starts with: prlimit, setpriv), and the
    top-level `/lib*`, `/bin`, `/sbin` entries, which are symlinks into /usr on merged-/usr systems.
    """
    entries: list[tuple[str, str]] = [("bind", "/usr")]
    for name in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(name):
            entries.append(("symlink", name))
        elif os.path.isdir(name):
            entries.append(("bind", name))
    for name in ("/etc/ld.so.cache", "/etc/localtime"):
        if os.path.exists(name):
            entries.append(("file", name))
    return entries


def _threads(limits: SandboxLimits) -> str:
    # Threads count against RLIMIT_NPROC: keep the numeric libraries' pools well inside it.
    return str(max(1, min(os.cpu_count() or 1, limits.max_processes // 4, 8)))


def environment(limits: SandboxLimits) -> dict[str, str]:
    threads = _threads(limits)
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": TMP_INSIDE,
        "TMPDIR": TMP_INSIDE,
        "LANG": "C.UTF-8",
        "OMP_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "LOKY_MAX_CPU_COUNT": threads,
        "MPLCONFIGDIR": TMP_INSIDE,
        "MLFLOW_TRACKING_URI": f"file://{TMP_INSIDE}/mlruns",
    }
