"""Refusing clients that keep presenting bad API keys.

Each client address may fail authentication `limit` times within a sliding window of
`window_seconds`; after that its requests are refused with 429 until the oldest failure leaves the
window, without the key being looked at. Successful authentications are not counted.

The counts live in this process's memory: with several API processes each keeps its own, so an
address may fail up to `limit` times per process. The number of tracked addresses is capped (the
least recently failing address is forgotten first), so a flood of spoofed addresses cannot grow
memory without bound.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from starlette.requests import Request

from app.config import Settings
from app.errors import TooManyRequests

DEFAULT_MAX_ADDRESSES = 10_000


class FailedAuthLimiter:
    """A sliding window of failed authentications per client address."""

    def __init__(
        self,
        *,
        limit: int,
        window_seconds: float,
        max_addresses: int = DEFAULT_MAX_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window_seconds
        self.max_addresses = max_addresses
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, address: str) -> float | None:
        """Seconds until `address` may try again, or None when it is not blocked."""
        failures = self._failures.get(address)
        if failures is None:
            return None
        now = self._clock()
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[address]
            return None
        if len(failures) < self.limit:
            return None
        return failures[0] + self.window - now

    def check(self, address: str) -> None:
        """Raise `TooManyRequests` when `address` has failed too often lately."""
        wait = self.retry_after(address)
        if wait is not None:
            seconds = max(1, math.ceil(wait))
            raise TooManyRequests(
                f"too many failed authentications from this address; retry in {seconds} s",
                headers={"Retry-After": str(seconds)},
            )

    def record_failure(self, address: str) -> None:
        failures = self._failures.get(address)
        if failures is None:
            while len(self._failures) >= self.max_addresses:
                self._failures.popitem(last=False)
            # Only the last `limit` failures matter, so each address holds at most that many.
            failures = self._failures[address] = deque(maxlen=self.limit)
        else:
            self._failures.move_to_end(address)
        failures.append(self._clock())

    def __len__(self) -> int:
        return len(self._failures)


def client_address(request: Request) -> str:
    """The caller's address (behind a trusted proxy, uvicorn's proxy_headers has set it)."""
    return request.client.host if request.client is not None else "unknown"


def failed_auth_limiter(request: Request) -> FailedAuthLimiter:
    """The app's limiter, made on first use from the app's settings."""
    state = request.app.state
    limiter: FailedAuthLimiter | None = getattr(state, "failed_auth_limiter", None)
    if limiter is None:
        settings: Settings = state.settings
        limiter = FailedAuthLimiter(
            limit=settings.auth_failure_limit, window_seconds=settings.auth_failure_window_seconds
        )
        state.failed_auth_limiter = limiter
    return limiter
