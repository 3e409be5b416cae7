"""The HTTP transport of webhook deliveries: httpcore's connection pool over the vetting backend.

httpx's own `AsyncHTTPTransport` builds its pool with httpcore's default network backend and has
no parameter for another one. This transport is the same thin layer over a public
`httpcore.AsyncConnectionPool(network_backend=...)`, so every new connection goes through
`VettingBackend` (resolve, vet, connect to the vetted address). It speaks HTTP/1.1 only and never
reads proxy settings from the environment.

httpx and httpcore are pinned below their next major versions (pyproject.toml): this is their
public transport and network-backend interface, and httpx 1.0 is expected to change it.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Iterator

import httpcore
import httpx

from app.events.webhooks.ssrf import VettingBackend

# httpcore's exceptions and the httpx ones a caller handles; the most specific match wins.
_ERRORS: dict[type[Exception], type[httpx.TransportError]] = {
    httpcore.TimeoutException: httpx.TimeoutException,
    httpcore.ConnectTimeout: httpx.ConnectTimeout,
    httpcore.ReadTimeout: httpx.ReadTimeout,
    httpcore.WriteTimeout: httpx.WriteTimeout,
    httpcore.PoolTimeout: httpx.PoolTimeout,
    httpcore.NetworkError: httpx.NetworkError,
    httpcore.ConnectError: httpx.ConnectError,
    httpcore.ReadError: httpx.ReadError,
    httpcore.WriteError: httpx.WriteError,
    httpcore.ProxyError: httpx.ProxyError,
    httpcore.UnsupportedProtocol: httpx.UnsupportedProtocol,
    httpcore.ProtocolError: httpx.ProtocolError,
    httpcore.LocalProtocolError: httpx.LocalProtocolError,
    httpcore.RemoteProtocolError: httpx.RemoteProtocolError,
}


@contextlib.contextmanager
def _as_httpx_errors() -> Iterator[None]:
    """Raise httpcore's errors as their httpx counterparts; anything else passes unchanged."""
    try:
        yield
    except Exception as error:
        mapped: type[httpx.TransportError] | None = None
        for source, target in _ERRORS.items():
            if isinstance(error, source) and (mapped is None or issubclass(target, mapped)):
                mapped = target
        if mapped is None:
            raise
        raise mapped(str(error)) from error


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, stream: AsyncIterable[bytes]) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx_errors():
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        close = getattr(self._stream, "aclose", None)
        if close is not None:
            await close()


class VettedTransport(httpx.AsyncBaseTransport):
    """An httpx transport whose every connection is opened by the vetting backend."""

    def __init__(
        self, *, backend: VettingBackend, ssl_context: ssl.SSLContext, limits: httpx.Limits
    ) -> None:
        self._connections = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
            network_backend=backend,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not isinstance(request.stream, httpx.AsyncByteStream):
            raise TypeError("webhook requests carry an async body")
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,  # the timeouts httpx set for this request
        )
        with _as_httpx_errors():
            response = await self._connections.handle_async_request(core_request)
        if not isinstance(response.stream, AsyncIterable):
            raise TypeError("httpcore's async pool answered with a sync body")
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_ResponseStream(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._connections.aclose()
