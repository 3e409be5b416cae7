"""Failures after a registration was accepted, and dependencies that are down."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from mlflow import MlflowClient

from app.auth.service import create_api_key
from app.main import create_app
from app.manage import migrate
from tests.factories import create_token, register
from tests.support.service import Api, make_settings


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def app_client(settings: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, app


class TestMlflowDown:
    async def test_registration_fails_with_503_and_token_goes_failed(self, tmp_path: Path) -> None:
        url = f"sqlite:///{tmp_path / 'hokusai.db'}"
        migrate(url)
        settings = make_settings(
            tmp_path,
            url,
            tmp_path,
            mlflow_tracking_uri=f"http://127.0.0.1:{closed_port()}",
            mlflow_retry_seconds=1.0,
            mlflow_request_timeout=1.0,
        )
        async for client, app in app_client(settings):
            async with app.state.database.transaction() as session:
                _, key = await create_api_key(session, name="t", scopes=["admin"])
            headers = {"Authorization": f"Bearer {key}"}
            await create_token(client, headers, token_id="DOWN")
            response = await register(client, headers, token_id="DOWN")
            assert response.status_code == 503, response.text
            assert response.json()["code"] == "mlflow_unavailable"
            assert int(response.headers["Retry-After"]) > 0
            token = (await client.get("/tokens/DOWN", headers=headers)).json()
            assert token["status"] == "failed"
            listed = (await client.get("/tokens/DOWN/registrations", headers=headers)).json()
            assert listed["items"][0]["status"] == "failed"
            assert listed["items"][0]["error"]["code"] == "mlflow_unavailable"
            async with app.state.database.transaction() as session:
                types = (
                    (await session.execute(sa.text("SELECT event_type FROM events")))
                    .scalars()
                    .all()
                )
            assert list(types) == ["registration_failed"]
            ready = await client.get("/ready")
            assert ready.status_code == 503
            assert ready.json()["checks"]["mlflow"].startswith("error")


class TestDatabaseDown:
    async def test_requests_get_503_database_unavailable(self, tmp_path: Path) -> None:
        settings = make_settings(
            tmp_path, f"postgresql://postgres@127.0.0.1:{closed_port()}/none", tmp_path / "mlflow"
        )
        async for client, _app in app_client(settings):
            response = await client.get("/tokens", headers={"Authorization": "Bearer hok_x_y"})
            assert response.status_code == 503
            assert response.json()["code"] == "database_unavailable"
            assert "Retry-After" in response.headers
            ready = await client.get("/ready")
            assert ready.status_code == 503
            assert ready.json()["checks"]["database"].startswith("error")


class TestFailureAfterMlflow:
    async def test_token_changed_during_mlflow_work_is_compensated(
        self, api: Api, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The version MLflow created is removed and the run marked FAILED when the commit loses."""
        token_id = f"LATE-{api.backend}".upper()
        await create_token(api.client, api.auth(), token_id=token_id)
        registry = api.app.state.mlflow
        real_register_version = registry.register_version
        engine = sa.create_engine(
            api.settings.resolved_database_url.replace("postgresql://", "postgresql+psycopg://")
        )

        def register_then_archive(**kwargs: Any) -> Any:
            ref = real_register_version(**kwargs)
            with engine.begin() as conn:  # the site archives the token meanwhile
                conn.execute(
                    sa.text("UPDATE tokens SET status='archived' WHERE token_id=:t"),
                    {"t": token_id},
                )
            return ref

        monkeypatch.setattr(registry, "register_version", register_then_archive)
        response = await register(api.client, api.auth(), token_id=token_id)
        engine.dispose()
        assert response.status_code == 409, response.text
        body = response.json()
        assert body["code"] == "token_not_registrable"

        uri = api.settings.resolved_tracking_uri
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        versions = client.search_model_versions(f"name='hokusai-{token_id}'")
        assert all(v.tags.get("hokusai_status") == "failed" for v in versions)
        listed = (
            await api.client.get(f"/tokens/{token_id}/registrations", headers=api.auth())
        ).json()
        attempt = listed["items"][0]
        assert attempt["status"] == "failed"
        run = client.get_run(attempt["mlflow_run_id"])
        assert run.info.status == "FAILED"
        async with api.database.transaction() as session:
            types = (
                (
                    await session.execute(
                        sa.text("SELECT event_type FROM events WHERE token_id=:t"), {"t": token_id}
                    )
                )
                .scalars()
                .all()
            )
        assert list(types) == ["registration_failed"]
        assert (await api.client.get(f"/tokens/{token_id}", headers=api.auth())).json()[
            "status"
        ] == "archived"
