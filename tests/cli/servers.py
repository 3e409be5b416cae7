"""Real loopback servers for the CLI tests: the service as a process, a scripted HTTP server, a
slow TCP proxy and a webhook receiver. No HTTP is mocked: every test talks over real sockets.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from tests.mlflow_server import free_port

BIN = Path(sys.executable).parent
HOKUSAI = str(BIN / "hokusai")
STARTUP_SECONDS = 90.0


def cli_env(url: str, data_dir: Path | None, **extra: str) -> dict[str, str]:
    """The environment of a CLI process: no inherited HOKUSAI_* settings, these instead."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOKUSAI_")}
    env["HOKUSAI_API_URL"] = url
    if data_dir is not None:
        env["HOKUSAI_DATA_DIR"] = str(data_dir)
    env.update(extra)
    return env


def run_cli(
    *args: str, env: dict[str, str], timeout: float = 60, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `hokusai` as its own process."""
    return subprocess.run(
        [HOKUSAI, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        check=False,
    )


@dataclass
class LiveService:
    """`hokusai-registry serve` in development mode, on SQLite and a local MLflow store."""

    url: str
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    key: str = ""
    paths: frozenset[str] = frozenset()

    @property
    def env(self) -> dict[str, str]:
        """A CLI environment that finds the dev key through HOKUSAI_DATA_DIR."""
        return cli_env(self.url, self.data_dir)

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=30
        )

    def mlflow_versions(self, model_name: str) -> list[str]:
        """The model's versions, read from the MLflow store's own SQLite database."""
        import sqlite3

        with sqlite3.connect(self.data_dir / "mlflow.db") as db:
            rows = db.execute(
                "SELECT version FROM model_versions WHERE name = ? ORDER BY version",
                (model_name,),
            ).fetchall()
        return [str(row[0]) for row in rows]


@contextmanager
def live_service(data_dir: Path) -> Iterator[LiveService]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOKUSAI_")}
    env.update(
        {
            "HOKUSAI_ENV": "development",
            "HOKUSAI_DATA_DIR": str(data_dir),
            "HOKUSAI_LOG_JSON": "true",
            "HOKUSAI_WEBHOOK_RETRY_SCHEDULE": "1,1",
        }
    )
    port = free_port()
    log_path = data_dir.parent / f"{data_dir.name}-service.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [str(BIN / "hokusai-registry"), "serve", "--port", str(port)],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    service = LiveService(
        url=f"http://127.0.0.1:{port}", data_dir=data_dir, log_path=log_path, process=process
    )
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            assert process.poll() is None, log_path.read_text()
            with suppress(httpx.TransportError):
                if httpx.get(f"{service.url}/ready", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"service not ready:\n{log_path.read_text()}"
            time.sleep(0.2)
        service.key = (data_dir / "dev-api-key").read_text().strip()
        schema = httpx.get(f"{service.url}/openapi.json", timeout=10).json()
        service.paths = frozenset(schema.get("paths", {}))
        yield service
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


# A scripted HTTP server ---------------------------------------------------------------------------

# One scripted answer: status, extra headers, and a body (bytes as they are, anything else as JSON).
Step = tuple[int, dict[str, str], Any]


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    size: int
    sha256: str
    head: bytes
    tail: bytes = b""


@dataclass
class Scripted:
    """Answers from `script` in order (the last one repeats); records every request."""

    script: list[Step]
    requests: list[Recorded] = field(default_factory=list)
    url: str = ""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    scripted: Scripted

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        digest, head, tail, left = hashlib.sha256(), bytearray(), b"", length
        while left:
            chunk = self.rfile.read(min(left, 1024 * 1024))
            if not chunk:
                break
            digest.update(chunk)
            if len(head) < 256 * 1024:
                head += chunk[: 256 * 1024 - len(head)]
            tail = (tail + chunk)[-4096:]
            left -= len(chunk)
        scripted = self.scripted
        scripted.requests.append(
            Recorded(
                method=self.command,
                path=self.path,
                headers={k.lower(): v for k, v in self.headers.items()},
                size=length - left,
                sha256=digest.hexdigest(),
                head=bytes(head),
                tail=tail,
            )
        )
        index = min(len(scripted.requests), len(scripted.script)) - 1
        status, headers, body = scripted.script[index]
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", **headers}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve


@contextmanager
def scripted_server(*script: Step) -> Iterator[Scripted]:
    scripted = Scripted(list(script))
    handler = type("Handler", (_Handler,), {"scripted": scripted})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    scripted.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield scripted
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# A slow TCP proxy ---------------------------------------------------------------------------------


class SlowProxy:
    """Forwards loopback TCP to `upstream_port`, the uploads slowly (`rate` bytes/s).

    `cut_after` bytes into the first `cuts` connections, both sides are reset: a network failure
    in the middle of an upload.
    """

    def __init__(
        self, upstream_port: int, *, rate: float, cut_after: int | None = None, cuts: int = 0
    ) -> None:
        self.upstream_port = upstream_port
        self.rate = rate
        self.cut_after = cut_after
        self.cuts = cuts
        self.connections = 0
        self.forwarded = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> SlowProxy:
        self._spawn(self._accept)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._listener.close()

    def wait_forwarded(self, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.forwarded < count:
            assert time.monotonic() < deadline, f"only {self.forwarded} bytes went through"
            time.sleep(0.01)

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self._lock:
                cut = self.cut_after if self.connections < self.cuts else None
                self.connections += 1
            for sock in (client, upstream):
                sock.settimeout(0.2)
            self._spawn(self._pipe, upstream, client, False, None)
            self._spawn(self._pipe, client, upstream, True, cut)

    def _pipe(
        self, source: socket.socket, target: socket.socket, upload: bool, cut: int | None
    ) -> None:
        sent, started = 0, time.monotonic()
        try:
            while not self._stop.is_set():
                try:
                    data = source.recv(64 * 1024)
                except TimeoutError:
                    continue
                if not data:
                    break
                if cut is not None and sent + len(data) > cut:
                    for sock in (source, target):
                        # SO_LINGER 0: close with a reset, as a broken network does.
                        sock.setsockopt(
                            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                        )
                    break
                target.sendall(data)
                sent += len(data)
                if upload:
                    with self._lock:
                        self.forwarded += len(data)
                    ahead = sent / self.rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with suppress(OSError):
                    sock.close()


# A webhook receiver -------------------------------------------------------------------------------


@dataclass
class Receiver:
    url: str = ""
    received: list[dict[str, Any]] = field(default_factory=list)


@contextmanager
def webhook_receiver() -> Iterator[Receiver]:
    receiver = Receiver()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            receiver.received.append(
                {"headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}
            )
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
