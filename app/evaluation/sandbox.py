"""Running an uploaded model on a benchmark's features in a sandbox, and nothing else.

Loading a pickle, a joblib file or an MLflow pyfunc model runs its author's code, so it happens only
in a separate process tree that cannot reach the network, sees nothing of the host but the
read-only Python runtime and a private copy of the model and the features, runs as an unprivileged
user of its own and is bounded in CPU time, memory, processes, open files, file size, output and
wall time. The process tree is killed whole at the deadline. What comes back is data (a `.npy`
stream read with `allow_pickle=False`) that is checked here before anyone uses it.

Modes, strongest first (`detect_sandbox` probes which ones work on this host):

- `bubblewrap`: `bwrap` with its own mount, pid, network, IPC, UTS (and cgroup) namespaces, an
  empty root holding read-only binds of the runtime and the job folder, fresh /proc and /dev, a
  size-capped tmpfs /tmp. Run as root, the sandbox drops to a uid of its own with `setpriv` (a user
  namespace would map the sandbox's uid back onto root outside); run as another user, it adds a user
  namespace with further user namespaces disabled.
- `unshare`: util-linux `unshare` with the same namespaces and a root built by a small mount script
  (tmpfs, read-only binds, chroot), then the same uid drop.
- `process`: rlimits and the uid drop only. NOT isolated: the model sees the host's file system and
  network. For development.

In every mode the sandboxed runner installs a seccomp filter (x86_64 and aarch64) before anything
else runs: no new namespaces, mounts, ptrace, BPF, keyrings, io_uring and the like (`_child.py`).

This module imports the standard library and numpy only, so importing it is cheap.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import math
import os
import re
import secrets
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

__all__ = [
    "REASONS",
    "ModelKind",
    "OutputKind",
    "SandboxFailure",
    "SandboxInfo",
    "SandboxLimits",
    "SandboxMode",
    "SandboxResult",
    "detect_sandbox",
    "keep_warm",
    "prewarm",
    "run_model",
]


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


REASONS = frozenset(
    {
        "load_failed",
        "raised",
        "wrong_row_count",
        "non_finite",
        "bad_output",
        "timeout",
        "memory",
        "output_too_large",
        "no_output",
        "killed",
    }
)
EXCERPT_CHARS = 2000


class SandboxFailure(Exception):
    """The model could not be evaluated; `reason` is one of `REASONS`."""

    def __init__(self, reason: str, excerpt: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown sandbox failure reason {reason!r}")
        self.reason = reason
        self.excerpt = _sanitise(excerpt)
        super().__init__(f"{reason}: {self.excerpt}" if self.excerpt else reason)


@dataclass(frozen=True)
class SandboxResult:
    values: np.ndarray
    seconds: float
    sandbox: SandboxInfo
    # Where the time went, for reports only: `features`, `load` and `predict` as the sandboxed
    # runner measured them (untrusted), and `startup`, how long the job waited for its sandbox to
    # come up (not part of `seconds`, which runs from the moment the job was handed over).
    stages: Mapping[str, float] = field(default_factory=dict)


# --- where things are ---------------------------------------------------------------------------

_T = TypeVar("_T")

RUNNER = Path(__file__).with_name("_child.py")
JOB_INSIDE = "/job"
# The sandbox's own, private, size-capped scratch folders (tmpfs inside its mount namespace).
TMP_INSIDE = "/tmp"  # noqa: S108
SCRATCH_INSIDE = (TMP_INSIDE, "/dev/shm")  # noqa: S108
BWRAP = "bwrap"
UNSHARE = "unshare"
# An unused, unnamed uid per run (when the service runs as root): the processes of one sandbox
# can then be counted (RLIMIT_NPROC) and killed (kill -1 as that uid) apart from everything else.
UID_BASE = 1_000_000_000
UID_SPAN = 1_000_000_000
LOG_TAIL_BYTES = 16 * 1024
READ_CHUNK = 1 << 16
PROBE_SECONDS = 30.0
KILL_SWEEPS = 50


def _which(name: str) -> str | None:
    found = shutil.which(name)
    if found is None:
        for folder in ("/usr/bin", "/bin", "/usr/sbin", "/sbin", "/usr/local/bin"):
            candidate = Path(folder, name)
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    return found


def _is_root() -> bool:
    return os.geteuid() == 0


def _runtime_dirs() -> list[str]:
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


def _system_entries() -> list[tuple[str, str]]:
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


def _environment(limits: SandboxLimits) -> dict[str, str]:
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


def _rlimit_argv(limits: SandboxLimits) -> list[str]:
    prlimit = _which("prlimit") or "/usr/bin/prlimit"
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


def _drop_argv(uid: int | None) -> list[str]:
    setpriv = _which("setpriv") or "/usr/bin/setpriv"
    argv = [setpriv]
    if uid is not None:
        argv += [f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    argv += ["--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
    return argv


def _bwrap_argv(
    *, job_in: Path | None, limits: SandboxLimits, uid: int | None, inner: list[str]
) -> list[str]:
    argv = [_which(BWRAP) or BWRAP]
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

    for kind, path in _system_entries():
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
    for path in _runtime_dirs():
        if not any(path == m or path.startswith(m + "/") for m in ("/usr",)):
            parents(path)
            argv += ["--ro-bind", path, path]
            made.add(path)
    if job_in is not None:
        argv += ["--ro-bind", str(job_in), JOB_INSIDE]
    argv += ["--remount-ro", "/", "--chdir", TMP_INSIDE, "--clearenv"]
    for key, value in _environment(limits).items():
        argv += ["--setenv", key, value]
    argv += ["--"]
    return argv + inner


def _unshare_argv(
    *, job_in: Path | None, root: Path, limits: SandboxLimits, inner: list[str]
) -> list[str]:
    """unshare with a mount script: an empty tmpfs root, read-only binds, fresh /proc, chroot."""
    q = shlex.quote
    mount = q(_which("mount") or "/usr/bin/mount")
    chroot = q(_which("chroot") or "/usr/sbin/chroot")
    lines = [
        "set -eu",
        f"R={q(str(root))}",
        f'{mount} -t tmpfs -o mode=0755,size=1m,nosuid,nodev sandbox-root "$R"',
    ]

    def bind(src: str, dst: str, *, file: bool = False) -> None:
        make = f'touch "$R"{q(dst)}' if file else f'mkdir -p "$R"{q(dst)}'
        if file:
            lines.append(f'mkdir -p "$(dirname "$R"{q(dst)})"')
        lines.append(make)
        lines.append(f'{mount} --rbind {q(src)} "$R"{q(dst)}')
        lines.append(f'{mount} -o remount,bind,ro,nosuid,nodev "$R"{q(dst)}')

    for kind, path in _system_entries():
        if kind == "symlink":
            lines.append(f'ln -s {q(os.readlink(path))} "$R"{q(path)}')
        else:
            bind(path, path, file=kind == "file")
    lines += [
        'mkdir -p "$R/proc" "$R/dev/shm" "$R/tmp"',
        f'{mount} -t proc -o nosuid,nodev,noexec proc "$R/proc"',
    ]
    for scratch in SCRATCH_INSIDE:
        lines.append(
            f"{mount} -t tmpfs -o mode=1777,size={int(limits.tmp_bytes)},nosuid,nodev "
            f'tmpfs "$R"{scratch}'
        )
    # The runtime after the scratch mounts, so one installed under /tmp stays visible.
    for path in _runtime_dirs():
        if not path.startswith("/usr/") and path != "/usr":
            bind(path, path)
    for device in ("null", "zero", "full", "random", "urandom"):
        lines += [f'touch "$R/dev/{device}"', f'{mount} --bind /dev/{device} "$R/dev/{device}"']
    if job_in is not None:
        bind(str(job_in), JOB_INSIDE)
    lines += [
        f'{mount} -o remount,ro,nosuid,nodev "$R"',
        'cd "$R/tmp"',
        f'exec {chroot} "$R" "$@"',
    ]
    script = "\n".join(lines)
    unshare = _which(UNSHARE) or UNSHARE
    return [
        unshare,
        "--net",
        "--pid",
        "--fork",
        "--mount",
        "--ipc",
        "--uts",
        "--kill-child",
        "--propagation",
        "private",
        "--",
        "/bin/sh",
        "-c",
        script,
        "sandbox-setup",
        *inner,
    ]


@dataclass
class _Launch:
    argv: list[str]
    env: dict[str, str] | None
    uid: int | None
    job_inside: str
    cwd: str
    scratch: Path | None = None  # a folder of the probe's own, removed after it


def _plan(
    info: SandboxInfo,
    *,
    job: Path | None,
    limits: SandboxLimits,
    python_argv: list[str],
) -> _Launch:
    """The command line that runs `python_argv` (after the interpreter) in the given mode."""
    uid = UID_BASE + secrets.randbelow(UID_SPAN) if _is_root() else None
    python = [sys.executable, "-I", "-B", *python_argv]
    inner = _rlimit_argv(limits) + _drop_argv(uid) + python
    job_in = job / "in" if job is not None else None
    if info.mode is SandboxMode.BUBBLEWRAP:
        argv = _bwrap_argv(job_in=job_in, limits=limits, uid=uid, inner=inner)
        return _Launch(argv, None, uid, JOB_INSIDE, "/")
    if info.mode is SandboxMode.UNSHARE:
        scratch = None
        if job is None:
            root = scratch = Path(tempfile.mkdtemp(prefix="hokusai-probe-"))
        else:
            root = job / "root"
            root.mkdir(exist_ok=True)
        argv = _unshare_argv(job_in=job_in, root=root, limits=limits, inner=inner)
        return _Launch(argv, _environment(limits), uid, JOB_INSIDE, "/", scratch)
    if info.mode is SandboxMode.PROCESS:
        env = _environment(limits)
        scratch_dir = tempfile.gettempdir()
        if job is not None:
            # Not size-capped beyond RLIMIT_FSIZE per file: one more reason this mode is for
            # development only.
            (job / "tmp").mkdir(exist_ok=True)
            (job / "tmp").chmod(0o1777)
            scratch_dir = str(job / "tmp")
        env["HOME"] = env["TMPDIR"] = env["MPLCONFIGDIR"] = scratch_dir
        inside = str(job_in) if job_in is not None else "/"
        return _Launch(inner, env, uid, inside, scratch_dir)
    raise SandboxFailure("killed", "this host cannot run a sandbox")


# --- detection ----------------------------------------------------------------------------------

_PROBE = (
    "import json, os, socket\n"
    "names = [name for _, name in socket.if_nameindex()]\n"
    "print(json.dumps({'uid': os.getuid(), 'interfaces': names,"
    " 'root': sorted(os.listdir('/'))}))\n"
)

_DETAILS = {
    SandboxMode.BUBBLEWRAP: (
        "bubblewrap: own mount, pid, network, IPC and UTS namespaces; read-only runtime and job "
        "folder only; {user}; rlimits; seccomp filter; killed whole at the deadline"
    ),
    SandboxMode.UNSHARE: (
        "unshare: own mount, pid, network, IPC and UTS namespaces; chroot to the read-only runtime "
        "and job folder only; {user}; rlimits; seccomp filter; killed whole at the deadline"
    ),
    SandboxMode.PROCESS: (
        "process: NOT ISOLATED (development only): a separate process with rlimits{user_short} "
        "and a seccomp filter; the model can see the host's files and network"
    ),
}


def _user_words(mode: SandboxMode) -> tuple[str, str]:
    if _is_root():
        return "an unprivileged uid of its own", " and an unprivileged uid of its own"
    if mode is SandboxMode.BUBBLEWRAP:
        return "the service's uid inside a user namespace", ""
    return "the service's uid (not root, so no uid of its own)", ""


def _probe(mode: SandboxMode) -> SandboxInfo | str:
    """Run a trivial program in `mode`; the SandboxInfo when it works, else why not."""
    needed = {
        SandboxMode.BUBBLEWRAP: [BWRAP, "prlimit", "setpriv"],
        SandboxMode.UNSHARE: [UNSHARE, "prlimit", "setpriv", "chroot", "mount"],
        SandboxMode.PROCESS: ["prlimit", "setpriv"],
    }[mode]
    missing = [tool for tool in needed if _which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not found"
    if mode is SandboxMode.UNSHARE and not _is_root():
        return "unshare needs root to build its mount namespace"
    info = SandboxInfo(mode, mode is not SandboxMode.PROCESS, "")
    limits = SandboxLimits(wall_seconds=PROBE_SECONDS, max_output_bytes=1 << 20)
    launch = _plan(info, job=None, limits=limits, python_argv=["-S", "-c", _PROBE])
    try:
        done = subprocess.run(  # noqa: S603 - argv built above from fixed tools
            launch.argv,
            env=launch.env,
            cwd=launch.cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=PROBE_SECONDS,
            start_new_session=True,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"probe failed: {e}"
    finally:
        if launch.scratch is not None:
            with contextlib.suppress(OSError):
                launch.scratch.rmdir()
    if done.returncode != 0:
        return f"probe exited {done.returncode}: {_sanitise(done.stderr.decode(errors='replace'))}"
    try:
        seen = json.loads(done.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        return "probe gave no answer"
    if launch.uid is not None and seen.get("uid") != launch.uid:
        return f"probe ran as uid {seen.get('uid')}, not the uid it was given"
    if mode is not SandboxMode.PROCESS and set(seen.get("interfaces", [])) - {"lo"}:
        return "probe could see network interfaces"
    user, user_short = _user_words(mode)
    detail = _DETAILS[mode].format(user=user, user_short=user_short)
    return SandboxInfo(mode, mode is not SandboxMode.PROCESS, detail)


def detect_sandbox(preference: str = "auto") -> SandboxInfo:
    """The strongest sandbox this host can run (or exactly `preference`), found by running one.

    `preference` is `auto`, `bubblewrap`, `unshare`, `process` or `none`. Probing takes a fraction
    of a second; call it once at start-up and keep the answer.
    """
    choice = preference.strip().lower()
    if choice == SandboxMode.NONE:
        return SandboxInfo(SandboxMode.NONE, False, "evaluation is switched off")
    if choice == "auto":
        order = [SandboxMode.BUBBLEWRAP, SandboxMode.UNSHARE, SandboxMode.PROCESS]
    else:
        try:
            order = [SandboxMode(choice)]
        except ValueError:
            return SandboxInfo(SandboxMode.NONE, False, f"unknown sandbox mode {preference!r}")
    reasons: list[str] = []
    for mode in order:
        found = _probe(mode)
        if isinstance(found, SandboxInfo):
            if reasons:
                found = SandboxInfo(
                    found.mode, found.isolated, f"{found.detail} ({'; '.join(reasons)})"
                )
            return found
        reasons.append(f"{mode}: {found}")
    return SandboxInfo(SandboxMode.NONE, False, "no sandbox works here: " + "; ".join(reasons))


# --- running a model ----------------------------------------------------------------------------

_CONTROL = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|[^\S\n\t ]|[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _sanitise(text: str) -> str:
    """Printable text only, at most EXCERPT_CHARS, keeping the end (where the error is)."""
    cleaned = _CONTROL.sub("", text)
    cleaned = re.sub(r"\n{3,}", "\n\n", cleaned).strip()
    if len(cleaned) > EXCERPT_CHARS:
        cleaned = "…" + cleaned[-(EXCERPT_CHARS - 1) :]
    return cleaned


def _new_job_folder() -> Path:
    job = Path(tempfile.mkdtemp(prefix="hokusai-eval-"))
    # The sandbox's uid reads the inputs (root-owned, world-readable) and nothing else here.
    job.chmod(0o711)
    (job / "in").mkdir(mode=0o755)
    shutil.copyfile(RUNNER, job / "in" / "runner.py")
    (job / "in" / "runner.py").chmod(0o644)
    return job


def _remove_job_folder(job: Path) -> None:
    shutil.rmtree(job, ignore_errors=True)


def _copy_inputs(job: Path, model_path: Path, model_kind: ModelKind, features_path: Path) -> str:
    """Copy the model and the features into the job folder, world-readable; the model's name."""
    target = job / "in"
    if model_kind is ModelKind.MLFLOW:
        if not model_path.is_dir():
            raise SandboxFailure("load_failed", "an MLflow model must be an unpacked directory")
        dest = target / "model"
        # Symlinks are copied as symlinks: inside the sandbox they point at nothing of the host.
        shutil.copytree(model_path, dest, symlinks=True)
        for folder, _dirs, files in os.walk(dest):
            os.chmod(folder, 0o755)  # noqa: S103 - the sandbox's uid must read it
            for name in files:
                path = os.path.join(folder, name)
                if not os.path.islink(path):
                    os.chmod(path, 0o644)
        name = "model"
    else:
        if not model_path.is_file():
            raise SandboxFailure("load_failed", "the model file is missing")
        name = "model.pkl" if model_kind is ModelKind.PICKLE else "model.joblib"
        shutil.copyfile(model_path, target / name)
        (target / name).chmod(0o644)
    shutil.copyfile(features_path, target / "features.csv")
    (target / "features.csv").chmod(0o644)
    return name


