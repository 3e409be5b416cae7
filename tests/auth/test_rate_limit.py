"""Failed authentications are limited per client address."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from app.auth.ratelimit import FailedAuthLimiter
from app.auth.service import create_api_key
from app.errors import TooManyRequests
from app.main import create_app
from app.manage import migrate
from tests.support.service import make_settings

ATTACKER = "203.0.113.7"
BYSTANDER = "198.51.100.20"
BAD = {"Authorization": "Bearer hok_ffffffffffff_not-a-real-secret"}


@dataclass
class LimitedApp:
    app: FastAPI
    admin_key: str

    def client(self, address: str) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.app, client=(address, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://test")

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}


@asynccontextmanager
async def limited_app(
    data_dir: Path, mlflow_dir: Path, *, limit: int, window: float
) -> AsyncIterator[LimitedApp]:
    url = f"sqlite:///{data_dir / 'hokusai.db'}"
    migrate(url)
    settings = make_settings(
        data_dir,
        url,
        mlflow_dir,
        auth_failure_limit=limit,
        auth_failure_window_seconds=window,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with app.state.database.transaction() as session:
            _, key = await create_api_key(session, name="admin", scopes=["admin"])
        yield LimitedApp(app=app, admin_key=key)


@pytest.fixture(scope="module")
async def limited(
    tmp_path_factory: pytest.TempPathFactory, mlflow_dir: Path
) -> AsyncIterator[LimitedApp]:
    """The app with the default limit (20 failures) over a long window."""
    async with limited_app(
        tmp_path_factory.mktemp("ratelimit"), mlflow_dir, limit=20, window=600
    ) as app:
        yield app


async def _fail(client: httpx.AsyncClient, times: int) -> None:
    for _ in range(times):
        response = await client.get("/tokens", headers=BAD)
        assert response.status_code == 401, response.text


class TestFailedAuthLimit:
    async def test_refuses_an_address_after_20_failures(self, limited: LimitedApp) -> None:
        async with limited.client(ATTACKER) as client:
            await _fail(client, 20)
            response = await client.get("/tokens", headers=BAD)
        assert response.status_code == 429
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "too_many_requests"
        assert response.json()["status"] == 429
        assert 1 <= int(response.headers["Retry-After"]) <= 600
        assert response.headers["X-Request-ID"]

    async def test_a_blocked_address_is_refused_even_with_a_valid_key(
        self, limited: LimitedApp
    ) -> None:
        async with limited.client("203.0.113.8") as client:
            await _fail(client, 20)
            response = await client.get("/tokens", headers=limited.auth())
            missing = await client.get("/tokens")
        assert response.status_code == 429
        assert missing.status_code == 429

    async def test_another_address_with_a_valid_key_still_works(self, limited: LimitedApp) -> None:
        async with limited.client("203.0.113.9") as attacker:
            await _fail(attacker, 20)
            assert (await attacker.get("/tokens", headers=BAD)).status_code == 429
        async with limited.client(BYSTANDER) as client:
            response = await client.get("/tokens", headers=limited.auth())
            wrong = await client.get("/tokens", headers=BAD)
        assert response.status_code == 200, response.text
        assert wrong.status_code == 401

    async def test_successful_authentications_are_not_counted(self, limited: LimitedApp) -> None:
        async with limited.client("192.0.2.44") as client:
            for _ in range(30):
                assert (await client.get("/tokens", headers=limited.auth())).status_code == 200
            await _fail(client, 19)
            last_allowed = await client.get("/tokens", headers=limited.auth())
        assert last_allowed.status_code == 200

    async def test_unauthenticated_endpoints_are_not_limited(self, limited: LimitedApp) -> None:
        async with limited.client("192.0.2.45") as client:
            await _fail(client, 20)
            health = await client.get("/health")
        assert health.status_code == 200


class TestWindowExpiry:
    async def test_the_address_may_try_again_once_the_window_passes(
        self, tmp_path: Path, mlflow_dir: Path
    ) -> None:
        async with (
            limited_app(tmp_path, mlflow_dir, limit=3, window=1.0) as limited,
            limited.client(ATTACKER) as client,
        ):
            await _fail(client, 3)
            blocked = await client.get("/tokens", headers=limited.auth())
            assert blocked.status_code == 429
            assert blocked.headers["Retry-After"] == "1"
            await asyncio.sleep(1.1)
            response = await client.get("/tokens", headers=limited.auth())
            again = await client.get("/tokens", headers=BAD)
        assert response.status_code == 200, response.text
        assert again.status_code == 401


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TestFailedAuthLimiter:
    def test_blocks_at_the_limit_and_reports_the_wait(self) -> None:
        clock = FakeClock()
        limiter = FailedAuthLimiter(limit=3, window_seconds=60, clock=clock)
        for _ in range(2):
            limiter.record_failure("a")
            clock.now += 10
        limiter.check("a")
        limiter.record_failure("a")
        with pytest.raises(TooManyRequests) as raised:
            limiter.check("a")
        # The first failure (at 1000) leaves the window at 1060; it is now 1020.
        assert raised.value.headers["Retry-After"] == "40"

    def test_the_window_slides(self) -> None:
        clock = FakeClock()
        limiter = FailedAuthLimiter(limit=2, window_seconds=60, clock=clock)
        limiter.record_failure("a")
        clock.now += 30
        limiter.record_failure("a")
        assert limiter.retry_after("a") == pytest.approx(30)
        clock.now += 30
        assert limiter.retry_after("a") is None
        limiter.record_failure("a")
        assert limiter.retry_after("a") == pytest.approx(30)
        clock.now += 61
        assert limiter.retry_after("a") is None
        assert len(limiter) == 0

    def test_tracked_addresses_are_capped(self) -> None:
        limiter = FailedAuthLimiter(limit=1, window_seconds=60, max_addresses=100)
        for i in range(1000):
            limiter.record_failure(f"10.0.{i // 256}.{i % 256}")
        assert len(limiter) == 100
        # The most recent ones are kept, the oldest forgotten.
        assert limiter.retry_after("10.0.3.231") is not None
        assert limiter.retry_after("10.0.0.0") is None

    def test_each_address_keeps_at_most_limit_timestamps(self) -> None:
        limiter = FailedAuthLimiter(limit=5, window_seconds=60)
        for _ in range(1000):
            limiter.record_failure("a")
        assert len(limiter._failures["a"]) == 5
