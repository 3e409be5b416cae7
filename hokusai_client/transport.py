"""One request to the service, with bounded retries of transient failures (through stamina).

What is retried: a connection that could not be made; a connection lost or an answer timed out,
when repeating the request is harmless (a GET, or a registration under its Idempotency-Key); a 503
or 429 with `Retry-After` (honoured up to 30 s); and a 409 `registration_in_progress` after such a
loss, which is most likely the first attempt still running. Everything else is answered at once.
"""

from __future__ import annotations

import os
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import stamina

from hokusai_client.errors import (
    ApiError,
    ConnectionFailed,
    UnexpectedResponse,
    UsageError,
    error_for_status,
)

if TYPE_CHECKING:
    from stamina import Attempt

MAX_RETRY_AFTER = 30.0
BACKOFF_INITIAL = 0.5
BACKOFF_MAX = 8.0
BACKOFF_JITTER = 0.5
_PROXY_VARIABLES = frozenset({"http_proxy", "https_proxy", "all_proxy"})


@dataclass(frozen=True, slots=True)
class RetryNotice:
    """Told to `on_retry` before the client waits and tries again."""

    attempt: int  # the attempt that failed, from 1
    attempts: int  # how many attempts in all
    wait: float  # seconds until the next one (at least; stamina adds jitter to a back-off)
    reason: str
    exact: bool  # the wait is the service's Retry-After, not a jittered back-off


OnRetry = Callable[[RetryNotice], None]


class ServiceJSON(dict[str, Any]):
    """A JSON object the service answered, with the body as it came (`text`) and its status."""

    def __init__(self, body: Mapping[str, Any], *, text: str, status_code: int) -> None:
        super().__init__(body)
        self.text = text
        self.status_code = status_code


class _RetryableAnswer(Exception):
    def __init__(self, response: httpx.Response, wait: float | None, reason: str) -> None:
        super().__init__(reason)
        self.response = response
        self.wait = wait
        self.reason = reason


