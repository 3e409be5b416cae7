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
else runs: no new namespaces, mounts, ptrace, BPF, keyrings, io_uring and the like (`runner.py`).

This package imports the standard library and numpy only, so importing it is cheap. Its modules:
`kinds` and `failures` (what a run is asked and answers), `modes` (detection), `host`, `limits`,
`bubblewrap`, `unshare` and `launch` (the command line per mode), `jobs` (the job folder),
`launcher` and `spare` (starting sandboxes, the warm spare), `supervisor` (watching, timeouts,
killing, output caps), `results` (the `.npy` answer checked), `run` (`run_model`), and `runner.py`,
the script that runs inside the sandbox.
"""

from app.evaluation.sandbox.failures import EXCERPT_CHARS, REASONS, SandboxFailure
from app.evaluation.sandbox.kinds import (
    ModelKind,
    OutputKind,
    SandboxInfo,
    SandboxLimits,
    SandboxMode,
    SandboxResult,
)
from app.evaluation.sandbox.modes import detect_sandbox
from app.evaluation.sandbox.run import run_model
from app.evaluation.sandbox.spare import keep_warm, prewarm

__all__ = [
    "EXCERPT_CHARS",
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
