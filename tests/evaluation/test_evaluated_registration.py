"""Registering for a token with a sealed benchmark, in process on both databases.

The session's app runs the evaluator itself (the embedded default), with whatever sandbox this
host offers. Every model is a real scikit-learn model (or a self-contained hostile pickle) run in
that sandbox; the metric is checked against scikit-learn on the same rows.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from joserfc import jws
from joserfc.jwk import KeySet
from mlflow import MlflowClient
from sklearn.metrics import accuracy_score, mean_squared_error, roc_auc_score

from app.evaluation.sandbox import SandboxInfo, SandboxMode
from tests.evaluation.data import (
    Dataset,
    benchmark_csv,
    classification,
    frame,
    linear,
    logistic,
    model_from_expression,
    pickled,
    put_benchmark,
    regression,
)
from tests.factories import create_token, register
from tests.support.service import Api

SETTLE_SECONDS = 120.0


def mlflow_client(api: Api) -> MlflowClient:
    uri = api.settings.resolved_tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


async def settled(api: Api, registration_id: str) -> dict[str, Any]:
    """The registration once it has left `evaluating` (bounded wait)."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        response = await api.client.get(f"/registrations/{registration_id}", headers=api.auth())
        body: dict[str, Any] = response.json()
        if body["status"] != "evaluating":
            return body
        assert time.monotonic() < deadline, body
        await anyio.sleep(0.1)


async def events_of(api: Api, token_id: str) -> list[dict[str, Any]]:
    response = await api.client.get(
        "/events", params={"token_id": token_id, "limit": 100}, headers=api.auth()
    )
    events: list[dict[str, Any]] = response.json()["events"]
    return events


async def benchmarked_token(
    api: Api,
    token_id: str,
    data: Dataset,
    *,
    metric: str = "auroc",
    baseline: float = 0.6,
    confidence: float | None = None,
) -> dict[str, Any]:
    extra = {"confidence": confidence} if confidence is not None else {}
    await create_token(
        api.client, api.auth(), token_id=token_id, metric=metric, baseline=baseline, **extra
    )
    response = await put_benchmark(api.client, api.auth(), token_id, benchmark_csv(data))
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


async def submit(
    api: Api,
    token_id: str,
    model: bytes,
    *,
    metric: str = "auroc",
    baseline: float = 0.6,
    metric_value: float | None = None,
    filename: str = "model.pkl",
    wait: int | None = None,
) -> httpx.Response:
    headers = api.auth()
    if wait is not None:
        headers["Prefer"] = f"wait={wait}"
    return await register(
        api.client,
        headers,
        token_id=token_id,
        model=model,
        filename=filename,
        metric=metric,
        baseline=baseline,
        metric_value=metric_value,
    )


def auroc_of(data: Dataset, model: Any) -> float:
    return float(roc_auc_score(data.y_test, model.predict_proba(frame(data.x_test))[:, 1]))