def tls_verification(api_url: str) -> ssl.SSLContext | bool:
    """httpx's `verify` for a client of `api_url`.

    httpx loads the whole CA bundle when a client is made (tens of milliseconds, a large part of
    the command line's start-up) even when every request is plain HTTP. A client of an http://
    service gets a TLS context that trusts no certificate instead: nothing is loaded, and should
    a request ever reach an https:// URL, its verification fails rather than passes. Through a
    proxy (which may itself speak TLS) the client keeps the usual verification.
    """
    if api_url.lower().startswith("https:") or any(
        name.lower() in _PROXY_VARIABLES for name in os.environ
    ):
        return True
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def describe(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def problem_of(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def api_error(response: httpx.Response, api_url: str) -> ApiError:
    problem = problem_of(response)
    return error_for_status(
        response.status_code,
        problem if problem.get("code") else {},
        text=response.text,
        reason=response.reason_phrase,
        api_url=api_url,
    )


def json_of(response: httpx.Response) -> ServiceJSON:
    """The answer's JSON object, keeping the body as it came."""
    try:
        body = response.json()
    except ValueError as e:
        raise UnexpectedResponse(
            f"the service answered HTTP {response.status_code} with a body that is not JSON",
            status=response.status_code,
            text=response.text[:300],
        ) from e
    if not isinstance(body, dict):
        raise UnexpectedResponse(
            f"the service answered HTTP {response.status_code} with JSON that is not an object",
            status=response.status_code,
            text=response.text[:300],
        )
    return ServiceJSON(body, text=response.text, status_code=response.status_code)


class _RetryPolicy:
    """Which failures of one request are tried again, and after how long (stamina's `on`).

    A request that may have reached the service is sent again only when it is idempotent; an
    answer's Retry-After is waited out exactly (capped), anything else backs off.
    """

    def __init__(self, *, idempotent: bool, attempts: int, on_retry: OnRetry | None) -> None:
        self.idempotent = idempotent
        self.attempts = attempts
        self.on_retry = on_retry
        self.current: Attempt | None = None
        # Whether an earlier attempt may have reached the service: a 409 registration_in_progress
        # is then likely our own first attempt, still running, and worth waiting for.
        self.sent_before = False

    def decide(self, error: Exception) -> bool | float:
        current = self.current
        assert current is not None
        if isinstance(error, httpx.UnsupportedProtocol):
            return False
        if isinstance(error, httpx.TransportError):
            reached = not isinstance(error, httpx.ConnectError | httpx.ConnectTimeout)
            self.sent_before = self.sent_before or reached
            if reached and not self.idempotent:
                return False
            wait, reason = None, describe(error)
        elif isinstance(error, _RetryableAnswer):
            wait, reason = error.wait, error.reason
        else:
            return False
        if current.num >= self.attempts:
            return False
        exact = wait is not None
        wait = min(max(wait, 0.0), MAX_RETRY_AFTER) if wait is not None else current.next_wait
        if self.on_retry is not None:
            self.on_retry(RetryNotice(current.num, self.attempts, wait, reason, exact))
        return wait if exact else True


def _connection_failed(api_url: str, error: httpx.TransportError) -> ConnectionFailed:
    reached = not isinstance(error, httpx.ConnectError | httpx.ConnectTimeout)
    if not reached:
        message = f"cannot reach the service at {api_url} ({describe(error)})"
    else:
        message = f"the connection to {api_url} failed before an answer came ({describe(error)})"
    return ConnectionFailed(message, api_url=api_url, reached=reached)


class Transport:
    """An httpx.Client plus the retry policy above."""

    def __init__(
        self,
        http: httpx.Client,
        *,
        api_url: str,
        timeout: float,
        retries: int,
        on_retry: OnRetry | None,
    ) -> None:
        self.http = http
        self.api_url = api_url
        self.timeout = timeout
        self.retries = retries
        self.on_retry = on_retry

    def request(
        self,
        method: str,
        path: str,
        *,
        expected: Sequence[int] = (200,),
        idempotent: bool | None = None,
        read_timeout: float | None = None,
        retries: int | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send one request (again, within the policy); the answer if its status is `expected`,
        else the ApiError for it."""
        idempotent = method == "GET" if idempotent is None else idempotent
        attempts = 1 + (self.retries if retries is None else retries)
        timeout = httpx.Timeout(
            self.timeout, connect=min(self.timeout, 10.0), read=read_timeout or self.timeout
        )
        params = kwargs.pop("params", None)
        if params:
            kwargs["params"] = {k: v for k, v in params.items() if v is not None}
        policy = _RetryPolicy(idempotent=idempotent, attempts=attempts, on_retry=self.on_retry)
        try:
            for attempt in stamina.retry_context(
                on=policy.decide,
                attempts=attempts,
                timeout=None,
                wait_initial=BACKOFF_INITIAL,
                wait_max=BACKOFF_MAX,
                wait_jitter=BACKOFF_JITTER,
            ):
                policy.current = attempt
                with attempt:
                    response = self.http.request(method, path, timeout=timeout, **kwargs)
                    self._raise_if_retryable(response, sent_before=policy.sent_before)
                    return self._expect(response, expected)
        except _RetryableAnswer as e:
            return self._expect(e.response, expected)
        except httpx.UnsupportedProtocol as e:
            raise UsageError(f"--api-url: {e}") from e
        except httpx.TransportError as e:
            raise _connection_failed(self.api_url, e) from e
        raise AssertionError("unreachable: stamina either returns or raises")  # pragma: no cover

    @staticmethod
    def _raise_if_retryable(response: httpx.Response, *, sent_before: bool) -> None:
        status = response.status_code
        wait = retry_after(response)
        if status in (429, 503) and wait is not None:
            raise _RetryableAnswer(response, wait, f"HTTP {status}")
        if (
            status == 409
            and sent_before
            and problem_of(response).get("code") == "registration_in_progress"
        ):
            raise _RetryableAnswer(response, None, "the first attempt is still running")

    def _expect(self, response: httpx.Response, expected: Sequence[int]) -> httpx.Response:
        if response.status_code in expected:
            return response
        if response.status_code < 400:
            raise UnexpectedResponse(
                f"the service answered HTTP {response.status_code}, not "
                + " or ".join(map(str, expected)),
                status=response.status_code,
                text=response.text[:300],
            )
        raise api_error(response, self.api_url)
