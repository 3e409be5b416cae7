"""The command line of the `unshare` mode: util-linux unshare with its own namespaces, and a mount
script that builds the root (an empty tmpfs, read-only binds, fresh /proc) and chroots into it."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from app.evaluation.sandbox.host import (
    JOB_INSIDE,
    SCRATCH_INSIDE,
    runtime_dirs,
    system_entries,
    which,
)
from app.evaluation.sandbox.kinds import SandboxLimits

UNSHARE = "unshare"


def unshare_argv(
    *, job_in: Path | None, root: Path, limits: SandboxLimits, inner: list[str]
) -> list[str]:
    """unshare with a mount script: an empty tmpfs root, read-only binds, fresh /proc, chroot."""
    script = _mount_script(job_in=job_in, root=root, limits=limits)
    unshare = which(UNSHARE) or UNSHARE
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


def _mount_script(*, job_in: Path | None, root: Path, limits: SandboxLimits) -> str:
    q = shlex.quote
    mount = q(which("mount") or "/usr/bin/mount")
    chroot = q(which("chroot") or "/usr/sbin/chroot")
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

    for kind, path in system_entries():
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
    for path in runtime_dirs():
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
    return "\n".join(lines)
