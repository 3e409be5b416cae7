"""The sandboxed side of an evaluation: load one model, run it on the features, return the values.

This file runs inside the sandbox as a script (`python -I runner.py`), never as part of the service:
it imports nothing of the service, only the standard library, numpy and pandas, and whatever the
model itself needs (scikit-learn through unpickling, joblib, mlflow). Everything from the moment
the model is loaded is the model author's code; this process is trusted with nothing, and the
parent validates everything it sends.

Protocol: `runner.py JOB_JSON RESULT_FD`. The runner imports the numeric libraries, writes
`ready` to RESULT_FD and waits for `go` on stdin (so a sandbox can be started ahead of its job);
then it reads the job description and writes to RESULT_FD one JSON line and, on success, the
values as a `.npy` stream (`numpy.save(..., allow_pickle=False)`). On failure the JSON line carries
the reason and a message.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
import time
import traceback
from typing import Any

# Reasons this process can report itself; the parent adds the ones only it can see (timeout,
# output_too_large by size, no_output, killed) and the checks of the values.
LOAD_FAILED = "load_failed"
RAISED = "raised"
BAD_OUTPUT = "bad_output"
MEMORY = "memory"
OUTPUT_TOO_LARGE = "output_too_large"

MESSAGE_CHARS = 4000


class Refusal(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _describe(exc: BaseException) -> str:
    text = "".join(traceback.format_exception(exc))
    return text[-MESSAGE_CHARS:]


def _reason_for(exc: BaseException, default: str) -> str:
    if isinstance(exc, MemoryError):
        return MEMORY
    if isinstance(exc, OSError) and exc.errno in (errno.EFBIG, errno.ENOSPC, errno.EDQUOT):
        return OUTPUT_TOO_LARGE
    return default


def _read_features(path: str, dtypes: dict[str, str]) -> Any:
    import pandas as pd

    bools = [name for name, dtype in dtypes.items() if dtype == "bool"]
    parse = {name: ("object" if dtype == "bool" else dtype) for name, dtype in dtypes.items()}
    frame = pd.read_csv(path, dtype=parse, keep_default_na=True)
    for name in bools:
        # CSV spells booleans as text; map the usual spellings exactly, refuse anything else.
        mapped = frame[name].map(
            lambda v: {"true": True, "false": False, "1": True, "0": False}.get(str(v).lower())
        )
        if mapped.isna().any():
            raise Refusal(LOAD_FAILED, f"feature column {name!r} is not boolean")
        frame[name] = mapped.astype(bool)
    return frame[list(dtypes)]


def _load_model(path: str, kind: str) -> Any:
    if kind == "pickle":
        import pickle

        with open(path, "rb") as fh:
            return pickle.load(fh)  # noqa: S301 - the reason this runs in a sandbox
    if kind == "joblib":
        import joblib

        return joblib.load(path)
    if kind == "mlflow":
        import mlflow.pyfunc

        return mlflow.pyfunc.load_model(path)
    raise Refusal(LOAD_FAILED, f"unknown model kind {kind!r}")


def _call(model: Any, kind: str, output: str, features: Any) -> Any:
    import numpy as np

    if output == "predict":
        return model.predict(features)
    target = model
    if kind == "mlflow":
        # A scikit-learn model inside an MLflow archive scores like a bare one; anything else
        # (a custom python_model) answers through pyfunc predict.
        try:
            raw = model.get_raw_model()
        except Exception:
            raw = None
        if raw is not None and callable(getattr(raw, "predict_proba", None)):
            target = raw
        else:
            return model.predict(features)
    proba = getattr(target, "predict_proba", None)
    if callable(proba):
        values = np.asarray(proba(features))
        if values.ndim == 2 and values.shape[1] == 2:
            return values[:, 1]
        if values.ndim == 1 or (values.ndim == 2 and values.shape[1] == 1):
            return values.reshape(-1)
        raise Refusal(
            BAD_OUTPUT,
            f"predict_proba returned shape {values.shape}; a score needs a binary classifier",
        )
    decision = getattr(target, "decision_function", None)
    if callable(decision):
        return decision(features)
    return target.predict(features)


def _to_array(values: Any, output: str) -> Any:
    import numpy as np

    if hasattr(values, "to_numpy"):  # pandas Series / DataFrame
        values = values.to_numpy()
    array = np.asarray(values)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array.reshape(-1)
    if array.ndim != 1:
        raise Refusal(BAD_OUTPUT, f"the model returned an array of shape {array.shape}")
    if output == "score" or array.dtype.kind in "biuf":
        try:
            return array.astype(np.float64)
        except (TypeError, ValueError) as e:
            raise Refusal(
                BAD_OUTPUT, f"scores must be numbers, got {array.dtype}: {str(e)[:200]}"
            ) from e
    if array.dtype.kind in "US":
        return array.astype(str)
    if array.dtype.kind == "O":
        if not all(isinstance(v, str | int | float | bool | np.generic) for v in array.tolist()):
            raise Refusal(BAD_OUTPUT, "predictions must be numbers or strings")
        return np.array([str(v) for v in array.tolist()], dtype=str)
    raise Refusal(BAD_OUTPUT, f"predictions of dtype {array.dtype} are not supported")


def _send(out: Any, header: dict[str, Any], array: Any = None) -> None:
    out.write(json.dumps(header).encode() + b"\n")
    if array is not None:
        import io

        import numpy as np

        # numpy writes arrays to real files with tofile(), which a pipe cannot take.
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        out.write(buffer.getbuffer())
    out.flush()


# A seccomp filter, installed before anything else runs: the model gets EPERM for the system calls
# a numeric model never needs and that widen the kernel's attack surface or the model's reach:
# new namespaces (unshare, setns, clone with namespace flags), mounts, ptrace and cross-process
# memory access, BPF, perf events, keyrings, userfaultfd, io_uring, module and kexec loading,
# swap, reboot, accounting, chroot, quotas and the kernel log. clone3 answers ENOSYS (its flags
# are out of a filter's reach), so the C library falls back to clone, which is checked.
_BLOCKED = {
    # machine: (AUDIT_ARCH_*, {name: number})
    "x86_64": (
        0xC000003E,
        {
            "unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155,
            "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "bpf": 321,
            "perf_event_open": 298, "keyctl": 250, "add_key": 248, "request_key": 249,
            "userfaultfd": 323, "kexec_load": 246, "kexec_file_load": 320, "init_module": 175,
            "finit_module": 313, "delete_module": 176, "open_by_handle_at": 304,
            "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
            "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
            "fspick": 433, "mount_setattr": 442, "acct": 163, "swapon": 167, "swapoff": 168,
            "reboot": 169, "chroot": 161, "quotactl": 179, "syslog": 103,
        },
    ),
    "aarch64": (
        0xC00000B7,
        {
            "unshare": 97, "setns": 268, "mount": 40, "umount2": 39, "pivot_root": 41,
            "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "bpf": 280,
            "perf_event_open": 241, "keyctl": 219, "add_key": 217, "request_key": 218,
            "userfaultfd": 282, "kexec_load": 104, "kexec_file_load": 294, "init_module": 105,
            "finit_module": 273, "delete_module": 106, "open_by_handle_at": 265,
            "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
            "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
            "fspick": 433, "mount_setattr": 442, "acct": 89, "swapon": 224, "swapoff": 225,
            "reboot": 142, "chroot": 51, "quotactl": 60, "syslog": 116,
        },
    ),
}  # fmt: skip
_CLONE = {"x86_64": 56, "aarch64": 220}
_CLONE3 = 435
_X32_BIT = 0x40000000
# CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET
_NAMESPACE_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000
_NAMESPACE_FLAGS |= 0x40000000


def _seccomp_program(machine: str) -> bytes:
    import struct

    arch, blocked = _BLOCKED[machine]
    ld_abs, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | errno.EPERM, 0x00050000 | errno.ENOSYS
    # (code, jump-if-true label, jump-if-false label, k); labels are resolved below.
    code: list[tuple[int, str | None, str | None, int]] = [
        (ld_abs, None, None, 4),  # seccomp_data.arch
        (jeq, None, "enosys", arch),  # another ABI's numbers mean other calls: refuse them all
        (ld_abs, None, None, 0),  # seccomp_data.nr
    ]
    if machine == "x86_64":
        code.append((jge, "enosys", None, _X32_BIT))  # the x32 ABI
    code += [(jeq, "eperm", None, number) for number in sorted(blocked.values())]
    code += [
        (jeq, "enosys", None, _CLONE3),
        (jeq, "clone", None, _CLONE[machine]),
        (ret, None, None, allow),
    ]
    labels = {"clone": len(code)}
    code += [
        (ld_abs, None, None, 16),  # the low 32 bits of args[0], the flags (little-endian)
        (jset, "eperm", None, _NAMESPACE_FLAGS),
        (ret, None, None, allow),
    ]
    labels["eperm"] = len(code)
    code.append((ret, None, None, eperm))
    labels["enosys"] = len(code)
    code.append((ret, None, None, enosys))
    program = b""
    for index, (op, true, false, k) in enumerate(code):
        jt = labels[true] - index - 1 if true else 0
        jf = labels[false] - index - 1 if false else 0
        program += struct.pack("=HBBI", op, jt, jf, k)
    return program


def _confine() -> str:
    """Install the seccomp filter on this process (and all it starts); what happened, in words."""
    import ctypes

    machine = os.uname().machine
    if machine not in _BLOCKED or sys.byteorder != "little":
        return f"no seccomp filter for {machine}"
    program = _seccomp_program(machine)

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    libc = ctypes.CDLL(None, use_errno=True)
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = SockFprog(len(program) // 8, ctypes.addressof(buffer))
    pr_set_no_new_privs, pr_set_seccomp, seccomp_mode_filter = 38, 22, 2
    if libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0) != 0:
        return f"no_new_privs failed: errno {ctypes.get_errno()}"
    if libc.prctl(pr_set_seccomp, seccomp_mode_filter, ctypes.byref(fprog), 0, 0) != 0:
        return f"seccomp failed: errno {ctypes.get_errno()}"
    return "seccomp"


def _warm_up() -> None:
    """Import what most models need while waiting for the job (the service's own runtime only)."""
    import numpy  # noqa: F401
    import pandas

    try:
        import joblib  # noqa: F401
        import sklearn.ensemble
        import sklearn.linear_model
        import sklearn.pipeline
        import sklearn.preprocessing
        import sklearn.tree
    except ImportError:
        return
    with contextlib.suppress(Exception):
        # scikit-learn imports what it needs for DataFrames on the first call; make that call here,
        # on a toy model of our own, not on the clock of the model under evaluation.
        frame = pandas.DataFrame({"a": [0.0, 1.0, 2.0, 3.0], "b": [1, 0, 1, 0]})
        toy = sklearn.linear_model.LogisticRegression().fit(frame, [0, 0, 1, 1])
        toy.predict_proba(frame)
        toy.predict(frame)


def main(argv: list[str]) -> int:
    out = os.fdopen(int(argv[2]), "wb", buffering=1 << 16)
    confinement = _confine()
    _warm_up()
    out.write(b"ready\n")
    out.flush()
    # The job is there when the parent says so; end of input means it no longer needs this one.
    if sys.stdin.buffer.readline().strip() != b"go":
        return 0
    with open(argv[1], encoding="utf-8") as fh:
        job = json.load(fh)
    stage, reason_default = "features", LOAD_FAILED
    clock = time.perf_counter
    seconds: dict[str, float] = {}
    try:
        mark = clock()
        features = _read_features(job["features"], job["dtypes"])
        seconds["features"], mark = clock() - mark, clock()
        stage = "load"
        model = _load_model(job["model"], job["kind"])
        seconds["load"], mark = clock() - mark, clock()
        stage, reason_default = "predict", RAISED
        values = _call(model, job["kind"], job["output"], features)
        array = _to_array(values, job["output"])
        seconds["predict"] = clock() - mark
    except Refusal as refusal:
        _send(out, {"status": "error", "reason": refusal.reason, "message": refusal.message})
        return 1
    except BaseException as exc:  # the model's own code: anything at all may come out of it
        message = f"while {'loading the model' if stage == 'load' else stage}:\n{_describe(exc)}"
        reason = _reason_for(exc, reason_default)
        _send(out, {"status": "error", "reason": reason, "message": message})
        return 1
    header = {"status": "ok", "rows": int(array.shape[0]), "seconds": seconds}
    _send(out, {**header, "confinement": confinement}, array)
    return 0


if __name__ == "__main__":
    code = main(sys.argv)
    sys.stdout.flush()
    sys.stderr.flush()
    # Straight out: tearing down an interpreter with the numeric libraries loaded takes longer
    # than the evaluation itself, and there is nothing here to clean up.
    os._exit(code)
