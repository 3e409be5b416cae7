"""Replays the attacks of the security review against a real service and prints what happened.

Each row starts from a fresh service (`hokusai-registry serve`, SQLite and a local MLflow store in a
temporary folder), sends the attack as raw bytes over a socket, and measures what an operator would
see: the status code, how long `/health` took meanwhile, the server's RSS before and after, files
written outside the service's folders, registration rows and events left behind.

    .venv/bin/python -m benchmarks.security_attacks            # every row
    .venv/bin/python -m benchmarks.security_attacks --rows 1,2  # some rows
    .venv/bin/python -m benchmarks.security_attacks --source /path/to/other/checkout

`--source` runs another checkout's `app` package with this virtual environment (PYTHONPATH), which
is how the figures "before" a change are taken. Sizes are scaled down from the review's (caps of
16 MiB instead of 2 GiB) so a run takes a couple of minutes on a small machine.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from benchmarks.harness import migrate_and_create_key, serve, service_env, stop, wait_ready

MiB = 1024 * 1024
CAP = 16 * MiB
PICKLE = b"\x80\x05\x95\x0b\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01a\x94K\x01s."


@dataclass
class Service:
    url: str
    key: str
    process: subprocess.Popen[bytes]
    base: Path
    source: Path | None

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def token(self, prefix: str) -> str:
        token_id = f"{prefix}-{uuid.uuid4().hex[:6]}".upper()
        r = httpx.post(f"{self.url}/tokens", json={"token_id": token_id}, headers=self.auth)
        assert r.status_code == 201, r.text
        return token_id

    def rows_and_events(self, token_id: str) -> tuple[int, int]:
        rows = httpx.get(f"{self.url}/tokens/{token_id}/registrations", headers=self.auth)
        events = httpx.get(
            f"{self.url}/events", params={"token_id": token_id, "limit": 1000}, headers=self.auth
        )
        return len(rows.json()["items"]), len(events.json()["events"])


@contextmanager
def service(source: Path | None, **settings: str) -> Iterator[Service]:
    with tempfile.TemporaryDirectory(prefix="secbench-") as tmp:
        base = Path(tmp)
        (base / "outside").mkdir()
        env = service_env(
            str(base / "data"),
            HOKUSAI_MAX_UPLOAD_BYTES=str(CAP),
            HOKUSAI_MAX_PREDICTIONS_BYTES=str(CAP),
            **settings,
        )
        if source is not None:
            env["PYTHONPATH"] = str(source)
        key = migrate_and_create_key(env)
        process, url = serve(env, log=base / "service.log")
        try:
            wait_ready(url, process)
            yield Service(url, key, process, base, source)
        finally:
            stop(process)


class HealthProbe:
    """Polls /health every 50 ms on its own thread; the slowest answer is the figure."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.slowest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=120) as client:
            while not self._stop.is_set():
                began = time.perf_counter()
                with suppress(httpx.HTTPError):
                    client.get(f"{self.url}/health")
                self.slowest = max(self.slowest, time.perf_counter() - began)
                self._stop.wait(0.05)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


# Raw requests ------------------------------------------------------------------------------------


def part(name: str, value: bytes, *, extra: bytes = b"") -> bytes:
    return f'Content-Disposition: form-data; name="{name}"'.encode() + extra + b"\r\n\r\n" + value


def body_of(boundary: str, parts: Iterable[bytes], *, close: bool = True) -> bytes:
    b = boundary.encode()
    out = b"".join(b"--" + b + b"\r\n" + p + b"\r\n" for p in parts)
    return out + (b"--" + b + b"--\r\n" if close else b"")


def fields(**values: str) -> list[bytes]:
    return [part(k, v.encode()) for k, v in values.items()]


def request_head(svc: Service, path: str, boundary: str, length: int | None) -> bytes:
    host = urlsplit(svc.url).netloc
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}",
        f"Authorization: Bearer {svc.key}",
        f"Content-Type: multipart/form-data; boundary={boundary}",
        "Connection: close",
        f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def connect(svc: Service) -> socket.socket:
    parts = urlsplit(svc.url)
    return socket.create_connection((parts.hostname, parts.port))


def read_status(sock: socket.socket, timeout: float = 300) -> tuple[int, bytes]:
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data or len(data) < 65536:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    if not data.startswith(b"HTTP/1.1 "):
        return 0, data
    return int(data[9:12]), data.partition(b"\r\n\r\n")[2]


def post_raw(svc: Service, path: str, boundary: str, body: bytes) -> tuple[int, bytes, float]:
    began = time.perf_counter()
    with connect(svc) as sock:
        sock.sendall(request_head(svc, path, boundary, len(body)))
        with suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(body)
        status, rest = read_status(sock)
    return status, rest, time.perf_counter() - began


