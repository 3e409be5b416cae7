"""Liveness and readiness probes."""

from __future__ import annotations

import anyio
import redis.asyncio as redis
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

router = APIRouter(tags=["system"])

READY_TIMEOUT_SECONDS = 5.0


@router.get("/health")
async def health() -> dict[str, str]:
    """The process is alive (no dependency is checked)."""
    return {"status": "ok"}


@router.get(
    "/ready",
    responses={503: {"description": "a dependency does not answer; `checks` says which"}},
)
async def ready(request: Request) -> JSONResponse:
    """The database and MLflow both answer; 503 with the failing check otherwise.

    Redis, when configured, is reported too but does not make the service unready.
    """
    state = request.app.state
    checks: dict[str, str] = {}

    async def database() -> None:
        await state.database.ping()

    async def mlflow() -> None:
        await anyio.to_thread.run_sync(state.mlflow.ping, limiter=state.registration.mlflow_limiter)

    for name, probe in (("database", database), ("mlflow", mlflow)):
        try:
            with anyio.fail_after(READY_TIMEOUT_SECONDS):
                await probe()
            checks[name] = "ok"
        except Exception as e:  # a probe reports any failure rather than raising it
            checks[name] = f"error: {type(e).__name__}"
    ok = all(value == "ok" for value in checks.values())
    settings = state.settings
    if settings.redis_url:
        # Reported, not required: with Redis down, events wait in the outbox and nothing is lost.
        checks["redis"] = await _redis_check(settings.redis_url)
    return JSONResponse(
        {"status": "ok" if ok else "unavailable", "checks": checks},
        status_code=200 if ok else 503,
        headers=None if ok else {"Retry-After": "5"},
    )


async def _redis_check(url: str) -> str:
    client = redis.Redis.from_url(
        url, socket_timeout=READY_TIMEOUT_SECONDS, socket_connect_timeout=READY_TIMEOUT_SECONDS
    )
    try:
        await client.ping()
        return "ok"
    except (RedisError, OSError) as e:
        return f"error: {type(e).__name__}"
    finally:
        await client.aclose()
