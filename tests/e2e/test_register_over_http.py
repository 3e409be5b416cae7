"""End to end: `hokusai-registry serve` as a real process against a real `mlflow server` process.

A 1 MiB model is registered over HTTP; the run, its tags and metric, the artifact's bytes and the
model version are then read back from the MLflow server with MLflow's own client.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from tests.factories import pickle_bytes
from tests.mlflow_server import MlflowServer
from tests.support.process import serving
from tests.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield server.wait_healthy()
    finally:
        server.stop()


WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(secret=WEBHOOK_SECRET) as running:
        yield running


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, mlflow_server: str, receiver: WebhookReceiver
) -> Iterator[tuple[str, str]]:
    """The service as its own process; yields its base URL and an admin API key."""
    data_dir = tmp_path_factory.mktemp("service")
    env = {
        **os.environ,
        "HOKUSAI_ENV": "test",
        "HOKUSAI_DATA_DIR": str(data_dir),
        "HOKUSAI_MLFLOW_TRACKING_URI": mlflow_server,
        "HOKUSAI_LOG_JSON": "true",
        # The site's webhook, configured statically; the API process delivers to it.
        "HOKUSAI_WEBHOOK_URL": receiver.url,
        "HOKUSAI_WEBHOOK_SECRET": WEBHOOK_SECRET,
    }
    env.pop("HOKUSAI_DATABASE_URL", None)
    subprocess.run([BIN / "hokusai-registry", "migrate"], env=env, check=True, timeout=120)
    created = subprocess.run(
        [BIN / "hokusai-registry", "create-api-key", "--name", "e2e", "--scopes", "admin"],
        env=env,
        check=True,
        timeout=120,
        capture_output=True,
        text=True,
    )
    key = created.stdout.strip().splitlines()[-1]
    log_path = data_dir / "service.log"
    with serving(env, log_path, args=("--no-migrate",)) as url:
        yield url, key
    log = log_path.read_text()
    assert key.split("_", 2)[2] not in log, "an API key reached the log"


def test_registers_1_mib_model_and_mlflow_server_agrees(
    service: tuple[str, str], mlflow_server: str, receiver: WebhookReceiver
) -> None:
    url, key = service
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        created = client.post(
            "/tokens", json={"token_id": "e2e-xray", "metric": "auroc", "baseline": 0.82}
        )
        assert created.status_code == 201, created.text
        model = pickle_bytes(size=1024 * 1024)
        digest = hashlib.sha256(model).hexdigest()
        response = client.post(
            "/models/E2E-XRAY/register",
            data={"metric": "auroc", "baseline": "0.82", "metric_value": "0.86", "sha256": digest},
            files={"model_file": ("model.pkl", model, "application/octet-stream")},
        )
        assert response.status_code == 201, response.text
        assert response.headers["X-Request-ID"]
        body = response.json()
        token = client.get("/tokens/E2E-XRAY").json()

    assert token["status"] == "registered"
    assert token["mlflow_run_id"] == body["mlflow_run_id"]
    mlflow = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    run = mlflow.get_run(body["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["hokusai.token_id"] == "E2E-XRAY"
    assert run.data.tags["hokusai.sha256"] == digest
    assert run.data.metrics == {"auroc": 0.86}
    experiment = mlflow.get_experiment(run.info.experiment_id)
    assert experiment.name == "hokusai-registrations"
    local = mlflow.download_artifacts(body["mlflow_run_id"], "model/model.pkl")
    assert Path(local).read_bytes() == model
    version = mlflow.get_model_version("hokusai-E2E-XRAY", body["model_version"])
    assert version.run_id == body["mlflow_run_id"]
    assert version.tags["hokusai_status"] == "registered"
    assert version.tags["benchmark_metric"] == "auroc"
    assert (
        str(mlflow.get_model_version_by_alias("hokusai-E2E-XRAY", "registered").version)
        == (body["model_version"])
    )


def test_rejected_registration_leaves_no_version(
    service: tuple[str, str], mlflow_server: str
) -> None:
    url, key = service
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        assert client.post("/tokens", json={"token_id": "e2e-low"}).status_code == 201
        response = client.post(
            "/models/E2E-LOW/register",
            data={"metric": "auroc", "baseline": "0.82", "metric_value": "0.80"},
            files={"model_file": ("model.pkl", pickle_bytes(), "application/octet-stream")},
        )
        assert response.status_code == 422
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "metric_below_baseline"
        assert client.get("/tokens/E2E-LOW").json()["status"] == "draft"
    mlflow = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    assert mlflow.search_model_versions("name='hokusai-E2E-LOW'") == []


def test_registration_events_reach_the_site_webhook(
    service: tuple[str, str], receiver: WebhookReceiver
) -> None:
    url, key = service
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
        assert client.post("/tokens", json={"token_id": "e2e-hook"}).status_code == 201
        response = client.post(
            "/models/E2E-HOOK/register",
            data={"metric": "mse", "baseline": "2.0", "metric_value": "1.5"},
            files={"model_file": ("model.pkl", pickle_bytes(), "application/octet-stream")},
        )
        assert response.status_code == 201, response.text
        event_ids = set(response.json()["event_ids"])
    deadline = time.monotonic() + 20
    while not event_ids <= {r.headers.get("webhook-id") for r in receiver.requests}:
        assert time.monotonic() < deadline, "the events did not reach the webhook"
        time.sleep(0.05)
    ours = [r for r in receiver.requests if r.headers.get("webhook-id") in event_ids]
    assert all(r.signature_ok for r in ours)
    by_type = {r.json()["event_type"]: r.json() for r in ours}
    assert set(by_type) == {"model_registered", "token_ready_for_deploy"}
    registered = by_type["model_registered"]["payload"]
    assert registered["token_id"] == "E2E-HOOK"
    assert registered["metric_name"] == "mse"
    assert registered["baseline_value"] == 2.0
    assert registered["model_version"] == response.json()["model_version"]
