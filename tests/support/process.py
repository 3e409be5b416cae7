"""A `hokusai-registry serve` process for end-to-end tests: started, awaited, stopped."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.mlflow_server import free_port

BIN = Path(sys.executable).parent


@contextmanager
def serving(
    env: Mapping[str, str],
    log_path: Path,
    *,
    args: tuple[str, ...] = (),
    ready_within: float = 60,
    bin_dir: Path = BIN,
    cwd: Path | None = None,
) -> Iterator[str]:
    """`hokusai-registry serve` (from `bin_dir`) on a free loopback port, its output in
    `log_path`; yields its URL once `/ready` answers 200, and stops it (SIGTERM, then SIGKILL)
    when the block ends."""
    port = free_port()
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [bin_dir / "hokusai-registry", "serve", "--port", str(port), *args],
            cwd=cwd,
            env=dict(env),
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_within
        while True:
            assert process.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"service not ready:\n{log_path.read_text()}"
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
