"""The rows of the security review that need a real server: time, memory and dropped connections.

One `hokusai-registry serve` process per database (SQLite, PostgreSQL) takes the attacks as raw
bytes over sockets, with caps scaled down (16 MiB uploads, a 2 s idle timeout) so each case is
quick. While an attack runs, a thread polls `/health`; it must keep answering within a second.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.mlflow_server import free_port
from tests.support.service import POSTGRES_ADMIN_URL, postgres_available

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
MiB = 1024 * 1024
CAP = 16 * MiB
IDLE_SECONDS = 2
AUTH_LIMIT = 5
PICKLE = b"\x80\x05\x95\x0b\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01a\x94K\x01s."
HEALTH_SECONDS = 1.0


@dataclass
class Server:
    url: str
    port: int
    key: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def token(self) -> str:
        token_id = f"P-{uuid.uuid4().hex[:10]}".upper()
        response = httpx.post(f"{self.url}/tokens", json={"token_id": token_id}, headers=self.auth)
        assert response.status_code == 201, response.text
        return token_id

    def recorded(self, token_id: str) -> tuple[list[str], list[str]]:
        """The statuses of the token's registrations and the types of its events."""
        rows = httpx.get(f"{self.url}/tokens/{token_id}/registrations", headers=self.auth)
        events = httpx.get(
            f"{self.url}/events", params={"token_id": token_id, "limit": 500}, headers=self.auth
        )
        return (
            [row["status"] for row in rows.json()["items"]],
            [event["event_type"] for event in events.json()["events"]],
        )


def _env(data_dir: Path, database_url: str | None) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("HOKUSAI_", "MLFLOW_", "FORWARDED_ALLOW_IPS"))
    }
    env |= {
        "HOKUSAI_ENV": "test",
        "HOKUSAI_DATA_DIR": str(data_dir),
        "HOKUSAI_LOG_LEVEL": "WARNING",
        "HOKUSAI_MAX_UPLOAD_BYTES": str(CAP),
        "HOKUSAI_MAX_PREDICTIONS_BYTES": str(CAP),
        "HOKUSAI_UPLOAD_IDLE_TIMEOUT_SECONDS": str(IDLE_SECONDS),
        "HOKUSAI_UPLOAD_MIN_BYTES_PER_SECOND": "1024",
        "HOKUSAI_AUTH_FAILURE_LIMIT": str(AUTH_LIMIT),
    }
    if database_url is not None:
        env["HOKUSAI_DATABASE_URL"] = database_url
    return env


