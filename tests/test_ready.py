"""`GET /ready` tells the truth about each dependency."""

from __future__ import annotations

import socket

import pytest

from tests.support.service import Api


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TestReady:
    async def test_ready_when_database_and_mlflow_answer(self, api: Api) -> None:
        response = await api.client.get("/ready")
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "ok"
        assert body["checks"] == {"database": "ok", "mlflow": "ok"}

    async def test_reports_the_sandbox_probed_at_start_up(self, api: Api) -> None:
        body = (await api.client.get("/ready")).json()
        sandbox = api.app.state.evaluation.sandbox
        assert body["sandbox"] == {
            "mode": sandbox.mode.value,
            "isolated": sandbox.isolated,
            "evaluates": sandbox.mode.value != "none",
            "detail": sandbox.detail,
        }

    async def test_redis_is_reported_when_configured(
        self, api: Api, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(api.settings, "redis_url", "redis://127.0.0.1:6379/0")
        up = (await api.client.get("/ready")).json()
        monkeypatch.setattr(api.settings, "redis_url", f"redis://127.0.0.1:{closed_port()}/0")
        down = await api.client.get("/ready")
        assert up["checks"]["redis"] == "ok"
        # Redis down delays events; the service itself stays ready.
        assert down.status_code == 200
        assert down.json()["checks"]["redis"].startswith("error")
