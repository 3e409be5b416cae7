"""The Hokusai SDK's optional registration fields, on SQLite and PostgreSQL.

`proposal_identifier`, `eval_spec`, `scorer_ref`, `primary_metric` and `benchmark_spec_id` are kept
with the registration, returned in its JSON, set as MLflow run tags `hokusai.<name>` and carried
in `model_registered`; a bad one is refused before anything changes.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from mlflow import MlflowClient

from tests.factories import create_token, mlflow_zip, register, tags_field
from tests.support.service import Api

FIELDS = {
    "proposal_identifier": "prop-2026-0042",
    "eval_spec": "xray holdout v2 (10k rows)",
    "scorer_ref": "sklearn.metrics.roc_auc_score",
    "primary_metric": "auroc",
    "benchmark_spec_id": "bench-xray-7",
}


def unique_token() -> str:
    # The MLflow store is shared by the session: a fresh model name per test.
    return f"SDK-{uuid.uuid4().hex[:8].upper()}"


def mlflow_client(api: Api) -> MlflowClient:
    uri = api.settings.resolved_tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


async def payloads(api: Api, event_type: str) -> list[dict[str, Any]]:
    query = sa.text("SELECT payload FROM events WHERE event_type = :t ORDER BY sequence")
    async with api.database.transaction() as session:
        rows = (await session.execute(query, {"t": event_type})).scalars().all()
    return [row if isinstance(row, dict) else json.loads(row) for row in rows]


class TestKeptEverywhere:
    async def test_stored_returned_tagged_and_announced(self, api: Api) -> None:
        token_id = unique_token()
        await create_token(api.client, api.auth(), token_id=token_id)
        response = await register(
            api.client,
            api.auth(),
            token_id=token_id,
            model=mlflow_zip(),
            filename="model.zip",
            fields={**FIELDS, **tags_field({"user_id": "user-8f3a"})},
        )
        assert response.status_code == 201, response.text
        created = response.json()
        for name, value in FIELDS.items():
            assert created[name] == value
        assert created["api_json_schema"]["inputSchema"]["required"] == ["age", "bmi"]

        shown = await api.client.get(
            f"/registrations/{created['registration_id']}", headers=api.auth()
        )
        assert {name: shown.json()[name] for name in FIELDS} == FIELDS
        assert shown.json()["api_json_schema"] == created["api_json_schema"]
        # In the written key order on PostgreSQL too, whose JSONB reorders keys when it stores them.
        kept = shown.json()["api_json_schema"]
        assert list(kept) == ["inputSchema", "outputSchema"]
        assert list(kept["inputSchema"]) == ["type", "properties", "required"]

        run = mlflow_client(api).get_run(created["mlflow_run_id"])
        for name, value in FIELDS.items():
            assert run.data.tags[f"hokusai.{name}"] == value
        assert run.data.tags["user_id"] == "user-8f3a"

        (payload,) = await payloads(api, "model_registered")
        assert {name: payload[name] for name in FIELDS} == FIELDS
        assert payload["user_id"] == "user-8f3a"
        assert payload["api_json_schema"] == created["api_json_schema"]
        assert payload["api_schema"] == created["api_schema"]

    async def test_absent_fields_are_null_and_untagged(self, api: Api) -> None:
        token_id = unique_token()
        await create_token(api.client, api.auth(), token_id=token_id)
        response = await register(
            api.client, api.auth(), token_id=token_id, fields={"eval_spec": ""}
        )
        assert response.status_code == 201, response.text
        created = response.json()
        assert all(created[name] is None for name in FIELDS)
        assert created["api_json_schema"] is None  # a pickle has no signature
        tags = mlflow_client(api).get_run(created["mlflow_run_id"]).data.tags
        assert not any(f"hokusai.{name}" in tags for name in FIELDS)
        (payload,) = await payloads(api, "model_registered")
        assert all(payload[name] is None for name in FIELDS)
        assert payload["user_id"] is None and payload["api_json_schema"] is None

    async def test_user_id_falls_back_to_fulfilled_by_user_id(self, api: Api) -> None:
        token_id = unique_token()
        await create_token(api.client, api.auth(), token_id=token_id)
        response = await register(
            api.client,
            api.auth(),
            token_id=token_id,
            fields=tags_field({"fulfilled_by_user_id": "user-77"}),
        )
        assert response.status_code == 201, response.text
        (payload,) = await payloads(api, "model_registered")
        assert payload["user_id"] == "user-77"


class TestRefused:
    @pytest.mark.parametrize(
        ("name", "value", "reason"),
        [
            ("proposal_identifier", "p" * 256, "at most 255 characters"),
            ("eval_spec", "line one\nline two", "control characters"),
            ("scorer_ref", "nul\x00byte", "control characters"),
            ("primary_metric", "\x1b[31mred", "control characters"),
            ("benchmark_spec_id", "tab\there", "control characters"),
        ],
    )
    async def test_bad_field_is_422_and_changes_nothing(
        self, api: Api, name: str, value: str, reason: str
    ) -> None:
        token_id = unique_token()
        await create_token(api.client, api.auth(), token_id=token_id)
        response = await register(api.client, api.auth(), token_id=token_id, fields={name: value})
        assert response.status_code == 422, response.text
        problem = response.json()
        assert response.headers["content-type"].startswith("application/problem+json")
        assert problem["code"] == "validation_error"
        assert name in problem["detail"] and reason in problem["detail"]
        assert value not in problem["detail"]
        token = (await api.client.get(f"/tokens/{token_id}", headers=api.auth())).json()
        assert token["status"] == "draft" and token["mlflow_run_id"] is None
        versions = mlflow_client(api).search_model_versions(f"name='hokusai-{token_id}'")
        assert list(versions) == []
        assert await payloads(api, "model_registered") == []

    async def test_longest_allowed_value_is_kept_whole(self, api: Api) -> None:
        token_id = unique_token()
        await create_token(api.client, api.auth(), token_id=token_id)
        value = "é" * 255  # characters, not bytes
        response = await register(
            api.client, api.auth(), token_id=token_id, fields={"eval_spec": value}
        )
        assert response.status_code == 201, response.text
        assert response.json()["eval_spec"] == value
