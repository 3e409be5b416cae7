"""What the benchmarks share: a service process on a fresh data folder, an API key for it, and the
report each benchmark hands to the suite (`benchmarks/run_all.py`)."""

from __future__ import annotations

import compileall
import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent


def compile_project() -> None:
    """Write the bytecode of the service's and the CLI's own sources, as their first run does.

    `uv sync --compile-bytecode` compiles the installed packages but not this checkout, which is
    installed editable; where `PYTHONDONTWRITEBYTECODE` is set, every start would otherwise
    compile it again and the start-up figures would count that.
    """
    for folder in ("app", "hokusai_client"):
        compileall.compile_dir(ROOT / folder, quiet=1)
    compileall.compile_file(ROOT / "cli.py", quiet=1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def service_env(data_dir: str, **settings: str) -> dict[str, str]:
    """The environment of a service on embedded defaults under `data_dir`, plus `settings`."""
    env = {**os.environ, "HOKUSAI_DATA_DIR": data_dir, "HOKUSAI_ENV": "test"}
    env["HOKUSAI_LOG_LEVEL"] = "WARNING"
    for name in ("HOKUSAI_DATABASE_URL", "HOKUSAI_MLFLOW_TRACKING_URI", "HOKUSAI_REDIS_URL"):
        env.pop(name, None)
    env.update(settings)
    return env


def migrate_and_create_key(env: dict[str, str], bin_dir: Path = BIN) -> str:
    subprocess.run([bin_dir / "hokusai-registry", "migrate"], env=env, check=True)
    created = subprocess.run(
        [bin_dir / "hokusai-registry", "create-api-key", "--name", "bench", "--scopes", "admin"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return created.stdout.strip().splitlines()[-1]


def cpu_ns(pid: int) -> int:
    """CPU time a process's threads have run so far, in nanoseconds (/proc/PID/task/*/schedstat).

    Exact to the nanosecond, where /proc/PID/stat counts 10 ms ticks: fine enough to take
    around one request.
    """
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # the thread ended in between
    return total


def start(
    command: list[str], env: dict[str, str], bin_dir: Path = BIN, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start a `hokusai-registry` (or other venv) command; its output goes to `log` if given."""
    if log is None:
        return subprocess.Popen(
            [str(bin_dir / command[0]), *command[1:]],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    with log.open("wb") as sink:
        return subprocess.Popen(
            [str(bin_dir / command[0]), *command[1:]],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


def serve(
    env: dict[str, str], bin_dir: Path = BIN, log: Path | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """Start `hokusai-registry serve` on a free port; returns the process and its base URL."""
    port = free_port()
    process = start(
        ["hokusai-registry", "serve", "--port", str(port), "--no-migrate"], env, bin_dir, log
    )
    return process, f"http://127.0.0.1:{port}"


def wait_ready(url: str, process: subprocess.Popen[bytes], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            raise SystemExit("the service did not become ready")
        time.sleep(0.05)


def stop(*processes: subprocess.Popen[bytes]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(timeout=30)


def percentile(values: list[float], fraction: float) -> float:
    """The value below which `fraction` of `values` lie (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


def print_machine() -> None:
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )


@dataclass
class Target:
    """One target of the performance issue, as measured."""

    name: str
    measured: str
    goal: str
    met: bool


@dataclass
class Report:
    """A benchmark's figures for docs/performance.md: its targets and a markdown section."""

    title: str
    command: str
    section: str
    targets: list[Target] = field(default_factory=list)

    def save(self, path: str | None) -> None:
        """Write the report as JSON where `--report PATH` asked for it (the suite reads it)."""
        if path:
            Path(path).write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> Report:
        data = json.loads(path.read_text())
        data["targets"] = [Target(**target) for target in data["targets"]]
        return cls(**data)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


@contextmanager
def local_service(
    root: Path, **settings: str
) -> Iterator[tuple[subprocess.Popen[bytes], str, str, httpx.Client]]:
    """A service on embedded defaults under `root`, migrated, ready and stopped at the end:
    its process, URL and admin key, and a client that sends the key."""
    env = service_env(str(root / "service"), **settings)
    key = migrate_and_create_key(env)
    server, url = serve(env)
    try:
        wait_ready(url, server)
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=600
        ) as client:
            yield server, url, key, client
    finally:
        stop(server)


# A protocol 5 pickle header: the service checks the head of a model file, not the rest.
PICKLE_HEAD = b"\x80\x05\x95"
MIB = 1024 * 1024


def write_model(path: Path, size: int) -> None:
    """A `size`-byte model file: a pickle's header, then random bytes nothing can deduplicate."""
    chunk = 16 * MIB
    with path.open("wb") as file:
        file.write(PICKLE_HEAD)
        left = size - len(PICKLE_HEAD)
        while left > 0:
            file.write(os.urandom(min(chunk, left)))
            left -= chunk
