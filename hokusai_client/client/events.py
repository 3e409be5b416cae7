"""The events feed: one page (`GET /events`), or every event as it commits (long-polling)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from hokusai_client.client.base import EVENTS_MAX_FAILURES, EVENTS_WAIT_SECONDS, ClientBase
from hokusai_client.transport import ServiceJSON


class EventsAPI(ClientBase):
    """`GET /events`: one page, or every event as it commits."""

    def list_events(
        self,
        *,
        after: int = 0,
        limit: int | None = None,
        event_type: str | None = None,
        token_id: str | None = None,
        wait: int | None = None,
    ) -> ServiceJSON:
        """GET /events: one page, `{"events": [...], "next_after": N}`; `wait` long-polls."""
        params = {
            "after": after,
            "limit": limit,
            "event_type": event_type,
            "token_id": token_id,
            "wait": wait,
        }
        return self._json(
            "GET",
            "/events",
            params=params,
            read_timeout=(wait or 0) + self._transport.timeout,
            retries=max(self._transport.retries, EVENTS_MAX_FAILURES) if wait else None,
        )

    def watch_events(
        self,
        *,
        after: int = 0,
        event_type: str | None = None,
        token_id: str | None = None,
        timeout: float | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every event after `after` as it commits, long-polling the feed; ends after `timeout`
        seconds (never, without one). No event is missed or repeated."""
        deadline = time.monotonic() + timeout if timeout is not None else None
        while True:
            wait = EVENTS_WAIT_SECONDS
            if deadline is not None:
                wait = max(0, min(wait, int(deadline - time.monotonic() + 0.999)))
            asked = time.monotonic()
            page = self.list_events(
                after=after, event_type=event_type, token_id=token_id, wait=wait
            )
            events = [e for e in page.get("events") or [] if isinstance(e, dict)]
            yield from events
            next_after = page.get("next_after")
            if isinstance(next_after, int) and next_after >= after:
                after = next_after
            if not events and wait and time.monotonic() - asked < 1.0:
                # A feed that answers at once instead of holding the request: do not spin.
                time.sleep(1.0)
            if deadline is not None and time.monotonic() >= deadline:
                return
