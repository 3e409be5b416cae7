"""HTTP endpoints of the events feed."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.deps import DatabaseDep, EventsRead
from app.events import feed
from app.events.feed import EventFeed
from app.openapi import error_responses

router = APIRouter(prefix="/events", tags=["events"])

_MAX_SEQUENCE = 2**63 - 1


@router.get("", responses=error_responses(401, 403, 422, 503))
async def list_events(
    database: DatabaseDep,
    _: EventsRead,
    after: Annotated[
        int, Query(ge=0, le=_MAX_SEQUENCE, description="return events with a higher sequence")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=feed.MAX_LIMIT)] = feed.DEFAULT_LIMIT,
    event_type: Annotated[
        str | None, Query(max_length=64, description="only events of this type (exact)")
    ] = None,
    token_id: Annotated[
        str | None, Query(max_length=64, description="only events of this token (any case)")
    ] = None,
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=feed.MAX_WAIT_SECONDS,
            description="seconds to wait for a matching event when there is none yet",
        ),
    ] = 0,
) -> EventFeed:
    """Read events in commit order after `after`, optionally long-polling for new ones."""
    return await feed.read_feed(
        database, after=after, limit=limit, event_type=event_type, token_id=token_id, wait=wait
    )
