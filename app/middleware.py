"""Per-request context (a request id on every response and log line, the HTTP metrics) and request
size limits."""

from __future__ import annotations

import re
import time
import uuid
import weakref
from collections.abc import Iterable

import structlog
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import observability
from app.error_handlers import current_request_id, problem_response
from app.errors import AppError, PayloadTooLarge, RequestHeaderFieldsTooLarge

log = structlog.get_logger("app.request")

_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
# Probes are polled constantly; their lines would drown everything else.
_QUIET_PATHS = frozenset({"/health", "/ready"})
# The routes taking multipart uploads; each enforces its own limits while streaming to disk.
_UPLOAD_PATH = re.compile(r"/models/[^/]+/register|/tokens/[^/]+/benchmark")
# Metric labels take bounded values: anything else is counted as one of these.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "unmatched"


class RequestContextMiddleware:
    """Pure ASGI (no body buffering), so streamed uploads pass straight through.

    The outermost of the service's middleware, so its count and timing include the requests the
    limits refuse (413, 431) and the whole streamed upload of a registration.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            request_id=request_id, method=scope["method"], path=scope["path"]
        )
        started = time.perf_counter()
        status_code = 500
        method = scope["method"] if scope["method"] in _METHODS else "OTHER"
        in_progress = observability.HTTP_IN_PROGRESS.labels(method)
        in_progress.inc()

        async def send_with_id(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
                headers = MutableHeaders(scope=message)
                headers["X-Request-ID"] = request_id
            await send(message)

        # The context is not cleared on the way out: an unhandled error is rendered by Starlette's
        # outermost middleware after this one returns, and its 500 must carry the request id too.
        # Each request runs in its own task, so its context never leaks into another request.
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            duration = time.perf_counter() - started
            in_progress.dec()
            labels = (route_template(scope), method, str(status_code))
            observability.HTTP_REQUESTS.labels(*labels).inc()
            observability.HTTP_REQUEST_SECONDS.labels(*labels).observe(duration)
            if scope["path"] not in _QUIET_PATHS:
                log.info(
                    "request_finished",
                    status=status_code,
                    duration_ms=round(duration * 1000, 2),
                )


def route_template(scope: Scope) -> str:
    """The matched route's path template, never the raw path: metric labels stay bounded."""
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str) and path:
        return path
    # Refused before routing (413, 431), or nothing matched (404): look the path up among the
    # documented operations.
    for pattern, template in _templates(scope.get("app")):
        if pattern.fullmatch(scope["path"]):
            return template
    return UNMATCHED_ROUTE


_TEMPLATES: weakref.WeakKeyDictionary[object, list[tuple[re.Pattern[str], str]]] = (
    weakref.WeakKeyDictionary()
)


def _templates(app: object) -> list[tuple[re.Pattern[str], str]]:
    """The app's path templates as patterns, the most literal first; built once per app."""
    if app is None:
        return []
    found = _TEMPLATES.get(app)
    if found is None:
        try:
            paths = list(app.openapi()["paths"])  # type: ignore[attr-defined]
        except Exception:  # not a FastAPI app, or no schema: nothing to match against
            paths = []
        found = [
            (re.compile(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(path))), path)
            for path in sorted(paths, key=lambda p: (p.count("{"), p))
        ]
        _TEMPLATES[app] = found
    return found


def _request_id(scope: Scope) -> str:
    headers: Iterable[tuple[bytes, bytes]] = scope["headers"]
    for name, value in headers:
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _CLIENT_REQUEST_ID.fullmatch(candidate):
                return candidate
    return uuid.uuid4().hex


def _body_headers(headers: Iterable[tuple[bytes, bytes]]) -> tuple[bytes, int | None]:
    """The request's Content-Type (empty when none) and Content-Length (None when none or not
    a number); the last of each wins."""
    content_type = b""
    content_length: int | None = None
    for name, value in headers:
        if name == b"content-type":
            content_type = value
        elif name == b"content-length":
            try:
                content_length = int(value)
            except ValueError:
                content_length = None
    return content_type, content_length


class _BodyTooLarge(HTTPException):
    """Raised from `receive` once a streamed body passes the cap; rendered as 413 problem+json."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than {limit} bytes")


class RequestLimitsMiddleware:
    """Refuses requests with too many header fields (431) or an oversized non-multipart body (413).

    Pure ASGI: a declared `Content-Length` over the cap is refused before anything is read; a body
    without one (chunked) is counted as it streams in. Multipart uploads to the registration
    route are exempt: it enforces its own, much larger limit while streaming to disk. Elsewhere a
    multipart body is capped like any other (a JSON route would buffer it whole).
    """

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_headers: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_headers = max_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        if len(headers) > self.max_headers:
            await self._refuse(
                RequestHeaderFieldsTooLarge(
                    f"the request has {len(headers)} header fields; at most "
                    f"{self.max_headers} are accepted"
                ),
                scope,
                receive,
                send,
            )
            return
        content_type, content_length = _body_headers(headers)
        if content_type.lower().startswith(b"multipart/form-data") and _UPLOAD_PATH.fullmatch(
            scope["path"]
        ):
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        if content_length is not None and content_length > limit:
            await self._refuse(
                PayloadTooLarge(f"the request body is larger than {limit} bytes"),
                scope,
                receive,
                send,
            )
            return
        await self._counted(scope, receive, send, limit)

    async def _counted(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        """Run the app with the body counted as it streams in: past `limit`, 413."""
        received = 0
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge as e:
            # Normally the app's handler renders it; this catches a read outside any route.
            if response_started:
                raise
            await self._refuse(PayloadTooLarge(str(e.detail)), scope, receive, send)

    @staticmethod
    async def _refuse(error: AppError, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem_response(
            error.problem(current_request_id()), status=error.status, headers=error.headers
        )
        await response(scope, receive, send)