def _sweep_uid(uid: int) -> None:
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


def _kill(proc: subprocess.Popen[bytes], uid: int | None) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if uid is not None:
        _sweep_uid(uid)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


@dataclass
class _Outcome:
    returncode: int | None = None
    started: bool = False
    go_at: float = 0.0
    ended_at: float = 0.0
    timed_out: bool = False
    too_much: str = ""
    log_bytes: int = 0
    log_tail: bytearray = field(default_factory=bytearray)
    result: bytearray = field(default_factory=bytearray)


READY = b"ready\n"
# How long a sandbox may take to start (interpreter, imports) before its job's clock starts.
STARTUP_SECONDS = 120.0
# After the sandboxed process exits, how long to wait for anything it left holding its pipes.
DRAIN_SECONDS = 1.0


def _supervise(
    proc: subprocess.Popen[bytes],
    result_fd: int,
    limits: SandboxLimits,
    uid: int | None,
    *,
    go: Callable[[], None],
    sweep: bool,
) -> _Outcome:
    """Wait for the sandbox to be ready, start its job, then read its output and its result with
    caps until both close or time is up. The wall clock of the job starts at `go`."""
    outcome = _Outcome()
    deadline = time.monotonic() + STARTUP_SECONDS
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout.fileno(), selectors.EVENT_READ, "log")
    selector.register(result_fd, selectors.EVENT_READ, "result")
    open_fds = 2
    try:
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
                if key.data == "log":
                    outcome.log_bytes += len(chunk)
                    outcome.log_tail += chunk
                    del outcome.log_tail[:-LOG_TAIL_BYTES]
                    if outcome.log_bytes > limits.max_output_bytes:
                        outcome.too_much = (
                            f"the model printed more than {limits.max_output_bytes} bytes"
                        )
                else:
                    outcome.result += chunk
                    if len(outcome.result) > limits.max_output_bytes + 4096:
                        outcome.too_much = (
                            f"the model's output is larger than {limits.max_output_bytes} bytes"
                        )
                if outcome.too_much:
                    break
            if outcome.too_much:
                break
        if not outcome.timed_out and not outcome.too_much:
            try:
                outcome.returncode = proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                outcome.timed_out = True
    finally:
        selector.close()
        if outcome.returncode is None:
            _kill(proc, uid)
        elif uid is not None and sweep:
            # Anything the model left running in the background goes too. (In a pid namespace
            # that is automatic: its processes die with it.)
            _sweep_uid(uid)
        if outcome.returncode is None:
            outcome.returncode = proc.returncode
    return outcome


