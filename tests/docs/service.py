"""`hokusai-registry serve` as `make run` starts it (development mode, embedded defaults)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx

from tests.docs.shell import clean_environment
from tests.mlflow_server import free_port

READY_SECONDS = 90.0


@contextmanager
def make_run(cwd: Path, **settings: str) -> Iterator[str]:
    """Serve from `cwd` with its data in `cwd/.hokusai`, as `make run` does; yield the URL."""
    port = free_port()
    env = clean_environment(HOKUSAI_DATA_DIR=str(cwd / ".hokusai"), **settings)
    log = cwd.parent / "service.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(cwd / ".venv" / "bin" / "hokusai-registry"), "serve", "--port", str(port)],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_SECONDS
        while True:
            assert process.poll() is None, log.read_text()
            with suppress(httpx.TransportError):
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"service not ready:\n{log.read_text()}"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
