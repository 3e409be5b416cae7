"""The documented webhook receivers (docs/examples/) verify what the service's sender signs.

Each receiver runs as its own process (Python, and Node with nothing but its standard library) and
is sent requests signed by app.events.webhooks.sender, the code that signs real deliveries.
"""

from __future__ import annotations

import base64
import json
import secrets
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

from app.events.webhooks.sender import encode_body, signature_headers
from tests.docs.blocks import ROOT
from tests.docs.shell import clean_environment, wait_for_port
from tests.mlflow_server import free_port

EXAMPLES = ROOT / "docs" / "examples"
NODE = shutil.which("node")

RECEIVERS = {
    "python": [sys.executable, str(EXAMPLES / "webhook_receiver.py")],
    "node": [NODE or "node", str(EXAMPLES / "webhook_receiver.mjs")],
}


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def envelope(event_type: str = "token_ready_for_deploy") -> dict[str, object]:
    return {
        "event_id": str(uuid.uuid4()),
        "event_type": event_type,
        "source": "hokusai-ml-platform",
        "timestamp": "2026-11-27T11:35:11.210Z",
        "sequence": 7,
        "token_id": "XRAY",
        "payload": {
            "token_id": "XRAY",
            "mlflow_run_id": "0f6c2b1e9d8a4c7b",
            "model_name": "hokusai-XRAY",
            "model_version": "1",
            "metric_name": "auroc",
            "metric_value": 0.86,
            "baseline_value": 0.82,
            "note": "non-ASCII é ✓ survives byte-exact verification",
        },
    }


def signed(
    event: dict[str, object],
    secret: str,
    *,
    timestamp: int | None = None,
    previous_secret: str | None = None,
) -> tuple[bytes, dict[str, str]]:
    body = encode_body(event)
    headers = signature_headers(
        secret=secret,
        event_id=str(event["event_id"]),
        event_type=str(event["event_type"]),
        timestamp=int(time.time()) if timestamp is None else timestamp,
        body=body,
        previous_secret=previous_secret,
    )
    return body, headers


class Receiver:
    def __init__(self, url: str, log: Path) -> None:
        self.url = url
        self.log = log

    def post(self, body: bytes, headers: dict[str, str]) -> int:
        return httpx.post(self.url, content=body, headers=headers, timeout=10).status_code

    def verified(self) -> list[dict[str, object]]:
        lines = self.log.read_text().splitlines()
        return [json.loads(line.split(" ", 3)[3]) for line in lines if line.startswith("verified")]


@contextmanager
def receiver(kind: str, secret: str, tmp_path: Path) -> Iterator[Receiver]:
    if kind == "node" and NODE is None:
        pytest.skip("node is not installed")
    port = free_port()
    log = tmp_path / f"{kind}-receiver.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            RECEIVERS[kind],
            env=clean_environment(WEBHOOK_SECRET=secret, PORT=str(port)),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port)
        yield Receiver(f"http://127.0.0.1:{port}/hook", log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.mark.parametrize("kind", sorted(RECEIVERS))
class TestDocumentedReceivers:
    def test_accepts_a_delivery_signed_by_the_service(self, kind: str, tmp_path: Path) -> None:
        secret = new_secret()
        event = envelope()
        with receiver(kind, secret, tmp_path) as hook:
            body, headers = signed(event, secret)
            assert hook.post(body, headers) == 204
            assert hook.post(body, headers) == 204  # a redelivery is acknowledged...
            time.sleep(0.2)
            assert hook.verified() == [event]  # ...and processed once

    def test_refuses_a_changed_body(self, kind: str, tmp_path: Path) -> None:
        secret = new_secret()
        with receiver(kind, secret, tmp_path) as hook:
            body, headers = signed(envelope(), secret)
            assert hook.post(body.replace(b"0.86", b"0.99"), headers) == 401
            assert hook.verified() == []

    def test_refuses_another_secret(self, kind: str, tmp_path: Path) -> None:
        with receiver(kind, new_secret(), tmp_path) as hook:
            body, headers = signed(envelope(), new_secret())
            assert hook.post(body, headers) == 401

    def test_refuses_a_stale_timestamp(self, kind: str, tmp_path: Path) -> None:
        secret = new_secret()
        with receiver(kind, secret, tmp_path) as hook:
            body, headers = signed(envelope(), secret, timestamp=int(time.time()) - 600)
            assert hook.post(body, headers) == 401

    def test_refuses_a_good_standard_signature_with_a_bad_hokusai_one(
        self, kind: str, tmp_path: Path
    ) -> None:
        secret = new_secret()
        with receiver(kind, secret, tmp_path) as hook:
            body, headers = signed(envelope(), secret)
            headers["X-Hokusai-Signature"] = "sha256=" + "0" * 64
            assert hook.post(body, headers) == 401

    @pytest.mark.parametrize("side", ["old", "new"])
    def test_accepts_either_secret_during_a_rotation(
        self, kind: str, side: str, tmp_path: Path
    ) -> None:
        old, new = new_secret(), new_secret()
        event = envelope("model_registered")
        with receiver(kind, old if side == "old" else new, tmp_path) as hook:
            body, headers = signed(event, new, previous_secret=old)
            assert hook.post(body, headers) == 204
            time.sleep(0.2)
            assert hook.verified() == [event]
