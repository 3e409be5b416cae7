"""HTTP endpoints of the events feed."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.auth.models import Scope
from app.deps import DatabaseDep, EventsRead
from app.errors import ValidationFailed
from app.events import feed
from app.events.feed import EventFeed
from app.openapi import invalid_field, problem_responses
from app.tokens.schemas import TOKEN_ID_RULE

router = APIRouter(prefix="/events", tags=["events"])

_MAX_SEQUENCE = 2**63 - 1


@router.get(
    "",
    summary="Read the events feed",
    responses=problem_responses(
        invalid_field(
            "query",
            "wait",
            msg="Input should be less than or equal to 30",
            type_="less_than_equal",
        ),
        (ValidationFailed, TOKEN_ID_RULE),
        scope=Scope.EVENTS_READ,
    ),
)
async def list_events(
    database: DatabaseDep,
    _: EventsRead,
    after: Annotated[
        int, Query(ge=0, le=_MAX_SEQUENCE, description="return events with a higher sequence")
    ] = 0,
    limit: Annotated[
        int, Query(ge=1, le=feed.MAX_LIMIT, description="most events on one page")
    ] = feed.DEFAULT_LIMIT,
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
    """Read events in commit order after `after`, optionally long-polling for new ones.

    For consumers that poll instead of receiving webhooks. Pass each page's `next_after` back
    as `after`: a consumer that does so never misses or repeats an event, even with concurrent
    writers and even when a page is empty. With `wait`, an empty answer is held up to that many
    seconds (at most 30) until a matching event commits. Delivery is at-least-once across
    channels: de-duplicate on `event_id`.
    """
    return await feed.read_feed(
        database, after=after, limit=limit, event_type=event_type, token_id=token_id, wait=wait
    )
