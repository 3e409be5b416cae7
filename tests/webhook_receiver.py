"""A real HTTP server that receives webhooks in tests: it records, verifies and answers as told.

    with WebhookReceiver(secret=endpoint_secret) as receiver:   # or `async with`
        receiver.script(Reply.status(500), Reply.ok())          # answers for the next 2 requests
        ...                                                     # POST to receiver.url
        first, second = await receiver.wait_for(2)              # (`wait_for_sync` in sync code)
        assert second.signature_ok and second.json()["event_type"] == "ping"

It listens on 127.0.0.1 on a free port, in a background thread (one more thread per connection),
so it serves just the same whether the test's event loop is busy or blocked. HTTP/1.1 keep-alive
is on, as with a real receiver.

Answers: each request takes the next scripted `Reply` (see `script`); when the script is empty,
`responder(request)` decides if one was given (returning None falls through), else `default`
(200 by default). A `Reply` can set the status, headers and body, wait before answering
(`delay`, capped at `MAX_DELAY` and cut short by `stop()`), or drop the connection unanswered.

Records: `requests` lists every `ReceivedRequest` in arrival order (headers with lower-case names,
the raw body, both signature checks, the reply it got); `connections` counts accepted TCP
connections, so a test can prove that nothing connected at all.

TLS: pass `ssl_context` (a server-side `ssl.SSLContext`) and the URL becomes https.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self

from standardwebhooks import Webhook

MAX_DELAY = 30.0
MAX_BODY = 16 * 1024 * 1024


@dataclass(frozen=True)
class Reply:
    """How to answer one request."""

    status: int = 200
    body: bytes = b'{"received":true}'
    headers: Mapping[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    delay: float = 0.0  # seconds to wait before answering
    drop: bool = False  # close the connection without any answer

    @classmethod
    def ok(cls, body: bytes = b'{"received":true}') -> Reply:
        return cls(200, body)

    @classmethod
    def with_status(
        cls, status: int, body: bytes = b"", headers: Mapping[str, str] | None = None
    ) -> Reply:
        return cls(status, body, dict(headers or {"Content-Type": "text/plain"}))

    @classmethod
    def gone(cls) -> Reply:
        return cls.with_status(410, b"gone")

    @classmethod
    def redirect(cls, location: str, status: int = 302) -> Reply:
        return cls(status, b"", {"Location": location})

    @classmethod
    def retry_after(cls, value: str, status: int = 503) -> Reply:
        return cls.with_status(status, b"busy", {"Retry-After": value})

    @classmethod
    def slow(cls, seconds: float, status: int = 200) -> Reply:
        return cls(status, b"late", {"Content-Type": "text/plain"}, delay=seconds)

    @classmethod
    def hang_up(cls) -> Reply:
        return cls(drop=True)


@dataclass(frozen=True)
class ReceivedRequest:
    """One request as it arrived."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    received_at: float  # time.monotonic()
    reply: Reply
    # None when the receiver has no secret to check with.
    standard_signature_ok: bool | None
    legacy_signature_ok: bool | None
    verify_error: str | None
    received_wall: float = 0.0  # time.time(), to compare with timestamps taken elsewhere

    @property
    def signature_ok(self) -> bool:
        """Both the Standard Webhooks and the X-Hokusai-Signature checks passed."""
        return bool(self.standard_signature_ok and self.legacy_signature_ok)

    def json(self) -> Any:
        return json.loads(self.body)


