"""Per-request context: a request id on every response and every log line of the request."""

from __future__ import annotations

import re
import time
import uuid

import structlog
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = structlog.get_logger("app.request")

_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
# Probes are polled constantly; their lines would drown everything else.
_QUIET_PATHS = frozenset({"/health", "/ready"})


class RequestContextMiddleware:
    """Pure ASGI (no body buffering), so streamed uploads pass straight through."""

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
            if scope["path"] not in _QUIET_PATHS:
                log.info(
                    "request_finished",
                    status=status_code,
                    duration_ms=round((time.perf_counter() - started) * 1000, 2),
                )


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _CLIENT_REQUEST_ID.fullmatch(candidate):
                return candidate
    return uuid.uuid4().hex
