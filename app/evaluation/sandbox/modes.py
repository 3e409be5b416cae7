"""Which sandbox this host can run: each mode probed by running a trivial program in it."""

from __future__ import annotations

import contextlib
import json
import subprocess

from app.evaluation.sandbox.bubblewrap import BWRAP
from app.evaluation.sandbox.failures import sanitise
from app.evaluation.sandbox.host import is_root, which
from app.evaluation.sandbox.kinds import SandboxInfo, SandboxLimits, SandboxMode
from app.evaluation.sandbox.launch import plan
from app.evaluation.sandbox.unshare import UNSHARE

PROBE_SECONDS = 30.0

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


def _user_words(mode: SandboxMode) -> tuple[str, str]:
    if is_root():
        return "an unprivileged uid of its own", " and an unprivileged uid of its own"
    if mode is SandboxMode.BUBBLEWRAP:
        return "the service's uid inside a user namespace", ""
    return "the service's uid (not root, so no uid of its own)", ""


def _unavailable(mode: SandboxMode) -> str | None:
    """Why `mode` cannot run here without trying it (a tool missing), or None."""
    needed = {
        SandboxMode.BUBBLEWRAP: [BWRAP, "prlimit", "setpriv"],
        SandboxMode.UNSHARE: [UNSHARE, "prlimit", "setpriv", "chroot", "mount"],
        SandboxMode.PROCESS: ["prlimit", "setpriv"],
    }[mode]
    missing = [tool for tool in needed if which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not found"
    if mode is SandboxMode.UNSHARE and not is_root():
        return "unshare needs root to build its mount namespace"
    return None


def _probe(mode: SandboxMode) -> SandboxInfo | str:
    """Run a trivial program in `mode`; the SandboxInfo when it works, else why not."""
    unavailable = _unavailable(mode)
    if unavailable is not None:
        return unavailable
    info = SandboxInfo(mode, mode is not SandboxMode.PROCESS, "")
    limits = SandboxLimits(wall_seconds=PROBE_SECONDS, max_output_bytes=1 << 20)
    launch = plan(info, job=None, limits=limits, python_argv=["-S", "-c", _PROBE])
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
        return f"probe exited {done.returncode}: {sanitise(done.stderr.decode(errors='replace'))}"
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
