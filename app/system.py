"""Liveness and readiness probes."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

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
    """The database and MLflow both answer; 503 with the failing check otherwise."""
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
    return JSONResponse(
        {"status": "ok" if ok else "unavailable", "checks": checks},
        status_code=200 if ok else 503,
        headers=None if ok else {"Retry-After": "5"},
    )
