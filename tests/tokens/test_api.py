"""The tokens API, on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlalchemy as sa

from tests.factories import create_token
from tests.support.service import Api


class TestCreateToken:
    async def test_creates_draft_token_upper_case(self, api: Api) -> None:
        response = await api.client.post(
            "/tokens",
            json={
                "token_id": "xray-2",
                "name": "X-ray",
                "metric": "AUC",
                "baseline": 0.8,
                "metadata": {"team": "radiology"},
            },
            headers=api.auth(),
        )
        assert response.status_code == 201
        body = response.json()
        assert body["token_id"] == "XRAY-2"
        assert body["status"] == "draft"
        assert body["metric"] == "auroc"  # the alias resolves to the canonical name
        assert body["baseline"] == 0.8
        assert body["metadata"] == {"team": "radiology"}
        assert body["mlflow_run_id"] is None
        assert body["created_at"].endswith("Z") or "+00:00" in body["created_at"]

    async def test_rejects_duplicate_id_in_any_case(self, api: Api) -> None:
        await create_token(api.client, api.auth(), token_id="XRAY")
        response = await api.client.post("/tokens", json={"token_id": "xray"}, headers=api.auth())
        assert response.status_code == 409
        assert response.json()["code"] == "token_already_exists"

    async def test_rejects_malformed_token_id(self, api: Api) -> None:
        for bad in ("-XRAY", "XRAY-", "X_RAY", "", "A" * 65, "XR AY", "\uff38\uff32\uff21\uff39"):
            response = await api.client.post("/tokens", json={"token_id": bad}, headers=api.auth())
            assert response.status_code == 422, bad
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["code"] == "validation_error"

    async def test_rejects_unsupported_metric(self, api: Api) -> None:
        response = await api.client.post(
            "/tokens",
            json={"token_id": "XRAY", "metric": "bleu", "baseline": 0.5},
            headers=api.auth(),
        )
        assert response.status_code == 422
        assert response.json()["code"] == "unsupported_metric"

    async def test_rejects_baseline_out_of_range(self, api: Api) -> None:
        response = await api.client.post(
            "/tokens",
            json={"token_id": "XRAY", "metric": "auroc", "baseline": 1.5},
            headers=api.auth(),
        )
        assert response.status_code == 422
        assert response.json()["code"] == "invalid_baseline"

    async def test_rejects_baseline_without_metric(self, api: Api) -> None:
        response = await api.client.post(
            "/tokens", json={"token_id": "XRAY", "baseline": 0.5}, headers=api.auth()
        )
        assert response.status_code == 422
        assert response.json()["code"] == "invalid_baseline"

    async def test_rejects_unknown_fields(self, api: Api) -> None:
        response = await api.client.post(
            "/tokens", json={"token_id": "XRAY", "status": "registered"}, headers=api.auth()
        )
        assert response.status_code == 422
        async with api.database.transaction() as session:
            count = (await session.execute(sa.text("SELECT count(*) FROM tokens"))).scalar_one()
        assert count == 0


class TestGetToken:
    async def test_gets_token_case_insensitively(self, api: Api) -> None:
        await create_token(api.client, api.auth(), token_id="XRAY")
        response = await api.client.get("/tokens/xray", headers=api.auth())
        assert response.status_code == 200
        assert response.json()["token_id"] == "XRAY"

    async def test_unknown_token_is_404(self, api: Api) -> None:
        response = await api.client.get("/tokens/NOPE", headers=api.auth())
        assert response.status_code == 404
        body = response.json()
        assert body["code"] == "token_not_found"
        assert body["request_id"] == response.headers["X-Request-ID"]


class TestListTokens:
    async def test_pages_through_every_token_once(self, api: Api) -> None:
        ids = [f"T{i}" for i in range(7)]
        for token_id in ids:
            await create_token(api.client, api.auth(), token_id=token_id)
        seen: list[str] = []
        cursor = None
        for _ in range(10):
            params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
            response = await api.client.get("/tokens", params=params, headers=api.auth())
            assert response.status_code == 200
            page = response.json()
            assert len(page["items"]) <= 3
            seen += [item["token_id"] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert sorted(seen) == sorted(ids)
        assert len(seen) == len(set(seen))

    async def test_filters_by_status(self, api: Api) -> None:
        await create_token(api.client, api.auth(), token_id="A")
        await create_token(api.client, api.auth(), token_id="B")
        await api.client.patch("/tokens/B", json={"status": "archived"}, headers=api.auth())
        response = await api.client.get("/tokens?status=archived", headers=api.auth())
        assert [item["token_id"] for item in response.json()["items"]] == ["B"]

    async def test_rejects_forged_cursor(self, api: Api) -> None:
        response = await api.client.get("/tokens?cursor=bm9wZQ", headers=api.auth())
        assert response.status_code == 422
        assert response.json()["code"] == "validation_error"


class TestUpdateToken:
    async def test_archives_a_draft(self, api: Api) -> None:
        await create_token(api.client, api.auth(), token_id="XRAY")
        response = await api.client.patch(
            "/tokens/XRAY", json={"status": "archived"}, headers=api.auth()
        )
        assert response.status_code == 200
        assert response.json()["status"] == "archived"

    async def test_refuses_deploying_an_unregistered_token(self, api: Api) -> None:
        await create_token(api.client, api.auth(), token_id="XRAY")
        response = await api.client.patch(
            "/tokens/XRAY", json={"status": "deployed"}, headers=api.auth()
        )
        assert response.status_code == 409
        assert response.json()["code"] == "invalid_status_transition"
        token = (await api.client.get("/tokens/XRAY", headers=api.auth())).json()
        assert token["status"] == "draft"

    async def test_refuses_other_statuses(self, api: Api) -> None:
        await create_token(api.client, api.auth(), token_id="XRAY")
        response = await api.client.patch(
            "/tokens/XRAY", json={"status": "registered"}, headers=api.auth()
        )
        assert response.status_code == 422

    async def test_unknown_token_is_404(self, api: Api) -> None:
        response = await api.client.patch(
            "/tokens/NOPE", json={"status": "archived"}, headers=api.auth()
        )
        assert response.status_code == 404
        assert response.json()["code"] == "token_not_found"
