"""Hostile models, each run for real: what they try must fail or do nothing, and leave no trace.

A hostile model here is a pickle whose loading runs its author's code (see `hostile_model` in
conftest.py). Models that try to look around report what they saw as their string predictions, so
each test can check that what they were after was not there.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from app.evaluation.sandbox import (
    EXCERPT_CHARS,
    OutputKind,
    SandboxFailure,
    SandboxInfo,
    SandboxLimits,
    SandboxResult,
)
from tests.support.evaluation import LIMITS, ROWS, HostileModel, Run

SHORT = SandboxLimits(wall_seconds=3, memory_mb=2048, cpu_seconds=120)
SPIN = "class M:\n    def predict(self, X):\n        while True:\n            pass\nmodel = M()\n"


def _fails(call: Callable[[], SandboxResult], reason: str) -> SandboxFailure:
    with pytest.raises(SandboxFailure) as caught:
        call()
    assert caught.value.reason == reason, caught.value
    assert len(caught.value.excerpt) <= EXCERPT_CHARS
    return caught.value


def _reported(result: SandboxResult) -> list[str]:
    return [value for value in result.values.tolist() if value]


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def host_secrets() -> Iterator[dict[str, Path]]:
    """Files a model must never read, world-readable in a folder anyone may enter: the labels, the
    database, the API keys, the signing key and another registration's upload."""
    folder = Path(tempfile.mkdtemp(prefix="hokusai-test-secrets-"))
    folder.chmod(0o755)
    (folder / "uploads" / "other").mkdir(parents=True)
    files = {
        "labels": folder / "benchmark-labels.csv",
        "database": folder / "hokusai.db",
        "api_keys": folder / "api-keys.txt",
        "signing_key": folder / "evaluation-signing-key.pem",
        "upload": folder / "uploads" / "other" / "model.pkl",
    }
    files["labels"].write_text("y_true\n1\n0\n1\n")
    with sqlite3.connect(files["database"]) as db:
        db.execute("create table api_keys (key_hash text)")
        db.execute("insert into api_keys values ('LEAKED-KEY-HASH')")
    files["api_keys"].write_text("LEAKED-API-KEY\n")
    files["signing_key"].write_text("-----BEGIN PRIVATE KEY-----\nLEAKED\n")
    files["upload"].write_bytes(b"LEAKED-UPLOAD")
    for path in [*files.values(), folder / "uploads", folder / "uploads" / "other"]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    try:
        yield files
    finally:
        subprocess.run(["rm", "-rf", str(folder)], check=True)


READ_FILES = """
def attempt(paths):
    seen = []
    for path in paths:
        try:
            with open(path, "rb") as fh:
                seen.append("READ " + path + " " + fh.read(40).decode("latin-1"))
        except OSError as e:
            seen.append("DENIED " + path + " " + type(e).__name__)
    return seen
AT_LOAD = attempt(PATHS)
class M:
    def predict(self, X):
        return rows(X, AT_LOAD + attempt(PATHS))
model = M()
"""


class TestNetwork:
    def test_cannot_connect_to_a_listener_on_the_host(
        self,
        isolated: SandboxInfo,
        run: Run,
        hostile_model: HostileModel,
        listener: socket.socket,
    ) -> None:
        port = listener.getsockname()[1]
        path = hostile_model(
            f"""
import socket
def attempt():
    try:
        socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
        return "CONNECTED"
    except OSError as e:
        return "refused " + type(e).__name__
AT_LOAD = attempt()
class M:
    def predict(self, X):
        return rows(X, [AT_LOAD, attempt()])
model = M()
"""
        )

        result = run(path, sandbox=isolated, output=OutputKind.PREDICT)

        assert [value.split()[0] for value in _reported(result)] == ["refused", "refused"]
        with pytest.raises(BlockingIOError):
            listener.accept()


