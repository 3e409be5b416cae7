"""The documented receivers for the Hokusai site's format check what the service sends.

Each receiver (docs/examples/site_webhook_receiver.py and .mjs) runs as its own process and is
sent bodies built and signed by the service's own code (app.events.webhooks.site_format and
sender), exactly as a delivery to a `hokusai_site` endpoint is.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from app.events.models import OutboxEvent
from app.events.outbox import envelope
from app.events.webhooks.sender import encode_body, signature_headers
from app.events.webhooks.site_format import site_body
from app.registration.json_schema import signature_json_schema
from tests.docs.blocks import ROOT
from tests.docs.shell import clean_environment, wait_for_port
from tests.mlflow_server import free_port

EXAMPLES = ROOT / "docs" / "examples"
NODE = shutil.which("node")
RECEIVERS = {
    "python": [sys.executable, str(EXAMPLES / "site_webhook_receiver.py")],
    "node": [NODE or "node", str(EXAMPLES / "site_webhook_receiver.mjs")],
}
SECRET = "the site's shared secret: ünïcode ✓"
SIGNATURE = {
    "inputs": [{"type": "double", "name": "age", "required": True}],
    "outputs": [{"type": "long", "required": True}],
}


def registered_event(token_id: str = "XRAY") -> OutboxEvent:
    return OutboxEvent(
        sequence=1,
        event_id=str(uuid.uuid4()),
        event_type="model_registered",
        token_id=token_id,
        payload={
            "token_id": token_id,
            "model_name": f"hokusai-{token_id}",
            "model_version": "2",
            "mlflow_run_id": uuid.uuid4().hex,
            "api_schema": SIGNATURE,
            "api_json_schema": signature_json_schema(SIGNATURE),
            "user_id": "user-8f3a",
            "eval_spec": "xray holdout — v2",
        },
        created_at=dt.datetime.now(dt.UTC),
    )


def signed(body: bytes, event: OutboxEvent, secret: str = SECRET) -> dict[str, str]:
    return signature_headers(
        secret=secret,
        event_id=event.event_id,
        event_type=event.event_type,
        timestamp=int(time.time()),
        body=body,
    )


class Receiver:
    def __init__(self, url: str, log: Path) -> None:
        self.url = url
        self.log = log

    def post(self, body: bytes, headers: dict[str, str]) -> int:
        return httpx.post(self.url, content=body, headers=headers, timeout=10).status_code

    def verified(self) -> list[dict[str, object]]:
        lines = self.log.read_text().splitlines()
        return [json.loads(line.split(" ", 2)[2]) for line in lines if line.startswith("verified")]


@contextmanager
def receiver(kind: str, tmp_path: Path) -> Iterator[Receiver]:
    if kind == "node" and NODE is None:
        pytest.skip("node is not installed")
    port = free_port()
    log = tmp_path / f"{kind}-site-receiver.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            RECEIVERS[kind],
            env=clean_environment(SITE_WEBHOOK_SECRET=SECRET, PORT=str(port)),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port)
        yield Receiver(f"http://127.0.0.1:{port}/api/webhooks/model-registration", log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.mark.parametrize("kind", sorted(RECEIVERS))
class TestDocumentedSiteReceivers:
    def test_accepts_a_delivery_once(self, kind: str, tmp_path: Path) -> None:
        event = registered_event()
        body = site_body(event)
        assert body is not None
        with receiver(kind, tmp_path) as hook:
            assert hook.post(body, signed(body, event)) == 200
            assert hook.post(body, signed(body, event)) == 200  # a retry: acknowledged...
            time.sleep(0.2)
            assert hook.verified() == [json.loads(body)]  # ...and handled once

    def test_refuses_a_changed_body(self, kind: str, tmp_path: Path) -> None:
        event = registered_event()
        body = site_body(event)
        assert body is not None
        with receiver(kind, tmp_path) as hook:
            changed = body.replace(b'"version":"2"', b'"version":"3"')
            assert changed != body
            assert hook.post(changed, signed(body, event)) == 401
            assert hook.verified() == []

    def test_refuses_another_secret(self, kind: str, tmp_path: Path) -> None:
        event = registered_event()
        body = site_body(event)
        assert body is not None
        with receiver(kind, tmp_path) as hook:
            assert hook.post(body, signed(body, event, "another shared secret")) == 401

    def test_refuses_the_standard_envelope(self, kind: str, tmp_path: Path) -> None:
        # What a `standard` endpoint would send: signed correctly, but not the site's format.
        event = registered_event()
        body = encode_body(envelope(event))
        with receiver(kind, tmp_path) as hook:
            assert hook.post(body, signed(body, event)) == 400
            assert hook.verified() == []