def _failure_from(outcome: _Outcome, limits: SandboxLimits) -> SandboxFailure | None:
    log = outcome.log_tail.decode("utf-8", errors="replace")
    if outcome.too_much:
        return SandboxFailure("output_too_large", outcome.too_much)
    if not outcome.started:
        # Nothing of the model has run yet: the sandbox itself did not come up.
        return SandboxFailure(
            "killed", f"the sandbox did not start (exit status {outcome.returncode})\n{log}"
        )
    if outcome.timed_out:
        return SandboxFailure(
            "timeout", f"still running after {limits.wall_seconds:g} seconds\n{log}"
        )
    status, _ = _answer(outcome)
    if status.get("status") == "error":
        reason = str(status.get("reason"))
        message = str(status.get("message", ""))
        if reason not in REASONS:
            reason = "raised"
        return SandboxFailure(reason, message or log)
    if status.get("status") == "ok" and outcome.returncode == 0:
        return None
    code = outcome.returncode
    if code is not None and code < 0:
        code = 128 - code
    if code is not None and code > 128:
        signo = code - 128
        if signo == signal.SIGXCPU:
            return SandboxFailure(
                "timeout", f"used more than {limits.cpu_seconds} seconds of CPU time\n{log}"
            )
        try:
            name = signal.Signals(signo).name
        except ValueError:
            name = f"signal {signo}"
        return SandboxFailure("killed", f"the model's process was killed by {name}\n{log}")
    if not outcome.result:
        return SandboxFailure(
            "no_output", f"the model exited (status {code}) without output\n{log}"
        )
    return SandboxFailure("bad_output", f"the model's process sent an unreadable answer\n{log}")


