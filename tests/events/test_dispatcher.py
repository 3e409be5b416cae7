"""The dispatcher against a real HTTP receiver and real Redis, on SQLite and PostgreSQL.

Receivers fail on purpose (500, timeouts, dropped connections, 410, redirects, refused
connections) and then recover; every event must arrive, verified, and the attempt log must say what
happened.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from standardwebhooks import Webhook

from app.db import utcnow
from app.events import delivery_repository as repo
from app.events.dispatcher import Dispatcher
from app.events.models import Delivery, WebhookEndpoint
from app.events.outbox import NewEvent, write_events
from app.events.redis_channel import CHANNEL, STREAM, RedisPublisher
from app.events.retries import retry_delay
from app.events.webhooks.sender import WebhookSender
from tests.support.service import Api
from tests.webhook_receiver import Reply, WebhookReceiver

REDIS_URL = "redis://127.0.0.1:6379/0"
FAST_SCHEDULE = [0.05, 0.05, 0.05, 0.05]


def legacy(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def stream_fields(entry: dict[bytes | str, bytes | str] | None) -> dict[bytes, bytes]:
    """A stream entry's fields, as bytes: the test's client does not decode responses."""
    assert entry is not None
    fields: dict[bytes, bytes] = {}
    for name, value in entry.items():
        assert isinstance(name, bytes) and isinstance(value, bytes)
        fields[name] = value
    return fields


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def dispatcher(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Callable[..., Dispatcher]]:
    """Builds dispatchers on the test database with a fast retry schedule; closes them after."""
    made: list[Dispatcher] = []
    monkeypatch.setattr(api.settings, "webhook_retry_schedule", FAST_SCHEDULE)

    def make(*, redis_url: str | None = None, worker: str | None = None) -> Dispatcher:
        sender = WebhookSender(allow_private=True, require_https=False, timeout=1.0)
        publisher = (
            RedisPublisher(redis_url, stream_maxlen=10_000, timeout=1.0) if redis_url else None
        )
        built = Dispatcher(
            settings=api.settings,
            database=api.database,
            sender=sender,
            redis=publisher,
            worker=worker,
        )
        made.append(built)
        return built

    yield make
    for built in made:
        await built.sender.aclose()
        if built.redis is not None:
            await built.redis.aclose()


async def add_endpoint(api: Api, url: str, **extra: Any) -> dict[str, Any]:
    response = await api.client.post("/webhooks", json={"url": url, **extra}, headers=api.auth())
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def emit(api: Api, count: int, *, event_type: str = "model_registered") -> list[str]:
    ids: list[str] = []
    async with api.database.transaction() as session:
        events = [
            NewEvent(event_type, f"T{i}", {"token_id": f"T{i}", "n": i}) for i in range(count)
        ]
        rows = await write_events(session, events)
        ids = [row.event_id for row in rows]
    return ids


async def drain(
    dispatcher: Dispatcher, *, until: Callable[[], bool], seconds: float = 15.0
) -> None:
    """Run dispatcher rounds until `until()` holds (bounded in time)."""
    deadline = time.monotonic() + seconds
    while not until():
        assert time.monotonic() < deadline, "the dispatcher did not finish in time"
        if not await dispatcher.run_once():
            await asyncio.sleep(0.02)


async def deliveries(api: Api) -> list[dict[str, Any]]:
    async with api.database.transaction() as session:
        rows = (await session.execute(sa.text("SELECT * FROM deliveries"))).mappings().all()
    return [dict(row) for row in rows]


async def attempts_of(api: Api, delivery_id: str) -> list[dict[str, Any]]:
    async with api.database.transaction() as session:
        rows = (
            (
                await session.execute(
                    sa.text(
                        "SELECT * FROM delivery_attempts WHERE delivery_id = :d ORDER BY attempt"
                    ),
                    {"d": delivery_id},
                )
            )
            .mappings()
            .all()
        )
    return [dict(row) for row in rows]


class TestWebhookDelivery:
    async def test_every_event_arrives_signed_and_verified(
        self, api: Api, dispatcher: Callable[..., Dispatcher]
    ) -> None:
        with WebhookReceiver() as receiver:
            endpoint = await add_endpoint(api, receiver.url)
            receiver.secret = endpoint["secret"]
            ids = await emit(api, 25)
            worker = dispatcher()
            await drain(worker, until=lambda: len(receiver.requests) >= 25)
            received = receiver.requests
        assert sorted(r.headers["webhook-id"] for r in received) == sorted(ids)
        assert [r.verify_error for r in received if not r.signature_ok] == []
        first = received[0]
        envelope = json.loads(first.body)
        assert set(envelope) == {
            "event_id",
            "event_type",
            "source",
            "timestamp",
            "sequence",
            "token_id",
            "payload",
        }
        assert envelope["source"] == "hokusai-ml-platform"
        assert envelope["timestamp"].endswith("Z")
        assert first.headers["x-hokusai-event"] == "model_registered"
        assert first.headers["x-hokusai-idempotency-key"] == envelope["event_id"]
        rows = await deliveries(api)
        assert len(rows) == 25
        assert {row["status"] for row in rows} == {"delivered"}
        assert [row["attempts"] for row in rows] == [1] * 25

    async def test_failures_then_recovery_lose_nothing(
        self, api: Api, dispatcher: Callable[..., Dispatcher]
    ) -> None:
        with WebhookReceiver() as receiver:
            endpoint = await add_endpoint(api, receiver.url)
            receiver.secret = endpoint["secret"]
            # The first three answers fail in three different ways, then the receiver recovers.
            receiver.script(Reply.with_status(500), Reply.slow(2.0), Reply.hang_up())
            [event_id] = await emit(api, 1)
            worker = dispatcher()
            await drain(worker, until=lambda: len(receiver.requests) >= 4)
            received = receiver.requests
        assert [r.headers["webhook-id"] for r in received] == [event_id] * 4
        assert [r.verify_error for r in received if not r.signature_ok] == []
        [row] = await deliveries(api)
        assert row["status"] == "delivered"
        assert row["attempts"] == 4
        log = await attempts_of(api, row["id"])
        assert [a["outcome"] for a in log] == ["retry", "retry", "retry", "delivered"]
        assert log[0]["status_code"] == 500
        assert log[1]["status_code"] is None and "timeout" in log[1]["error"].lower()
        assert log[2]["status_code"] is None and log[2]["error"]
        assert log[3]["status_code"] == 200

    async def test_dead_after_the_schedule(
        self, api: Api, dispatcher: Callable[..., Dispatcher]
    ) -> None:
        await add_endpoint(api, f"http://127.0.0.1:{closed_port()}/hook")
        await emit(api, 1)
        worker = dispatcher()
        rows: list[dict[str, Any]] = []

        def dead() -> bool:
            return bool(rows) and rows[0]["status"] == "dead"

        deadline = time.monotonic() + 15
        while not dead():
            assert time.monotonic() < deadline
            await worker.run_once()
            rows = await deliveries(api)
            await asyncio.sleep(0.02)
        assert rows[0]["attempts"] == len(FAST_SCHEDULE) + 1
        log = await attempts_of(api, rows[0]["id"])
        assert [a["outcome"] for a in log] == ["retry"] * len(FAST_SCHEDULE) + ["dead"]
        assert "refused" in log[0]["error"].lower()

    async def test_gone_disables_the_endpoint(
        self, api: Api, dispatcher: Callable[..., Dispatcher]
    ) -> None:
        with WebhookReceiver(default=Reply.gone()) as receiver:
            endpoint = await add_endpoint(api, receiver.url)
            await emit(api, 1)
            worker = dispatcher()
            await drain(worker, until=lambda: len(receiver.requests) >= 1)
            await worker.run_once()
            await emit(api, 1)
            for _ in range(5):
                await worker.run_once()
            assert len(receiver.requests) == 1  # nothing more after the 410
        shown = (await api.client.get(f"/webhooks/{endpoint['id']}", headers=api.auth())).json()
        assert shown["active"] is False
        [row] = await deliveries(api)
        assert row["status"] == "dead"

    async def test_redirect_is_not_followed(
        self, api: Api, dispatcher: Callable[..., Dispatcher]
    ) -> None:
        with WebhookReceiver() as receiver, WebhookReceiver() as elsewhere:
            receiver.script(Reply.redirect(elsewhere.url))
            await add_endpoint(api, receiver.url)
            await emit(api, 1)
            worker = dispatcher()
            await drain(worker, until=lambda: len(receiver.requests) >= 2)
            assert elsewhere.requests == []
        [row] = await deliveries(api)
        log = await attempts_of(api, row["id"])
        assert log[0]["status_code"] == 302
        assert "redirect" in log[0]["error"].lower()
        assert log[0]["outcome"] == "retry"

    async def test_retry_after_is_honoured(
        self, api: Api, dispatcher: Callable[..., Dispatcher]
    ) -> None:
        with WebhookReceiver() as receiver:
            receiver.script(Reply.retry_after("120"))
            await add_endpoint(api, receiver.url)
            await emit(api, 1)
            worker = dispatcher()
            await drain(worker, until=lambda: len(receiver.requests) >= 1)
        async with api.database.transaction() as session:
            [row] = (await session.execute(sa.select(Delivery))).scalars().all()
        assert row.status == "pending"
        assert row.last_attempt_at is not None and row.next_attempt_at is not None
        wait = (row.next_attempt_at - row.last_attempt_at).total_seconds()
        assert 115 <= wait <= 125

    async def test_event_type_filter_and_inactive_endpoint(
        self, api: Api, dispatcher: Callable[..., Dispatcher]
    ) -> None:
        with WebhookReceiver() as deploys, WebhookReceiver() as inactive:
            await add_endpoint(api, deploys.url, event_types=["model_deployed"])
            await add_endpoint(api, inactive.url, active=False)
            await emit(api, 2, event_type="model_registered")
            await emit(api, 1, event_type="model_deployed")
            worker = dispatcher()
            await drain(worker, until=lambda: len(deploys.requests) >= 1)
            for _ in range(3):
                await worker.run_once()
            assert [r.json()["event_type"] for r in deploys.requests] == ["model_deployed"]
            assert inactive.requests == []


class TestSecretRotation:
    async def test_receivers_on_old_and_new_secret_both_verify_during_overlap(
        self, api: Api, dispatcher: Callable[..., Dispatcher]
    ) -> None:
        with WebhookReceiver() as receiver:
            endpoint = await add_endpoint(api, receiver.url)
            old_secret = endpoint["secret"]
            rotated = await api.client.post(
                f"/webhooks/{endpoint['id']}/rotate-secret",
                json={"overlap_seconds": 3600},
                headers=api.auth(),
            )
            assert rotated.status_code == 200
            new_secret = rotated.json()["secret"]
            worker = dispatcher()
            # A receiver still configured with the old secret, then one already on the new one.
            receiver.secret = old_secret
            await emit(api, 1)
            await drain(worker, until=lambda: len(receiver.requests) >= 1)
            receiver.secret = new_secret
            await emit(api, 1)
            await drain(worker, until=lambda: len(receiver.requests) >= 2)
            on_old, on_new = receiver.requests
        assert on_old.signature_ok, on_old.verify_error
        assert on_new.signature_ok, on_new.verify_error
        for request in (on_old, on_new):
            Webhook(old_secret).verify(request.body, request.headers)
            Webhook(new_secret).verify(request.body, request.headers)
            assert request.headers["x-hokusai-signature"] == legacy(new_secret, request.body)
            assert request.headers["x-hokusai-signature-previous"] == legacy(
                old_secret, request.body
            )

    async def test_previous_secret_is_ignored_after_it_expires(
        self, api: Api, dispatcher: Callable[..., Dispatcher]
    ) -> None:
        with WebhookReceiver() as receiver:
            endpoint = await add_endpoint(api, receiver.url)
            old_secret = endpoint["secret"]
            rotated = await api.client.post(
                f"/webhooks/{endpoint['id']}/rotate-secret", headers=api.auth()
            )
            new_secret = rotated.json()["secret"]
            async with api.database.transaction() as session:
                stored = await session.get(WebhookEndpoint, endpoint["id"])
                assert stored is not None and stored.previous_secret == old_secret
                stored.previous_secret_expires_at = utcnow() - dt.timedelta(seconds=1)
                session.add(stored)
            receiver.secret = old_secret
            await emit(api, 1)
            await drain(dispatcher(), until=lambda: len(receiver.requests) >= 1)
            (request,) = receiver.requests
        assert not request.signature_ok
        assert request.standard_signature_ok is False and request.legacy_signature_ok is False
        assert " " not in request.headers["webhook-signature"]
        assert "x-hokusai-signature-previous" not in request.headers
        Webhook(new_secret).verify(request.body, request.headers)
        assert request.headers["x-hokusai-signature"] == legacy(new_secret, request.body)


class TestRetrySchedule:
    def test_follows_the_schedule_then_gives_up(self) -> None:
        schedule = [5.0, 300.0]
        assert 4.5 <= (retry_delay(schedule, 1, None) or 0) <= 5.5
        assert 270 <= (retry_delay(schedule, 2, None) or 0) <= 330
        assert retry_delay(schedule, 3, None) is None

    def test_retry_after_wins_but_is_capped(self) -> None:
        assert retry_delay([5.0], 1, 42.0) == 42.0
        assert retry_delay([5.0], 1, 10**9) == 24 * 3600


class TestLeases:
    async def test_a_claimed_delivery_is_not_claimed_twice_until_the_lease_ends(
        self, api: Api, dispatcher: Callable[..., Dispatcher]
    ) -> None:
        await add_endpoint(api, f"http://127.0.0.1:{closed_port()}/x")
        await emit(api, 3)
        first = dispatcher(worker="first")
        second = dispatcher(worker="second")
        await first.fan_out()
        now = utcnow()
        async with api.database.transaction() as session:
            mine = await repo.claim_due(
                session,
                worker="first",
                now=now,
                lease_until=now + dt.timedelta(seconds=0.5),
                limit=10,
            )
        assert len(mine) == 3
        assert await second.deliver_due() == 0  # all leased to the first worker
        await asyncio.sleep(0.6)  # the first worker "died"; its lease runs out
        assert await second.deliver_due() == 3
        rows = await deliveries(api)
        assert [row["attempts"] for row in rows] == [1] * 3
        for row in rows:
            [attempt] = await attempts_of(api, row["id"])
            assert attempt["worker"] == "second"


class TestRedis:
    async def test_events_reach_stream_and_channel(
        self, api: Api, dispatcher: Callable[..., Dispatcher]
    ) -> None:
        client = redis.Redis.from_url(REDIS_URL)
        start_id = (
            client.xinfo_stream(STREAM)["last-generated-id"] if client.exists(STREAM) else "0-0"
        )
        pubsub = client.pubsub()
        pubsub.subscribe(CHANNEL)
        pubsub.get_message(timeout=1.0)  # the subscribe confirmation
        try:
            ids = await emit(api, 5)
            worker = dispatcher(redis_url=REDIS_URL)
            rows: list[dict[str, Any]] = []
            deadline = time.monotonic() + 10
            while not rows or any(row["status"] != "delivered" for row in rows):
                assert time.monotonic() < deadline
                await worker.run_once()
                rows = await deliveries(api)
            entries = client.xrange(
                STREAM, min=f"({start_id.decode() if isinstance(start_id, bytes) else start_id}"
            )
            assert entries is not None
            ours = [
                fields
                for fields in (stream_fields(e) for _, e in entries)
                if fields[b"event_id"].decode() in ids
            ]
            assert sorted(e[b"event_id"].decode() for e in ours) == sorted(ids)
            for fields in ours:
                envelope = json.loads(fields[b"event"])
                assert envelope["event_id"] == fields[b"event_id"].decode()
                assert fields[b"event_type"] == b"model_registered"
            messages: list[str] = []
            deadline = time.monotonic() + 5
            while len(messages) < 5 and time.monotonic() < deadline:
                message = pubsub.get_message(timeout=0.5)
                if message and message["type"] == "message":
                    messages.append(json.loads(message["data"])["event_id"])
            assert sorted(messages) == sorted(ids)
        finally:
            pubsub.close()
            client.close()

    async def test_redis_down_delays_and_loses_nothing(
        self, api: Api, dispatcher: Callable[..., Dispatcher]
    ) -> None:
        ids = await emit(api, 3)
        down = dispatcher(redis_url=f"redis://127.0.0.1:{closed_port()}/0")
        for _ in range(2):
            await down.run_once()
            await asyncio.sleep(0.06)
        rows = await deliveries(api)
        assert {row["status"] for row in rows} == {"pending"}
        assert all(row["attempts"] >= 1 and row["last_error"] for row in rows)
        # Redis is back: the same deliveries go out, none lost.
        client = redis.Redis.from_url(REDIS_URL)
        pubsub = client.pubsub()
        pubsub.subscribe(CHANNEL)
        pubsub.get_message(timeout=1.0)
        try:
            up = dispatcher(redis_url=REDIS_URL)
            deadline = time.monotonic() + 10
            while any(row["status"] != "delivered" for row in rows):
                assert time.monotonic() < deadline
                await up.run_once()
                await asyncio.sleep(0.02)
                rows = await deliveries(api)
            seen: list[str] = []
            deadline = time.monotonic() + 5
            while len(seen) < 3 and time.monotonic() < deadline:
                message = pubsub.get_message(timeout=0.5)
                if message and message["type"] == "message":
                    seen.append(json.loads(message["data"])["event_id"])
            assert sorted(seen) == sorted(ids)
        finally:
            pubsub.close()
            client.close()


class TestPingAndManualRetry:
    async def test_ping_goes_to_that_endpoint_alone(
        self, api: Api, dispatcher: Callable[..., Dispatcher]
    ) -> None:
        with WebhookReceiver() as target, WebhookReceiver() as other:
            endpoint = await add_endpoint(api, target.url)
            target.secret = endpoint["secret"]
            await add_endpoint(api, other.url)
            response = await api.client.post(f"/webhooks/{endpoint['id']}/test", headers=api.auth())
            assert response.status_code == 202
            worker = dispatcher()
            await drain(worker, until=lambda: len(target.requests) >= 1)
            for _ in range(3):
                await worker.run_once()
            assert other.requests == []
            [ping] = target.requests
        assert ping.signature_ok
        assert ping.json()["event_type"] == "ping"
        assert ping.json()["payload"] == {"webhook_id": endpoint["id"]}

    async def test_manual_retry_of_a_dead_delivery(
        self, api: Api, dispatcher: Callable[..., Dispatcher]
    ) -> None:
        with WebhookReceiver() as receiver:
            receiver.script(*[Reply.with_status(500)] * (len(FAST_SCHEDULE) + 1))
            endpoint = await add_endpoint(api, receiver.url)
            await emit(api, 1)
            worker = dispatcher()
            rows: list[dict[str, Any]] = []
            deadline = time.monotonic() + 10
            while not rows or rows[0]["status"] != "dead":
                assert time.monotonic() < deadline
                await worker.run_once()
                await asyncio.sleep(0.03)
                rows = await deliveries(api)
            response = await api.client.post(
                f"/webhooks/{endpoint['id']}/deliveries/{rows[0]['id']}/retry", headers=api.auth()
            )
            assert response.status_code == 202
            await drain(worker, until=lambda: receiver.requests[-1].reply.status == 200)
        listed = await api.client.get(f"/webhooks/{endpoint['id']}/deliveries", headers=api.auth())
        [delivery] = listed.json()["items"]
        assert delivery["status"] == "delivered"
        assert delivery["attempts"] == len(FAST_SCHEDULE) + 2


class TestHousekeeping:
    async def test_counts_and_retention(
        self, api: Api, dispatcher: Callable[..., Dispatcher], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        with WebhookReceiver() as receiver:
            await add_endpoint(api, receiver.url)
            await emit(api, 4)
            worker = dispatcher()
            await drain(worker, until=lambda: len(receiver.requests) >= 4)
        figures = await worker.housekeeping()
        assert figures["delivered"] == 4
        assert figures["deleted_deliveries"] == 0
        monkeypatch.setattr(api.settings, "delivery_retention_days", 1e-9)
        monkeypatch.setattr(api.settings, "event_retention_days", 1e-9)
        await asyncio.sleep(0.01)
        figures = await worker.housekeeping()
        assert figures["deleted_deliveries"] == 4
        assert figures["deleted_events"] == 4
        assert await deliveries(api) == []
