"""docs/events.md (with the static-webhook settings of docs/configuration.md), block by block.

Against the service `make run` starts, with one registration for XRAY already made (the feed
examples read it). The curl examples name make run's address and the receiver's port 9000;
both are replaced by the test's own.
"""

from __future__ import annotations

import pickle
import re
import time
from pathlib import Path

import httpx
import pytest

from tests.docs.blocks import scenario
from tests.docs.service import make_run
from tests.docs.shell import Session, clean_environment, reader_dir
from tests.mlflow_server import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def _register_xray(client: httpx.Client) -> None:
    token = {"token_id": "XRAY", "metric": "auroc", "baseline": 0.82}
    assert client.post("/tokens", json=token).status_code == 201
    response = client.post(
        "/models/XRAY/register",
        data={"metric": "auroc", "baseline": "0.82", "metric_value": "0.86"},
        files={"model_file": ("model.pkl", pickle.dumps({"weights": [0.5]}))},
    )
    assert response.status_code == 201, response.text


def _wait_for(session: Session, name: str, text: str, seconds: float = 30) -> str:
    deadline = time.monotonic() + seconds
    while text not in session.log(name):
        assert time.monotonic() < deadline, f"{name} never printed {text!r}:\n{session.logs()}"
        time.sleep(0.2)
    return session.log(name)


def test_events_page(tmp_path: Path) -> None:
    cwd = reader_dir(tmp_path)
    receiver_port = free_port()
    with make_run(cwd) as url:
        key = (cwd / ".hokusai" / "dev-api-key").read_text().strip()
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            _register_xray(client)
            session = Session(
                cwd=cwd,
                env=clean_environment(HOKUSAI_API_URL=url, HOKUSAI_API_KEY=key),
                substitutions={
                    "http://127.0.0.1:8000": url,
                    "127.0.0.1:9000": f"127.0.0.1:{receiver_port}",
                    "PORT=9000": f"PORT={receiver_port}",
                },
            )
            outputs = []
            try:
                for block in scenario("events"):
                    if background := block.flags.get("background"):
                        session.start(block, background)
                    else:
                        outputs.append(session.run(block, timeout=60))
                # The ping the last block sent reaches the documented receiver, verified.
                receiver_log = _wait_for(session, "receiver", "verified ping")
            finally:
                session.stop_all()
            webhooks = client.get("/webhooks").json()["items"]
            # configuration.md's one-liner makes a secret the service accepts.
            exported = re.search(
                r'HOKUSAI_WEBHOOK_SECRET="(whsec_[^"]+)"', session.state.read_text()
            )
            assert exported is not None
            accepted = client.post(
                "/webhooks", json={"url": "http://127.0.0.1:9/hook", "secret": exported[1]}
            )
            assert accepted.status_code == 201, accepted.text

    transcript = "\n".join(outputs)
    assert transcript.count("token_ready_for_deploy") >= 1
    assert "model_registered" in transcript
    assert re.search(r'"description":\s*"deploy trigger"', transcript)
    assert re.search(r'"payload_format":\s*"hokusai_site"', transcript)
    assert re.search(r'"event_types":\s*\["model_registered"\]', transcript)
    assert receiver_log.count("verified ping") == 1, receiver_log
    # The curl example deleted its endpoint; the CLI's and the receiver's remain.
    assert sorted(webhook["url"] for webhook in webhooks) == [
        f"http://127.0.0.1:{receiver_port}/hook",
        "https://site.example/hooks/hokusai",
    ]
