"""The webhooks API, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import col, select

from app.config import Environment
from app.db import utcnow
from app.events.models import (
    Channel,
    Delivery,
    DeliveryAttempt,
    DeliveryStatus,
    OutboxEvent,
    WebhookEndpoint,
)
from app.events.signal import new_events
from tests.support.service import Api

HOOK_URL = "https://site.example/hooks/hokusai"
GOOD_SECRET = "whsec_" + base64.b64encode(b"k" * 32).decode()


async def create_webhook(api: Api, **body: Any) -> dict[str, Any]:
    response = await api.client.post(
        "/webhooks", json={"url": HOOK_URL, **body}, headers=api.auth()
    )
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


async def insert_static_endpoint(api: Api) -> None:
    async with api.database.transaction() as session:
        session.add(
            WebhookEndpoint(
                id="static",
                url="https://site.example/static",
                secret=GOOD_SECRET,
                is_static=True,
                description="configured by HOKUSAI_WEBHOOK_URL",
            )
        )


async def insert_delivery(
    api: Api,
    endpoint_id: str,
    *,
    status: DeliveryStatus = DeliveryStatus.PENDING,
    created_at: dt.datetime | None = None,
    attempts: int = 0,
    event_type: str = "model_registered",
    lease_owner: str | None = None,
    sequence: int = 1,
) -> str:
    """A delivery with `attempts` failed attempts (answered 500) recorded against it."""
    created_at = created_at or utcnow()
    delivery_id = str(uuid.uuid4())
    async with api.database.transaction() as session:
        session.add(
            Delivery(
                id=delivery_id,
                event_sequence=sequence,
                event_id=str(uuid.uuid4()),
                event_type=event_type,
                channel=Channel.WEBHOOK,
                endpoint_id=endpoint_id,
                status=status,
                attempts=attempts,
                next_attempt_at=None if status is not DeliveryStatus.PENDING else created_at,
                last_status_code=500 if attempts else None,
                last_error="HTTP 500 Internal Server Error" if attempts else None,
                lease_owner=lease_owner,
                lease_expires_at=created_at + dt.timedelta(minutes=1) if lease_owner else None,
                created_at=created_at,
                updated_at=created_at,
            )
        )
        await session.flush()
        if status is not DeliveryStatus.PENDING:
            # The column's default would fill in a None given to the constructor.
            await session.execute(
                sa.update(Delivery)
                .where(col(Delivery.id) == delivery_id)
                .values(next_attempt_at=None)
            )
        for number in range(1, attempts + 1):
            session.add(
                DeliveryAttempt(
                    delivery_id=delivery_id,
                    attempt=number,
                    worker="w1",
                    started_at=created_at + dt.timedelta(seconds=number),
                    duration_ms=12.5,
                    status_code=500,
                    error="HTTP 500 Internal Server Error",
                    response_excerpt="boom",
                    outcome="dead"
                    if number == attempts and status is DeliveryStatus.DEAD
                    else "retry",
                )
            )
    return delivery_id


async def stored_endpoint(api: Api, endpoint_id: str) -> WebhookEndpoint | None:
    async with api.database.transaction() as session:
        return await session.get(WebhookEndpoint, endpoint_id)


class TestCreateWebhook:
    async def test_creates_with_generated_secret_shown_once(self, api: Api) -> None:
        created = await create_webhook(api, description="deploys")
        assert created["url"] == HOOK_URL
        assert created["event_types"] == ["*"]
        assert created["active"] is True
        assert created["description"] == "deploys"
        assert created["is_static"] is False
        assert created["created_at"]
        secret = created["secret"]
        assert secret.startswith("whsec_")
        assert 24 <= len(base64.b64decode(secret.removeprefix("whsec_"))) <= 32
        stored = await stored_endpoint(api, created["id"])
        assert stored is not None and stored.secret == secret

        one = await api.client.get(f"/webhooks/{created['id']}", headers=api.auth())
        assert one.status_code == 200
        assert "secret" not in one.json()
        assert one.json()["url"] == HOOK_URL
        listed = await api.client.get("/webhooks", headers=api.auth())
        assert [item["id"] for item in listed.json()["items"]] == [created["id"]]
        assert secret not in listed.text and secret not in one.text

    async def test_generated_secrets_differ(self, api: Api) -> None:
        first = await create_webhook(api)
        second = await create_webhook(api)
        assert first["secret"] != second["secret"]

    async def test_accepts_given_secret_and_event_types(self, api: Api) -> None:
        created = await create_webhook(
            api,
            secret=GOOD_SECRET,
            event_types=["model_registered", "token_ready_for_deploy", "model_registered"],
            active=False,
        )
        assert created["secret"] == GOOD_SECRET
        assert created["event_types"] == ["model_registered", "token_ready_for_deploy"]
        assert created["active"] is False

    async def test_star_stands_for_every_type(self, api: Api) -> None:
        created = await create_webhook(api, event_types=["ping", "*"])
        assert created["event_types"] == ["*"]

    @pytest.mark.parametrize(
        "secret",
        [
            "k" * 15,  # too short
            "k" * 257,  # too long
            "whsec_",
            "shared-secret-with\na-line-break",
            "shared-secret-with\x00-a-nul-byte",
            "shared-secret-with\x1b-an-escape",
        ],
    )
    async def test_rejects_malformed_secret(self, api: Api, secret: str) -> None:
        response = await api.client.post(
            "/webhooks", json={"url": HOOK_URL, "secret": secret}, headers=api.auth()
        )
        assert response.status_code == 422
        body = response.json()
        assert body["code"] == "validation_error"
        assert secret not in response.text or secret == "whsec_"
        async with api.database.transaction() as session:
            assert (await session.exec(select(WebhookEndpoint))).all() == []

    @pytest.mark.parametrize(
        "secret",
        [
            "k" * 16,  # a receiver's own shared secret, shortest
            "é" * 256,  # longest, and not ASCII: signed with its UTF-8 bytes
            "a shared secret with spaces, commas & symbols!",
            "whsec_not*base64!",  # not a Standard Webhooks secret, but printable
        ],
    )
    async def test_accepts_any_printable_shared_secret(self, api: Api, secret: str) -> None:
        created = await create_webhook(api, secret=secret)
        assert created["secret"] == secret
        async with api.database.transaction() as session:
            stored = await session.get(WebhookEndpoint, created["id"])
        assert stored is not None and stored.secret == secret

    @pytest.mark.parametrize(
        "url",
        [
            "ftp://site.example/hook",
            "site.example/hook",
            "https://",
            "https://user:pw@site.example/hook",
            "https://site.example/ho ok",
            "https://site.example:99999/hook",
            "https://site.example/" + "a" * 2048,
        ],
    )
    async def test_rejects_bad_url(self, api: Api, url: str) -> None:
        response = await api.client.post("/webhooks", json={"url": url}, headers=api.auth())
        assert response.status_code == 422, url
        assert response.json()["code"] == "validation_error"

    @pytest.mark.parametrize(
        "body",
        [
            {"event_types": ["model_exploded"]},
            {"event_types": []},
            {"unexpected": 1},
            {"active": "maybe"},
        ],
    )
    async def test_rejects_bad_fields(self, api: Api, body: dict[str, Any]) -> None:
        response = await api.client.post(
            "/webhooks", json={"url": HOOK_URL, **body}, headers=api.auth()
        )
        assert response.status_code == 422
        async with api.database.transaction() as session:
            assert (await session.exec(select(WebhookEndpoint))).all() == []

    async def test_allows_local_targets_outside_production(self, api: Api) -> None:
        created = await create_webhook(api, url="http://127.0.0.1:9/hook")
        assert created["url"] == "http://127.0.0.1:9/hook"

    @pytest.mark.parametrize(
        "url",
        [
            "http://site.example/hook",
            "https://10.0.0.1/hook",
            "https://169.254.169.254/latest",
            "https://[::ffff:127.0.0.1]/hook",
            "https://localhost/hook",
        ],
    )
    async def test_production_requires_https_and_public_hosts(self, api: Api, url: str) -> None:
        original = api.app.state.settings
        api.app.state.settings = original.model_copy(update={"env": Environment.PRODUCTION})
        try:
            response = await api.client.post("/webhooks", json={"url": url}, headers=api.auth())
            ok = await api.client.post("/webhooks", json={"url": HOOK_URL}, headers=api.auth())
        finally:
            api.app.state.settings = original
        assert response.status_code == 422, url
        assert response.json()["code"] == "webhook_url_not_allowed"
        assert ok.status_code == 201


class TestUpdateWebhook:
    async def test_changes_given_fields_only(self, api: Api) -> None:
        created = await create_webhook(api, description="old")
        response = await api.client.patch(
            f"/webhooks/{created['id']}",
            json={"event_types": ["model_deployed"], "url": "https://site.example/v2"},
            headers=api.auth(),
        )
        assert response.status_code == 200
        body = response.json()
        assert body["event_types"] == ["model_deployed"]
        assert body["url"] == "https://site.example/v2"
        assert body["description"] == "old"
        assert "secret" not in body
        cleared = await api.client.patch(
            f"/webhooks/{created['id']}", json={"description": None}, headers=api.auth()
        )
        assert cleared.json()["description"] is None
        stored = await stored_endpoint(api, created["id"])
        assert stored is not None and stored.secret == created["secret"]

    async def test_reactivating_clears_disabled_reason(self, api: Api) -> None:
        created = await create_webhook(api)
        async with api.database.transaction() as session:
            endpoint = await session.get(WebhookEndpoint, created["id"])
            assert endpoint is not None
            endpoint.active = False
            endpoint.disabled_reason = "the receiver answered 410 Gone"
            session.add(endpoint)
        shown = await api.client.get(f"/webhooks/{created['id']}", headers=api.auth())
        assert shown.json()["disabled_reason"] == "the receiver answered 410 Gone"
        response = await api.client.patch(
            f"/webhooks/{created['id']}", json={"active": True}, headers=api.auth()
        )
        assert response.status_code == 200
        assert response.json()["active"] is True
        assert response.json()["disabled_reason"] is None

    @pytest.mark.parametrize(
        "body",
        [{"url": None}, {"active": None}, {"event_types": ["nope"]}, {"secret": GOOD_SECRET}],
    )
    async def test_rejects_invalid_changes(self, api: Api, body: dict[str, Any]) -> None:
        created = await create_webhook(api)
        response = await api.client.patch(
            f"/webhooks/{created['id']}", json=body, headers=api.auth()
        )
        assert response.status_code == 422
        stored = await stored_endpoint(api, created["id"])
        assert stored is not None and stored.url == HOOK_URL and stored.active

    async def test_unknown_webhook_is_404(self, api: Api) -> None:
        response = await api.client.patch(
            "/webhooks/nope", json={"active": False}, headers=api.auth()
        )
        assert response.status_code == 404
        assert response.json()["code"] == "webhook_not_found"


class TestDeleteWebhook:
    async def test_deletes_endpoint_and_its_deliveries(self, api: Api) -> None:
        created = await create_webhook(api)
        await insert_delivery(api, created["id"], attempts=2)
        response = await api.client.delete(f"/webhooks/{created['id']}", headers=api.auth())
        assert response.status_code == 204
        assert response.content == b""
        gone = await api.client.get(f"/webhooks/{created['id']}", headers=api.auth())
        assert gone.status_code == 404 and gone.json()["code"] == "webhook_not_found"
        async with api.database.transaction() as session:
            deliveries = await session.execute(sa.text("SELECT count(*) FROM deliveries"))
            assert deliveries.scalar_one() == 0
            attempts = await session.execute(sa.text("SELECT count(*) FROM delivery_attempts"))
            assert attempts.scalar_one() == 0

    async def test_unknown_webhook_is_404(self, api: Api) -> None:
        response = await api.client.delete("/webhooks/nope", headers=api.auth())
        assert response.status_code == 404


class TestStaticWebhook:
    async def test_is_listed_but_read_only(self, api: Api) -> None:
        await insert_static_endpoint(api)
        listed = await api.client.get("/webhooks", headers=api.auth())
        (item,) = listed.json()["items"]
        assert item["id"] == "static" and item["is_static"] is True
        assert "secret" not in item
        patch = await api.client.patch(
            "/webhooks/static", json={"url": "https://evil.example/"}, headers=api.auth()
        )
        assert patch.status_code == 409
        assert patch.json()["code"] == "static_webhook_readonly"
        delete = await api.client.delete("/webhooks/static", headers=api.auth())
        assert delete.status_code == 409
        assert delete.json()["code"] == "static_webhook_readonly"
        stored = await stored_endpoint(api, "static")
        assert stored is not None and stored.url == "https://site.example/static"

    async def test_can_be_pinged(self, api: Api) -> None:
        await insert_static_endpoint(api)
        response = await api.client.post("/webhooks/static/test", headers=api.auth())
        assert response.status_code == 202


OTHER_SECRET = "whsec_" + base64.b64encode(b"n" * 32).decode()


class TestRotateSecret:
    async def test_generates_new_secret_and_keeps_old_one_for_a_day(self, api: Api) -> None:
        created = await create_webhook(api, secret=GOOD_SECRET)
        before = utcnow()
        response = await api.client.post(
            f"/webhooks/{created['id']}/rotate-secret", headers=api.auth()
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["id"] == created["id"] and body["url"] == HOOK_URL
        new_secret = body["secret"]
        assert new_secret.startswith("whsec_") and new_secret != GOOD_SECRET
        assert GOOD_SECRET not in response.text
        expires = dt.datetime.fromisoformat(body["previous_secret_expires_at"])
        assert before + dt.timedelta(hours=24) <= expires <= utcnow() + dt.timedelta(hours=24)
        stored = await stored_endpoint(api, created["id"])
        assert stored is not None
        assert stored.secret == new_secret
        assert stored.previous_secret == GOOD_SECRET
        assert stored.previous_secret_expires_at is not None
        assert abs((stored.previous_secret_expires_at - expires).total_seconds()) < 1
        shown = await api.client.get(f"/webhooks/{created['id']}", headers=api.auth())
        assert "secret" not in shown.json()
        assert new_secret not in shown.text and GOOD_SECRET not in shown.text
        assert shown.json()["previous_secret_expires_at"] is not None

    async def test_accepts_given_secret_and_overlap(self, api: Api) -> None:
        created = await create_webhook(api, secret=GOOD_SECRET)
        before = utcnow()
        response = await api.client.post(
            f"/webhooks/{created['id']}/rotate-secret",
            json={"secret": OTHER_SECRET, "overlap_seconds": 600},
            headers=api.auth(),
        )
        assert response.status_code == 200, response.text
        assert response.json()["secret"] == OTHER_SECRET
        stored = await stored_endpoint(api, created["id"])
        assert stored is not None and stored.secret == OTHER_SECRET
        assert stored.previous_secret == GOOD_SECRET
        assert stored.previous_secret_expires_at is not None
        overlap = (stored.previous_secret_expires_at - before).total_seconds()
        assert 599 <= overlap <= 601

    async def test_zero_overlap_drops_old_secret_at_once(self, api: Api) -> None:
        created = await create_webhook(api, secret=GOOD_SECRET)
        response = await api.client.post(
            f"/webhooks/{created['id']}/rotate-secret",
            json={"overlap_seconds": 0},
            headers=api.auth(),
        )
        assert response.status_code == 200
        assert response.json()["previous_secret_expires_at"] is None
        stored = await stored_endpoint(api, created["id"])
        assert stored is not None and stored.secret == response.json()["secret"]
        assert stored.previous_secret is None and stored.previous_secret_expires_at is None

    async def test_second_rotation_keeps_only_the_last_two(self, api: Api) -> None:
        created = await create_webhook(api, secret=GOOD_SECRET)
        path = f"/webhooks/{created['id']}/rotate-secret"
        first = await api.client.post(path, json={"secret": OTHER_SECRET}, headers=api.auth())
        second = await api.client.post(path, headers=api.auth())
        assert first.status_code == second.status_code == 200
        stored = await stored_endpoint(api, created["id"])
        assert stored is not None
        assert stored.secret == second.json()["secret"]
        assert stored.previous_secret == OTHER_SECRET

    @pytest.mark.parametrize(
        "body",
        [
            {"overlap_seconds": 7 * 24 * 3600 + 1},
            {"overlap_seconds": -1},
            {"overlap_seconds": "soon"},
            {"secret": "not-a-secret"},
            {"secret": "k" * 15},
            {"secret": "new\tsecret-with-a-tab"},
            {"unexpected": True},
        ],
    )
    async def test_rejects_bad_bodies(self, api: Api, body: dict[str, Any]) -> None:
        created = await create_webhook(api, secret=GOOD_SECRET)
        response = await api.client.post(
            f"/webhooks/{created['id']}/rotate-secret", json=body, headers=api.auth()
        )
        assert response.status_code == 422
        assert response.json()["code"] == "validation_error"
        stored = await stored_endpoint(api, created["id"])
        assert stored is not None and stored.secret == GOOD_SECRET
        assert stored.previous_secret is None

    async def test_static_webhook_is_409(self, api: Api) -> None:
        await insert_static_endpoint(api)
        response = await api.client.post("/webhooks/static/rotate-secret", headers=api.auth())
        assert response.status_code == 409
        assert response.json()["code"] == "static_webhook_readonly"
        stored = await stored_endpoint(api, "static")
        assert stored is not None and stored.secret == GOOD_SECRET
        assert stored.previous_secret is None

    async def test_unknown_webhook_is_404(self, api: Api) -> None:
        response = await api.client.post("/webhooks/nope/rotate-secret", headers=api.auth())
        assert response.status_code == 404
        assert response.json()["code"] == "webhook_not_found"


class TestScopes:
    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("POST", "/webhooks"),
            ("GET", "/webhooks"),
            ("GET", "/webhooks/x"),
            ("PATCH", "/webhooks/x"),
            ("DELETE", "/webhooks/x"),
            ("GET", "/webhooks/x/deliveries"),
            ("POST", "/webhooks/x/deliveries/y/retry"),
            ("POST", "/webhooks/x/test"),
            ("POST", "/webhooks/x/rotate-secret"),
        ],
    )
    async def test_requires_webhooks_manage(self, api: Api, method: str, path: str) -> None:
        key = await api.key_with("tokens:read", "tokens:write", "events:read")
        body = {"url": HOOK_URL} if method in ("POST", "PATCH") else None
        forbidden = await api.client.request(method, path, json=body, headers=api.auth(key))
        assert forbidden.status_code == 403
        assert forbidden.json()["code"] == "forbidden"
        anonymous = await api.client.request(method, path, json=body)
        assert anonymous.status_code == 401

    async def test_webhooks_manage_is_enough(self, api: Api) -> None:
        key = await api.key_with("webhooks:manage")
        response = await api.client.post("/webhooks", json={"url": HOOK_URL}, headers=api.auth(key))
        assert response.status_code == 201


class TestDeliveries:
    async def test_lists_newest_first_with_attempts(self, api: Api) -> None:
        endpoint = await create_webhook(api)
        other = await create_webhook(api)
        base = utcnow() - dt.timedelta(hours=1)
        oldest = await insert_delivery(
            api, endpoint["id"], created_at=base, attempts=3, status=DeliveryStatus.DEAD
        )
        newest = await insert_delivery(
            api, endpoint["id"], created_at=base + dt.timedelta(minutes=2), sequence=3
        )
        middle = await insert_delivery(
            api,
            endpoint["id"],
            created_at=base + dt.timedelta(minutes=1),
            status=DeliveryStatus.DELIVERED,
            sequence=2,
        )
        await insert_delivery(api, other["id"])
        response = await api.client.get(
            f"/webhooks/{endpoint['id']}/deliveries", headers=api.auth()
        )
        assert response.status_code == 200
        items = response.json()["items"]
        assert [item["id"] for item in items] == [newest, middle, oldest]
        dead = items[2]
        assert dead["status"] == "dead"
        assert dead["attempts"] == 3
        assert dead["last_status_code"] == 500
        assert dead["last_error"] == "HTTP 500 Internal Server Error"
        assert dead["next_attempt_at"] is None and dead["delivered_at"] is None
        assert [a["attempt"] for a in dead["attempt_log"]] == [1, 2, 3]
        assert [a["outcome"] for a in dead["attempt_log"]] == ["retry", "retry", "dead"]
        first = dead["attempt_log"][0]
        assert first["status_code"] == 500 and first["duration_ms"] == 12.5
        assert first["response_excerpt"] == "boom" and first["started_at"]
        for key in ("event_id", "event_type", "created_at"):
            assert dead[key]
        assert items[0]["attempt_log"] == []

    async def test_filters_by_status_and_limits(self, api: Api) -> None:
        endpoint = await create_webhook(api)
        base = utcnow() - dt.timedelta(hours=1)
        for minute in range(3):
            await insert_delivery(
                api,
                endpoint["id"],
                created_at=base + dt.timedelta(minutes=minute),
                status=DeliveryStatus.DEAD,
                sequence=minute + 1,
            )
        await insert_delivery(api, endpoint["id"], sequence=9)
        path = f"/webhooks/{endpoint['id']}/deliveries"
        dead = await api.client.get(path, params={"status": "dead"}, headers=api.auth())
        assert [item["status"] for item in dead.json()["items"]] == ["dead"] * 3
        limited = await api.client.get(path, params={"limit": 2}, headers=api.auth())
        assert len(limited.json()["items"]) == 2
        bad = await api.client.get(path, params={"status": "lost"}, headers=api.auth())
        assert bad.status_code == 422
        too_many = await api.client.get(path, params={"limit": 0}, headers=api.auth())
        assert too_many.status_code == 422

    async def test_unknown_webhook_is_404(self, api: Api) -> None:
        response = await api.client.get("/webhooks/nope/deliveries", headers=api.auth())
        assert response.status_code == 404
        assert response.json()["code"] == "webhook_not_found"


class TestRetryDelivery:
    async def test_makes_dead_delivery_due_now(self, api: Api) -> None:
        endpoint = await create_webhook(api)
        delivery_id = await insert_delivery(
            api, endpoint["id"], attempts=7, status=DeliveryStatus.DEAD, lease_owner="w1"
        )
        woken = asyncio.create_task(new_events.wait(5))
        await asyncio.sleep(0)
        before = utcnow()
        response = await api.client.post(
            f"/webhooks/{endpoint['id']}/deliveries/{delivery_id}/retry", headers=api.auth()
        )
        assert response.status_code == 202
        body = response.json()
        assert body["id"] == delivery_id
        assert body["status"] == "pending"
        assert body["attempts"] == 7
        assert len(body["attempt_log"]) == 7
        assert await woken is True
        async with api.database.transaction() as session:
            stored = await session.get(Delivery, delivery_id)
        assert stored is not None
        assert stored.status is DeliveryStatus.PENDING
        assert stored.attempts == 7
        assert stored.next_attempt_at is not None
        assert before - dt.timedelta(seconds=1) <= stored.next_attempt_at <= utcnow()
        assert stored.lease_owner is None and stored.lease_expires_at is None

    async def test_delivery_of_another_webhook_is_404(self, api: Api) -> None:
        endpoint = await create_webhook(api)
        other = await create_webhook(api)
        delivery_id = await insert_delivery(api, other["id"], status=DeliveryStatus.DEAD)
        response = await api.client.post(
            f"/webhooks/{endpoint['id']}/deliveries/{delivery_id}/retry", headers=api.auth()
        )
        assert response.status_code == 404
        assert response.json()["code"] == "delivery_not_found"
        missing = await api.client.post(
            f"/webhooks/nope/deliveries/{delivery_id}/retry", headers=api.auth()
        )
        assert missing.json()["code"] == "webhook_not_found"

    async def test_inactive_webhook_refuses_retry(self, api: Api) -> None:
        endpoint = await create_webhook(api, active=False)
        delivery_id = await insert_delivery(api, endpoint["id"], status=DeliveryStatus.DEAD)
        response = await api.client.post(
            f"/webhooks/{endpoint['id']}/deliveries/{delivery_id}/retry", headers=api.auth()
        )
        assert response.status_code == 409
        assert response.json()["code"] == "webhook_inactive"
        async with api.database.transaction() as session:
            stored = await session.get(Delivery, delivery_id)
        assert stored is not None and stored.status is DeliveryStatus.DEAD


class TestPing:
    async def test_writes_ping_for_that_endpoint_alone(self, api: Api) -> None:
        endpoint = await create_webhook(api, event_types=["model_deployed"])
        response = await api.client.post(f"/webhooks/{endpoint['id']}/test", headers=api.auth())
        assert response.status_code == 202
        body = response.json()
        assert body["webhook_id"] == endpoint["id"]
        async with api.database.transaction() as session:
            events = (await session.exec(select(OutboxEvent))).all()
        (event,) = events
        assert event.event_id == body["event_id"]
        assert event.event_type == "ping"
        assert event.audience == endpoint["id"]
        assert event.token_id is None
        assert event.payload == {"webhook_id": endpoint["id"]}

    async def test_unknown_webhook_is_404(self, api: Api) -> None:
        response = await api.client.post("/webhooks/nope/test", headers=api.auth())
        assert response.status_code == 404
        async with api.database.transaction() as session:
            assert (await session.exec(select(OutboxEvent))).all() == []
