"""The Redis channel: each event goes to the `hokusai:events` stream and pub/sub channel."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import redis.asyncio as redis
from redis.exceptions import RedisError

from app.events.webhooks.sender import AttemptResult

STREAM = "hokusai:events"
CHANNEL = "hokusai:events"


class RedisPublisher:
    """Publishes envelopes; failures come back as results, for the dispatcher to retry."""

    def __init__(self, url: str, *, stream_maxlen: int, timeout: float = 5.0) -> None:
        self._client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        self._stream_maxlen = stream_maxlen

    async def publish(self, envelope: Mapping[str, Any]) -> AttemptResult:
        body = json.dumps(envelope, separators=(",", ":"))
        started = time.perf_counter()
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.xadd(
                    STREAM,
                    {
                        "event_id": str(envelope["event_id"]),
                        "event_type": str(envelope["event_type"]),
                        "event": body,
                    },
                    maxlen=self._stream_maxlen,
                    approximate=True,
                )
                pipe.publish(CHANNEL, body)
                await pipe.execute()
        except (RedisError, OSError) as e:
            return _result(started, ok=False, error=f"redis: {type(e).__name__}: {e}"[:500])
        return _result(started, ok=True, error=None)

    async def ping(self) -> None:
        await self._client.ping()

    async def aclose(self) -> None:
        await self._client.aclose()


def _result(started: float, *, ok: bool, error: str | None) -> AttemptResult:
    return AttemptResult(
        ok=ok,
        status_code=None,
        error=error,
        duration_ms=(time.perf_counter() - started) * 1000,
        response_excerpt=None,
        retry_after=None,
        gone=False,
        blocked=False,
    )