class WebhookReceiver:
    """See the module docstring."""

    def __init__(
        self,
        *,
        secret: str | None = None,
        default: Reply | None = None,
        responder: Callable[[ReceivedRequest], Reply | None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.secret = secret
        self.default = default or Reply()
        self.responder = responder
        self._ssl_context = ssl_context
        self._host = host
        self._lock = threading.Lock()
        self._script: deque[Reply] = deque()
        self._requests: list[ReceivedRequest] = []
        self._connections = 0
        self._open: set[socket.socket] = set()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # Lifecycle -----------------------------------------------------------------------------------

    def start(self) -> Self:
        server = _Server((self._host, 0), _Handler, receiver=self)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        with self._lock:
            still_open = list(self._open)
        for sock in still_open:  # unblock handlers waiting on a kept-alive connection
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        return self.start()

    async def __aexit__(
        self,
        _type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    # Addresses -----------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._server is not None, "the receiver is not running"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The URL of the `/hook` path."""
        return self.url_for("/hook")

    def url_for(self, path: str, *, host: str | None = None) -> str:
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://{host or self._host}:{self.port}{path}"

    # Scripting and records -----------------------------------------------------------------------

    def script(self, *replies: Reply) -> None:
        """Queue answers for the next requests, in order (after any still queued)."""
        with self._lock:
            self._script.extend(replies)

    @property
    def requests(self) -> list[ReceivedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def connections(self) -> int:
        """TCP connections accepted so far (TLS handshakes included, failed or not)."""
        with self._lock:
            return self._connections

    def clear(self) -> None:
        """Forget the requests, the connection count and any unused script."""
        with self._lock:
            self._requests.clear()
            self._script.clear()
            self._connections = 0

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[ReceivedRequest]:
        """The first `count` requests, once they have arrived; AssertionError after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            requests = self.requests
            if len(requests) >= count:
                return requests[:count]
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} requests, received {len(requests)}")
            await asyncio.sleep(0.01)

    def wait_for_sync(self, count: int, timeout: float = 5.0) -> list[ReceivedRequest]:
        deadline = time.monotonic() + timeout
        while True:
            requests = self.requests
            if len(requests) >= count:
                return requests[:count]
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} requests, received {len(requests)}")
            time.sleep(0.01)

    # Internals, called from the server's threads -------------------------------------------------

    def _accepted(self, sock: socket.socket) -> None:
        with self._lock:
            self._connections += 1
            self._open.add(sock)

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.add(sock)

    def _closed(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)

    def _record(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        wall = time.time()
        standard, legacy, error = self._verify(headers, body)
        provisional = ReceivedRequest(
            method, path, headers, body, time.monotonic(), self.default, standard, legacy, error
        )
        with self._lock:
            reply = self._script.popleft() if self._script else None
        if reply is None and self.responder is not None:
            reply = self.responder(provisional)
        reply = reply or self.default
        request = ReceivedRequest(
            method,
            path,
            headers,
            body,
            provisional.received_at,
            reply,
            standard,
            legacy,
            error,
            wall,
        )
        with self._lock:
            self._requests.append(request)
        return reply

    def _verify(
        self, headers: dict[str, str], body: bytes
    ) -> tuple[bool | None, bool | None, str | None]:
        if self.secret is None:
            return None, None, None
        errors: list[str] = []
        try:
            Webhook(self.secret).verify(body, headers)
            standard = True
        except Exception as e:
            standard = False
            errors.append(f"standard: {e}")
        expected = "sha256=" + hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
        # During a secret rotation a receiver still on the old secret finds its signature in
        # X-Hokusai-Signature-Previous.
        legacy = any(
            hmac.compare_digest(expected, headers.get(name, ""))
            for name in ("x-hokusai-signature", "x-hokusai-signature-previous")
        )
        if not legacy:
            errors.append("legacy: X-Hokusai-Signature does not match")
        return standard, legacy, "; ".join(errors) or None

    def _pause(self, seconds: float) -> None:
        self._stopping.wait(min(max(seconds, 0.0), MAX_DELAY))

    @property
    def _tls(self) -> ssl.SSLContext | None:
        return self._ssl_context


class _Server(ThreadingHTTPServer):
    # Room for every connection a concurrent sender opens at once (the default is 5).
    request_queue_size = 256
    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        *,
        receiver: WebhookReceiver,
    ) -> None:
        self.receiver = receiver
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.receiver._accepted(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.receiver._closed(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that time out or hang up are part of the tests


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10  # an idle kept-alive connection is closed after this
    server: _Server

    def setup(self) -> None:
        context = self.server.receiver._tls
        if context is not None:
            plain = self.request
            # Wrapping detaches the plain socket: track (and later close) the TLS one instead.
            self.request = context.wrap_socket(plain, server_side=True)
            self.server.receiver._closed(plain)
            self.server.receiver._track(self.request)
        super().setup()

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            if self.server.receiver._tls is not None:
                self.server.receiver._closed(self.request)
                self.request.close()

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        receiver = self.server.receiver
        headers = {name.lower(): value for name, value in self.headers.items()}
        body = self._read_body(headers)
        reply = receiver._record(self.command, self.path, headers, body)
        if reply.delay:
            receiver._pause(reply.delay)
        if reply.drop:
            self.close_connection = True
            return
        try:
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(reply.body)
            self.wfile.flush()
        except OSError:  # the client gave up first
            self.close_connection = True

    do_POST = do_GET = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

    def _read_body(self, headers: dict[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = min(int(headers.get("content-length", "0") or 0), MAX_BODY)
        return self.rfile.read(length) if length else b""