# The runner's JSON line is a few kB; a longer first line is not the runner's.
HEADER_BYTES = 64 * 1024


def _answer(outcome: _Outcome) -> tuple[dict[str, Any], memoryview]:
    """The result channel's JSON line (an empty dict when there is none) and what follows it."""
    data = memoryview(outcome.result)
    end = outcome.result.find(b"\n", 0, HEADER_BYTES)
    if end < 0:
        return {}, data[:0]
    try:
        parsed = json.loads(bytes(data[:end]))
    except (ValueError, RecursionError):
        parsed = None
    return (parsed if isinstance(parsed, dict) else {}), data[end + 1 :]


def _values_from(body: memoryview, output: OutputKind, expected_rows: int) -> np.ndarray:
    """The `.npy` stream checked field by field before a byte of it becomes an array: numpy's own
    reader would allocate whatever size the header claims."""
    head = io.BytesIO(bytes(body[: 16 * 1024]))
    try:
        version = np.lib.format.read_magic(head)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(head)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(head)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as e:
        raise SandboxFailure("bad_output", f"the values could not be read: {e}") from None
    if len(shape) != 1:
        raise SandboxFailure("bad_output", f"the values have shape {shape}, not one per row")
    if shape[0] != expected_rows:
        raise SandboxFailure(
            "wrong_row_count", f"the model returned {shape[0]} values for {expected_rows} rows"
        )
    if dtype.hasobject or not (dtype.kind == "U" or (dtype.kind == "f" and dtype.itemsize == 8)):
        raise SandboxFailure("bad_output", f"values of dtype {dtype} are not supported")
    if output is OutputKind.SCORE and dtype.kind != "f":
        raise SandboxFailure("bad_output", f"scores must be numbers, got {dtype}")
    offset = head.tell()
    if len(body) - offset != expected_rows * dtype.itemsize:
        raise SandboxFailure("bad_output", "the values are cut short or followed by other data")
    values = np.frombuffer(body, dtype=dtype, count=expected_rows, offset=offset)
    if dtype.kind == "f":
        values = values.astype(np.float64)  # a copy, in native byte order
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            raise SandboxFailure("non_finite", f"{bad} of {expected_rows} values are not finite")
        return values
    return values.copy()


