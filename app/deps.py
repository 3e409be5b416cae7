"""FastAPI dependencies: settings, the database, MLflow, and the authenticated principal."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, TypeVar

import structlog
from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel.ext.asyncio.session import AsyncSession

from app.auth.models import Scope
from app.auth.ratelimit import client_address, count_failure, refuse_if_blocked
from app.auth.service import Principal, authenticate, require_scope
from app.clients.mlflow import MlflowRegistry
from app.config import Settings
from app.db import Database
from app.errors import Unauthorized

T = TypeVar("T")

_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <api key>`")
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the API key")


# These three only read the application's state; as coroutines FastAPI calls them in the event
# loop, where a plain function would cost each request a hop to its thread pool and back.
async def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


async def get_mlflow(request: Request) -> MlflowRegistry:
    registry: MlflowRegistry = request.app.state.mlflow
    return registry


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
DatabaseDep = Annotated[Database, Depends(get_database)]
MlflowDep = Annotated[MlflowRegistry, Depends(get_mlflow)]


BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]
ApiKeyCredentials = Annotated[str | None, Security(_api_key_header)]


async def get_principal(
    request: Request,
    database: DatabaseDep,
    bearer: BearerCredentials,
    api_key: ApiKeyCredentials,
) -> Principal:
    async with _authenticating(request, database, bearer, api_key) as (principal, _):
        return principal


@asynccontextmanager
async def _authenticating(
    request: Request,
    database: Database,
    bearer: HTTPAuthorizationCredentials | None,
    api_key: str | None,
) -> AsyncIterator[tuple[Principal, AsyncSession]]:
    """The caller's principal, and the read-only transaction its key was read in."""
    # An address that keeps failing is refused before its key is even looked at.
    address = client_address(request)
    await refuse_if_blocked(request, address)
    key = bearer.credentials if bearer is not None else api_key
    try:
        async with database.transaction(read_only=True) as session:
            principal = await authenticate(session, key)
            structlog.contextvars.bind_contextvars(principal=principal.key_id)
            yield principal, session
    except Unauthorized:
        await count_failure(request, address)
        raise


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def requires(scope: Scope) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency admitting callers whose key holds `scope` (or `admin`)."""

    async def dependency(principal: PrincipalDep) -> Principal:
        require_scope(principal, scope)
        return principal

    dependency.__name__ = f"requires_{scope.value.replace(':', '_')}"
    return dependency


# What a caller admitted by `requires_then` reads first: given the request, in its transaction.
FirstRead = Callable[[Request, AsyncSession], Awaitable[T]]


def requires_then(
    scope: Scope, read: FirstRead[T]
) -> Callable[..., Awaitable[tuple[Principal, T]]]:
    """`requires(scope)`, then `read` in the same read-only transaction as the key.

    For an endpoint whose first step is a read (a registration reads its token): one
    transaction instead of two. `read` runs only for an admitted caller, and raises nothing
    a request should be refused for: the endpoint decides, in its own order.
    """

    async def dependency(
        request: Request,
        database: DatabaseDep,
        bearer: BearerCredentials,
        api_key: ApiKeyCredentials,
    ) -> tuple[Principal, T]:
        async with _authenticating(request, database, bearer, api_key) as (principal, session):
            require_scope(principal, scope)
            return principal, await read(request, session)

    dependency.__name__ = f"requires_{scope.value.replace(':', '_')}_then_read"
    return dependency


TokensRead = Annotated[Principal, Depends(requires(Scope.TOKENS_READ))]
TokensWrite = Annotated[Principal, Depends(requires(Scope.TOKENS_WRITE))]
ModelsRegister = Annotated[Principal, Depends(requires(Scope.MODELS_REGISTER))]
EventsRead = Annotated[Principal, Depends(requires(Scope.EVENTS_READ))]
WebhooksManage = Annotated[Principal, Depends(requires(Scope.WEBHOOKS_MANAGE))]
BenchmarksManage = Annotated[Principal, Depends(requires(Scope.BENCHMARKS_MANAGE))]