@contextmanager
def running_server(data_dir: Path, database_url: str | None, **settings: str) -> Iterator[Server]:
    env = _env(data_dir, database_url) | settings
    subprocess.run([BIN / "hokusai-registry", "migrate"], env=env, check=True)
    created = subprocess.run(
        [BIN / "hokusai-registry", "create-api-key", "--name", "t", "--scopes", "admin"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    port = free_port()
    log = data_dir / "service.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [BIN / "hokusai-registry", "serve", "--port", str(port), "--no-migrate"],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    server = Server(
        f"http://127.0.0.1:{port}", port, created.stdout.strip().splitlines()[-1], process, log
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{server.url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    backend: str = request.param
    data_dir = tmp_path_factory.mktemp(f"secproc-{backend}")
    if backend == "sqlite":
        with running_server(data_dir, None) as server:
            yield server
        return
    if not postgres_available():
        pytest.skip("PostgreSQL is not reachable")
    name = f"hokusai_sec_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        with running_server(data_dir, f"{POSTGRES_ADMIN_URL.rsplit('/', 1)[0]}/{name}") as server:
            yield server
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class HealthProbe:
    """Polls /health every 50 ms on a thread; `slowest` is the longest answer meanwhile."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.slowest = 0.0
        self.answers = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set():
                began = time.perf_counter()
                if client.get(f"{self.url}/health").status_code == 200:
                    self.answers += 1
                self.slowest = max(self.slowest, time.perf_counter() - began)
                self._stop.wait(0.05)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        deadline = time.monotonic() + 10
        while self.answers == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def assert_responsive(self) -> None:
        assert self.answers > 0
        assert self.slowest < HEALTH_SECONDS, f"/health took {self.slowest:.2f} s"


def part(name: str, value: bytes, extra: bytes = b"") -> bytes:
    return f'Content-Disposition: form-data; name="{name}"'.encode() + extra + b"\r\n\r\n" + value


def body_of(boundary: str, parts: Iterable[bytes]) -> bytes:
    b = boundary.encode()
    return b"".join(b"--" + b + b"\r\n" + p + b"\r\n" for p in parts) + b"--" + b + b"--\r\n"


def fields(*, value: bool = True) -> list[bytes]:
    values = {"metric": b"auroc", "baseline": b"0.5"} | ({"metric_value": b"0.9"} if value else {})
    return [part(k, v) for k, v in values.items()]


def head(server: Server, token_id: str, boundary: str, length: int | None) -> bytes:
    lines = [
        f"POST /models/{token_id}/register HTTP/1.1",
        f"Host: 127.0.0.1:{server.port}",
        f"Authorization: Bearer {server.key}",
        f"Content-Type: multipart/form-data; boundary={boundary}",
        "Connection: close",
        f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_status(sock: socket.socket, timeout: float = 120) -> int:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    assert data.startswith(b"HTTP/1.1 "), data[:200]
    return int(data[9:12])


def post(server: Server, token_id: str, boundary: str, body: bytes) -> int:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head(server, token_id, boundary, len(body)))
        # Refused before the end: the answer is waiting all the same.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(body)
        return read_status(sock)


def post_chunked(
    server: Server, token_id: str, boundary: str, chunks: Iterable[bytes]
) -> tuple[int, int]:
    """Send a chunked body until the server answers; the status and the bytes sent."""
    sent = 0
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(head(server, token_id, boundary, None))
        sock.settimeout(60)
        try:
            for chunk in chunks:
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                sent += len(chunk)
            sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        return read_status(sock), sent


def untouched(server: Server, token_id: str) -> None:
    token = httpx.get(f"{server.url}/tokens/{token_id}", headers=server.auth).json()
    assert token["status"] == "draft" and token["mlflow_run_id"] is None


class TestPartHeaders:
    def test_a_flood_of_parameters_is_refused_at_once(self, server: Server) -> None:
        token_id = server.token()
        boundary = uuid.uuid4().hex
        body = body_of(boundary, [part("metric", b"auroc", b"; a=b" * (MiB // 5))])
        with HealthProbe(server.url) as probe:
            status = post(server, token_id, boundary, body)
        assert status == 413
        probe.assert_responsive()
        untouched(server, token_id)

    def test_an_unterminated_header_is_cut_off_and_memory_stays_flat(self, server: Server) -> None:
        token_id = server.token()
        boundary = uuid.uuid4().hex
        before = server.rss_mib()
        start = f"--{boundary}\r\nContent-Disposition: form-data; name=x".encode()
        with HealthProbe(server.url) as probe:
            status, sent = post_chunked(
                server, token_id, boundary, [start, *(b"X" * MiB for _ in range(64))]
            )
        assert status == 413
        assert sent < 32 * MiB
        assert server.rss_mib() - before < 32
        probe.assert_responsive()

    def test_a_hundred_thousand_empty_parts_stop_at_the_part_cap(self, server: Server) -> None:
        token_id = server.token()
        boundary = uuid.uuid4().hex
        body = body_of(boundary, [part("u", b"")] * 100_000)
        with HealthProbe(server.url) as probe:
            status = post(server, token_id, boundary, body)
        assert status == 422
        probe.assert_responsive()


class TestHeavyParsing:
    def test_predictions_of_wide_rows_cost_little_memory(self, server: Server) -> None:
        token_id = server.token()
        row = b"1,0.5" + b"," * 994 + b"\n"
        csv = b"y_true,y_score\n" + row * ((CAP - 64 * 1024) // len(row))
        boundary = uuid.uuid4().hex
        body = body_of(
            boundary,
            [
                *fields(value=False),
                part("predictions", csv, b'; filename="p.csv"'),
                part("model_file", PICKLE, b'; filename="m.pkl"'),
            ],
        )
        before = server.rss_mib()
        with HealthProbe(server.url) as probe:
            status = post(server, token_id, boundary, body)
        assert status == 422
        # Before the fix this took +107 MiB (x24 the file on a 64 MiB one).
        assert server.rss_mib() - before < 40
        probe.assert_responsive()
        statuses, events = server.recorded(token_id)
        assert statuses == ["rejected"] and events == ["model_validation_failed"]

    @pytest.mark.parametrize(("megabytes", "status"), [(7.5, 201), (15, 422)])
    def test_a_safetensors_header_of_many_keys(
        self, server: Server, megabytes: float, status: int
    ) -> None:
        token_id = server.token()
        entries: list[str] = []
        size = 0
        while size < megabytes * MiB:
            entry = f'"t{len(entries)}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}'
            entries.append(entry)
            size += len(entry) + 1
        header = ("{" + ",".join(entries) + "}").encode()
        model = len(header).to_bytes(8, "little") + header
        boundary = uuid.uuid4().hex
        body = body_of(
            boundary, [*fields(), part("model_file", model, b'; filename="m.safetensors"')]
        )
        with HealthProbe(server.url) as probe:
            assert post(server, token_id, boundary, body) == status
        probe.assert_responsive()


class TestSlowAndAbandonedUploads:
    def test_a_trickling_upload_is_dropped_and_leaves_nothing(self, server: Server) -> None:
        token_id = server.token()
        boundary = uuid.uuid4().hex
        start = b"".join(b"--" + boundary.encode() + b"\r\n" + p + b"\r\n" for p in fields())
        start += b"--" + boundary.encode() + b"\r\n"
        start += part("model_file", b"", b'; filename="m.pkl"')
        began = time.monotonic()
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(head(server, token_id, boundary, 10 * MiB) + start)
            status = None
            sock.settimeout(0.5)
            # A byte every half second: never idle, far below 1 KiB/s.
            while time.monotonic() - began < 10 * IDLE_SECONDS:
                try:
                    sock.sendall(b"x")
                    data = sock.recv(65536)
                except TimeoutError:
                    continue
                except (BrokenPipeError, ConnectionResetError):
                    break
                if data.startswith(b"HTTP/1.1 "):
                    status = int(data[9:12])
                break
        assert status == 408
        assert time.monotonic() - began < 5 * IDLE_SECONDS
        time.sleep(0.5)
        assert server.recorded(token_id) == ([], [])
        untouched(server, token_id)

    def test_a_silent_upload_is_dropped_after_the_idle_timeout(self, server: Server) -> None:
        token_id = server.token()
        boundary = uuid.uuid4().hex
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(head(server, token_id, boundary, 10 * MiB) + b"--" + boundary.encode())
            assert read_status(sock, timeout=10 * IDLE_SECONDS) == 408
        assert server.recorded(token_id) == ([], [])

    def test_clients_that_go_away_mid_form_leave_no_row_and_no_event(self, server: Server) -> None:
        token_id = server.token()
        boundary = uuid.uuid4().hex
        body = body_of(
            boundary, [*fields(), part("model_file", PICKLE * 1000, b'; filename="m.pkl"')]
        )
        for cut in (10, len(body) // 3, len(body) - 10):
            with socket.create_connection(("127.0.0.1", server.port)) as sock:
                sock.sendall(head(server, token_id, boundary, len(body)) + body[:cut])
                time.sleep(0.2)
        time.sleep(1.0)
        assert server.recorded(token_id) == ([], [])
        # A complete request that is refused is still recorded and announced.
        broken = body.replace(b"metric_value", b"metric_value", 1).replace(b"0.9", b"nan", 1)
        assert post(server, token_id, boundary, broken) == 422
        statuses, events = server.recorded(token_id)
        assert statuses == ["rejected"] and events == ["model_validation_failed"]


class TestClientAddress:
    def test_x_forwarded_for_is_not_trusted_by_default(self, server: Server) -> None:
        codes = []
        with httpx.Client() as client:
            for i in range(AUTH_LIMIT + 3):
                response = client.get(
                    f"{server.url}/tokens",
                    headers={
                        "Authorization": "Bearer hok_x_y",
                        "X-Forwarded-For": f"203.0.113.{i}",
                    },
                )
                codes.append(response.status_code)
        assert codes == [401] * AUTH_LIMIT + [429] * 3

    def test_a_proxy_named_in_the_setting_is_believed(self, tmp_path: Path) -> None:
        # Behind a trusted proxy each client is counted under the address the proxy reports.
        with (
            running_server(tmp_path, None, HOKUSAI_FORWARDED_ALLOW_IPS="127.0.0.1") as proxied,
            httpx.Client() as client,
        ):
            codes = [
                client.get(
                    f"{proxied.url}/tokens",
                    headers={"Authorization": "Bearer hok_x_y", "X-Forwarded-For": forwarded},
                ).status_code
                for forwarded in ["203.0.113.1"] * (AUTH_LIMIT + 1) + ["203.0.113.2"]
            ]
        assert codes == [401] * AUTH_LIMIT + [429, 401]
