"""Delivering to the Hokusai site in the format it parses today, on SQLite and PostgreSQL.

Real registrations are delivered by a real dispatcher to a real receiver on loopback that answers
as the site does: it verifies `X-Hokusai-Signature` with the shared secret, then parses the body
against the site's shape (tests/site_receiver.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from app.events.dispatcher import Dispatcher
from app.events.static_endpoints import sync_static_endpoint
from app.events.webhooks.sender import WebhookSender
from app.events.webhooks.site_format import site_timestamp
from tests.factories import create_token, mlflow_zip, register, tags_field
from tests.site_receiver import dedupe_key, parse_site_body, site_responder, site_signature_ok
from tests.support.service import Api
from tests.webhook_receiver import Reply, WebhookReceiver

SITE_SECRET = "site-shared-secret-3q8Zk2Vn7Rt5Lw9P"
SDK_FIELDS = {
    "proposal_identifier": "prop-2026-0042",
    "eval_spec": "xray-holdout-v2",
    "scorer_ref": "sklearn.metrics.roc_auc_score",
    "primary_metric": "auroc",
    "benchmark_spec_id": "bench-xray-7",
}
EXPECTED_API_SCHEMA = {
    "inputSchema": {
        "type": "object",
        "properties": {"age": {"type": "number"}, "bmi": {"type": "number"}},
        "required": ["age", "bmi"],
    },
    "outputSchema": {
        "type": "object",
        "properties": {"output": {"type": "integer"}},
        "required": ["output"],
    },
}
TENSOR_MLMODEL = """\
artifact_path: model
flavors:
  python_function:
    loader_module: mlflow.pytorch
    python_version: 3.11.7
signature:
  inputs: '[{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 28, 28]}}]'
  outputs: '[{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 10]}}]'
  params: null
