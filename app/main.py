"""The FastAPI application: `create_app()` and its lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

import anyio
import structlog
from fastapi import FastAPI
from prometheus_client import make_asgi_app
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from app.apidocs import router as apidocs_router
from app.clients.mlflow import MlflowRegistry, configured_mlflow
from app.config import Settings, get_settings
from app.db import Database
from app.error_handlers import install_error_handlers
from app.evaluation.receipts import load_signer
from app.evaluation.router import router as evaluation_router
from app.evaluation.sandbox import SandboxInfo, detect_sandbox
from app.evaluation.service import EvaluationServices, sandbox_usable
from app.evaluation.worker import evaluating
from app.events.dispatcher import dispatching
from app.events.listener import start_listener
from app.events.router import router as feed_router
from app.events.signal import EventSignal
from app.events.webhooks.router import router as webhooks_router
from app.log_config import configure_logging
from app.middleware import RequestContextMiddleware, RequestLimitsMiddleware
from app.observability import refreshing_backlog
from app.openapi import install_openapi
from app.registration.attempt import RegistrationServices
from app.registration.hooks import NO_HOOKS, RegistrationHooks
from app.registration.recovery import recovery_loop
from app.registration.router import router as registration_router
from app.system import router as system_router
from app.tokens.router import router as tokens_router

log = structlog.get_logger(__name__)

DESCRIPTION = """
Registers trained models for Hokusai tokens. A token starts as a `draft` on the site; a
registration checks the model's metric against the token's benchmark, stores the model in MLflow
as a new version of the token's registered model, marks the token `registered`, and announces it
with the `model_registered` and `token_ready_for_deploy` events.

Authenticate with `Authorization: Bearer <api key>` or `X-API-Key`. Errors are
`application/problem+json` with a stable `code`.
"""


OPENAPI_TAGS = [
    {"name": "registrations", "description": "Register models and read the attempts."},
    {"name": "tokens", "description": "Tokens and their status."},
    {
        "name": "evaluation",
        "description": "Sealed benchmarks, evaluation receipts and their keys.",
    },
    {"name": "system", "description": "Probes."},
]

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def create_app(
    settings: Settings | None = None, *, registration_hooks: RegistrationHooks = NO_HOOKS
) -> FastAPI:
    """Build the application; `settings` defaults to the environment's.

    `registration_hooks` are called as a registration passes its stages (app.registration.hooks);
    the service's own do nothing.
    """
    settings = settings or get_settings()
    configure_logging(level=settings.log_level, json=settings.json_logs)
    app = FastAPI(
        title="Hokusai model registration service",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=make_lifespan(settings, registration_hooks),
        # /docs is served by app.apidocs from installed files; FastAPI's pages use a CDN.
        docs_url=None,
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
        openapi_tags=OPENAPI_TAGS,
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(
        RequestLimitsMiddleware,
        max_body_bytes=settings.max_json_bytes,
        max_headers=settings.max_request_headers,
    )
    app.add_middleware(RequestContextMiddleware)
    app.include_router(system_router)
    app.include_router(apidocs_router)
    # Prometheus scrapes this; it holds counts and timings, no tokens, keys or payloads. The
    # route answers `/metrics` itself (a mount alone answers it with a 307 to `/metrics/`); the
    # mount keeps `/metrics/` answering too.
    prometheus = _PrometheusApp()
    app.router.routes.append(Route("/metrics", prometheus, include_in_schema=False))
    app.mount("/metrics", prometheus)
    app.include_router(tokens_router)
    app.include_router(registration_router)
    app.include_router(evaluation_router)
    app.include_router(feed_router)
    app.include_router(webhooks_router)
    install_openapi(app)
    return app


def make_lifespan(settings: Settings, registration_hooks: RegistrationHooks) -> Lifespan:
    """The application's lifespan: the database and its events listener, MLflow, the services
    on `app.state`, then the background loops (dispatcher, recovery, evaluator, metrics); each
    stopped in the reverse order."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        settings.upload_dir.mkdir(parents=True, exist_ok=True)
        async with AsyncExitStack() as stack:
            stack.enter_context(configured_mlflow(request_timeout=settings.mlflow_request_timeout))
            database = Database(settings.resolved_database_url)
            stack.push_async_callback(database.dispose)
            events_listener = start_listener(database)
            stack.push_async_callback(events_listener.stop)
            sandbox = await _start_services(app, settings, database, registration_hooks)
            log.info(
                "service_started",
                env=settings.env.value,
                database=database.backend,
                mlflow=_redacted_uri(settings.resolved_tracking_uri),
                sandbox=sandbox.mode.value,
                sandbox_isolated=sandbox.isolated,
            )
            if not sandbox.isolated and sandbox_usable(settings, sandbox):
                log.warning("evaluation_sandbox_not_isolated", detail=sandbox.detail)
            await _start_loops(stack, app, settings, database, sandbox)
            yield
        log.info("service_stopped")

    return lifespan


async def _start_services(
    app: FastAPI, settings: Settings, database: Database, registration_hooks: RegistrationHooks
) -> SandboxInfo:
    """MLflow, the evaluation and registration services on `app.state`; returns the sandbox
    this host can isolate models with (probed once, here)."""
    mlflow = MlflowRegistry(
        tracking_uri=settings.resolved_tracking_uri,
        registry_uri=settings.mlflow_registry_uri,
        artifact_location=settings.mlflow_artifact_location,
        retry_seconds=settings.mlflow_retry_seconds,
    )
    limiter = anyio.CapacityLimiter(settings.mlflow_threads)
    sandbox = await anyio.to_thread.run_sync(detect_sandbox, settings.evaluation_sandbox)
    evaluation = EvaluationServices(
        settings=settings,
        database=database,
        signer=await anyio.to_thread.run_sync(load_signer, settings),
        sandbox=sandbox,
        jobs=EventSignal(),
    )
    app.state.settings = settings
    app.state.database = database
    app.state.mlflow = mlflow
    app.state.evaluation = evaluation
    app.state.registration = RegistrationServices(
        settings=settings,
        database=database,
        mlflow=mlflow,
        mlflow_limiter=limiter,
        evaluations=evaluation,
        hooks=registration_hooks,
    )
    try:
        # Prepare the experiment now so the first registration does not pay for it; a
        # remote MLflow that is down must not stop the service from starting.
        await anyio.to_thread.run_sync(mlflow.ensure_experiment, limiter=limiter)
    except Exception as e:
        log.warning("mlflow_not_ready_at_startup", error=str(e)[:300])
    return sandbox


async def _start_loops(
    stack: AsyncExitStack,
    app: FastAPI,
    settings: Settings,
    database: Database,
    sandbox: SandboxInfo,
) -> None:
    """The background loops, each stopped when `stack` closes."""
    if settings.run_dispatcher:
        app.state.dispatcher = await stack.enter_async_context(dispatching(settings, database))
    await stack.enter_async_context(recovery_loop(app.state.registration))
    if settings.run_evaluations and sandbox_usable(settings, sandbox):
        await stack.enter_async_context(evaluating(app.state.registration, app.state.evaluation))
    await stack.enter_async_context(
        refreshing_backlog(database, every=settings.metrics_refresh_seconds)
    )


class _PrometheusApp:
    """prometheus_client's ASGI app as an object: Starlette runs a route endpoint that is not a
    function as an ASGI app, and a function as a request handler."""

    def __init__(self) -> None:
        self._app = make_asgi_app()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)


def _redacted_uri(uri: str) -> str:
    """A URI without its credentials, for logs."""
    scheme, sep, rest = uri.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        rest = rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"
