"""Prometheus metrics of the service, defined once per process.

The `/metrics` endpoint exposes the default registry; everything here registers on it at import.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

DELIVERIES = Counter(
    "hokusai_event_deliveries_total",
    "Delivery attempts by channel and outcome (delivered, retry, dead, disabled).",
    ["channel", "outcome"],
)
DELIVERY_SECONDS = Histogram(
    "hokusai_event_delivery_seconds",
    "Time of one delivery attempt.",
    ["channel"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
DELIVERY_BACKLOG = Gauge(
    "hokusai_event_deliveries_pending",
    "Deliveries waiting to be made (including retries), as last counted by this process.",
)
DEAD_DELIVERIES = Gauge(
    "hokusai_event_deliveries_dead",
    "Deliveries that exhausted their retries and are kept for inspection.",
)
OUTBOX_LAG = Gauge(
    "hokusai_outbox_unfanned_events",
    "Outbox events not yet fanned out into deliveries.",
)
