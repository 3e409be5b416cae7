"""A feed consumer following `next_after` while registrations commit concurrently."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.factories import create_token, register
from tests.support.service import Api

REGISTRATIONS = 6


async def test_consumer_sees_every_event_once_in_order(api: Api) -> None:
    for i in range(REGISTRATIONS):
        await create_token(api.client, api.auth(), token_id=f"FEED-{i}")
    seen: list[dict[str, Any]] = []
    done = asyncio.Event()

    async def consume() -> None:
        after = 0
        for _ in range(200):  # bounded: each round waits at most 1 s
            response = await api.client.get(
                "/events", params={"after": after, "limit": 3, "wait": 1}, headers=api.auth()
            )
            assert response.status_code == 200
            page = response.json()
            seen.extend(page["events"])
            after = page["next_after"]
            if done.is_set() and not page["events"]:
                return

    consumer = asyncio.create_task(consume())
    results = await asyncio.gather(
        *(register(api.client, api.auth(), token_id=f"FEED-{i}") for i in range(REGISTRATIONS))
    )
    assert [r.status_code for r in results] == [201] * REGISTRATIONS
    done.set()
    await asyncio.wait_for(consumer, 30)

    expected = {event_id for r in results for event_id in r.json()["event_ids"]}
    ids = [event["event_id"] for event in seen]
    assert len(ids) == len(set(ids)), "an event was seen twice"
    assert set(ids) == expected
    sequences = [event["sequence"] for event in seen]
    assert sequences == sorted(sequences)