def post_chunked(
    svc: Service, path: str, boundary: str, chunks: Iterable[bytes]
) -> tuple[int, int, float]:
    """Send a chunked body until the server answers; returns status, bytes sent, seconds."""
    began = time.perf_counter()
    sent = 0
    with connect(svc) as sock:
        sock.sendall(request_head(svc, path, boundary, None))
        sock.setblocking(False)
        for chunk in chunks:
            frame = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
            try:
                sock.setblocking(True)
                sock.settimeout(60)
                sock.sendall(frame)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                break
            sent += len(chunk)
        else:
            with suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(b"0\r\n\r\n")
        status, _ = read_status(sock)
    return status, sent, time.perf_counter() - began


def code_of(rest: bytes) -> str:
    try:
        body = rest.split(b"\r\n0\r\n")[0]
        start = body.index(b"{")
        return str(json.loads(body[start : body.rindex(b"}") + 1]).get("code"))
    except ValueError:
        return rest[:80].decode("latin-1")


@dataclass
class Result:
    row: str
    attack: str
    outcome: list[str] = field(default_factory=list)

    def say(self, text: str) -> None:
        self.outcome.append(text)
        print(f"  {text}", flush=True)


# The rows ----------------------------------------------------------------------------------------


def row1(svc: Service) -> Result:
    res = Result("1", "predictions file names that are paths, in every encoding")
    outside = svc.base / "outside"
    rel = "../../../../outside/"
    names: list[tuple[str, bytes]] = [
        ("relative", f'; filename="{rel}r1-relative.csv"'.encode()),
        ("absolute", f'; filename="{outside}/r1-absolute.csv"'.encode()),
        (
            "RFC 2231",
            b"; filename*=UTF-8''" + f"{rel}r1-rfc2231.csv".replace("/", "%2F").encode(),
        ),
        (
            "RFC 2047",
            b'; filename="=?utf-8?B?' + base64.b64encode(f"{rel}r1-rfc2047.csv".encode()) + b'?="',
        ),
        ("NUL", b'; filename="a\x00b.csv"'),
        ("long", b'; filename="' + b"a" * 5000 + b'.csv"'),
        ("nested", b'; filename="a/b/c/d.csv"'),
    ]
    for label, disposition in names:
        # A fresh token each time: an accepted registration leaves its token registered.
        path = f"/models/{svc.token('R1')}/register"
        boundary = uuid.uuid4().hex
        body = body_of(
            boundary,
            [
                *fields(metric="auroc", baseline="0.5"),
                part("predictions", b"y_true,y_score\n1,0.9\n0,0.1\n", extra=disposition),
                part("model_file", PICKLE, extra=b'; filename="m.pkl"'),
            ],
        )
        status, rest, _ = post_raw(svc, path, boundary, body)
        res.say(f"{label}: {status} {code_of(rest)}")
    written = sorted(p.name for p in outside.iterdir())
    res.say(f"files written outside the service's folders: {written or 'none'}")
    return res


