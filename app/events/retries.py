"""What a delivery attempt's result makes of its delivery: delivered, retried later on the
schedule (or after `Retry-After`), dead once the schedule ends, or its endpoint disabled on
`410 Gone`."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Sequence
from typing import Any

from app.events.models import DeliveryStatus
from app.events.webhooks.sender import AttemptResult

MAX_RETRY_AFTER_SECONDS = 24 * 3600.0


def retry_delay(
    schedule: Sequence[float], failures: int, retry_after: float | None
) -> float | None:
    """Seconds until the next attempt after `failures` failed ones; None once the schedule ends."""
    if failures > len(schedule):
        return None
    if retry_after is not None:
        return min(max(retry_after, 0.0), MAX_RETRY_AFTER_SECONDS)
    base = schedule[failures - 1]
    # Up to 10% either way, so receivers that come back are not hit by every retry at once.
    return base * random.uniform(0.9, 1.1)


def next_state(
    result: AttemptResult,
    *,
    attempts: int,
    schedule: Sequence[float],
    now: dt.datetime,
    event_exists: bool,
    endpoint_exists: bool,
) -> tuple[str, dict[str, Any]]:
    """The outcome of attempt number `attempts` (delivered, disabled, dead or retry) and the
    delivery's columns that change with it."""
    if result.ok:
        return "delivered", {
            "status": DeliveryStatus.DELIVERED,
            "delivered_at": now,
            "next_attempt_at": None,
        }
    if result.gone and endpoint_exists:
        return "disabled", {"status": DeliveryStatus.DEAD, "next_attempt_at": None}
    delay = retry_delay(schedule, attempts, result.retry_after)
    if delay is None or not event_exists:
        return "dead", {"status": DeliveryStatus.DEAD, "next_attempt_at": None}
    return "retry", {"next_attempt_at": now + dt.timedelta(seconds=delay)}