class TestEvaluatedRegistration:
    async def test_answers_202_then_registers_with_the_measured_metric(self, api: Api) -> None:
        data = classification()
        bench = await benchmarked_token(api, "EVAL", data, baseline=0.6)
        model = logistic(data)
        response = await submit(api, "EVAL", pickled(model), metric_value=0.99)
        assert response.status_code == 202, response.text
        accepted = response.json()
        assert accepted["status"] == "evaluating"
        assert response.headers["Location"] == f"/registrations/{accepted['registration_id']}"
        assert accepted["evaluation"]["status"] in ("queued", "running")
        assert accepted["evaluation"]["benchmark_sha256"] == bench["sha256"]
        token = (await api.client.get("/tokens/EVAL", headers=api.auth())).json()
        assert token["status"] in ("registering", "registered")

        body = await settled(api, accepted["registration_id"])
        assert body["status"] == "registered", body
        expected = auroc_of(data, model)
        metric = body["metric"]
        assert abs(metric["value"] - expected) <= 1e-9
        assert metric["source"] == "evaluated"
        assert metric["reported_value"] == 0.99
        low, high = metric["ci95"]
        assert low <= metric["value"] <= high
        evaluation = body["evaluation"]
        assert evaluation["status"] == "succeeded"
        assert evaluation["benchmark_version"] == 1
        assert evaluation["rows"] == 400
        assert evaluation["sandbox"] == api.app.state.evaluation.sandbox.mode.value
        assert evaluation["seconds"] > 0

        token = (await api.client.get("/tokens/EVAL", headers=api.auth())).json()
        assert token["status"] == "registered"
        assert token["metric_value"] == metric["value"]
        assert token["mlflow_run_id"] == body["mlflow_run_id"]

        events = {e["event_type"]: e for e in await events_of(api, "EVAL")}
        for kind in ("model_registered", "token_ready_for_deploy"):
            payload = events[kind]["payload"]
            assert payload["metric_source"] == "evaluated"
            assert payload["ci95"] == [low, high]
            assert payload["benchmark_sha256"] == bench["sha256"]
            assert payload["metric_value"] == metric["value"]

        client = mlflow_client(api)
        run = client.get_run(body["mlflow_run_id"])
        assert run.data.tags["hokusai.metric_source"] == "evaluated"
        assert run.data.tags["hokusai.benchmark_sha256"] == bench["sha256"]
        assert run.data.metrics["auroc"] == metric["value"]
        assert run.data.metrics["auroc_ci95_low"] == low
        assert run.data.metrics["auroc_ci95_high"] == high
        stored = client.download_artifacts(body["mlflow_run_id"], "hokusai/evaluation_receipt.json")
        with open(stored, encoding="utf-8") as file:
            receipt_in_mlflow = json.load(file)
        version = client.get_model_version(body["model_name"], body["model_version"])
        assert version.tags["hokusai_status"] == "registered"

        receipt = (
            await api.client.get(
                f"/registrations/{body['registration_id']}/receipt", headers=api.auth()
            )
        ).json()
        assert receipt == receipt_in_mlflow
        payload = receipt["payload"]
        assert set(payload) == {
            "registration_id",
            "token_id",
            "model_sha256",
            "benchmark_sha256",
            "benchmark_version",
            "metric",
            "value",
            "ci95",
            "rows",
            "baseline",
            "min_improvement",
            "confidence",
            "passed",
            "evaluated_at",
            "evaluator",
        }
        assert payload["value"] == metric["value"]
        assert payload["passed"] is True
        assert payload["model_sha256"] == body["artifact"]["sha256"]

        # The receipt verifies with a JOSE library against the served JWKS, alg and kid.
        jwks = (await api.client.get("/.well-known/jwks.json")).json()
        keys = KeySet.import_key_set(jwks)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # joserfc prefers RFC 9864's alg name "Ed25519"
            verified = jws.deserialize_compact(receipt["jws"], keys, algorithms=["EdDSA"])
        assert json.loads(verified.payload) == payload
        header = verified.headers()
        assert header["alg"] == "EdDSA"
        assert header["kid"] in {key["kid"] for key in jwks["keys"]}
        assert all(key["kty"] == "OKP" and key["crv"] == "Ed25519" for key in jwks["keys"])

    async def test_prefer_wait_answers_like_a_synchronous_registration(self, api: Api) -> None:
        data = regression()
        await benchmarked_token(api, "WAIT", data, metric="mse", baseline=5.0)
        model = linear(data)
        response = await register(
            api.client,
            {**api.auth(), "Prefer": "wait=120"},
            token_id="WAIT",
            model=pickled(model),
            metric="mse",
            baseline=5.0,
            metric_value=None,
            fields={"eval_spec": "spec-7", "tags": json.dumps({"user_id": "user-1"})},
        )
        assert response.status_code == 201, response.text
        assert response.headers["Preference-Applied"] == "wait=120"
        body = response.json()
        assert body["status"] == "registered"
        # The request's own fields reach MLflow and the events as in a synchronous registration.
        assert body["eval_spec"] == "spec-7"
        run = mlflow_client(api).get_run(body["mlflow_run_id"])
        assert run.data.tags["hokusai.eval_spec"] == "spec-7"
        assert run.data.tags["user_id"] == "user-1"
        registered = next(
            e for e in await events_of(api, "WAIT") if e["event_type"] == "model_registered"
        )
        assert registered["payload"]["eval_spec"] == "spec-7"
        assert registered["payload"]["user_id"] == "user-1"
        expected = mean_squared_error(data.y_test, model.predict(frame(data.x_test)))
        assert abs(body["metric"]["value"] - expected) <= 1e-9

    async def test_model_below_the_bar_is_rejected_and_the_token_left_as_it_was(
        self, api: Api
    ) -> None:
        data = classification()
        await benchmarked_token(api, "LOW", data, baseline=0.99)
        model = logistic(data)
        response = await submit(
            api, "LOW", pickled(model), baseline=0.99, metric_value=0.999, wait=120
        )
        assert response.status_code == 422, response.text
        problem = response.json()
        assert problem["code"] == "metric_below_baseline"
        assert response.headers["content-type"].startswith("application/problem+json")
        body = await settled(api, problem["registration_id"])
        assert body["status"] == "rejected"
        assert abs(body["metric"]["value"] - auroc_of(data, model)) <= 1e-9
        assert body["metric"]["passed"] is False
        token = (await api.client.get("/tokens/LOW", headers=api.auth())).json()
        assert token["status"] == "draft"
        assert token["mlflow_run_id"] is None
        events = await events_of(api, "LOW")
        assert [e["event_type"] for e in events] == ["model_validation_failed"]
        assert events[0]["payload"]["code"] == "metric_below_baseline"
        assert not _versions(api, "hokusai-LOW")
        # The refusal came after the wait: the request's upload folder went before it.
        assert not (api.settings.upload_dir / body["registration_id"]).exists()
        # A refused evaluation still has a signed receipt saying so.
        receipt = await api.client.get(
            f"/registrations/{body['registration_id']}/receipt", headers=api.auth()
        )
        assert receipt.json()["payload"]["passed"] is False

    async def test_confidence_requires_the_whole_interval_to_clear_the_bar(self, api: Api) -> None:
        data = classification(rows=200)
        model = logistic(data)
        value = auroc_of(data, model)
        # Just under the measured value: the point passes, a 99% interval cannot.
        baseline = round(value - 0.005, 6)
        await benchmarked_token(api, "STRICT", data, baseline=baseline, confidence=0.99)
        await benchmarked_token(api, "LOOSE", data, baseline=baseline)
        strict = await submit(api, "STRICT", pickled(model), baseline=baseline, wait=120)
        assert strict.status_code == 422, strict.text
        assert strict.json()["code"] == "metric_below_baseline"
        assert "0.99 confidence interval" in strict.json()["detail"]
        loose = await submit(api, "LOOSE", pickled(model), baseline=baseline, wait=120)
        assert loose.status_code == 201, loose.text
        # The same model and benchmark give the same interval.
        strict_body = await settled(api, strict.json()["registration_id"])
        assert strict_body["metric"]["ci95"] == loose.json()["metric"]["ci95"]
        receipt = await api.client.get(
            f"/registrations/{strict_body['registration_id']}/receipt", headers=api.auth()
        )
        assert receipt.json()["payload"]["confidence"] == 0.99

    async def test_mlflow_archive_is_evaluated_as_a_pyfunc_model(
        self, api: Api, tmp_path: Path
    ) -> None:
        import mlflow.sklearn

        data = classification()
        model = logistic(data)
        folder = tmp_path / f"model-{api.backend}"
        mlflow.sklearn.save_model(model, str(folder), serialization_format="cloudpickle")
        archive = shutil.make_archive(str(tmp_path / f"archive-{api.backend}"), "zip", folder)
        await benchmarked_token(api, "PYFUNC", data, metric="accuracy", baseline=0.5)
        response = await submit(
            api,
            "PYFUNC",
            Path(archive).read_bytes(),
            metric="accuracy",
            baseline=0.5,
            filename="model.zip",
            wait=120,
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["artifact"]["format"] == "mlflow_zip"
        expected = accuracy_score(data.y_test, model.predict(frame(data.x_test)))
        assert abs(body["metric"]["value"] - expected) <= 1e-9
        names = {a.path for a in mlflow_client(api).list_artifacts(body["mlflow_run_id"], "model")}
        assert "model/MLmodel" in names

    async def test_reported_value_alone_decides_nothing(self, api: Api) -> None:
        data = classification()
        await benchmarked_token(api, "OPT", data, baseline=0.6)
        response = await submit(api, "OPT", pickled(logistic(data)), wait=120)
        assert response.status_code == 201, response.text
        assert response.json()["metric"]["reported_value"] is None


class TestRefusedModels:
    @pytest.mark.parametrize(
        ("predict", "reason"),
        [
            ("1 / 0", "raised"),
            ("__import__('numpy').zeros(3)", "wrong_row_count"),
            ("__import__('numpy').full(len(X), float('nan'))", "non_finite"),
            ("__import__('numpy').array(['yes'] * len(X))", "bad_output"),
        ],
    )
    async def test_model_that_cannot_be_scored_is_evaluation_failed(
        self, api: Api, predict: str, reason: str
    ) -> None:
        data = classification(rows=50)
        token_id = f"BAD-{reason.replace('_', '-').upper()}"
        await benchmarked_token(api, token_id, data, metric="accuracy", baseline=0.5)
        model = model_from_expression(predict)
        response = await submit(api, token_id, model, metric="accuracy", baseline=0.5, wait=120)
        assert response.status_code == 422, response.text
        problem = response.json()
        assert problem["code"] == "evaluation_failed"
        assert problem["reason"] == reason
        assert f"({reason})" in problem["detail"]
        assert len(problem["detail"]) < 700
        body = await settled(api, problem["registration_id"])
        assert body["status"] == "rejected"
        assert body["evaluation"]["status"] == "failed"
        token = (await api.client.get(f"/tokens/{token_id}", headers=api.auth())).json()
        assert token["status"] == "draft"
        events = await events_of(api, token_id)
        assert [e["event_type"] for e in events] == ["model_validation_failed"]
        assert not _versions(api, f"hokusai-{token_id}")
        missing = await api.client.get(
            f"/registrations/{body['registration_id']}/receipt", headers=api.auth()
        )
        assert missing.status_code == 404
        assert missing.json()["code"] == "receipt_not_found"

    async def test_error_excerpt_is_the_models_own_and_bounded(self, api: Api) -> None:
        data = classification(rows=50)
        await benchmarked_token(api, "NOISY", data, metric="accuracy", baseline=0.5)
        model = model_from_expression("(_ for _ in ()).throw(ValueError('bad shape ' * 500))")
        response = await submit(api, "NOISY", model, metric="accuracy", baseline=0.5, wait=120)
        problem = response.json()
        assert problem["code"] == "evaluation_failed"
        assert "bad shape" in problem["detail"]
        assert len(problem["detail"]) < 700

    async def test_format_the_sandbox_cannot_run_is_refused_before_the_claim(
        self, api: Api
    ) -> None:
        data = classification(rows=50)
        await benchmarked_token(api, "ONNX", data)
        response = await submit(api, "ONNX", b"\x08\x07onnx-bytes", filename="model.onnx")
        assert response.status_code == 422, response.text
        assert response.json()["code"] == "invalid_model_file"
        token = (await api.client.get("/tokens/ONNX", headers=api.auth())).json()
        assert token["status"] == "draft"

    async def test_no_sandbox_in_production_is_503(
        self, api: Api, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        data = classification(rows=50)
        await benchmarked_token(api, "NOBOX", data)
        evaluation = api.app.state.evaluation
        monkeypatch.setattr(
            evaluation, "sandbox", SandboxInfo(SandboxMode.NONE, False, "no sandbox here")
        )
        response = await submit(api, "NOBOX", pickled(logistic(data)))
        assert response.status_code == 503
        assert response.json()["code"] == "evaluation_unavailable"
        assert "Retry-After" in response.headers
        token = (await api.client.get("/tokens/NOBOX", headers=api.auth())).json()
        assert token["status"] == "draft"


class TestLabelsStaySealed:
    async def test_labels_appear_in_no_response_event_or_mlflow_record(
        self, api: Api, capsys: pytest.CaptureFixture[str]
    ) -> None:
        data = classification(rows=60)
        # Labels no feature, number or log line could contain by chance.
        marker = "7319046"
        content = benchmark_csv(data).decode().splitlines()
        header, rows = content[0], content[1:]
        rows = [
            row.rsplit(",", 1)[0] + f",{marker}" if i == 0 else row for i, row in enumerate(rows)
        ]
        await create_token(api.client, api.auth(), token_id="SEAL", metric="mse", baseline=1e12)
        upload = await put_benchmark(
            api.client, api.auth(), "SEAL", ("\n".join([header, *rows]) + "\n").encode()
        )
        assert upload.status_code == 201, upload.text
        model = linear(regression())
        response = await submit(api, "SEAL", pickled(model), metric="mse", baseline=1e12, wait=120)
        assert response.status_code == 201, response.text
        body = response.json()
        seen = [upload.text, response.text]
        for path in (
            "/tokens/SEAL",
            "/tokens/SEAL/benchmark",
            f"/registrations/{body['registration_id']}",
            f"/registrations/{body['registration_id']}/receipt",
            "/events?token_id=SEAL",
        ):
            seen.append((await api.client.get(path, headers=api.auth())).text)
        run = mlflow_client(api).get_run(body["mlflow_run_id"])
        seen.append(json.dumps({"tags": run.data.tags, "metrics": run.data.metrics}))
        seen.append(capsys.readouterr().err)
        for text in seen:
            assert marker not in text


def _versions(api: Api, model_name: str) -> list[Any]:
    try:
        return list(mlflow_client(api).search_model_versions(f"name='{model_name}'"))
    except Exception:
        return []