def row2(svc: Service) -> Result:
    res = Result("2", "part headers as a weapon")
    token = svc.token("R2")
    path = f"/models/{token}/register"
    boundary = uuid.uuid4().hex
    params = b"; a=b" * (256 * 1024 // 5)
    body = body_of(boundary, [part("metric", b"auroc", extra=params)])
    with HealthProbe(svc.url) as probe:
        status, rest, took = post_raw(svc, path, boundary, body)
    res.say(
        f"256 KiB of '; a=b' in one part header: {status} {code_of(rest)} in {took:.1f} s, "
        f"slowest /health {probe.slowest:.2f} s"
    )
    rss = svc.rss_mib()
    with HealthProbe(svc.url) as probe:
        head = f"--{boundary}\r\nContent-Disposition: form-data; name=x".encode()
        chunks = [head, *[b"X" * MiB for _ in range(64)]]
        status, sent, took = post_chunked(svc, path, boundary, chunks)
    res.say(
        f"unterminated part header + 64 MiB: {status} after {sent / MiB:.1f} MiB sent, "
        f"{took:.1f} s, RSS {rss:.0f} -> {svc.rss_mib():.0f} MiB, "
        f"slowest /health {probe.slowest:.2f} s"
    )
    empty = [b'Content-Disposition: form-data; name="u"\r\n\r\n'[:-4]] * 100_000
    body = body_of(boundary, [e + b"\r\n\r\n" for e in empty])
    with HealthProbe(svc.url) as probe:
        status, rest, took = post_raw(svc, path, boundary, body)
    res.say(
        f"100,000 empty unknown parts: {status} {code_of(rest)} in {took:.1f} s, "
        f"slowest /health {probe.slowest:.2f} s"
    )

    def unknown_part() -> Iterator[bytes]:
        yield f'--{boundary}\r\nContent-Disposition: form-data; name="junk"\r\n\r\n'.encode()
        for _ in range(96):
            yield b"j" * MiB

    status, sent, took = post_chunked(svc, path, boundary, unknown_part())
    res.say(
        f"chunked unknown part of 96 MiB (caps 16+16 MiB): {status} after "
        f"{sent / MiB:.0f} MiB sent, {took:.1f} s"
    )
    return res


def _register(svc: Service, token: str, **extra: str) -> httpx.Response:
    data = {"metric": "auroc", "baseline": "0.5", "metric_value": "0.9", **extra}
    return httpx.post(
        f"{svc.url}/models/{token}/register",
        data=data,
        files={"model_file": ("model.pkl", PICKLE, "application/octet-stream")},
        headers=svc.auth,
        timeout=120,
    )


def row3(svc: Service) -> Result:
    res = Result("3", "model_name naming another token's deployed model")
    victim = svc.token("VICTIM")
    first = _register(svc, victim)
    assert first.status_code == 201, first.text
    httpx.patch(f"{svc.url}/tokens/{victim}", json={"status": "deployed"}, headers=svc.auth)
    attacker = svc.token("ATTACKER")
    r = _register(svc, attacker, model_name=f"hokusai-{victim}")
    body = r.json()
    res.say(
        f"model_name=hokusai-{victim}: {r.status_code} {body.get('code', '')} "
        f"model_name={body.get('model_name')} model_version={body.get('model_version')}"
    )
    custom = svc.token("OWNER")
    _register(svc, custom, model_name="team-model")
    r = _register(svc, svc.token("THIEF"), model_name="team-model")
    res.say(f"model_name of another token's custom model: {r.status_code} {r.json().get('code')}")
    return res


def row4(svc: Service) -> Result:
    res = Result("4", "predictions CSV of wide rows")
    token = svc.token("R4")
    row = b"1,0.5" + b"," * 994 + b"\n"
    csv = b"y_true,y_score\n" + row * ((CAP - 64 * 1024) // len(row))
    boundary = uuid.uuid4().hex
    body = body_of(
        boundary,
        [
            *fields(metric="auroc", baseline="0.5"),
            part("predictions", csv, extra=b'; filename="p.csv"'),
            part("model_file", PICKLE, extra=b'; filename="m.pkl"'),
        ],
    )
    before = svc.rss_mib()
    with HealthProbe(svc.url) as probe:
        status, rest, took = post_raw(svc, f"/models/{token}/register", boundary, body)
    res.say(
        f"{len(csv) / MiB:.1f} MiB CSV, rows of 1,000 fields: {status} {code_of(rest)} in "
        f"{took:.1f} s, RSS {before:.0f} -> {svc.rss_mib():.0f} MiB, "
        f"slowest /health {probe.slowest:.2f} s"
    )
    return res


def row5(svc: Service) -> Result:
    res = Result("5", "safetensors header of many keys")
    for target in (7.5 * MiB, CAP - 256 * 1024):
        token = svc.token("R5")
        entries: list[str] = []
        size = 0
        while size < target:
            entry = f'"t{len(entries)}":{{"dtype":"F32","shape":[0],"data_offsets":[0,0]}}'
            entries.append(entry)
            size += len(entry) + 1
        header = ("{" + ",".join(entries) + "}").encode()
        model = len(header).to_bytes(8, "little") + header
        boundary = uuid.uuid4().hex
        body = body_of(
            boundary,
            [
                *fields(metric="auroc", baseline="0.5", metric_value="0.9"),
                part("model_file", model, extra=b'; filename="m.safetensors"'),
            ],
        )
        before = svc.rss_mib()
        with HealthProbe(svc.url) as probe:
            status, rest, took = post_raw(svc, f"/models/{token}/register", boundary, body)
        res.say(
            f"{len(header) / MiB:.1f} MiB header, {len(entries):,} tensors: {status} "
            f"{code_of(rest)} in {took:.1f} s, RSS {before:.0f} -> {svc.rss_mib():.0f} MiB, "
            f"slowest /health {probe.slowest:.2f} s"
        )
    return res


def row6(svc: Service, connections: int = 200, seconds: float = 40.0) -> Result:
    res = Result("6", f"{connections} uploads sending a byte every 2 s, then dropped")
    token = svc.token("R6")
    boundary = uuid.uuid4().hex
    start = body_of(boundary, fields(metric="auroc", baseline="0.5", metric_value="0.9"))[:-4]
    start = start[: -len(boundary) - 2]
    start += b"--" + boundary.encode() + b"\r\n"
    start += b'Content-Disposition: form-data; name="model_file"; filename="m.pkl"\r\n\r\n'
    head = request_head(svc, f"/models/{token}/register", boundary, 10 * MiB)
    socks: list[socket.socket] = []
    for _ in range(connections):
        sock = connect(svc)
        sock.sendall(head + start)
        socks.append(sock)
    closed_by_server = 0
    selector = selectors.DefaultSelector()
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    began = time.monotonic()
    open_socks = set(socks)
    with HealthProbe(svc.url) as probe:
        while time.monotonic() - began < seconds and open_socks:
            for sock in list(open_socks):
                try:
                    sock.send(b"x")
                except OSError:
                    open_socks.discard(sock)
                    closed_by_server += 1
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline:
                for key, _ in selector.select(timeout=max(0.0, deadline - time.monotonic())):
                    ready = key.fileobj
                    assert isinstance(ready, socket.socket)
                    try:
                        data = ready.recv(65536)
                    except OSError:
                        data = b""
                    if ready in open_socks:
                        open_socks.discard(ready)
                        closed_by_server += 1
                    selector.unregister(ready)
                    del data
    res.say(
        f"closed by the server within {seconds:.0f} s: {closed_by_server} of {connections}; "
        f"slowest /health {probe.slowest:.2f} s"
    )
    for sock in socks:
        sock.close()
    time.sleep(3)
    rows, events = svc.rows_and_events(token)
    res.say(f"after the clients went away: {rows} registration rows, {events} events")
    return res


def row7(svc: Service) -> Result:
    res = Result("7", "non-UTF-8 bytes in part headers")
    token = svc.token("R7")
    cases = {
        "file name": part("model_file", PICKLE, extra=b'; filename="m\xff\xfe.pkl"'),
        "part name": b'Content-Disposition: form-data; name="model\xff"\r\n\r\nx',
        "content type": b'Content-Disposition: form-data; name="model_file"; filename="m.pkl"'
        b"\r\nContent-Type: application/\xff\r\n\r\n" + PICKLE,
    }
    for label, bad in cases.items():
        boundary = uuid.uuid4().hex
        body = body_of(boundary, [*fields(metric="auroc", baseline="0.5", metric_value="0.9"), bad])
        status, rest, _ = post_raw(svc, f"/models/{token}/register", boundary, body)
        res.say(f"{label}: {status} {code_of(rest)}")
    rows, events = svc.rows_and_events(token)
    res.say(f"recorded: {rows} registration rows, {events} events")
    return res


def row8(svc: Service) -> Result:
    res = Result("8", "failed authentications with a rotating X-Forwarded-For")
    refused = 0
    with httpx.Client() as client:
        for i in range(40):
            r = client.get(
                f"{svc.url}/tokens",
                headers={"Authorization": "Bearer hok_x_y", "X-Forwarded-For": f"203.0.113.{i}"},
            )
            refused += r.status_code == 429
    res.say(f"40 bad keys, each from a new X-Forwarded-For: {refused} refused with 429 (limit 20)")
    return res


def row9(svc: Service) -> Result:
    res = Result("9", "PATCH /tokens/{id} with 900 KB of metadata")
    token = svc.token("R9")
    r = httpx.patch(
        f"{svc.url}/tokens/{token}",
        json={"metadata": {"blob": "x" * 900_000}},
        headers=svc.auth,
    )
    got = httpx.get(f"{svc.url}/tokens/{token}", headers=svc.auth)
    res.say(f"{r.status_code} {r.json().get('code', '')}; stored {len(got.content):,} bytes")
    return res


def row10(svc: Service) -> Result:
    res = Result("10", "default caps")
    code = (
        "from app.config import Settings; from app.events.webhooks import sender;"
        "s = Settings(); print(s.max_upload_bytes, s.unpacked_limit, sender.EXCERPT_CHARS)"
    )
    env = {**os.environ}
    if svc.source is not None:
        env["PYTHONPATH"] = str(svc.source)
    for name in ("HOKUSAI_MAX_UPLOAD_BYTES", "HOKUSAI_MAX_UNPACKED_BYTES"):
        env.pop(name, None)
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=svc.source or Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    upload, unpacked, excerpt = (int(v) for v in out)
    res.say(
        f"MAX_UPLOAD_BYTES {upload / 2**30:.0f} GiB, unpacked limit {unpacked / 2**30:.0f} GiB, "
        f"receiver reply shown: {excerpt} characters"
    )
    return res


ROWS = {
    "1": row1,
    "2": row2,
    "3": row3,
    "4": row4,
    "5": row5,
    "6": row6,
    "7": row7,
    "8": row8,
    "9": row9,
    "10": row10,
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--source", type=Path, default=None)
    args = parser.parse_args(argv)
    for row in args.rows.split(","):
        print(f"row {row}", flush=True)
        with service(args.source) as svc:
            ROWS[row](svc)


if __name__ == "__main__":
    main()
