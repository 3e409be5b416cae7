"""The `GET /events` feed, on SQLite and PostgreSQL, and the NOTIFY listener on PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
import uuid
from typing import Any

import psycopg
import pytest

from app.db import sync_url, utcnow
from app.events import feed
from app.events.listener import APPLICATION_NAME
from app.events.outbox import EVENT_SOURCE, NOTIFY_CHANNEL, OUTBOX_LOCK_KEY, NewEvent, write_events
from tests.support.service import Api

TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


def new_event(
    *,
    event_type: str = "model_deployed",
    token_id: str | None = "XRAY",
    payload: dict[str, Any] | None = None,
) -> NewEvent:
    return NewEvent(event_type, token_id, payload if payload is not None else {"n": 1})


async def write(api: Api, *events: NewEvent, audience: str | None = None) -> list[int]:
    """Commit `events` in one transaction, as the service does; returns their sequences."""
    async with api.database.transaction() as session:
        rows = await write_events(session, list(events), audience=audience)
    return [row.sequence for row in rows if row.sequence is not None]


async def read(api: Api, key: str | None = None, **params: Any) -> dict[str, Any]:
    response = await api.client.get("/events", params=params, headers=api.auth(key))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def follow(
    api: Api, *, done: asyncio.Event, last: list[int], limit: int = 100, **filters: Any
) -> list[dict[str, Any]]:
    """A consumer following `next_after` until the writers are `done` and it has passed the
    `last` sequence they wrote (or 20 s pass)."""
    seen: list[dict[str, Any]] = []
    after = 0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if done.is_set() and after >= max(last):
            break
        body = await read(api, after=after, limit=limit, wait=0.2, **filters)
        seen.extend(body["events"])
        assert body["next_after"] >= after
        after = body["next_after"]
    return seen


def pg_conninfo(api: Api) -> str:
    url = sync_url(api.database.url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def requires_postgres(api: Api) -> None:
    if api.backend != "postgres":
        pytest.skip("PostgreSQL only")


class TestEnvelope:
    async def test_event_has_the_contract_envelope(self, api: Api) -> None:
        event = new_event(payload={"token_id": "XRAY", "model_version": "3"})
        [sequence] = await write(api, event)

        body = await read(api)

        assert set(body) == {"events", "next_after"}
        [envelope] = body["events"]
        assert set(envelope) == {
            "event_id",
            "event_type",
            "source",
            "timestamp",
            "sequence",
            "token_id",
            "payload",
        }
        assert str(uuid.UUID(envelope["event_id"])) == envelope["event_id"] == event.event_id
        assert envelope["event_type"] == "model_deployed"
        assert envelope["source"] == EVENT_SOURCE == "hokusai-ml-platform"
        assert TIMESTAMP.match(envelope["timestamp"]), envelope["timestamp"]
        assert type(envelope["sequence"]) is int and envelope["sequence"] == sequence
        assert envelope["token_id"] == "XRAY"
        assert envelope["payload"] == {"token_id": "XRAY", "model_version": "3"}
        assert body["next_after"] == sequence

    async def test_openapi_documents_the_envelope(self, api: Api) -> None:
        schema = (await api.client.get("/openapi.json")).json()
        envelope = schema["components"]["schemas"]["Envelope"]
        assert set(envelope["required"]) >= {"event_id", "sequence", "timestamp", "payload"}
        assert envelope["examples"][0]["source"] == EVENT_SOURCE
        assert "/events" in schema["paths"]


class TestReading:
    async def test_empty_feed_keeps_the_position(self, api: Api) -> None:
        assert await read(api) == {"events": [], "next_after": 0}
        assert await read(api, after=500) == {"events": [], "next_after": 500}

    async def test_returns_events_after_the_position_in_order(self, api: Api) -> None:
        sequences = await write(api, *(new_event(payload={"n": n}) for n in range(5)))

        body = await read(api, after=sequences[1])

        assert [e["sequence"] for e in body["events"]] == sequences[2:]
        assert [e["payload"]["n"] for e in body["events"]] == [2, 3, 4]
        assert body["next_after"] == sequences[-1]

    async def test_private_pings_stay_out_but_the_position_moves_past_them(self, api: Api) -> None:
        [first] = await write(api, new_event())
        [ping] = await write(api, new_event(event_type="ping", token_id=None), audience="hook-1")

        body = await read(api)

        assert [e["sequence"] for e in body["events"]] == [first]
        assert body["next_after"] == ping
        assert await read(api, after=first) == {"events": [], "next_after": ping}

    async def test_position_past_the_end_is_kept(self, api: Api) -> None:
        await write(api, new_event())
        assert await read(api, after=10_000) == {"events": [], "next_after": 10_000}


class TestFilters:
    async def test_filters_by_event_type_exactly(self, api: Api) -> None:
        await write(
            api,
            new_event(event_type="model_registered"),
            new_event(event_type="token_ready_for_deploy"),
            new_event(event_type="model_registered"),
        )

        body = await read(api, event_type="model_registered")
        assert [e["event_type"] for e in body["events"]] == ["model_registered"] * 2
        assert (await read(api, event_type="MODEL_REGISTERED"))["events"] == []
        assert (await read(api, event_type="model"))["events"] == []

    async def test_filters_by_token_id_in_any_case(self, api: Api) -> None:
        await write(api, new_event(token_id="XRAY"), new_event(token_id="MRI"), new_event())

        body = await read(api, token_id="xray")

        assert [e["token_id"] for e in body["events"]] == ["XRAY", "XRAY"]

    async def test_combines_filters(self, api: Api) -> None:
        await write(
            api,
            new_event(event_type="model_deployed", token_id="XRAY"),
            new_event(event_type="model_deployed", token_id="MRI"),
            new_event(event_type="model_registered", token_id="MRI"),
        )
        body = await read(api, event_type="model_deployed", token_id="Mri")
        assert [(e["event_type"], e["token_id"]) for e in body["events"]] == [
            ("model_deployed", "MRI")
        ]

    async def test_position_moves_past_events_that_do_not_match(self, api: Api) -> None:
        sequences = await write(api, new_event(token_id="MRI"), new_event(token_id="MRI"))

        body = await read(api, token_id="XRAY")
        assert body == {"events": [], "next_after": sequences[-1]}

        [later] = await write(api, new_event(token_id="XRAY"))
        body = await read(api, token_id="XRAY", after=body["next_after"])
        assert [e["sequence"] for e in body["events"]] == [later]

    async def test_rejects_malformed_token_id(self, api: Api) -> None:
        response = await api.client.get("/events", params={"token_id": "-bad-"}, headers=api.auth())
        assert response.status_code == 422
        assert response.json()["code"] == "validation_error"


class TestPagination:
    async def test_following_next_after_sees_every_event_once(self, api: Api) -> None:
        written: list[int] = []
        for batch in range(5):
            written += await write(api, *(new_event(payload={"b": batch}) for _ in range(5)))
        await write(api, new_event(event_type="ping"), audience="hook-1")

        seen: list[int] = []
        after, pages = 0, 0
        while True:
            body = await read(api, after=after, limit=7)
            pages += 1
            if not body["events"]:
                break
            assert len(body["events"]) <= 7
            seen += [e["sequence"] for e in body["events"]]
            after = body["next_after"]

        assert seen == written
        assert pages == 5  # 7 + 7 + 7 + 4, then one empty page

    async def test_filtered_pages_see_every_match_once(self, api: Api) -> None:
        matching: list[int] = []
        for n in range(12):
            token = "XRAY" if n % 3 else "MRI"
            [sequence] = await write(api, new_event(token_id=token))
            if token == "MRI":
                matching.append(sequence)

        seen: list[int] = []
        after = 0
        for _ in range(10):
            body = await read(api, after=after, limit=2, token_id="MRI")
            seen += [e["sequence"] for e in body["events"]]
            after = body["next_after"]
        assert seen == matching

    async def test_limit_defaults_to_100(self, api: Api) -> None:
        sequences = await write(api, *(new_event() for _ in range(101)))

        body = await read(api)

        assert len(body["events"]) == 100
        assert body["next_after"] == sequences[99]

    @pytest.mark.parametrize(
        "params",
        [{"limit": 1001}, {"limit": 0}, {"after": -1}, {"wait": 31}, {"wait": -1}],
    )
    async def test_rejects_out_of_range_parameters(self, api: Api, params: dict[str, Any]) -> None:
        response = await api.client.get("/events", params=params, headers=api.auth())
        assert response.status_code == 422
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "validation_error"

    async def test_accepts_the_maximum_limit_and_wait(self, api: Api) -> None:
        await write(api, new_event())
        body = await read(api, limit=1000, wait=30)
        assert len(body["events"]) == 1


class TestLongPoll:
    async def test_returns_as_soon_as_an_event_commits(self, api: Api) -> None:
        async def writer() -> list[int]:
            await asyncio.sleep(0.3)
            return await write(api, new_event())

        started = time.monotonic()
        body, [sequence] = await asyncio.gather(read(api, wait=10), writer())
        elapsed = time.monotonic() - started

        assert 0.3 <= elapsed < 2.0, elapsed
        assert [e["sequence"] for e in body["events"]] == [sequence]
        assert body["next_after"] == sequence

    async def test_waits_the_whole_time_when_nothing_comes(self, api: Api) -> None:
        [sequence] = await write(api, new_event())

        started = time.monotonic()
        body = await read(api, after=sequence, wait=1)
        elapsed = time.monotonic() - started

        assert 0.9 <= elapsed < 3.0, elapsed
        assert body == {"events": [], "next_after": sequence}

    async def test_keeps_waiting_through_events_that_do_not_match(self, api: Api) -> None:
        async def writer() -> list[int]:
            await asyncio.sleep(0.2)
            return await write(api, new_event(token_id="MRI"))

        started = time.monotonic()
        body, [other] = await asyncio.gather(read(api, token_id="XRAY", wait=1), writer())
        elapsed = time.monotonic() - started

        assert elapsed >= 0.9, elapsed
        assert body == {"events": [], "next_after": other}

    async def test_without_wait_answers_at_once(self, api: Api) -> None:
        started = time.monotonic()
        assert await read(api) == {"events": [], "next_after": 0}
        assert time.monotonic() - started < 0.5


class TestAuth:
    async def test_key_without_events_read_is_403(self, api: Api) -> None:
        key = await api.key_with("tokens:read")
        response = await api.client.get("/events", headers=api.auth(key))
        assert response.status_code == 403
        assert response.json()["code"] == "forbidden"

    async def test_events_read_key_is_enough(self, api: Api) -> None:
        key = await api.key_with("events:read")
        assert await read(api, key) == {"events": [], "next_after": 0}

    async def test_missing_key_is_401(self, api: Api) -> None:
        response = await api.client.get("/events")
        assert response.status_code == 401
        assert response.json()["code"] == "unauthorized"


class TestConcurrentWriters:
    async def test_followers_see_every_event_once_in_order(self, api: Api) -> None:
        """Commits interleave (sleeps inside each transaction) while consumers follow the feed."""
        requires_postgres(api)
        writers, per_writer = 8, 25
        committed: list[NewEvent] = []
        last = [0]
        done = asyncio.Event()
        rng = random.Random(1234)

        async def writer(w: int) -> None:
            n = 0
            while n < per_writer:
                batch = [
                    new_event(
                        event_type=rng.choice(["model_registered", "model_deployed"]),
                        token_id=rng.choice(["XRAY", "MRI"]),
                        payload={"writer": w, "n": n + i},
                    )
                    for i in range(min(rng.randint(1, 3), per_writer - n))
                ]
                async with api.database.transaction() as session:
                    await asyncio.sleep(rng.uniform(0, 0.01))  # before taking the outbox lock
                    rows = await write_events(session, batch)
                    await asyncio.sleep(rng.uniform(0, 0.005))  # numbers drawn, not committed
                committed.extend(batch)
                last.extend(row.sequence for row in rows if row.sequence is not None)
                n += len(batch)

        async def write_all() -> None:
            await asyncio.gather(*(writer(w) for w in range(writers)))
            done.set()

        started = time.monotonic()
        everything, in_big_pages, deployed, by_token, _ = await asyncio.gather(
            follow(api, done=done, last=last, limit=7),
            follow(api, done=done, last=last, limit=1000),
            follow(api, done=done, last=last, limit=5, event_type="model_deployed"),
            follow(api, done=done, last=last, token_id="mri"),
            write_all(),
        )
        assert time.monotonic() - started < 20

        assert len(committed) == writers * per_writer
        sequences = [e["sequence"] for e in everything]
        assert sequences == sorted(set(sequences)), "repeated or out of order"
        assert {e["event_id"] for e in everything} == {e.event_id for e in committed}
        assert len(everything) == len(committed)
        ids = [e["event_id"] for e in everything]
        assert [e["event_id"] for e in in_big_pages] == ids

        def only(key: str, value: str) -> list[str]:
            return [e["event_id"] for e in everything if e[key] == value]

        assert [e["event_id"] for e in deployed] == only("event_type", "model_deployed")
        assert [e["event_id"] for e in by_token] == only("token_id", "MRI")


class TestListener:
    """Another process commits an event and NOTIFYs; this process's long poll wakes at once."""

    @pytest.fixture(autouse=True)
    def _no_periodic_recheck(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # Only a wake-up can end the wait early now: the fallback re-read is 10 s away.
        monkeypatch.setattr(feed, "RECHECK_SECONDS", 10.0)

    async def test_notify_from_another_connection_wakes_a_long_poll(self, api: Api) -> None:
        requires_postgres(api)
        await listener_pid(api)

        event_id, elapsed, _, body = await long_poll_while_inserting(api, notify=True)

        assert [e["event_id"] for e in body["events"]] == [event_id]
        assert elapsed < 1.5, elapsed

    async def test_without_notify_the_poll_only_sees_it_at_the_deadline(self, api: Api) -> None:
        requires_postgres(api)
        await listener_pid(api)

        event_id, _, elapsed, body = await long_poll_while_inserting(api, notify=False, wait=2)

        # The event is there at the final read, but nothing woke the wait before then.
        assert [e["event_id"] for e in body["events"]] == [event_id]
        assert elapsed >= 1.9, elapsed

    async def test_reconnects_after_losing_its_connection(self, api: Api) -> None:
        requires_postgres(api)
        old = await listener_pid(api)
        async with await psycopg.AsyncConnection.connect(pg_conninfo(api), autocommit=True) as conn:
            await conn.execute("SELECT pg_terminate_backend(%s)", (old,))

        new = await listener_pid(api, other_than=old)
        assert new != old

        event_id, elapsed, _, body = await long_poll_while_inserting(api, notify=True)
        assert [e["event_id"] for e in body["events"]] == [event_id]
        assert elapsed < 1.5, elapsed


async def listener_pid(api: Api, *, other_than: int | None = None, timeout: float = 10) -> int:
    """The backend pid of the app's listener once it has run LISTEN."""
    deadline = time.monotonic() + timeout
    async with await psycopg.AsyncConnection.connect(pg_conninfo(api), autocommit=True) as conn:
        while time.monotonic() < deadline:
            cursor = await conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
                " AND datname = current_database() AND query <> '' AND pid <> %s",
                (APPLICATION_NAME, other_than or 0),
            )
            row = await cursor.fetchone()
            if row is not None:
                return int(row[0])
            await asyncio.sleep(0.05)
    raise AssertionError("the events listener did not connect")


async def long_poll_while_inserting(
    api: Api, *, notify: bool, wait: float = 8
) -> tuple[str, float, float, dict[str, Any]]:
    """Start a long poll, then commit an event from a plain psycopg connection (another writer
    process, as far as the app can tell). Returns the event id, the time from the commit to the
    answer, the time from the request to the answer, and the answer."""
    after = (await read(api))["next_after"]
    started = time.monotonic()
    poll = asyncio.create_task(read(api, after=after, wait=wait))
    await asyncio.sleep(0.3)
    assert not poll.done()

    event_id = str(uuid.uuid4())
    async with await psycopg.AsyncConnection.connect(pg_conninfo(api)) as conn:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (OUTBOX_LOCK_KEY,))
            await conn.execute(
                "INSERT INTO events (event_id, event_type, token_id, payload, created_at)"
                " VALUES (%s, 'model_deployed', 'XRAY', %s::jsonb, %s)",
                (event_id, json.dumps({"token_id": "XRAY"}), utcnow()),
            )
            if notify:
                await conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, event_id))
        committed = time.monotonic()
    body = await poll
    now = time.monotonic()
    return event_id, now - committed, now - started, body
