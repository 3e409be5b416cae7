"""The connection every resource's methods share: `ClientBase` (the key, the URL, `request`)."""

from __future__ import annotations

import os
import secrets
from typing import Any, Protocol, Self
from urllib.parse import quote, urlsplit

import httpx

from hokusai_client import __version__
from hokusai_client.config import API_KEY_VARIABLE, resolve_api_key, resolve_api_url
from hokusai_client.errors import UsageError
from hokusai_client.transport import OnRetry, ServiceJSON, Transport, json_of, tls_verification
from hokusai_client.uploads import Advance

# Registering a large model takes the service a while after the last byte (MLflow copies it).
REGISTER_READ_TIMEOUT = 900.0
# `GET /events?wait=` long-polls at most this long on the service's side.
EVENTS_WAIT_SECONDS = 30
EVENTS_MAX_FAILURES = 10
# Polling an evaluating registration: from POLL_FIRST seconds, growing to POLL_MAX.
POLL_FIRST = 0.5
POLL_MAX = 5.0
DEFAULT_WAIT_SECONDS = 3600.0


class UploadProgress(Protocol):
    """What an upload reports: a task per file pass, notes between them."""

    def task(self, description: str, total: int) -> Advance | None: ...

    def note(self, text: str) -> None: ...


def _path(*parts: str) -> str:
    return "/" + "/".join(quote(part, safe="") for part in parts)


def _multipart() -> str:
    """A multipart content type with a boundary of our own: every retry sends the same bytes."""
    return f"multipart/form-data; boundary=hokusai-{secrets.token_hex(16)}"


class ClientBase:
    """One service's URL and key over one httpx client; the methods come from the resource
    mixins that `HokusaiClient` puts together."""

    def __init__(
        self,
        api_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        on_retry: OnRetry | None = None,
        key_source: str | None = None,
        user_agent: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.api_url = resolve_api_url(api_url)
        if urlsplit(self.api_url).scheme not in ("http", "https"):
            raise UsageError(f"--api-url must be an http:// or https:// URL, not {self.api_url!r}")
        if api_key is None and key_source is None:
            api_key, key_source = resolve_api_key(
                os.environ.get(API_KEY_VARIABLE), API_KEY_VARIABLE, self.api_url
            )
        self.api_key = api_key
        self.key_source = key_source
        headers = {
            "User-Agent": user_agent or f"hokusai-client/{__version__}",
            "Accept": "application/json, application/problem+json",
        }
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        http = httpx.Client(
            base_url=self.api_url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            follow_redirects=False,
            transport=transport,
            verify=tls_verification(self.api_url),
        )
        self._transport = Transport(
            http, api_url=self.api_url, timeout=timeout, retries=retries, on_retry=on_retry
        )

    def close(self) -> None:
        self._transport.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Any request, with the client's key, retries and error mapping (see Transport.request)."""
        return self._transport.request(method, path, **kwargs)

    def _json(self, method: str, path: str, **kwargs: Any) -> ServiceJSON:
        return json_of(self.request(method, path, **kwargs))
