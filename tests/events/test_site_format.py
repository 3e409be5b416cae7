"""The Hokusai site's body, built from an outbox event alone (no database, no MLflow)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from app.events.models import OutboxEvent
from app.events.webhooks.site_format import site_body, site_document
from app.registration.json_schema import in_key_order, signature_json_schema
from tests.site_receiver import parse_site_body

SIGNATURE = {
    "inputs": [
        {"type": "double", "name": "bmi_index", "required": True},
        {"type": "string", "name": "age", "required": False},
        {"type": "long", "name": "x", "required": True},
    ],
    "outputs": [{"type": "double", "required": True}],
}


def jsonb_like(value: Any) -> Any:
    """What PostgreSQL's JSONB hands back: object keys sorted by length, then bytes."""
    if isinstance(value, dict):
        return {k: jsonb_like(value[k]) for k in sorted(value, key=lambda k: (len(k), k))}
    if isinstance(value, list):
        return [jsonb_like(item) for item in value]
    return value


def event(payload: dict[str, Any], *, event_type: str = "model_registered") -> OutboxEvent:
    return OutboxEvent(
        sequence=4,
        event_id="0b7f4c5e-2d7a-4d8e-9a3b-5f6c7d8e9f01",
        event_type=event_type,
        token_id="XRAY-2",
        payload=payload,
        created_at=dt.datetime(2026, 11, 27, 10, 42, 7, 123456, tzinfo=dt.UTC),
    )


def payload(**extra: Any) -> dict[str, Any]:
    return {
        "token_id": "XRAY-2",
        "registration_id": "7d9e2c41-5b0a-4f3e-9c8d-1a2b3c4d5e6f",
        "mlflow_run_id": "9f2b6c1d4e8a4b7f9c0d1e2f3a4b5c6d",
        "model_name": "hokusai-XRAY-2",
        "model_version": "3",
        "model_uri": "models:/hokusai-XRAY-2/3",
        "metric_name": "auroc",
        "metric_value": 0.86,
        "baseline_value": 0.82,
        "improvement": 0.04,
        "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "api_schema": None,
        "api_json_schema": None,
        "user_id": None,
        "proposal_identifier": None,
        "eval_spec": None,
        "scorer_ref": None,
        "primary_metric": None,
        "benchmark_spec_id": None,
        **extra,
    }


class TestBody:
    def test_exact_bytes_of_a_minimal_registration(self) -> None:
        assert site_body(event(payload())) == (
            b'{"event_type":"model_registered","model":{"id":"xray-2","name":"hokusai-XRAY-2",'
            b'"status":"registered","version":"3","run_id":"9f2b6c1d4e8a4b7f9c0d1e2f3a4b5c6d"},'
            b'"timestamp":"2026-11-27T10:42:07Z","source":"mlflow"}'
        )

    def test_every_optional_key_in_order_and_nothing_more(self) -> None:
        body = site_body(
            event(
                payload(
                    api_schema=SIGNATURE,
                    api_json_schema=signature_json_schema(SIGNATURE),
                    user_id="user-8f3a",
                    proposal_identifier="prop-1",  # kept with the registration, not sent
                    eval_spec="spec",
                    scorer_ref="scorer",
                    primary_metric="auroc",
                    benchmark_spec_id="bench",
                )
            )
        )
        assert body is not None
        document = parse_site_body(body)
        assert list(document["model"]) == [
            "id",
            "name",
            "status",
            "version",
            "run_id",
            "user_id",
            "api_schema",
            "eval_spec",
            "scorer_ref",
            "primary_metric",
            "benchmark_spec_id",
        ]

    def test_version_is_a_string_even_when_stored_as_a_number(self) -> None:
        document = site_document(event(payload(model_version=12)))
        assert document is not None and document["model"]["version"] == "12"

    def test_same_event_same_bytes(self) -> None:
        source = payload(api_schema=SIGNATURE, api_json_schema=signature_json_schema(SIGNATURE))
        assert site_body(event(source)) == site_body(event(json.loads(json.dumps(source))))

    def test_database_key_order_does_not_change_the_bytes(self) -> None:
        source = payload(api_schema=SIGNATURE, api_json_schema=signature_json_schema(SIGNATURE))
        assert site_body(event(jsonb_like(source))) == site_body(event(source))

    def test_properties_keep_the_signature_column_order(self) -> None:
        source = payload(api_schema=SIGNATURE, api_json_schema=signature_json_schema(SIGNATURE))
        document = site_document(event(jsonb_like(source)))
        assert document is not None
        inputs = document["model"]["api_schema"]["inputSchema"]
        assert list(inputs) == ["type", "properties", "required"]
        assert list(inputs["properties"]) == ["bmi_index", "age", "x"]
        assert inputs["required"] == ["bmi_index", "x"]

    def test_an_event_from_before_the_json_schema_was_kept_converts_its_signature(self) -> None:
        source = payload(api_schema=SIGNATURE)
        del source["api_json_schema"]
        document = site_document(event(source))
        assert document is not None
        assert document["model"]["api_schema"] == in_key_order(
            signature_json_schema(SIGNATURE), SIGNATURE
        )

    def test_other_event_types_have_no_site_body(self) -> None:
        for event_type in ("token_ready_for_deploy", "ping", "model_deployed"):
            assert site_body(event(payload(), event_type=event_type)) is None

    def test_timestamp_is_the_events_own_time_in_utc(self) -> None:
        row = event(payload())
        row.created_at = dt.datetime(
            2026, 11, 27, 12, 0, 59, 999999, tzinfo=dt.timezone(dt.timedelta(hours=2))
        )
        document = site_document(row)
        assert document is not None and document["timestamp"] == "2026-11-27T10:00:59Z"