def _check_dtypes(dtypes: Mapping[str, str]) -> dict[str, str]:
    allowed = {"int64", "float64", "object", "bool", "string", "str"}
    checked: dict[str, str] = {}
    for name, dtype in dtypes.items():
        if not isinstance(name, str) or not isinstance(dtype, str) or dtype not in allowed:
            raise ValueError(f"unsupported feature dtype {dtype!r} for column {name!r}")
        checked[name] = "object" if dtype in {"string", "str"} else dtype
    return checked


@dataclass
class _Sandbox:
    """One started sandbox, waiting on its stdin for its job. Each one runs one model only."""

    key: tuple[SandboxMode, SandboxLimits]
    job: Path
    proc: subprocess.Popen[bytes]
    launch: _Launch
    read_end: int
    result_fd: int  # the result channel's number inside the sandbox
    owner: int = field(default_factory=os.getpid)


class _Launcher:
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


_LAUNCHER = _Launcher()


def _start_sandbox(info: SandboxInfo, limits: SandboxLimits) -> _Sandbox:
    return _LAUNCHER.run(_start_sandbox_here, info, limits)


def _start_sandbox_here(info: SandboxInfo, limits: SandboxLimits) -> _Sandbox:
    job = _new_job_folder()
    try:
        launch = _plan(info, job=job, limits=limits, python_argv=[])
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
        _remove_job_folder(job)
        raise
    return _Sandbox((info.mode, limits), job, proc, launch, read_end, write_end)


