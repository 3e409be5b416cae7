"""The Hokusai site's payload format: a `model_registered` event as the site's receiver parses it.

The site reads the "original MLflow event format" that Hokusai's data pipeline sends:

    {"event_type":"model_registered","model":{"id":...,"name":...,"status":"registered",
     "version":"3","run_id":...},"timestamp":"2026-11-27T10:42:07Z","source":"mlflow"}

It de-duplicates on `event_type:model.id:timestamp`, and tries a body with a top-level `token_id`
as another shape first, so this one never has one. The body is built from the committed event
alone (its payload and its own time), so every retry sends the same bytes and no delivery needs
MLflow.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from app.events.models import OutboxEvent
from app.events.outbox import EventType
from app.registration.json_schema import in_key_order, signature_json_schema

SOURCE = "mlflow"
# Keys of `model` after the required ones, in this order, each left out when it has no value.
OPTIONAL_MODEL_KEYS = (
    "user_id",
    "api_schema",
    "eval_spec",
    "scorer_ref",
    "primary_metric",
    "benchmark_spec_id",
)


def site_timestamp(when: dt.datetime) -> str:
    """`YYYY-MM-DDTHH:MM:SSZ` in UTC."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def site_document(event: OutboxEvent) -> dict[str, Any] | None:
    """The body as a mapping in its key order; None for anything but `model_registered`."""
    if event.event_type != EventType.MODEL_REGISTERED:
        return None
    payload = event.payload
    token_id = payload.get("token_id") or event.token_id
    values: dict[str, Any] = {
        "user_id": payload.get("user_id"),
        # Events written before the JSON Schema was kept carry the signature: convert it here.
        "api_schema": in_key_order(
            payload["api_json_schema"]
            if "api_json_schema" in payload
            else signature_json_schema(payload.get("api_schema")),
            payload.get("api_schema"),
        ),
        **{name: payload.get(name) for name in OPTIONAL_MODEL_KEYS[2:]},
    }
    version = payload.get("model_version")
    model: dict[str, Any] = {
        "id": str(token_id).lower() if token_id is not None else None,
        "name": payload.get("model_name"),
        "status": "registered",
        "version": str(version) if version is not None else None,
        "run_id": payload.get("mlflow_run_id"),
        **{name: values[name] for name in OPTIONAL_MODEL_KEYS},
    }
    return {
        "event_type": EventType.MODEL_REGISTERED,
        "model": {key: value for key, value in model.items() if value is not None},
        "timestamp": site_timestamp(event.created_at),
        "source": SOURCE,
    }


def site_body(event: OutboxEvent) -> bytes | None:
    """The exact bytes sent and signed: compact JSON; None for anything but `model_registered`."""
    document = site_document(event)
    if document is None:
        return None
    return json.dumps(document, separators=(",", ":")).encode()
