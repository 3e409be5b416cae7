"""Refusing clients that keep presenting bad API keys.

Each client address may fail authentication `limit` times within a sliding window of
`window_seconds`; after that its requests are refused with 429 until the oldest failure leaves the
window, without the key being looked at. Successful authentications are not counted.

With `HOKUSAI_REDIS_URL` set, the failures are counted in Redis (a moving window from the `limits`
library), so every API process of a deployment shares one count per address; should Redis fail,
each process falls back to its own count until it answers again. Without Redis the counts live in
this process's memory: the number of tracked addresses is capped (the least recently failing
address is forgotten first), so a flood of addresses cannot grow memory without bound.

The address is the connection's peer, or what a reverse proxy listed in
`HOKUSAI_FORWARDED_ALLOW_IPS` says in X-Forwarded-For: `serve` trusts no proxy by default, so a
client cannot choose its own address with a header.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable

import structlog
from limits import RateLimitItemPerSecond
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from redis.exceptions import RedisError
from starlette.requests import Request

from app.config import Settings
from app.errors import TooManyRequests

log = structlog.get_logger(__name__)

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
            raise _too_many(wait)

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


def _too_many(wait: float) -> TooManyRequests:
    seconds = max(1, math.ceil(wait))
    return TooManyRequests(
        f"too many failed authentications from this address; retry in {seconds} s",
        headers={"Retry-After": str(seconds)},
    )


class SharedFailedAuthLimiter:
    """The same limit counted in Redis, shared by every process; the local one while Redis fails."""

    def __init__(self, *, redis_url: str, limit: int, window_seconds: float) -> None:
        self.item = RateLimitItemPerSecond(limit, max(1, math.ceil(window_seconds)))
        self.storage = RedisStorage(
            "async+" + redis_url, implementation="redispy", key_prefix="hokusai:auth-failures"
        )
        self.strategy = MovingWindowRateLimiter(self.storage)
        self.local = FailedAuthLimiter(limit=limit, window_seconds=window_seconds)

    async def check(self, address: str) -> None:
        try:
            if await self.strategy.test(self.item, address):
                return
            stats = await self.strategy.get_window_stats(self.item, address)
        except (RedisError, OSError) as e:
            log.warning("auth_limit_redis_unavailable", error=str(e)[:200])
            self.local.check(address)
            return
        raise _too_many(stats.reset_time - time.time())

    async def record_failure(self, address: str) -> None:
        try:
            await self.strategy.hit(self.item, address)
        except (RedisError, OSError) as e:
            log.warning("auth_limit_redis_unavailable", error=str(e)[:200])
            self.local.record_failure(address)


def client_address(request: Request) -> str:
    """The caller's address: the peer, or what a proxy in HOKUSAI_FORWARDED_ALLOW_IPS said."""
    return request.client.host if request.client is not None else "unknown"


def failed_auth_limiter(request: Request) -> FailedAuthLimiter | SharedFailedAuthLimiter:
    """The app's limiter, made on first use from the app's settings."""
    state = request.app.state
    limiter: FailedAuthLimiter | SharedFailedAuthLimiter | None = getattr(
        state, "failed_auth_limiter", None
    )
    if limiter is None:
        settings: Settings = state.settings
        if settings.redis_url:
            limiter = SharedFailedAuthLimiter(
                redis_url=settings.redis_url,
                limit=settings.auth_failure_limit,
                window_seconds=settings.auth_failure_window_seconds,
            )
        else:
            limiter = FailedAuthLimiter(
                limit=settings.auth_failure_limit,
                window_seconds=settings.auth_failure_window_seconds,
            )
        state.failed_auth_limiter = limiter
    return limiter


async def refuse_if_blocked(request: Request, address: str) -> None:
    """Raise `TooManyRequests` when `address` has failed too often lately."""
    limiter = failed_auth_limiter(request)
    if isinstance(limiter, SharedFailedAuthLimiter):
        await limiter.check(address)
    else:
        limiter.check(address)


async def count_failure(request: Request, address: str) -> None:
    limiter = failed_auth_limiter(request)
    if isinstance(limiter, SharedFailedAuthLimiter):
        await limiter.record_failure(address)
    else:
        limiter.record_failure(address)