"""


@pytest.fixture
async def dispatcher(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Callable[[], Dispatcher]]:
    """Dispatchers on the test database with a fast retry schedule; closed after the test."""
    monkeypatch.setattr(api.settings, "webhook_retry_schedule", [0.05, 0.05, 0.05])
    made: list[Dispatcher] = []

    def make() -> Dispatcher:
        sender = WebhookSender(allow_private=True, require_https=False, timeout=2.0)
        built = Dispatcher(settings=api.settings, database=api.database, sender=sender, redis=None)
        made.append(built)
        return built

    yield make
    for built in made:
        await built.sender.aclose()


async def drain(dispatcher: Dispatcher, until: Callable[[], bool], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not until():
        assert time.monotonic() < deadline, "the dispatcher did not finish in time"
        if not await dispatcher.run_once():
            await asyncio.sleep(0.02)


async def add_site_endpoint(api: Api, url: str, **extra: Any) -> dict[str, Any]:
    response = await api.client.post(
        "/webhooks",
        json={"url": url, "payload_format": "hokusai_site", "secret": SITE_SECRET, **extra},
        headers=api.auth(),
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def registered(api: Api, *, model: bytes | None = None, **fields: str) -> dict[str, Any]:
    """A new token (fresh model name: the MLflow store is shared) and its registration."""
    token_id = f"Site-{uuid.uuid4().hex[:6]}"
    await create_token(api.client, api.auth(), token_id=token_id)
    response = await register(
        api.client,
        api.auth(),
        token_id=token_id,
        model=model,
        filename="model.zip" if model is not None else "model.pkl",
        fields=fields,
    )
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


async def event_row(api: Api, event_id: str) -> dict[str, Any]:
    query = sa.text("SELECT event_id, created_at FROM events WHERE event_id = :e")
    async with api.database.transaction() as session:
        row = (await session.execute(query, {"e": event_id})).mappings().one()
    return dict(row)


class TestSiteDelivery:
    async def test_registration_reaches_the_site_verified_and_in_its_shape(
        self, api: Api, dispatcher: Callable[[], Dispatcher]
    ) -> None:
        with (
            WebhookReceiver(responder=site_responder(SITE_SECRET)) as site,
            WebhookReceiver() as standard,
        ):
            endpoint = await add_site_endpoint(api, site.url)
            assert endpoint["event_types"] == ["model_registered"]
            assert endpoint["payload_format"] == "hokusai_site"
            await api.client.post("/webhooks", json={"url": standard.url}, headers=api.auth())
            registration = await registered(
                api,
                model=mlflow_zip(),
                **SDK_FIELDS,
                **tags_field({"user_id": "user-8f3a"}),
            )
            await drain(
                dispatcher(), lambda: len(site.requests) >= 1 and len(standard.requests) >= 2
            )
            await asyncio.sleep(0.1)  # nothing else is on its way to the site
            (delivered,) = site.requests
            envelopes = [request.json() for request in standard.requests]

        model_registered_id, ready_id = registration["event_ids"]
        assert delivered.reply.status == 200, delivered.reply.body
        assert site_signature_ok(SITE_SECRET, delivered.body, delivered.headers)
        document = parse_site_body(delivered.body)
        assert document["model"] == {
            "id": registration["token_id"].lower(),
            "name": registration["model_name"],
            "status": "registered",
            "version": registration["model_version"],
            "run_id": registration["mlflow_run_id"],
            "user_id": "user-8f3a",
            "api_schema": EXPECTED_API_SCHEMA,
            "eval_spec": "xray-holdout-v2",
            "scorer_ref": "sklearn.metrics.roc_auc_score",
            "primary_metric": "auroc",
            "benchmark_spec_id": "bench-xray-7",
        }
        event = await event_row(api, model_registered_id)
        created_at = event["created_at"]
        if isinstance(created_at, str):  # SQLite hands back text through a raw query
            created_at = dt.datetime.fromisoformat(created_at)
        assert document["timestamp"] == site_timestamp(created_at.replace(tzinfo=dt.UTC))
        headers = delivered.headers
        assert headers["content-type"] == "application/json"
        assert headers["x-hokusai-event"] == "model_registered"
        assert headers["x-hokusai-idempotency-key"] == model_registered_id
        assert headers["webhook-id"] == model_registered_id
        assert headers["webhook-signature"].startswith("v1,")
        # The same commit's other event went to the standard endpoint only, as envelopes.
        assert sorted(e["event_type"] for e in envelopes) == [
            "model_registered",
            "token_ready_for_deploy",
        ]
        (envelope,) = [e for e in envelopes if e["event_id"] == model_registered_id]
        assert envelope["token_id"] == registration["token_id"]
        assert envelope["payload"]["api_json_schema"] == EXPECTED_API_SCHEMA
        assert envelope["payload"]["proposal_identifier"] == "prop-2026-0042"
        assert ready_id in {e["event_id"] for e in envelopes}

    async def test_a_retry_and_a_redelivery_send_the_same_bytes(
        self, api: Api, dispatcher: Callable[[], Dispatcher]
    ) -> None:
        with WebhookReceiver(responder=site_responder(SITE_SECRET)) as site:
            site.script(Reply.with_status(503, b"busy"))
            endpoint = await add_site_endpoint(api, site.url)
            await registered(api, model=mlflow_zip(), **SDK_FIELDS)
            worker = dispatcher()
            await drain(worker, lambda: len(site.requests) >= 2)
            deliveries = (
                await api.client.get(f"/webhooks/{endpoint['id']}/deliveries", headers=api.auth())
            ).json()["items"]
            (delivery,) = deliveries
            assert delivery["status"] == "delivered" and delivery["attempts"] == 2
            retried = await api.client.post(
                f"/webhooks/{endpoint['id']}/deliveries/{delivery['id']}/retry",
                headers=api.auth(),
            )
            assert retried.status_code == 202, retried.text
            await drain(worker, lambda: len(site.requests) >= 3)
            first, second, third = site.requests

        assert [r.reply.status for r in (first, second, third)] == [503, 200, 200]
        assert first.body == second.body == third.body
        signature = first.headers["x-hokusai-signature"]
        assert second.headers["x-hokusai-signature"] == third.headers["x-hokusai-signature"]
        assert signature == second.headers["x-hokusai-signature"]
        document = parse_site_body(first.body)
        # The site would see one delivery three times under one de-duplication key.
        assert len({dedupe_key(parse_site_body(r.body)) for r in (first, second, third)}) == 1
        assert document["model"]["eval_spec"] == "xray-holdout-v2"

    async def test_without_signature_or_optional_fields_only_the_required_keys(
        self, api: Api, dispatcher: Callable[[], Dispatcher]
    ) -> None:
        with WebhookReceiver(responder=site_responder(SITE_SECRET)) as site:
            await add_site_endpoint(api, site.url)
            registration = await registered(api)  # a pickle: no MLflow signature
            await drain(dispatcher(), lambda: len(site.requests) >= 1)
            (delivered,) = site.requests
        assert delivered.reply.status == 200
        document = parse_site_body(delivered.body)
        assert list(document["model"]) == ["id", "name", "status", "version", "run_id"]
        assert document["model"]["version"] == registration["model_version"]
        assert b"null" not in delivered.body

    async def test_tensor_signature_leaves_api_schema_out(
        self, api: Api, dispatcher: Callable[[], Dispatcher]
    ) -> None:
        with WebhookReceiver(responder=site_responder(SITE_SECRET)) as site:
            await add_site_endpoint(api, site.url)
            registration = await registered(
                api,
                model=mlflow_zip(mlmodel=TENSOR_MLMODEL),
                **tags_field({"fulfilled_by_user_id": "user-77"}),
            )
            await drain(dispatcher(), lambda: len(site.requests) >= 1)
            (delivered,) = site.requests
        assert registration["api_schema"]["inputs"][0]["type"] == "tensor"
        assert registration["api_json_schema"] is None
        document = parse_site_body(delivered.body)
        assert "api_schema" not in document["model"]
        assert document["model"]["user_id"] == "user-77"

    async def test_wrong_secret_is_refused_by_the_site_and_retried(
        self, api: Api, dispatcher: Callable[[], Dispatcher]
    ) -> None:
        # The receiver holds another secret: the site's check must fail, not pass vacuously.
        with WebhookReceiver(responder=site_responder("another-shared-secret-0000")) as site:
            endpoint = await add_site_endpoint(api, site.url)
            await registered(api)
            await drain(dispatcher(), lambda: len(site.requests) >= 2)
            first, second = site.requests[:2]
        assert first.reply.status == second.reply.status == 401
        assert first.body == second.body
        deliveries = (
            await api.client.get(f"/webhooks/{endpoint['id']}/deliveries", headers=api.auth())
        ).json()["items"]
        assert deliveries[0]["last_status_code"] == 401

    async def test_a_non_ascii_secret_signs_with_its_utf8_bytes(
        self, api: Api, dispatcher: Callable[[], Dispatcher]
    ) -> None:
        secret = "clé-partagée-du-site-✓"
        with WebhookReceiver(responder=site_responder(secret)) as site:
            await add_site_endpoint(api, site.url, secret=secret)
            await registered(api)
            await drain(dispatcher(), lambda: len(site.requests) >= 1)
            (delivered,) = site.requests
        assert delivered.reply.status == 200, delivered.reply.body


class TestSiteEndpoints:
    async def test_defaults_to_model_registered_and_shows_its_format(self, api: Api) -> None:
        created = await add_site_endpoint(api, "https://site.example/api/webhooks/model-reg")
        assert created["secret"] == SITE_SECRET
        shown = await api.client.get(f"/webhooks/{created['id']}", headers=api.auth())
        assert shown.json()["payload_format"] == "hokusai_site"
        assert shown.json()["event_types"] == ["model_registered"]
        listed = (await api.client.get("/webhooks", headers=api.auth())).json()["items"]
        assert [item["payload_format"] for item in listed] == ["hokusai_site"]
        standard = await api.client.post(
            "/webhooks", json={"url": "https://site.example/hook"}, headers=api.auth()
        )
        assert standard.json()["payload_format"] == "standard"
        assert standard.json()["event_types"] == ["*"]

    @pytest.mark.parametrize(
        "event_types",
        [
            ["*"],
            ["token_ready_for_deploy"],
            ["model_registered", "token_ready_for_deploy"],
            ["model_registered", "ping"],
        ],
    )
    async def test_refuses_other_event_types(self, api: Api, event_types: list[str]) -> None:
        response = await api.client.post(
            "/webhooks",
            json={
                "url": "https://site.example/hook",
                "payload_format": "hokusai_site",
                "event_types": event_types,
            },
            headers=api.auth(),
        )
        assert response.status_code == 422, response.text
        assert response.json()["code"] == "validation_error"
        assert "model_registered only" in response.text
        assert (await api.client.get("/webhooks", headers=api.auth())).json()["items"] == []

    async def test_refuses_an_unknown_format(self, api: Api) -> None:
        response = await api.client.post(
            "/webhooks",
            json={"url": "https://site.example/hook", "payload_format": "svix"},
            headers=api.auth(),
        )
        assert response.status_code == 422
        assert response.json()["code"] == "validation_error"

    async def test_patch_keeps_a_site_endpoint_on_model_registered(self, api: Api) -> None:
        created = await add_site_endpoint(api, "https://site.example/hook")
        url = f"/webhooks/{created['id']}"
        widened = await api.client.patch(url, json={"event_types": ["*"]}, headers=api.auth())
        assert widened.status_code == 422, widened.text
        assert widened.json()["code"] == "validation_error"
        shown = (await api.client.get(url, headers=api.auth())).json()
        assert shown["event_types"] == ["model_registered"]
        back = await api.client.patch(
            url, json={"payload_format": "standard", "event_types": ["*"]}, headers=api.auth()
        )
        assert back.status_code == 200, back.text
        assert back.json()["payload_format"] == "standard"
        assert back.json()["event_types"] == ["*"]

    async def test_patch_to_site_format_needs_model_registered_only(self, api: Api) -> None:
        created = (
            await api.client.post(
                "/webhooks", json={"url": "https://site.example/hook"}, headers=api.auth()
            )
        ).json()
        url = f"/webhooks/{created['id']}"
        refused = await api.client.patch(
            url, json={"payload_format": "hokusai_site"}, headers=api.auth()
        )
        assert refused.status_code == 422, refused.text
        assert refused.json()["code"] == "validation_error"
        assert (await api.client.get(url, headers=api.auth())).json()["payload_format"] == (
            "standard"
        )
        switched = await api.client.patch(
            url,
            json={"payload_format": "hokusai_site", "event_types": ["model_registered"]},
            headers=api.auth(),
        )
        assert switched.status_code == 200, switched.text
        assert switched.json()["payload_format"] == "hokusai_site"
        nulled = await api.client.patch(url, json={"payload_format": None}, headers=api.auth())
        assert nulled.status_code == 422

    async def test_a_site_endpoint_cannot_be_pinged(self, api: Api) -> None:
        created = await add_site_endpoint(api, "https://site.example/hook")
        response = await api.client.post(f"/webhooks/{created['id']}/test", headers=api.auth())
        assert response.status_code == 422
        assert response.json()["code"] == "validation_error"
        async with api.database.transaction() as session:
            count = (await session.execute(sa.text("SELECT count(*) FROM events"))).scalar_one()
        assert count == 0


class TestStaticSiteEndpoint:
    async def test_settings_configure_a_read_only_site_endpoint(self, api: Api) -> None:
        configured = api.settings.model_copy(
            update={
                "site_webhook_url": "https://hokus.ai/api/webhooks/model-registration",
                "site_webhook_secret": SecretStr(SITE_SECRET),
            }
        )
        await sync_static_endpoint(api.database, configured)
        listed = (await api.client.get("/webhooks", headers=api.auth())).json()["items"]
        (site,) = listed
        assert site["id"] == "static-site" and site["is_static"] is True
        assert site["payload_format"] == "hokusai_site"
        assert site["event_types"] == ["model_registered"]
        assert site["url"] == "https://hokus.ai/api/webhooks/model-registration"
        assert "secret" not in site
        changed = await api.client.patch(
            "/webhooks/static-site", json={"active": False}, headers=api.auth()
        )
        assert changed.status_code == 409
        assert "HOKUSAI_SITE_WEBHOOK_URL" in changed.json()["detail"]

        await sync_static_endpoint(api.database, api.settings)  # the settings are gone
        shown = (await api.client.get("/webhooks/static-site", headers=api.auth())).json()
        assert shown["active"] is False
        assert shown["disabled_reason"] == "HOKUSAI_SITE_WEBHOOK_URL is no longer set"
