"""End to end: `hokusai-registry serve` with HOKUSAI_SITE_WEBHOOK_URL tells the Hokusai site.

The service runs as a real process on the embedded defaults (`make run`'s: a local MLflow store
under its data folder), on SQLite and on a fresh PostgreSQL database. A registration over HTTP
reaches a receiver on loopback that checks it as the site does (tests/site_receiver.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.factories import mlflow_zip
from tests.site_receiver import parse_site_body, site_responder, site_signature_ok
from tests.support.process import serving
from tests.support.service import POSTGRES_ADMIN_URL
from tests.webhook_receiver import WebhookReceiver

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

BIN = Path(sys.executable).parent
SITE_SECRET = "hokusai-site-shared-secret-e2e-0001"


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'hokusai.db'}"
        return
    request.getfixturevalue("postgres_url")  # skips (or fails under CI) without PostgreSQL
    name = f"hokusai_site_e2e_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{POSTGRES_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def serve(data_dir: Path, env: dict[str, str]) -> Iterator[tuple[str, str]]:
    """The service as its own process (migrated at start); its URL and an admin key."""
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
    with serving(env, log_path, ready_within=90) as url:
        yield url, key
    assert SITE_SECRET not in log_path.read_text(), "the site's secret reached the log"


def test_registration_reaches_the_site_receiver(database_url: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with WebhookReceiver(responder=site_responder(SITE_SECRET)) as site:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("HOKUSAI_")},
            "HOKUSAI_ENV": "test",
            "HOKUSAI_DATA_DIR": str(data_dir),
            "HOKUSAI_DATABASE_URL": database_url,
            "HOKUSAI_LOG_JSON": "true",
            "HOKUSAI_SITE_WEBHOOK_URL": site.url_for("/api/webhooks/model-registration"),
            "HOKUSAI_SITE_WEBHOOK_SECRET": SITE_SECRET,
        }
        subprocess.run([BIN / "hokusai-registry", "migrate"], env=env, check=True, timeout=120)
        for url, key in serve(data_dir, env):
            with httpx.Client(
                base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60
            ) as client:
                webhooks = client.get("/webhooks").json()["items"]
                assert [(w["id"], w["payload_format"]) for w in webhooks] == [
                    ("static-site", "hokusai_site")
                ]
                created = client.post("/tokens", json={"token_id": "Xray-Site", "metric": "auroc"})
                assert created.status_code == 201, created.text
                response = client.post(
                    "/models/xray-site/register",
                    data={
                        "metric": "auroc",
                        "baseline": "0.82",
                        "metric_value": "0.86",
                        "proposal_identifier": "prop-2026-0042",
                        "eval_spec": "xray-holdout-v2",
                        "scorer_ref": "sklearn.metrics.roc_auc_score",
                        "primary_metric": "auroc",
                        "benchmark_spec_id": "bench-xray-7",
                        "tags": '{"user_id": "user-8f3a"}',
                    },
                    files={"model_file": ("model.zip", mlflow_zip(), "application/zip")},
                )
                assert response.status_code == 201, response.text
                registration = response.json()
                (delivered,) = site.wait_for_sync(1, timeout=30)
                time.sleep(0.5)  # token_ready_for_deploy is not for the site
                assert len(site.requests) == 1
                deliveries = client.get("/webhooks/static-site/deliveries").json()["items"]

    assert delivered.path == "/api/webhooks/model-registration"
    assert delivered.reply.status == 200, delivered.reply.body
    assert site_signature_ok(SITE_SECRET, delivered.body, delivered.headers)
    document = parse_site_body(delivered.body)
    assert document["model"]["id"] == "xray-site"
    assert document["model"]["name"] == "hokusai-XRAY-SITE"
    assert document["model"]["version"] == registration["model_version"] == "1"
    assert document["model"]["run_id"] == registration["mlflow_run_id"]
    assert document["model"]["user_id"] == "user-8f3a"
    assert document["model"]["api_schema"] == registration["api_json_schema"]
    # Written in the same key order on either database (PostgreSQL's JSONB reorders keys).
    assert delivered.body.count(b'{"type":"object","properties":{"age":') == 1
    assert delivered.body.count(b'{"type":"object","properties":{"output":') == 1
    assert document["model"]["benchmark_spec_id"] == "bench-xray-7"
    assert delivered.headers["x-hokusai-idempotency-key"] == registration["event_ids"][0]
    assert [(d["event_type"], d["status"]) for d in deliveries] == [
        ("model_registered", "delivered")
    ]
    # Shown with `pytest -s`: one delivered body, byte for byte.
    print("\ndelivered body:", delivered.body.decode())