class TestFiles:
    def test_cannot_read_labels_database_keys_or_other_uploads(
        self,
        isolated: SandboxInfo,
        run: Run,
        hostile_model: HostileModel,
        host_secrets: dict[str, Path],
    ) -> None:
        repository = Path(__file__).resolve().parents[2]
        paths = [str(p) for p in host_secrets.values()]
        paths += [str(repository / "pyproject.toml"), "/etc/shadow", "/root/.bash_history"]
        path = hostile_model(f"PATHS = {paths!r}\n" + READ_FILES)

        result = run(path, sandbox=isolated, output=OutputKind.PREDICT)

        seen = _reported(result)
        assert len(seen) == 2 * len(paths)
        assert all(line.startswith("DENIED") for line in seen), seen
        assert not any("LEAKED" in line for line in seen)

    def test_a_bare_process_is_not_isolated(
        self,
        process: SandboxInfo,
        run: Run,
        hostile_model: HostileModel,
        host_secrets: dict[str, Path],
    ) -> None:
        # Why `process` is labelled NOT ISOLATED: the same model reads world-readable host files.
        path = hostile_model(f"PATHS = {[str(host_secrets['labels'])]!r}\n" + READ_FILES)

        result = run(path, sandbox=process, output=OutputKind.PREDICT)

        assert _reported(result)[0].startswith("READ")

    def test_sees_only_its_own_features_among_csv_files(
        self, isolated: SandboxInfo, run: Run, hostile_model: HostileModel
    ) -> None:
        path = hostile_model(
            """
def walk():
    runtime = tuple({sys.prefix, sys.base_prefix, sys.exec_prefix, "/usr"})
    found = []
    for top, dirs, files in os.walk("/"):
        if top in ("/proc", "/sys") or top.startswith(runtime):
            dirs[:] = []  # the read-only runtime: the service's own software, no data
            continue
        found += [os.path.join(top, f) for f in files if f.endswith(".csv")]
    return sorted(f for f in found if not f.startswith(runtime))
class M:
    def predict(self, X):
        return rows(X, walk())
model = M()
"""
        )

        result = run(path, sandbox=isolated, output=OutputKind.PREDICT)

        assert _reported(result) == ["/job/features.csv"]

    def test_cannot_read_the_hosts_process_environments(
        self,
        isolated: SandboxInfo,
        run: Run,
        hostile_model: HostileModel,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        monkeypatch.setenv("HOKUSAI_EVALUATION_SIGNING_KEY", "LEAKED-SIGNING-KEY")
        path = hostile_model(
            """
def look():
    seen = []
    for name in ["1"] + [p for p in os.listdir("/proc") if p.isdigit()]:
        try:
            with open(f"/proc/{name}/environ", "rb") as fh:
                env = fh.read()
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\\0", b" ")
            seen.append(f"pid {name}: {cmd[:80]!r} {b'LEAKED' in env}")
        except OSError as e:
            seen.append(f"pid {name}: {type(e).__name__}")
    return seen
class M:
    def predict(self, X):
        return rows(X, look())
model = M()
"""
        )

        result = run(path, sandbox=isolated, output=OutputKind.PREDICT)

        seen = _reported(result)
        assert seen
        assert not any("True" in line for line in seen), seen
        assert not any("pytest" in line for line in seen), seen

    def test_cannot_write_the_model_or_the_features(
        self, isolated: SandboxInfo, run: Run, hostile_model: HostileModel
    ) -> None:
        path = hostile_model(
            """
def scribble():
    seen = []
    for target in ("/job/features.csv", "/job/written", "/usr/written", "/written"):
        try:
            with open(target, "a") as fh:
                fh.write("x")
            seen.append("WROTE " + target)
        except OSError as e:
            seen.append("DENIED " + target + " " + type(e).__name__)
    return seen
class M:
    def predict(self, X):
        return rows(X, scribble())
model = M()
"""
        )

        result = run(path, sandbox=isolated, output=OutputKind.PREDICT)

        assert all(line.startswith("DENIED") for line in _reported(result)), _reported(result)


class TestKernel:
    def test_namespaces_mounts_and_ptrace_are_refused_threads_and_fork_work(
        self, isolated: SandboxInfo, run: Run, hostile_model: HostileModel
    ) -> None:
        # Unprivileged user namespaces are allowed on many hosts: without the seccomp filter the
        # first of these would succeed, and give the model a namespace of its own to attack from.
        path = hostile_model(
            """
import ctypes, threading
libc = ctypes.CDLL(None, use_errno=True)
def attempt():
    seen = []
    calls = [
        ("unshare_user", lambda: libc.unshare(0x10000000)),
        ("unshare_net", lambda: libc.unshare(0x40000000)),
        ("mount", lambda: libc.mount(b"none", b"/tmp", b"tmpfs", 0, None)),
        ("ptrace", lambda: libc.ptrace(16, os.getppid() or 1, None, None)),
    ]
    for name, call in calls:
        ctypes.set_errno(0)
        rc = call()
        seen.append(f"{name} {rc} {ctypes.get_errno()}")
    box = []
    worker = threading.Thread(target=lambda: box.append("thread ok"))
    worker.start()
    worker.join()
    seen += box
    child = os.fork()
    if child == 0:
        os._exit(7)
    seen.append(f"fork {os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])}")
    return seen
class M:
    def predict(self, X):
        return rows(X, attempt())
model = M()
"""
        )

        result = run(path, sandbox=isolated, output=OutputKind.PREDICT)

        assert _reported(result) == [
            "unshare_user -1 1",
            "unshare_net -1 1",
            "mount -1 1",
            "ptrace -1 1",
            "thread ok",
            "fork 7",
        ]


class TestResourceLimits:
    def test_allocating_past_the_memory_limit(
        self, bubblewrap: SandboxInfo, run: Run, hostile_model: HostileModel
    ) -> None:
        path = hostile_model(
            """
class M:
    def predict(self, X):
        hoard = np.ones(6 * 2**30, dtype=np.uint8)
        return np.zeros(len(X)) + hoard[0]
model = M()
"""
        )
        assert LIMITS.memory_mb < 6 * 1024

        failure = _fails(lambda: run(path, sandbox=bubblewrap), "memory")

        assert "MemoryError" in failure.excerpt or "allocate" in failure.excerpt

    def test_allocating_past_the_memory_limit_while_loading(
        self, bubblewrap: SandboxInfo, run: Run, hostile_model: HostileModel
    ) -> None:
        path = hostile_model("hoard = bytearray(6 * 2**30)\nmodel = None\n")

        _fails(lambda: run(path, sandbox=bubblewrap), "memory")

    def test_writing_a_multi_gigabyte_file(
        self, bubblewrap: SandboxInfo, run: Run, hostile_model: HostileModel
    ) -> None:
        path = hostile_model(
            """
class M:
    def predict(self, X):
        block = b"x" * 2**20
        with open("/tmp/huge.bin", "wb") as fh:
            for _ in range(4 * 1024):
                fh.write(block)
        return np.zeros(len(X))
model = M()
"""
        )

        failure = _fails(lambda: run(path, sandbox=bubblewrap), "output_too_large")

        assert "File too large" in failure.excerpt or "No space left" in failure.excerpt

    def test_printing_gigabytes(
        self, bubblewrap: SandboxInfo, run: Run, hostile_model: HostileModel
    ) -> None:
        path = hostile_model(
            """
class M:
    def predict(self, X):
        block = "x" * 2**20
        for _ in range(4 * 1024):
            sys.stdout.write(block)
        return np.zeros(len(X))
model = M()
"""
        )
        assert LIMITS.max_output_bytes < 4 * 2**30

        failure = _fails(lambda: run(path, sandbox=bubblewrap), "output_too_large")

        assert "printed more than" in failure.excerpt

    def test_a_fork_bomb_is_contained_and_killed(
        self,
        bubblewrap: SandboxInfo,
        run: Run,
        hostile_model: HostileModel,
        features: object,
        tmp_path: Path,
        assert_nothing_left: Callable[[], None],
    ) -> None:
        bomb = hostile_model(
            """
class M:
    def predict(self, X):
        while True:
            try:
                os.fork()
            except OSError:
                pass
model = M()
"""
        )
        honest = hostile_model(
            "class M:\n    def predict(self, X):\n        return np.zeros(len(X))\nmodel = M()\n"
        )
        outcome: dict[str, object] = {}

        def bombing() -> None:
            try:
                run(bomb, sandbox=bubblewrap, limits=SHORT)
            except SandboxFailure as e:
                outcome["bomb"] = e

        thread = threading.Thread(target=bombing)
        thread.start()
        try:
            # Other work goes on meanwhile: another model, and this process forking.
            assert run(honest, sandbox=bubblewrap).values.sum() == 0
            assert subprocess.run(["true"], check=False).returncode == 0
        finally:
            thread.join(timeout=120)
        assert not thread.is_alive()
        failure = outcome["bomb"]
        assert isinstance(failure, SandboxFailure)
        assert failure.reason == "timeout"
        assert_nothing_left()

    def test_an_endless_loop_is_killed_at_the_deadline(
        self,
        bubblewrap: SandboxInfo,
        run: Run,
        hostile_model: HostileModel,
        assert_nothing_left: Callable[[], None],
    ) -> None:
        path = hostile_model(SPIN)
        started = time.monotonic()

        failure = _fails(lambda: run(path, sandbox=bubblewrap, limits=SHORT), "timeout")

        assert "3 seconds" in failure.excerpt
        assert time.monotonic() - started < 60  # a bound, not a measurement
        assert_nothing_left()

    def test_an_endless_loop_that_ignores_signals_in_a_new_session(
        self,
        isolated: SandboxInfo,
        run: Run,
        hostile_model: HostileModel,
        assert_nothing_left: Callable[[], None],
    ) -> None:
        path = hostile_model(
            """
import signal
class M:
    def predict(self, X):
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        if os.fork() == 0:
            os.setsid()
            while True:
                pass
        while True:
            pass
model = M()
"""
        )

        _fails(lambda: run(path, sandbox=isolated, limits=SHORT), "timeout")

        assert_nothing_left()

    def test_cpu_time_is_capped(
        self, bubblewrap: SandboxInfo, run: Run, hostile_model: HostileModel
    ) -> None:
        path = hostile_model(SPIN)
        # The interpreter's start-up uses some of the CPU seconds too.
        limits = SandboxLimits(wall_seconds=120, memory_mb=2048, cpu_seconds=4)

        failure = _fails(lambda: run(path, sandbox=bubblewrap, limits=limits), "timeout")

        assert "CPU" in failure.excerpt


class TestOutputs:
    @pytest.mark.parametrize(
        ("body", "output", "reason"),
        [
            ("return np.zeros(len(X) + 1)", OutputKind.SCORE, "wrong_row_count"),
            ("return np.zeros(3)", OutputKind.PREDICT, "wrong_row_count"),
            ("return np.full(len(X), np.nan)", OutputKind.SCORE, "non_finite"),
            ("return np.full(len(X), np.inf)", OutputKind.PREDICT, "non_finite"),
            ("return np.array(['high'] * len(X))", OutputKind.SCORE, "bad_output"),
            ("return [object()] * len(X)", OutputKind.PREDICT, "bad_output"),
            ("return np.zeros((len(X), 3))", OutputKind.PREDICT, "bad_output"),
            ("os._exit(0)", OutputKind.SCORE, "no_output"),
            ("raise RuntimeError('the model is broken')", OutputKind.SCORE, "raised"),
        ],
        ids=[
            "extra_row",
            "three_rows",
            "nan",
            "inf",
            "strings_as_scores",
            "objects",
            "matrix",
            "exit_0_without_output",
            "raises",
        ],
    )
    def test_bad_answers_are_refused(
        self,
        bubblewrap: SandboxInfo,
        run: Run,
        hostile_model: HostileModel,
        body: str,
        output: OutputKind,
        reason: str,
    ) -> None:
        path = hostile_model(f"class M:\n    def predict(self, X):\n        {body}\nmodel = M()\n")

        failure = _fails(lambda: run(path, sandbox=bubblewrap, output=output), reason)

        if reason == "raised":
            assert "the model is broken" in failure.excerpt

    def test_a_forged_answer_claiming_a_huge_array_is_refused_unread(
        self, bubblewrap: SandboxInfo, run: Run, hostile_model: HostileModel
    ) -> None:
        # The model writes to the result channel itself: an "ok" line and a .npy header claiming
        # 240 strings of 100 million characters each (about 96 GB), then leaves before the runner.
        path = hostile_model(
            """
import io
class M:
    def predict(self, X):
        head = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            head, {"descr": "<U100000000", "fortran_order": False, "shape": (len(X),)}
        )
        with os.fdopen(int(sys.argv[2]), "wb") as channel:
            channel.write(b'{"status": "ok"}\\n' + head.getvalue() + b"x" * 100)
        os._exit(0)
model = M()
"""
        )

        failure = _fails(
            lambda: run(path, sandbox=bubblewrap, output=OutputKind.PREDICT), "bad_output"
        )

        assert "cut short" in failure.excerpt

    def test_a_model_that_raises_while_loading(
        self, bubblewrap: SandboxInfo, run: Run, hostile_model: HostileModel
    ) -> None:
        path = hostile_model("raise ImportError('needs a package that is not there')\n")

        failure = _fails(lambda: run(path, sandbox=bubblewrap), "load_failed")

        assert "needs a package" in failure.excerpt

    def test_garbage_is_a_load_failure(
        self, bubblewrap: SandboxInfo, run: Run, tmp_path: Path
    ) -> None:
        path = tmp_path / "model.pkl"
        path.write_bytes(os.urandom(4096))

        _fails(lambda: run(path, sandbox=bubblewrap), "load_failed")

    def test_the_excerpt_is_short_and_printable(
        self, bubblewrap: SandboxInfo, run: Run, hostile_model: HostileModel
    ) -> None:
        path = hostile_model(
            "class M:\n    def predict(self, X):\n"
            "        raise ValueError('\\x1b[31m' + 'A' * 100000 + '\\x00\\x07 the end')\n"
            "model = M()\n"
        )

        failure = _fails(lambda: run(path, sandbox=bubblewrap), "raised")

        assert failure.excerpt.endswith("the end")
        assert not any(ch in failure.excerpt for ch in "\x1b\x00\x07")


class TestKillingItsParent:
    def test_kill_parent_and_kill_minus_one_hurt_nothing_outside(
        self,
        isolated: SandboxInfo,
        process: SandboxInfo,
        run: Run,
        hostile_model: HostileModel,
        assert_nothing_left: Callable[[], None],
    ) -> None:
        bystander = subprocess.Popen(["sleep", "120"])
        path = hostile_model(
            """
import signal
def attack():
    seen = []
    for target in (os.getppid(), -1):
        try:
            os.kill(target, signal.SIGKILL)
            seen.append(f"kill {target}: sent")
        except OSError as e:
            seen.append(f"kill {target}: {type(e).__name__}")
    return seen
class M:
    def predict(self, X):
        return rows(X, attack())
model = M()
"""
        )
        outcomes: list[SandboxResult | SandboxFailure] = []
        try:
            for info in (isolated, process):
                try:
                    outcomes.append(run(path, sandbox=info, output=OutputKind.PREDICT))
                except SandboxFailure as e:
                    outcomes.append(e)
                assert bystander.poll() is None
        finally:
            bystander.send_signal(signal.SIGKILL)
            bystander.wait()
        for outcome in outcomes:
            # It either carried on (its signals reached nothing) or took only itself down (in a
            # pid namespace its parent is outside: getppid() is 0, and kill(0) is its own group).
            if isinstance(outcome, SandboxFailure):
                assert outcome.reason == "killed"
            else:
                assert len(_reported(outcome)) == 2
        assert_nothing_left()


def test_the_test_process_is_unharmed(bubblewrap: SandboxInfo, run: Run) -> None:
    # Runs last in this module: after every hostile model, an honest one still runs.
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.pkl"
        import pickle

        from sklearn.dummy import DummyClassifier

        model = DummyClassifier(strategy="prior").fit(np.zeros((4, 3)), [0, 1, 1, 1])
        path.write_bytes(pickle.dumps(model))
        result = run(path, sandbox=bubblewrap)
    assert result.values.shape == (ROWS,)
    np.testing.assert_allclose(result.values, 0.75)
