"""A real `mlflow server` process for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

STARTUP_SECONDS = 90.0


def free_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _stop(process: subprocess.Popen[bytes]) -> None:
    # The server runs in its own session and forks a uvicorn worker: signal that group, only it.
    _signal_group(process.pid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    _signal_group(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


class MlflowServer:
    """An `mlflow server` process; start it early and wait for it only when it is needed."""

    def __init__(self, tmp_dir: Path) -> None:
        tmp_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = tmp_dir / "mlflow-server.log"
        command = [
            str(Path(sys.executable).with_name("mlflow")),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp_dir / 'srv.db'}",
            "--artifacts-destination",
            str(tmp_dir / "art"),
        ]
        # A file, not a pipe: nobody reads the output while it runs, and a full pipe blocks it.
        # The registration path needs no background jobs; their huey runner is one more Python
        # process importing mlflow during startup.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with self.log_path.open("wb") as log_file:
            self._process = subprocess.Popen(
                command,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=tmp_dir,
                env=env,
                start_new_session=True,
            )
        self._healthy = False

    def wait_healthy(self, timeout: float = STARTUP_SECONDS) -> str:
        """Block until GET /health answers 200 (bounded), and return the tracking URI."""
        deadline = time.monotonic() + timeout
        while not self._healthy:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited with {self._process.returncode}:\n"
                    f"{self.log_path.read_text()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"mlflow server not healthy after {timeout} s:\n{self.log_path.read_text()}"
                )
            self._healthy = _healthy(self.url)
            if not self._healthy:
                time.sleep(0.25)
        return self.url

    def stop(self) -> None:
        """Terminate the server and its workers (they share its process group)."""
        _stop(self._process)


@contextmanager
def run_mlflow_server(tmp_dir: Path) -> Iterator[str]:
    """Run `mlflow server` with its stores under `tmp_dir`; yield its tracking URI."""
    server = MlflowServer(tmp_dir)
    try:
        yield server.wait_healthy()
    finally:
        server.stop()
