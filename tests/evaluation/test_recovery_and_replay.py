"""The recovery sweep and evaluations; Idempotency-Key replays of an evaluated registration."""

from __future__ import annotations

import datetime as dt
import os
import pickle
import time
import uuid
from typing import Any

import anyio
import sqlalchemy as sa

from app.db import UTCDateTime, utcnow
from app.registration.attempt import RegistrationServices
from app.registration.recovery import recover_stale
from tests.evaluation.data import benchmark_csv, classification, logistic, put_benchmark
from tests.factories import create_token, register
from tests.support.service import Api


def _slow(inner: bytes, seconds: float) -> bytes:
    expression = (
        "type('Slow', (), {"
        f"'inner': __import__('pickle').loads({inner!r}), "
        f"'predict_proba': lambda self, X: (__import__('time').sleep({seconds}), "
        "self.inner.predict_proba(X))[1]})()"
    )

    class Build:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return (eval, (expression,))

    return pickle.dumps(Build(), protocol=5)


async def _status(api: Api, registration_id: str) -> dict[str, Any]:
    response = await api.client.get(f"/registrations/{registration_id}", headers=api.auth())
    body: dict[str, Any] = response.json()
    return body


async def _until_settled(api: Api, registration_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while (body := await _status(api, registration_id))["status"] == "evaluating":
        assert time.monotonic() < deadline, body
        await anyio.sleep(0.1)
    return body


async def _age_claim(api: Api, token_id: str, seconds: float) -> None:
    statement = sa.text("UPDATE tokens SET claimed_at = :c WHERE token_id = :t").bindparams(
        sa.bindparam("c", type_=UTCDateTime())
    )
    async with api.database.transaction() as session:
        await session.execute(
            statement, {"c": utcnow() - dt.timedelta(seconds=seconds), "t": token_id}
        )


class TestRecoverySweep:
    async def test_leaves_a_token_held_by_a_running_evaluation_to_the_queue(self, api: Api) -> None:
        data = classification(rows=100)
        token_id = f"SWEEP-{api.backend}".upper()
        await create_token(api.client, api.auth(), token_id=token_id, metric="auroc", baseline=0.5)
        await put_benchmark(api.client, api.auth(), token_id, benchmark_csv(data))
        response = await register(
            api.client,
            api.auth(),
            token_id=token_id,
            model=_slow(pickle.dumps(logistic(data)), 3),
            metric="auroc",
            baseline=0.5,
            metric_value=None,
        )
        assert response.status_code == 202, response.text
        registration_id = response.json()["registration_id"]
        # The model runs in another process: this one keeps answering meanwhile.
        for path in ("/health", f"/tokens/{token_id}", f"/registrations/{registration_id}"):
            served = await api.client.get(path, headers=api.auth())
            assert served.status_code == 200
        assert (await _status(api, registration_id))["status"] == "evaluating"
        # Far past the registration lease: the sweep would settle an ordinary registration.
        await _age_claim(api, token_id, api.settings.registration_lease_seconds * 10)
        services: RegistrationServices = api.app.state.registration
        report = await recover_stale(services)
        assert token_id in report.deferred
        assert token_id not in report.failed
        token = (await api.client.get(f"/tokens/{token_id}", headers=api.auth())).json()
        assert token["status"] == "registering"
        body = await _until_settled(api, registration_id)
        assert body["status"] == "registered"

    async def test_removes_kept_models_of_finished_evaluations_only(self, api: Api) -> None:
        root = api.settings.evaluation_dir
        root.mkdir(parents=True, exist_ok=True)
        abandoned = root / str(uuid.uuid4())
        abandoned.mkdir()
        (abandoned / "model").mkdir()
        old = time.time() - api.settings.registration_lease_seconds * 2
        os.utime(abandoned, (old, old))
        fresh = root / str(uuid.uuid4())
        fresh.mkdir()
        report = await recover_stale(api.app.state.registration)
        assert report.evaluation_models_removed >= 1
        assert not abandoned.exists()
        assert fresh.exists()
        fresh.rmdir()


class TestIdempotentReplay:
    async def test_same_key_while_evaluating_answers_the_same_registration(self, api: Api) -> None:
        data = classification(rows=100)
        token_id = f"REPLAY-{api.backend}".upper()
        await create_token(api.client, api.auth(), token_id=token_id, metric="auroc", baseline=0.5)
        await put_benchmark(api.client, api.auth(), token_id, benchmark_csv(data))
        model = _slow(pickle.dumps(logistic(data)), 2)
        headers = {**api.auth(), "Idempotency-Key": f"key-{token_id}"}
        first = await register(
            api.client,
            headers,
            token_id=token_id,
            model=model,
            metric="auroc",
            baseline=0.5,
            metric_value=None,
        )
        assert first.status_code == 202, first.text
        again = await register(
            api.client,
            headers,
            token_id=token_id,
            model=model,
            metric="auroc",
            baseline=0.5,
            metric_value=None,
        )
        assert again.status_code in (201, 202), again.text
        assert again.json()["registration_id"] == first.json()["registration_id"]
        body = await _until_settled(api, first.json()["registration_id"])
        assert body["status"] == "registered"
        replayed = await register(
            api.client,
            headers,
            token_id=token_id,
            model=model,
            metric="auroc",
            baseline=0.5,
            metric_value=None,
        )
        assert replayed.status_code == 201
        assert replayed.json()["registration_id"] == body["registration_id"]
