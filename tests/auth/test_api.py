"""API keys and scopes."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from tests.support.service import Api


class TestAuthentication:
    @pytest.mark.parametrize(
        "path", ["/health", "/ready", "/docs", "/openapi.json", "/metrics", "/metrics/"]
    )
    async def test_probes_and_docs_need_no_key(self, api: Api, path: str) -> None:
        response = await api.client.get(path)
        assert response.status_code == 200, response.text

    async def test_metrics_are_in_prometheus_format(self, api: Api) -> None:
        response = await api.client.get("/metrics")
        assert response.status_code == 200  # directly, not a redirect to /metrics/
        assert "hokusai_event_deliveries_total" in response.text
        assert "hokusai_event_deliveries_pending" in response.text

    async def test_missing_key_is_401(self, api: Api) -> None:
        response = await api.client.get("/tokens")
        assert response.status_code == 401
        assert response.json()["code"] == "unauthorized"
        assert response.headers["content-type"] == "application/problem+json"

    @pytest.mark.parametrize(
        "key", ["nope", "hok_", "hok_abc_def", "hok_ffffffffffff_" + "x" * 43, "Bearer x"]
    )
    async def test_unknown_key_is_401(self, api: Api, key: str) -> None:
        response = await api.client.get("/tokens", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 401
        assert response.json()["code"] == "unauthorized"

    async def test_tampered_secret_is_401(self, api: Api) -> None:
        tampered = api.admin_key[:-2] + ("aa" if not api.admin_key.endswith("aa") else "bb")
        response = await api.client.get("/tokens", headers=api.auth(tampered))
        assert response.status_code == 401

    async def test_x_api_key_header_works(self, api: Api) -> None:
        response = await api.client.get("/tokens", headers={"X-API-Key": api.admin_key})
        assert response.status_code == 200

    @pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer hok_ffffffffffff_x"}])
    async def test_registering_without_a_valid_key_is_401(
        self, api: Api, headers: dict[str, str]
    ) -> None:
        # The register endpoint reads its token in the key's transaction: the key still comes
        # first, whether or not the token exists.
        for token_id in ("NO-SUCH-TOKEN", "-not-an-id-"):
            response = await api.client.post(
                f"/models/{token_id}/register",
                files={"model_file": ("m.pkl", b"x")},
                headers=headers,
            )
            assert response.status_code == 401
            assert response.json()["code"] == "unauthorized"

    async def test_registering_with_x_api_key_reaches_the_token(self, api: Api) -> None:
        response = await api.client.post(
            "/models/NO-SUCH-TOKEN/register",
            files={"model_file": ("m.pkl", b"x")},
            headers={"X-API-Key": api.admin_key},
        )
        assert response.status_code == 404
        assert response.json()["code"] == "token_not_found"

    async def test_key_is_stored_only_as_hash(self, api: Api) -> None:
        async with api.database.transaction() as session:
            rows = (await session.execute(sa.text("SELECT id, key_hash FROM api_keys"))).all()
        secret = api.admin_key.split("_", 2)[2]
        assert rows
        assert all(secret not in key_hash and len(key_hash) == 64 for _, key_hash in rows)


class TestScopes:
    async def test_key_without_scope_is_403(self, api: Api) -> None:
        reader = await api.key_with("tokens:read")
        response = await api.client.post(
            "/tokens", json={"token_id": "XRAY"}, headers=api.auth(reader)
        )
        assert response.status_code == 403
        assert response.json()["code"] == "forbidden"

    async def test_registering_needs_models_register(self, api: Api) -> None:
        writer = await api.key_with("tokens:write", "tokens:read")
        response = await api.client.post(
            "/models/XRAY/register",
            files={"model_file": ("m.pkl", b"x")},
            headers=api.auth(writer),
        )
        assert response.status_code == 403

    async def test_scoped_key_reaches_its_endpoint(self, api: Api) -> None:
        reader = await api.key_with("tokens:read")
        response = await api.client.get("/tokens", headers=api.auth(reader))
        assert response.status_code == 200
