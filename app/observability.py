"""Prometheus metrics of the service, defined once per process.

The `/metrics` endpoint exposes the default registry; everything here registers on it at import.
Each process (every uvicorn worker, every container, every `hokusai-registry worker`) counts for
itself and serves its own `/metrics`: Prometheus scrapes each and sums or maxes across `instance`.
Every label takes values from a small, fixed set, so the number of series stays bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import structlog
from prometheus_client import Counter, Gauge, Histogram

from app import background

if TYPE_CHECKING:
    from app.db import Database

log = structlog.get_logger(__name__)

# HTTP --------------------------------------------------------------------------------------------

# Requests run from milliseconds (reads) to minutes (a multi-GiB upload plus MLflow).
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)

HTTP_REQUESTS = Counter(
    "hokusai_http_requests_total",
    "HTTP requests answered. route: the matched route's template (e.g. "
    "/models/{token_id}/register), 'unmatched' when no route matched; method: the HTTP method "
    "(OTHER for unusual ones); status: the response status code.",
    ["route", "method", "status"],
)
HTTP_REQUEST_SECONDS = Histogram(
    "hokusai_http_request_duration_seconds",
    "Time from a request's first byte handled to its last response byte sent, the streamed "
    "upload included. Labels as hokusai_http_requests_total.",
    ["route", "method", "status"],
    buckets=_REQUEST_BUCKETS,
)
HTTP_IN_PROGRESS = Gauge(
    "hokusai_http_requests_in_progress",
    "HTTP requests being handled now by this process, by method.",
    ["method"],
)

# Registrations -----------------------------------------------------------------------------------

REGISTRATIONS = Counter(
    "hokusai_registrations_total",
    "Registrations by outcome: registered (committed), rejected (a check refused it; the token "
    "is untouched), failed (it broke after the claim; the token is failed), replayed (an "
    "Idempotency-Key repeated an earlier outcome), abandoned (the client went away or stalled "
    "before its form was complete; nothing recorded). code: the problem code for rejected, failed "
    "and replayed failures (e.g. metric_below_baseline), empty otherwise. Counted by the process "
    "that settled it, the recovery sweep included.",
    ["outcome", "code"],
)
UPLOAD_BYTES = Counter(
    "hokusai_upload_bytes_total",
    "Bytes of uploaded files received and written to disk, by part (model, predictions); "
    "refused and interrupted uploads count the bytes received before they stopped.",
    ["part"],
)
MODEL_UPLOAD_SIZE = Histogram(
    "hokusai_model_upload_size_bytes",
    "Size of each model file received whole.",
    buckets=tuple(1024 * 4**n for n in range(12)),  # 1 KiB .. 4 GiB
)

# MLflow ------------------------------------------------------------------------------------------

MLFLOW_CALL_SECONDS = Histogram(
    "hokusai_mlflow_call_duration_seconds",
    "Time of one attempt of one MLflow operation. op: the operation (create_run, log_metric, "
    "log_artifact, create_model_version, ...); outcome: ok, transient (will be retried or ends "
    "as unavailable), error (refused; not retried).",
    ["op", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
MLFLOW_UNAVAILABLE = Counter(
    "hokusai_mlflow_unavailable_total",
    "MLflow operations given up after their retry budget (the caller saw mlflow_unavailable), "
    "by op.",
    ["op"],
)

# Events ------------------------------------------------------------------------------------------

DELIVERIES = Counter(
    "hokusai_event_deliveries_total",
    "Delivery attempts by channel (webhook, redis) and outcome (delivered, retry, dead, "
    "disabled: the endpoint answered 410 Gone).",
    ["channel", "outcome"],
)
DELIVERY_SECONDS = Histogram(
    "hokusai_event_delivery_seconds",
    "Time of one delivery attempt, by channel.",
    ["channel"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DELIVERY_BACKLOG = Gauge(
    "hokusai_event_deliveries_pending",
    "Deliveries waiting to be made (including retries), as last counted by this process from "
    "the shared database (every process reports the same figure: use max across instances).",
)
DEAD_DELIVERIES = Gauge(
    "hokusai_event_deliveries_dead",
    "Deliveries that exhausted their retries and are kept for inspection (shared figure, as "
    "hokusai_event_deliveries_pending).",
)
OUTBOX_LAG = Gauge(
    "hokusai_outbox_unfanned_events",
    "Outbox events not yet fanned out into deliveries (shared figure, as "
    "hokusai_event_deliveries_pending).",
)


async def refresh_backlog(database: Database) -> dict[str, int]:
    """Count the delivery backlog in the database and export it."""
    from app.events import delivery_repository
    from app.events.models import DeliveryStatus

    async with database.transaction(read_only=True) as session:
        counts = await delivery_repository.counts(session)
    DELIVERY_BACKLOG.set(counts.get(DeliveryStatus.PENDING.value, 0))
    DEAD_DELIVERIES.set(counts.get(DeliveryStatus.DEAD.value, 0))
    OUTBOX_LAG.set(counts.get("unfanned", 0))
    return counts


@asynccontextmanager
async def refreshing_backlog(database: Database, *, every: float) -> AsyncIterator[None]:
    """Keep the backlog gauges current in the background, whether or not this process delivers.

    The dispatcher's housekeeping exports them too, but only every few minutes and only where
    a dispatcher runs; an API process with `run_dispatcher` off would otherwise report zeros.
    """

    async def loop() -> None:
        while True:
            try:
                await refresh_backlog(database)
            except Exception as e:  # the database may be down for a while; try again later
                log.warning("backlog_not_counted", error=f"{type(e).__name__}: {e}"[:300])
            await asyncio.sleep(every)

    async with background.running(loop, name="hokusai-backlog-metrics"):
        yield
