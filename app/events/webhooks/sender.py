"""Sending one event to one webhook endpoint: signing, the SSRF policy, and reading the answer.

`WebhookSender.send` makes one attempt and reports what happened; it never raises for network or
HTTP trouble, and it never retries or follows redirects: the dispatcher decides what comes next.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import datetime as dt
import hashlib
import hmac
import json
import math
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from standardwebhooks.webhooks import EmptyWebhookSecretError, Webhook

from app.events.webhooks.ssrf import (
    BlockedAddress,
    Resolver,
    VettingBackend,
    describe_connect_error,
    host_reason,
)
from app.events.webhooks.transport import VettedTransport

USER_AGENT = "hokusai-webhooks/1"
# A receiver's reply is shown to webhooks:manage keys: enough to tell "ok" from an error page,
# never a page of whatever the receiver (or a host it was pointed at) returns.
EXCERPT_CHARS = 200
# Enough of the body to drain a typical answer (so the connection can be reused); a larger one is
# cut off and its connection closed rather than buffered.
MAX_READ_BYTES = 64 * 1024
MAX_RETRY_AFTER_SECONDS = 24 * 3600.0
MAX_CONNECT_SECONDS = 5.0
# After the answer's status line, reading the body may take this long even past the deadline.
BODY_GRACE_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class AttemptResult:
    ok: bool  # a 2xx answer
    status_code: int | None
    error: str | None  # a short reason: "timeout", "connection refused", "HTTP 500 ..."
    duration_ms: float
    response_excerpt: str | None  # the start of the answer's body, one line
    retry_after: float | None  # seconds, from Retry-After, clamped to [0, 24 h]
    gone: bool  # 410 Gone: the endpoint must be disabled
    blocked: bool  # refused by the SSRF policy before connecting


def encode_body(envelope: Mapping[str, Any]) -> bytes:
    """The exact bytes that are signed and sent."""
    return json.dumps(envelope, separators=(",", ":")).encode()


def signature_headers(
    *,
    secret: str,
    event_id: str,
    event_type: str,
    timestamp: int,
    body: bytes,
    previous_secret: str | None = None,
) -> dict[str, str]:
    """The headers of one delivery: Standard Webhooks plus the site's legacy signature.

    With a `previous_secret` (a rotation's overlap), `webhook-signature` carries both signatures,
    space-separated as the spec allows, and `X-Hokusai-Signature-Previous` the old legacy one.
    """
    signed_at = dt.datetime.fromtimestamp(timestamp, tz=dt.UTC)
    standard = _standard_signer(secret).sign(event_id, signed_at, body.decode())
    legacy = _legacy_signature(secret, body)
    headers = {
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": standard,
        "X-Hokusai-Signature": legacy,
        "X-Hokusai-Event": event_type,
        "X-Hokusai-Idempotency-Key": event_id,
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
    }
    if previous_secret is not None and previous_secret != secret:
        old = _standard_signer(previous_secret).sign(event_id, signed_at, body.decode())
        headers["webhook-signature"] = f"{standard} {old}"
        headers["X-Hokusai-Signature-Previous"] = _legacy_signature(previous_secret, body)
    return headers


def _legacy_signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _standard_signer(secret: str) -> Webhook:
    try:
        return Webhook(secret)
    except (binascii.Error, ValueError, EmptyWebhookSecretError):
        # A static secret from the environment that is not `whsec_<base64>`: sign with its bytes
        # so that X-Hokusai-Signature receivers still get the events.
        return Webhook(secret.encode())


def parse_retry_after(value: str | None, *, now: dt.datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or HTTP-date), within [0, 24 h]."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.UTC)
        seconds = (when - (now or dt.datetime.now(dt.UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


class WebhookSender:
    """Signs and POSTs envelopes over one shared HTTP client, one attempt per call."""

    def __init__(
        self,
        *,
        allow_private: bool,
        require_https: bool,
        timeout: float = 10.0,
        resolver: Resolver | None = None,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = 100,
    ) -> None:
        self.allow_private = allow_private
        self.require_https = require_https
        self.timeout = timeout
        transport = VettedTransport(
            backend=VettingBackend(allow_private=allow_private, resolver=resolver),
            ssl_context=ssl_context or httpx.create_ssl_context(),
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=min(max_connections, 20),
                keepalive_expiry=30.0,
            ),
        )
        self._client = httpx.AsyncClient(
            transport=transport,
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(
                connect=min(timeout, MAX_CONNECT_SECONDS), read=timeout, write=timeout, pool=timeout
            ),
        )

    async def send(
        self,
        *,
        url: str,
        secret: str,
        envelope: Mapping[str, Any],
        previous_secret: str | None = None,
        body: bytes | None = None,
    ) -> AttemptResult:
        """POST `envelope` to `url`, signed with `secret` (and `previous_secret` if given).

        `body`, when given, is sent (and signed) instead of the envelope's JSON: the same event in
        another payload format; the headers still name the envelope's event. One attempt; never
        raises for I/O.
        """
        started = time.perf_counter()
        refusal = self._refuse(url)
        if refusal is not None:
            return _failure(started, f"blocked: {refusal}", blocked=True)
        if body is None:
            body = encode_body(envelope)
        headers = signature_headers(
            secret=secret,
            event_id=str(envelope["event_id"]),
            event_type=str(envelope["event_type"]),
            timestamp=int(time.time()),
            body=body,
            previous_secret=previous_secret,
        )
        # A compressed answer would be inflated to read it; the excerpt is not worth that risk.
        headers["Accept-Encoding"] = "identity"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        try:
            async with asyncio.timeout_at(deadline):
                response = await self._client.send(
                    self._client.build_request("POST", url, content=body, headers=headers),
                    stream=True,
                )
        except BlockedAddress as e:
            return _failure(started, f"blocked: {e}", blocked=True)
        except httpx.ConnectTimeout:
            return _failure(started, "timeout while connecting")
        except (TimeoutError, httpx.TimeoutException):
            return _failure(started, f"timeout (no answer within {self.timeout:g} s)")
        except httpx.ConnectError as e:
            return _failure(started, describe_connect_error(e))
        except httpx.RemoteProtocolError as e:
            return _failure(started, f"connection closed: {_short(e)}")
        except (httpx.HTTPError, ssl.SSLError, OSError) as e:
            return _failure(started, f"{type(e).__name__}: {_short(e)}")
        try:
            raw = await self._read_some(response, max(deadline - loop.time(), BODY_GRACE_SECONDS))
        finally:
            with contextlib.suppress(httpx.HTTPError, OSError):
                await response.aclose()
        return self._outcome(started, response, raw)

    async def aclose(self) -> None:
        await self._client.aclose()

    def _refuse(self, url: str) -> str | None:
        """Why `url` may not be sent to at all, decided before any lookup."""
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as e:
            return f"invalid url ({_short(e)})"
        if parsed.scheme not in ("http", "https"):
            return f"scheme {parsed.scheme or '(none)'!r} is not allowed"
        if self.require_https and parsed.scheme != "https":
            return "https is required"
        if not parsed.host:
            return "the url has no host"
        if parsed.userinfo:
            return "credentials in the url are not allowed"
        if not self.allow_private:
            return host_reason(parsed.host)
        return None

    @staticmethod
    async def _read_some(response: httpx.Response, seconds: float) -> bytes:
        """At most MAX_READ_BYTES of the body; a slow or broken body just ends the excerpt."""
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(seconds):
                async for chunk in response.aiter_raw():
                    chunks.append(chunk)
                    size += len(chunk)
                    if size >= MAX_READ_BYTES:
                        break
        except (TimeoutError, httpx.HTTPError):
            pass
        return b"".join(chunks)[:MAX_READ_BYTES]

    @staticmethod
    def _outcome(started: float, response: httpx.Response, raw: bytes) -> AttemptResult:
        status = response.status_code
        error: str | None = None
        if 300 <= status < 400:
            location = response.headers.get("Location")
            target = location[:300] if location else "(no Location header)"
            error = f"redirect to {target} not followed"
        elif not 200 <= status < 300:
            error = f"HTTP {status} {response.reason_phrase}".strip()
        ok = 200 <= status < 300
        return AttemptResult(
            ok=ok,
            status_code=status,
            error=error,
            duration_ms=_elapsed_ms(started),
            response_excerpt=_excerpt(raw, response.charset_encoding),
            retry_after=None if ok else parse_retry_after(response.headers.get("Retry-After")),
            gone=status == 410,
            blocked=False,
        )


def _excerpt(raw: bytes, charset: str | None) -> str | None:
    if not raw:
        return None
    head = raw[: EXCERPT_CHARS * 4]
    try:
        text = head.decode(charset or "utf-8", errors="replace")
    except LookupError:
        text = head.decode("utf-8", errors="replace")
    # One line of printable text: no control characters or invisible formatting reach a reader.
    shown = "".join(char if char.isprintable() else " " for char in text[:EXCERPT_CHARS])
    return " ".join(shown.split()) or None


def _failure(started: float, error: str, *, blocked: bool = False) -> AttemptResult:
    return AttemptResult(
        ok=False,
        status_code=None,
        error=error,
        duration_ms=_elapsed_ms(started),
        response_excerpt=None,
        retry_after=None,
        gone=False,
        blocked=blocked,
    )


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _short(error: BaseException) -> str:
    return (str(error) or type(error).__name__)[:200]
