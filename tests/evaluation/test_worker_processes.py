"""Evaluations run by `hokusai-registry worker` processes on one PostgreSQL database.

`serve` takes the registrations (with HOKUSAI_RUN_EVALUATIONS off) and the workers run the jobs.
A worker SIGKILLed in the middle of an evaluation loses nothing: after its lease another worker
takes the job and finishes it. A model that kills whatever runs it is refused after
HOKUSAI_EVALUATION_MAX_ATTEMPTS starts instead of being retried forever.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
import pytest
from joserfc import jws
from joserfc.jwk import KeySet
from sklearn.metrics import roc_auc_score

from app.manage import migrate
from tests.evaluation.data import (
    benchmark_csv,
    classification,
    frame,
    linear,
    logistic,
    regression,
)
from tests.mlflow_server import free_port

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent
LEASE_SECONDS = 3
MAX_ATTEMPTS = 2
STARTUP_SECONDS = 90.0
SETTLE_SECONDS = 120.0


@dataclass
class Cluster:
    """One API process and any number of worker processes sharing a database and data dir."""

    data_dir: Path
    database_url: str
    env: dict[str, str] = field(default_factory=dict)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    url: str = ""
    key: str = ""

    def __post_init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HOKUSAI_", "MLFLOW_"))}
        if not self.database_url:
            return
        self.env = env | {
            "HOKUSAI_ENV": "test",
            "HOKUSAI_DATA_DIR": str(self.data_dir),
            "HOKUSAI_DATABASE_URL": self.database_url,
            "HOKUSAI_LOG_JSON": "true",
            "HOKUSAI_RUN_DISPATCHER": "false",
            "HOKUSAI_EVALUATION_LEASE_SECONDS": str(LEASE_SECONDS),
            "HOKUSAI_EVALUATION_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
            "HOKUSAI_EVALUATION_CONCURRENCY": "1",
        }

    def start_api(self, *, evaluates: bool = False) -> None:
        created = subprocess.run(
            [BIN / "hokusai-registry", "create-api-key", "--name", "e2e", "--scopes", "admin"],
            env=self.env,
            check=True,
            timeout=120,
            capture_output=True,
            text=True,
        )
        self.key = created.stdout.strip().splitlines()[-1]
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        process = self._spawn(
            ["serve", "--port", str(port), "--no-migrate"],
            "api",
            HOKUSAI_RUN_EVALUATIONS=str(evaluates).lower(),
        )
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            assert process.poll() is None, self.log("api")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, self.log("api")
            time.sleep(0.2)

    def start_worker(self, name: str) -> subprocess.Popen[bytes]:
        return self._spawn(["worker"], name)

    def _spawn(self, args: list[str], name: str, **extra: str) -> subprocess.Popen[bytes]:
        with (self.data_dir / f"{name}.log").open("ab") as log_file:
            process = subprocess.Popen(
                [BIN / "hokusai-registry", *args],
                env=self.env | extra,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(process)
        return process

    def log(self, name: str) -> str:
        path = self.data_dir / f"{name}.log"
        return path.read_text(errors="replace")[-5000:] if path.exists() else ""

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=180
        )

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

    def job(self, registration_id: str) -> dict[str, Any]:
        with psycopg.connect(self.database_url.replace("+psycopg", "")) as conn:
            row = conn.execute(
                "SELECT status, attempts, lease_owner FROM evaluation_jobs "
                "WHERE registration_id = %s",
                (registration_id,),
            ).fetchone()
        assert row is not None
        return {"status": row[0], "attempts": row[1], "lease_owner": row[2]}


@pytest.fixture
def cluster(tmp_path: Path, postgres_url: str) -> Iterator[Cluster]:
    name = f"hokusai_workers_{os.getpid()}_{int(time.time() * 1000) % 10**8}"
    admin = postgres_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"{postgres_url.rsplit('/', 1)[0]}/{name}"
    migrate(url)
    running = Cluster(data_dir=tmp_path, database_url=url)
    try:
        running.start_api()
        yield running
    finally:
        running.stop()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _expression_model(expression: str) -> bytes:
    class Build:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return (eval, (expression,))

    return pickle.dumps(Build(), protocol=5)


def slow_model(inner: bytes, seconds: float) -> bytes:
    """A real model whose predict_proba first sleeps; loads without anything from the tests."""
    return _expression_model(
        "type('Slow', (), {"
        f"'inner': __import__('pickle').loads({inner!r}), "
        f"'predict_proba': lambda self, X: (__import__('time').sleep({seconds}), "
        "self.inner.predict_proba(X))[1]})()"
    )


def parent_killer() -> bytes:
    """A model whose predict SIGKILLs the process that started it."""
    return _expression_model(
        "type('Killer', (), {'predict': lambda self, X: "
        "__import__('os').kill(__import__('os').getppid(), 9)})()"
    )


def setup_token(client: httpx.Client, token_id: str, content: bytes, **token: Any) -> None:
    created = client.post("/tokens", json={"token_id": token_id, **token})
    assert created.status_code == 201, created.text
    uploaded = client.put(
        f"/tokens/{token_id}/benchmark", files={"dataset": ("holdout.csv", content, "text/csv")}
    )
    assert uploaded.status_code == 201, uploaded.text


def submit(client: httpx.Client, token_id: str, model: bytes, **fields: str) -> str:
    response = client.post(
        f"/models/{token_id}/register",
        data={"metric": "auroc", "baseline": "0.6", **fields},
        files={"model_file": ("model.pkl", model, "application/octet-stream")},
    )
    assert response.status_code == 202, response.text
    registration_id: str = response.json()["registration_id"]
    return registration_id


def settled(client: httpx.Client, registration_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = client.get(f"/registrations/{registration_id}").json()
        if body["status"] != "evaluating":
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.25)


def test_worker_killed_mid_evaluation_loses_nothing(cluster: Cluster) -> None:
    data = classification()
    model = logistic(data)
    expected = float(roc_auc_score(data.y_test, model.predict_proba(frame(data.x_test))[:, 1]))
    with cluster.client() as client:
        setup_token(client, "KILL", benchmark_csv(data), metric="auroc", baseline=0.6)
        first = cluster.start_worker("worker-a")
        registration_id = submit(client, "KILL", slow_model(pickle.dumps(model), 8))
        deadline = time.monotonic() + STARTUP_SECONDS
        while (job := cluster.job(registration_id))["lease_owner"] is None or (
            f":{first.pid}:" not in job["lease_owner"]
        ):
            assert time.monotonic() < deadline, (job, cluster.log("worker-a"))
            time.sleep(0.1)
        time.sleep(1.0)  # the sandbox is running the model now
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        assert client.get(f"/registrations/{registration_id}").json()["status"] == "evaluating"

        cluster.start_worker("worker-b")
        body = settled(client, registration_id, SETTLE_SECONDS)
        assert body["status"] == "registered", (body, cluster.log("worker-b"))
        assert abs(body["metric"]["value"] - expected) <= 1e-9
        assert cluster.job(registration_id)["attempts"] == 2
        assert client.get("/tokens/KILL").json()["status"] == "registered"


def test_model_that_kills_its_runner_is_refused_after_bounded_tries(cluster: Cluster) -> None:
    data = classification(rows=100)
    with cluster.client() as client:
        setup_token(client, "BOMB", benchmark_csv(data), metric="auroc", baseline=0.6)
        registration_id = submit(client, "BOMB", parent_killer())
        starts = 0
        deadline = time.monotonic() + SETTLE_SECONDS
        worker: subprocess.Popen[bytes] | None = None
        while client.get(f"/registrations/{registration_id}").json()["status"] == "evaluating":
            assert time.monotonic() < deadline
            if worker is None or worker.poll() is not None:
                # Whatever the model did to the last worker, another one comes up.
                assert starts <= MAX_ATTEMPTS + 1, cluster.log("bomb")
                worker = cluster.start_worker("bomb")
                starts += 1
            time.sleep(0.25)
        body = client.get(f"/registrations/{registration_id}").json()
        assert body["status"] == "rejected"
        assert body["error"]["code"] == "evaluation_failed"
        assert cluster.job(registration_id)["attempts"] <= MAX_ATTEMPTS + 1
        token = client.get("/tokens/BOMB").json()
        assert token["status"] == "draft"
        # The API process was never touched, and still answers.
        assert httpx.get(f"{cluster.url}/ready", timeout=5).status_code == 200


def test_serve_alone_evaluates_on_the_embedded_defaults(tmp_path: Path) -> None:
    """`serve` on SQLite runs evaluations itself; the labels reach no response and no log line."""
    data = regression()
    model = linear(data)
    marker = "7319046.25"
    lines = benchmark_csv(data).decode().splitlines()
    lines[1] = lines[1].rsplit(",", 1)[0] + f",{marker}"
    content = ("\n".join(lines) + "\n").encode()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HOKUSAI_", "MLFLOW_"))}
    env |= {"HOKUSAI_ENV": "test", "HOKUSAI_DATA_DIR": str(tmp_path), "HOKUSAI_LOG_JSON": "true"}
    subprocess.run([BIN / "hokusai-registry", "migrate"], env=env, check=True, timeout=120)
    running = Cluster(data_dir=tmp_path, database_url="")
    running.env = env
    try:
        running.start_api(evaluates=True)
        with running.client() as client:
            setup_token(client, "SOLO", content, metric="mse", baseline=1e13)
            response = client.post(
                "/models/SOLO/register",
                headers={"Prefer": "wait=120"},
                data={"metric": "mse", "baseline": "1e13"},
                files={
                    "model_file": ("model.pkl", pickle.dumps(model), "application/octet-stream")
                },
            )
            assert response.status_code == 201, (response.text, running.log("api"))
            body = response.json()
            receipt = client.get(f"/registrations/{body['registration_id']}/receipt").json()
            jwks = client.get("/.well-known/jwks.json").json()
            seen = [response.text, json.dumps(receipt), json.dumps(jwks)]
            seen.append(client.get("/events", params={"token_id": "SOLO"}).text)
        keys = KeySet.import_key_set(jwks)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            verified = jws.deserialize_compact(receipt["jws"], keys, algorithms=["EdDSA"])
        assert json.loads(verified.payload) == receipt["payload"]
        labels = np.array([float(line.rsplit(",", 1)[1]) for line in lines[1:]])
        predictions = model.predict(frame(data.x_test))
        expected = float(np.mean((labels - predictions) ** 2))
        assert abs(body["metric"]["value"] - expected) <= 1e-9 * max(1.0, expected)
    finally:
        running.stop()
    log = (tmp_path / "api.log").read_text()
    assert "evaluation_measured" in log
    for text in [*seen, log]:
        assert marker not in text
