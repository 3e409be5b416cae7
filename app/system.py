"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Any, Literal

import anyio
import redis.asyncio as redis
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import RedisError

from app.evaluation.service import sandbox_usable
from app.openapi import problem_responses

router = APIRouter(tags=["system"])

READY_TIMEOUT_SECONDS = 5.0


class Health(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})

    status: Literal["ok"]


class Readiness(BaseModel):
    """Whether the service can take work, and each dependency's check."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"status": "ok", "checks": {"database": "ok", "mlflow": "ok"}}]
        }
    )

    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(
        description="`ok` or `error: <exception type>` for `database`, `mlflow` and, when "
        "configured, `redis`"
    )
    sandbox: dict[str, Any] | None = Field(
        default=None,
        description="how this process isolates models it evaluates (probed at start-up): "
        "`mode` (bubblewrap, unshare, process or none), `isolated`, `evaluates` (whether it "
        "accepts evaluations) and `detail`",
    )


_NOT_READY = {
    "status": "unavailable",
    "checks": {"database": "ok", "mlflow": "error: TimeoutError"},
}


@router.get("/health", summary="Liveness probe", responses=problem_responses())
async def health() -> Health:
    """The process is alive (no dependency is checked).

    For the orchestrator's liveness probe; needs no API key and is not logged per request.
    """
    return Health(status="ok")


@router.get(
    "/ready",
    summary="Readiness probe",
    response_model=Readiness,
    responses={
        503: {
            "model": Readiness,
            "description": "The database or MLflow does not answer; `checks` says which. "
            "Carries `Retry-After`.",
            "content": {"application/json": {"example": _NOT_READY}},
            "headers": {
                "Retry-After": {"description": "seconds to wait", "schema": {"type": "string"}}
            },
        },
        **problem_responses(),
    },
)
async def ready(request: Request) -> JSONResponse:
    """The database and MLflow both answer; 503 with the failing check otherwise.

    For the orchestrator's readiness probe and load balancers; needs no API key. Each check
    gives up after 5 s. Redis, when configured, is reported too but does not make the service
    unready: events wait in the outbox until it is back.
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
    evaluation = getattr(state, "evaluation", None)
    sandbox = None
    if evaluation is not None:
        sandbox = {
            "mode": evaluation.sandbox.mode.value,
            "isolated": evaluation.sandbox.isolated,
            "evaluates": sandbox_usable(settings, evaluation.sandbox),
            "detail": evaluation.sandbox.detail,
        }
    return JSONResponse(
        {"status": "ok" if ok else "unavailable", "checks": checks, "sandbox": sandbox},
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
