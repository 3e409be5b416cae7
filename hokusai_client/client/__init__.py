"""`HokusaiClient`: the Hokusai model registration service from Python.

One method per operation, in the shape of huggingface_hub's `HfApi`: tokens, model registration
(with the wait for a sealed-benchmark evaluation), registrations and their receipts, benchmarks,
the events feed and webhooks. Each returns the service's JSON as a dict (`ServiceJSON`, which also
keeps the body as it came) and raises a `HokusaiError` subclass on failure (hokusai_client.errors).

    from hokusai_client import HokusaiClient

    with HokusaiClient("https://registry.example.com", api_key="hok_...") as client:
        registration = client.register_model(
            "XRAY", "model.pkl", metric="auroc", baseline=0.82, metric_value=0.86
        )

The methods live by resource, one module each (tokens, registrations, receipts, benchmarks,
events, webhooks), as mixins over `ClientBase` (base.py: the connection, `request`, `close`).
"""

from __future__ import annotations

from hokusai_client.client.base import (
    DEFAULT_WAIT_SECONDS,
    EVENTS_MAX_FAILURES,
    EVENTS_WAIT_SECONDS,
    POLL_FIRST,
    POLL_MAX,
    REGISTER_READ_TIMEOUT,
    ClientBase,
    UploadProgress,
)
from hokusai_client.client.benchmarks import BenchmarksAPI
from hokusai_client.client.events import EventsAPI
from hokusai_client.client.receipts import ReceiptsAPI
from hokusai_client.client.registrations import SDK_FIELDS, RegistrationsAPI, WaitTimedOut
from hokusai_client.client.tokens import TokensAPI
from hokusai_client.client.webhooks import WebhooksAPI

__all__ = [
    "DEFAULT_WAIT_SECONDS",
    "EVENTS_MAX_FAILURES",
    "EVENTS_WAIT_SECONDS",
    "POLL_FIRST",
    "POLL_MAX",
    "REGISTER_READ_TIMEOUT",
    "SDK_FIELDS",
    "HokusaiClient",
    "UploadProgress",
    "WaitTimedOut",
]


class HokusaiClient(
    TokensAPI, RegistrationsAPI, ReceiptsAPI, BenchmarksAPI, EventsAPI, WebhooksAPI, ClientBase
):
    """A client of one service. Thread-compatible (one per thread), closed by `close()` or `with`.

    `api_url` defaults to HOKUSAI_API_URL, then HOKUSAI_API_ENDPOINT (the Hokusai SDK's name),
    then http://127.0.0.1:8000. `api_key` defaults to HOKUSAI_API_KEY, then, for a service on this
    machine only, the development key `make run` leaves in `$HOKUSAI_DATA_DIR/dev-api-key`.
    Transient failures are retried `retries` times (through stamina); `on_retry` hears of each.
    """
