"""/metrics: HTTP requests by route template, registrations by outcome, upload bytes, MLflow calls,
the delivery backlog; and JSON logs with the request id in production.

The Prometheus registry is process-global (and the `api` fixture runs on two databases in one
process), so every check compares a scrape before with a scrape after.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from prometheus_client.parser import text_string_to_metric_families

from app.clients.mlflow import MlflowError
from app.config import Environment
from app.errors import MlflowUnavailable
from app.log_config import configure_logging
from app.main import create_app
from app.observability import refresh_backlog, refreshing_backlog
from tests.factories import create_token, pickle_bytes, register
from tests.support.service import Api, make_settings

REGISTER_ROUTE = "/models/{token_id}/register"


class Samples:
    """One scrape of /metrics: sample values by name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.values: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.values[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def get(self, name: str, **labels: str) -> float:
        return self.values.get((name, frozenset(labels.items())), 0.0)

    def label_values(self, name: str, label: str) -> set[str]:
        return {
            dict(labels)[label]
            for sample_name, labels in self.values
            if sample_name == name and label in dict(labels)
        }


async def scrape(api: Api) -> Samples:
    response = await api.client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return Samples(response.text)


def requests_delta(before: Samples, after: Samples, route: str, method: str, status: int) -> float:
    labels = {"route": route, "method": method, "status": str(status)}
    return after.get("hokusai_http_requests_total", **labels) - before.get(
        "hokusai_http_requests_total", **labels
    )


def registrations_delta(before: Samples, after: Samples, outcome: str, code: str = "") -> float:
    name = "hokusai_registrations_total"
    return after.get(name, outcome=outcome, code=code) - before.get(
        name, outcome=outcome, code=code
    )


def all_registrations(samples: Samples) -> float:
    return sum(
        value
        for (name, _), value in samples.values.items()
        if name == "hokusai_registrations_total"
    )


class TestHttpRequests:
    async def test_counts_and_times_by_route_template(self, api: Api) -> None:
        await create_token(api.client, api.auth(), token_id="METRICS-ROUTE")
        before = await scrape(api)
        for _ in range(3):
            response = await api.client.get("/tokens/METRICS-ROUTE", headers=api.auth())
            assert response.status_code == 200
        assert (
            await api.client.get("/tokens/NO-SUCH-TOKEN", headers=api.auth())
        ).status_code == 404
        assert (await api.client.get("/no/such/path/4242")).status_code == 404
        after = await scrape(api)

        assert requests_delta(before, after, "/tokens/{token_id}", "GET", 200) == 3
        assert requests_delta(before, after, "/tokens/{token_id}", "GET", 404) == 1
        assert requests_delta(before, after, "unmatched", "GET", 404) == 1
        timed = "hokusai_http_request_duration_seconds_count"
        labels = {"route": "/tokens/{token_id}", "method": "GET", "status": "200"}
        assert after.get(timed, **labels) - before.get(timed, **labels) == 3
        routes = after.label_values("hokusai_http_requests_total", "route")
        # Templates only: no raw path (a token id, a random path) becomes a label value.
        assert not {r for r in routes if "METRICS-ROUTE" in r or "NO-SUCH" in r or "4242" in r}
        assert all(r == "unmatched" or r.startswith("/") for r in routes)

    async def test_counts_requests_the_limits_refuse(self, api: Api) -> None:
        before = await scrape(api)
        too_large = await api.client.post(
            "/tokens",
            content=b"{" + b" " * (api.settings.max_json_bytes + 10) + b"}",
            headers=api.auth() | {"Content-Type": "application/json"},
        )
        assert too_large.status_code == 413
        headers = api.auth() | {
            f"X-Filler-{n}": "x" for n in range(api.settings.max_request_headers)
        }
        too_many = await api.client.get("/tokens", headers=headers)
        assert too_many.status_code == 431
        after = await scrape(api)

        assert requests_delta(before, after, "/tokens", "POST", 413) == 1
        assert requests_delta(before, after, "/tokens", "GET", 431) == 1

    async def test_in_progress_while_a_body_streams(self, api: Api) -> None:
        gauge = "hokusai_http_requests_in_progress"
        idle = (await scrape(api)).get(gauge, method="POST")
        gate = asyncio.Event()

        async def body() -> AsyncIterator[bytes]:
            yield b'{"token_id": '
            await gate.wait()
            yield b'"METRICS-STREAMED"}'

        posting = asyncio.create_task(
            api.client.post(
                "/tokens",
                content=body(),
                headers=api.auth() | {"Content-Type": "application/json"},
            )
        )
        try:
            for _ in range(200):
                if (await scrape(api)).get(gauge, method="POST") == idle + 1:
                    break
                await asyncio.sleep(0.01)
            else:
                pytest.fail("the streaming request was never counted in progress")
        finally:
            gate.set()
            response = await posting
        assert response.status_code == 201
        assert (await scrape(api)).get(gauge, method="POST") == idle


class TestRegistrations:
    async def test_a_registration_counts_its_outcome_bytes_and_mlflow_calls(self, api: Api) -> None:
        await create_token(api.client, api.auth(), token_id="METRICS-OK")
        model = pickle_bytes(size=50_000)
        before = await scrape(api)
        response = await register(api.client, api.auth(), token_id="METRICS-OK", model=model)
        assert response.status_code == 201, response.text
        after = await scrape(api)

        assert registrations_delta(before, after, "registered") == 1
        assert all_registrations(after) - all_registrations(before) == 1
        assert requests_delta(before, after, REGISTER_ROUTE, "POST", 201) == 1
        uploaded = "hokusai_upload_bytes_total"
        assert after.get(uploaded, part="model") - before.get(uploaded, part="model") == len(model)
        sizes = "hokusai_model_upload_size_bytes"
        assert after.get(f"{sizes}_count") - before.get(f"{sizes}_count") == 1
        assert after.get(f"{sizes}_sum") - before.get(f"{sizes}_sum") == len(model)
        calls = "hokusai_mlflow_call_duration_seconds_count"
        # (The artifact upload may bypass MLflow's client on a local store: not counted here.)
        for op in ("create_run", "log_metric", "create_model_version", "set_terminated"):
            moved = after.get(calls, op=op, outcome="ok") - before.get(calls, op=op, outcome="ok")
            assert moved == 1, op
        seconds = "hokusai_mlflow_call_duration_seconds_sum"
        assert after.get(seconds, op="create_run", outcome="ok") > before.get(
            seconds, op="create_run", outcome="ok"
        )

    async def test_a_refused_check_counts_as_rejected_with_its_code(self, api: Api) -> None:
        await create_token(
            api.client, api.auth(), token_id="METRICS-LOW", metric="auroc", baseline=0.82
        )
        before = await scrape(api)
        response = await register(
            api.client, api.auth(), token_id="METRICS-LOW", baseline=0.82, metric_value=0.5
        )
        assert response.status_code == 422
        assert response.json()["code"] == "metric_below_baseline"
        after = await scrape(api)

        assert registrations_delta(before, after, "rejected", "metric_below_baseline") == 1
        assert all_registrations(after) - all_registrations(before) == 1
        assert requests_delta(before, after, REGISTER_ROUTE, "POST", 422) == 1
        calls = "hokusai_mlflow_call_duration_seconds_count"
        assert after.get(calls, op="create_run", outcome="ok") == before.get(
            calls, op="create_run", outcome="ok"
        )

    async def test_an_unknown_token_is_a_404_and_no_registration(self, api: Api) -> None:
        before = await scrape(api)
        response = await register(api.client, api.auth(), token_id="METRICS-NOWHERE")
        assert response.status_code == 404
        after = await scrape(api)

        assert requests_delta(before, after, REGISTER_ROUTE, "POST", 404) == 1
        assert all_registrations(after) == all_registrations(before)

    async def test_a_replay_counts_as_replayed(self, api: Api) -> None:
        await create_token(api.client, api.auth(), token_id="METRICS-AGAIN")
        headers = api.auth() | {"Idempotency-Key": "metrics-again-1"}
        first = await register(api.client, headers, token_id="METRICS-AGAIN")
        assert first.status_code == 201
        before = await scrape(api)
        second = await register(api.client, headers, token_id="METRICS-AGAIN")
        assert second.status_code == 201
        assert second.json()["registration_id"] == first.json()["registration_id"]
        after = await scrape(api)

        assert registrations_delta(before, after, "replayed") == 1
        assert all_registrations(after) - all_registrations(before) == 1

    async def test_a_failure_after_the_claim_counts_as_failed(
        self, api: Api, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        await create_token(api.client, api.auth(), token_id="METRICS-BROKEN")

        def refuse(*_args: object, **_kwargs: object) -> None:
            raise MlflowError("the metric was refused")

        monkeypatch.setattr(api.app.state.mlflow, "log_metric", refuse)
        before = await scrape(api)
        response = await register(api.client, api.auth(), token_id="METRICS-BROKEN")
        assert response.status_code == 502
        after = await scrape(api)

        assert registrations_delta(before, after, "failed", "mlflow_error") == 1
        assert all_registrations(after) - all_registrations(before) == 1
        assert requests_delta(before, after, REGISTER_ROUTE, "POST", 502) == 1


class TestMlflowCalls:
    async def test_an_outage_counts_each_attempt_and_the_give_up(self, api: Api) -> None:
        registry = api.app.state.mlflow

        def down(_client: object) -> None:
            raise ConnectionError("connection refused")

        before = await scrape(api)
        with pytest.raises(MlflowUnavailable):
            await asyncio.to_thread(registry._call, "metrics_probe", down, budget=0.0)
        after = await scrape(api)

        calls = "hokusai_mlflow_call_duration_seconds_count"
        probe = {"op": "metrics_probe", "outcome": "transient"}
        assert after.get(calls, **probe) - before.get(calls, **probe) == 1
        gave_up = "hokusai_mlflow_unavailable_total"
        assert after.get(gave_up, op="metrics_probe") - before.get(gave_up, op="metrics_probe") == 1


class TestBacklog:
    async def test_the_gauges_follow_the_outbox_without_a_dispatcher(self, api: Api) -> None:
        # The fixture's app runs no dispatcher: nothing is fanned out or delivered.
        assert not api.settings.run_dispatcher
        await create_token(api.client, api.auth(), token_id="METRICS-BACKLOG")
        assert (
            await register(api.client, api.auth(), token_id="METRICS-BACKLOG")
        ).status_code == 201
        counts = await refresh_backlog(api.database)
        assert counts["unfanned"] == 2  # model_registered, token_ready_for_deploy
        assert (await scrape(api)).get("hokusai_outbox_unfanned_events") == 2

        await create_token(api.client, api.auth(), token_id="METRICS-BACKLOG-2")
        assert (
            await register(api.client, api.auth(), token_id="METRICS-BACKLOG-2")
        ).status_code == 201
        async with refreshing_backlog(api.database, every=0.05):
            for _ in range(200):
                if (await scrape(api)).get("hokusai_outbox_unfanned_events") == 4:
                    break
                await asyncio.sleep(0.02)
            else:
                pytest.fail("the periodic refresh never counted the new events")
        samples = await scrape(api)
        assert samples.get("hokusai_event_deliveries_pending") == 0
        assert samples.get("hokusai_event_deliveries_dead") == 0

    async def test_delivery_outcome_metrics_are_exported(self, api: Api) -> None:
        text = (await scrape(api)).text
        for name in (
            "hokusai_event_deliveries_total",
            "hokusai_event_delivery_seconds",
            "hokusai_event_deliveries_pending",
            "hokusai_outbox_unfanned_events",
        ):
            assert f"# TYPE {name} " in text


# Logs ------------------------------------------------------------------------------------------


@contextmanager
def restored_logging() -> Iterator[None]:
    try:
        yield
    finally:
        configure_logging(level="WARNING", json=False)


class TestProductionLogs:
    async def test_json_lines_with_the_request_id(
        self, tmp_path: Path, mlflow_dir: Path, capfd: pytest.CaptureFixture[str]
    ) -> None:
        settings = make_settings(
            tmp_path,
            f"sqlite:///{tmp_path / 'unused.db'}",
            mlflow_dir,
            env=Environment.PRODUCTION,
            log_json=None,  # the production default
            log_level="INFO",
        )
        assert settings.json_logs
        with restored_logging():
            app: FastAPI = create_app(settings)  # configures logging from the settings
            # No lifespan: a route-less request needs no database.
            async with AsyncClient(
                transport=ASGITransport(app=app), base_url="http://test"
            ) as client:
                response = await client.get("/no/such/path", headers={"X-Request-ID": "prod-1"})
            assert response.status_code == 404
            out, err = capfd.readouterr()
        lines = [json.loads(line) for line in (out + err).splitlines() if line.startswith("{")]
        finished = [line for line in lines if line.get("event") == "request_finished"]
        assert finished, out + err
        assert finished[-1]["request_id"] == "prod-1"
        assert finished[-1]["status"] == 404
        assert finished[-1]["level"] == "info"
        assert "timestamp" in finished[-1]
