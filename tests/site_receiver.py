"""What the Hokusai site's receiver checks, for tests that deliver in the `hokusai_site` format.

The site verifies `X-Hokusai-Signature` (`sha256=` + hex HMAC-SHA256 of the raw body, keyed with
the shared secret's UTF-8 bytes, compared in constant time) before it parses anything, then reads
the "original MLflow event format" and de-duplicates on `event_type:model.id:timestamp`.
`parse_site_body` asserts the exact shape the site's parser relies on.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from tests.webhook_receiver import ReceivedRequest, Reply

TOP_LEVEL_KEYS = ["event_type", "model", "timestamp", "source"]
REQUIRED_MODEL_KEYS = ["id", "name", "status", "version", "run_id"]
OPTIONAL_MODEL_KEYS = [
    "user_id",
    "api_schema",
    "eval_spec",
    "scorer_ref",
    "primary_metric",
    "benchmark_spec_id",
]
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def site_signature_ok(secret: str, body: bytes, headers: Mapping[str, str]) -> bool:
    """The site's check: the header equals `sha256=<hex HMAC of the raw body>`."""
    received = {name.lower(): value for name, value in headers.items()}.get(
        "x-hokusai-signature", ""
    )
    expected = "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(received.encode(), expected.encode())


def parse_site_body(body: bytes) -> dict[str, Any]:
    """The body, once it has exactly the site's shape; AssertionError naming what is wrong."""
    assert body == json.dumps(json.loads(body), separators=(",", ":")).encode(), (
        "the body is not compact JSON in its own key order"
    )
    document = json.loads(body)
    assert isinstance(document, dict)
    assert list(document) == TOP_LEVEL_KEYS, f"top-level keys {list(document)}"
    assert "token_id" not in document
    assert document["event_type"] == "model_registered"
    assert document["source"] == "mlflow"
    assert isinstance(document["timestamp"], str)
    assert TIMESTAMP.fullmatch(document["timestamp"]), document["timestamp"]
    model = document["model"]
    assert isinstance(model, dict)
    keys = list(model)
    assert keys[: len(REQUIRED_MODEL_KEYS)] == REQUIRED_MODEL_KEYS, f"model keys {keys}"
    optional = keys[len(REQUIRED_MODEL_KEYS) :]
    assert optional == [key for key in OPTIONAL_MODEL_KEYS if key in optional], (
        f"optional model keys {optional} are unknown or out of order"
    )
    assert all(value is not None for value in model.values()), "a null key was kept"
    assert model["status"] == "registered"
    assert isinstance(model["version"], str)
    assert isinstance(model["id"], str) and model["id"] == model["id"].lower()
    assert isinstance(model["name"], str) and isinstance(model["run_id"], str)
    if "api_schema" in model:
        assert list(model["api_schema"]) == ["inputSchema", "outputSchema"]
    return document


def dedupe_key(document: Mapping[str, Any]) -> str:
    """The site's de-duplication key."""
    return f"{document['event_type']}:{document['model']['id']}:{document['timestamp']}"


def site_responder(secret: str) -> Callable[[ReceivedRequest], Reply]:
    """Answers as the site does: 401 for a bad signature, 400 for a body it cannot parse."""

    def respond(request: ReceivedRequest) -> Reply:
        if not site_signature_ok(secret, request.body, request.headers):
            return Reply.with_status(401, b"invalid signature")
        try:
            parse_site_body(request.body)
        except (AssertionError, ValueError) as e:
            return Reply.with_status(400, str(e).encode()[:200])
        return Reply.ok(b'{"success":true}')

    return respond