def _discard(box: _Sandbox) -> None:
    if box.owner == os.getpid():
        if box.proc.poll() is None:
            _kill(box.proc, box.launch.uid)
        for stream in (box.proc.stdin, box.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        with contextlib.suppress(OSError):
            os.close(box.read_end)
    _remove_job_folder(box.job)


class _Spares:
    """At most one sandbox started ahead of time, so the next evaluation skips the interpreter's
    start and the imports of numpy, pandas and scikit-learn. It holds only the runtime's own
    modules until its job arrives, and exits when this process does (its stdin closes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spare: _Sandbox | None = None
        self._enabled = True
        # Bumped when spares are switched off, so a spare still starting then is thrown away.
        self._generation = 0

    def take(self, info: SandboxInfo, limits: SandboxLimits) -> _Sandbox | None:
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is None:
            return None
        fits = spare.key == (info.mode, limits) and spare.owner == os.getpid()
        if fits and spare.proc.poll() is None:
            return spare
        _discard(spare)
        return None

    def refill(self, info: SandboxInfo, limits: SandboxLimits) -> None:
        with self._lock:
            if not self._enabled:
                return
            generation = self._generation
        try:
            fresh = _start_sandbox_here(info, limits)  # runs on the launcher's thread
        except (SandboxFailure, OSError):
            return
        with self._lock:
            if self._enabled and generation == self._generation:
                old, self._spare = self._spare, fresh
            else:
                old = fresh
        if old is not None:
            _discard(old)

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
            _discard(spare)

    def forget(self) -> None:
        """After fork(): the spare belongs to the parent process."""
        self._spare = None
        self._lock = threading.Lock()


_SPARES = _Spares()
atexit.register(_SPARES.close)
os.register_at_fork(after_in_child=_SPARES.forget)
os.register_at_fork(after_in_child=_LAUNCHER.forget)


def keep_warm(enabled: bool) -> None:
    """Keep one sandbox started ahead of the next evaluation (the default), or none.

    A spare costs one idle interpreter with the numeric libraries imported (about 150 MB) and saves
    the next evaluation their start-up, typically 0.5 to 2 seconds.
    """
    _SPARES.switch(enabled)


def prewarm(sandbox: SandboxInfo, limits: SandboxLimits) -> None:
    """Start the spare sandbox now (at start-up), so the first evaluation is warm too."""
    if sandbox.mode is not SandboxMode.NONE:
        _LAUNCHER.post(_SPARES.refill, sandbox, limits)


def run_model(
    *,
    model_path: Path,
    model_kind: ModelKind,
    features_path: Path,
    dtypes: Mapping[str, str],
    output: OutputKind,
    expected_rows: int,
    limits: SandboxLimits,
    sandbox: SandboxInfo,
) -> SandboxResult:
    """Run the model on the features in the sandbox and return its values, checked.

    Blocking (run it in a worker thread). Raises `SandboxFailure` when the model cannot be
    evaluated; `ValueError` when the call itself is wrong (no sandbox, bad dtypes).
    """
    if sandbox.mode is SandboxMode.NONE:
        raise ValueError(f"no sandbox to run the model in: {sandbox.detail}")
    model_kind, output = ModelKind(model_kind), OutputKind(output)
    checked = _check_dtypes(dtypes)
    box = _SPARES.take(sandbox, limits) or _start_sandbox(sandbox, limits)
    try:
        name = _copy_inputs(box.job, Path(model_path), model_kind, Path(features_path))
        inside = box.launch.job_inside
        spec = {
            "model": f"{inside}/{name}",
            "kind": model_kind.value,
            "features": f"{inside}/features.csv",
            "dtypes": checked,
            "output": output.value,
        }
        (box.job / "in" / "job.json").write_text(json.dumps(spec), encoding="utf-8")
        (box.job / "in" / "job.json").chmod(0o644)
        stdin = box.proc.stdin
        assert stdin is not None

        def go() -> None:
            try:
                stdin.write(b"go\n")
                stdin.close()
            except OSError:
                pass  # it died waiting; what it said is read next

        waiting = time.monotonic()
        outcome = _supervise(
            box.proc,
            box.read_end,
            limits,
            box.launch.uid,
            go=go,
            sweep=sandbox.mode is SandboxMode.PROCESS,
        )
        seconds = time.monotonic() - outcome.go_at
        failure = _failure_from(outcome, limits)
        if failure is not None:
            raise failure
        status, body = _answer(outcome)
        values = _values_from(body, output, expected_rows)
        stages = _stages_from(status)
        # Measured here: how long the job waited for its sandbox to come up (0 for a warm spare).
        stages["startup"] = max(0.0, outcome.go_at - waiting)
    finally:
        _discard(box)
        # The next spare starts off the caller's path (starting a process costs a few ms).
        _LAUNCHER.post(_SPARES.refill, sandbox, limits)
    return SandboxResult(values=values, seconds=seconds, sandbox=sandbox, stages=stages)


def _stages_from(status: Mapping[str, Any]) -> dict[str, float]:
    reported = status.get("seconds")
    if not isinstance(reported, dict):
        return {}
    return {
        str(k)[:32]: float(v)
        for k, v in list(reported.items())[:8]
        if isinstance(v, int | float) and math.isfinite(v)
    }
