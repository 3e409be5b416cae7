"""`POST /models/{token_id}/register` in process on SQLite and PostgreSQL, with a real MLflow store.

Every error code of the contract's register section is exercised here; the success path is read
back from MLflow with its own client.
"""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
from typing import Any

import pytest
import sqlalchemy as sa

from tests.factories import (
    MLMODEL_WITH_SIGNATURE,
    create_token,
    mlflow_zip,
    pickle_bytes,
    register,
    sha256,
    tags_field,
)
from tests.support.mlflow import mlflow_client, model_versions
from tests.support.service import Api


async def outbox(api: Api, token_id: str | None = None) -> list[dict[str, Any]]:
    query = "SELECT sequence, event_id, event_type, token_id FROM events ORDER BY sequence"
    async with api.database.transaction() as session:
        rows = (await session.execute(sa.text(query))).mappings().all()
    return [dict(row) for row in rows if token_id is None or row["token_id"] == token_id]


async def token(api: Api, token_id: str) -> dict[str, Any]:
    response = await api.client.get(f"/tokens/{token_id}", headers=api.auth())
    result: dict[str, Any] = response.json()
    return result


class TestSuccessfulRegistration:
    async def test_registers_pickle_and_everything_agrees(self, api: Api) -> None:
        token_id = f"OK-{api.backend}".upper()
        await create_token(api.client, api.auth(), token_id=token_id, metric="auroc", baseline=0.82)
        model = pickle_bytes(size=64 * 1024)
        response = await register(
            api.client,
            api.auth(),
            token_id=token_id.lower(),
            model=model,
            metric="AUC",
            fields={"sha256": sha256(model), **tags_field({"framework": "sklearn"})},
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert response.headers["Location"] == f"/registrations/{body['registration_id']}"
        assert body["status"] == "registered"
        assert body["token_id"] == token_id
        assert body["model_name"] == f"hokusai-{token_id}"
        assert body["model_uri"] == f"models:/hokusai-{token_id}/{body['model_version']}"
        assert body["metric"] == {
            "name": "auroc",
            "value": 0.86,
            "baseline": 0.82,
            "min_improvement": 0.0,
            "improvement": pytest.approx(0.04),
            "higher_is_better": True,
            "passed": True,
            "source": "reported",
            "reported_value": None,
            "ci95": None,
        }
        assert body["evaluation"] is None
        assert body["artifact"] == {
            "filename": "model.pkl",
            "size_bytes": len(model),
            "sha256": sha256(model),
            "format": "pickle",
        }
        assert body["api_schema"] is None
        assert len(body["event_ids"]) == 2

        # The token.
        stored = await token(api, token_id)
        assert stored["status"] == "registered"
        assert stored["mlflow_run_id"] == body["mlflow_run_id"]
        assert stored["model_version"] == body["model_version"]
        assert stored["metric_value"] == 0.86
        assert stored["registered_at"] is not None

        # The outbox: both events, in order, with the ids the registration reports.
        events = await outbox(api, token_id)
        assert [e["event_type"] for e in events] == ["model_registered", "token_ready_for_deploy"]
        assert [e["event_id"] for e in events] == body["event_ids"]

        # MLflow: run, tags, metric, artifact bytes, version, tags and alias.
        client = mlflow_client(api)
        run = client.get_run(body["mlflow_run_id"])
        assert run.info.status == "FINISHED"
        assert run.data.tags["hokusai.token_id"] == token_id
        assert run.data.tags["hokusai.metric"] == "auroc"
        assert float(run.data.tags["hokusai.baseline"]) == 0.82
        assert float(run.data.tags["hokusai.metric_value"]) == 0.86
        assert run.data.tags["hokusai.registration_id"] == body["registration_id"]
        assert run.data.tags["hokusai.sha256"] == sha256(model)
        assert run.data.tags["framework"] == "sklearn"
        assert run.data.metrics["auroc"] == 0.86
        local = client.download_artifacts(body["mlflow_run_id"], "model/model.pkl")
        with open(local, "rb") as f:
            assert f.read() == model
        version = client.get_model_version(f"hokusai-{token_id}", body["model_version"])
        assert version.run_id == body["mlflow_run_id"]
        assert version.tags["hokusai_token_id"] == token_id
        assert version.tags["benchmark_metric"] == "auroc"
        assert float(version.tags["benchmark_value"]) == 0.82
        assert version.tags["hokusai_status"] == "registered"
        alias = client.get_model_version_by_alias(f"hokusai-{token_id}", "registered")
        assert str(alias.version) == body["model_version"]

        # The registration can be read back.
        again = await api.client.get(response.headers["Location"], headers=api.auth())
        assert again.status_code == 200
        assert again.json()["mlflow_run_id"] == body["mlflow_run_id"]
        listed = await api.client.get(f"/tokens/{token_id}/registrations", headers=api.auth())
        assert [r["registration_id"] for r in listed.json()["items"]] == [body["registration_id"]]

    async def test_registers_mlflow_zip_and_exposes_signature(self, api: Api) -> None:
        token_id = f"ZIP-{api.backend}".upper()
        await create_token(api.client, api.auth(), token_id=token_id)
        archive = mlflow_zip()
        response = await register(
            api.client, api.auth(), token_id=token_id, model=archive, filename="model.zip"
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["artifact"]["format"] == "mlflow_zip"
        assert body["api_schema"]["inputs"] == [
            {"type": "double", "name": "age", "required": True},
            {"type": "double", "name": "bmi", "required": True},
        ]
        assert body["api_schema"]["outputs"] == [{"type": "long", "required": True}]
        client = mlflow_client(api)
        names = {a.path for a in client.list_artifacts(body["mlflow_run_id"], "model")}
        assert names == {"model/MLmodel", "model/model.pkl", "model/requirements.txt"}

    async def test_registers_tar_gz_mlflow_model(self, api: Api) -> None:
        token_id = f"TAR-{api.backend}".upper()
        await create_token(api.client, api.auth(), token_id=token_id)
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
            for name, data in (
                ("MLmodel", MLMODEL_WITH_SIGNATURE.encode()),
                ("model.pkl", pickle_bytes()),
            ):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
        response = await register(
            api.client,
            api.auth(),
            token_id=token_id,
            model=buffer.getvalue(),
            filename="model.tar.gz",
        )
        assert response.status_code == 201, response.text
        assert response.json()["artifact"]["format"] == "mlflow_tar_gz"

    async def test_computes_metric_from_predictions(self, api: Api) -> None:
        token_id = f"PRED-{api.backend}".upper()
        await create_token(api.client, api.auth(), token_id=token_id)
        csv = b"y_true,y_score\n0,0.1\n0,0.4\n1,0.35\n1,0.8\n"
        response = await register(
            api.client,
            api.auth(),
            token_id=token_id,
            metric="auroc",
            baseline=0.5,
            metric_value=None,
            predictions=csv,
        )
        assert response.status_code == 201, response.text
        metric = response.json()["metric"]
        assert metric["value"] == pytest.approx(0.75, abs=1e-12)
        assert metric["source"] == "computed"

    async def test_lower_is_better_metric_with_min_improvement(self, api: Api) -> None:
        token_id = f"MSE-{api.backend}".upper()
        await create_token(api.client, api.auth(), token_id=token_id)
        response = await register(
            api.client,
            api.auth(),
            token_id=token_id,
            metric="mse",
            baseline=2.0,
            metric_value=1.5,
            fields={"min_improvement": "0.5"},
        )
        assert response.status_code == 201, response.text
        assert response.json()["metric"]["higher_is_better"] is False

    async def test_failed_token_can_be_registered_again(self, api: Api) -> None:
        token_id = f"AGAIN-{api.backend}".upper()
        await create_token(api.client, api.auth(), token_id=token_id)
        async with api.database.transaction() as session:
            await session.execute(
                sa.text("UPDATE tokens SET status='failed' WHERE token_id=:t"), {"t": token_id}
            )
        response = await register(api.client, api.auth(), token_id=token_id)
        assert response.status_code == 201, response.text

    async def test_deploying_after_registration_writes_model_deployed(self, api: Api) -> None:
        token_id = f"DEP-{api.backend}".upper()
        await create_token(api.client, api.auth(), token_id=token_id)
        assert (await register(api.client, api.auth(), token_id=token_id)).status_code == 201
        response = await api.client.patch(
            f"/tokens/{token_id}", json={"status": "deployed"}, headers=api.auth()
        )
        assert response.status_code == 200
        assert response.json()["status"] == "deployed"
        events = await outbox(api, token_id)
        assert events[-1]["event_type"] == "model_deployed"


class TestRejectedRegistration:
    """Each refusal: its code, the token unchanged, no MLflow version, the attempt recorded."""

    async def assert_rejected(
        self, api: Api, response: Any, token_id: str, status: int, code: str, *, event: bool = True
    ) -> dict[str, Any]:
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"
        body: dict[str, Any] = response.json()
        assert body["code"] == code
        assert body["status"] == status
        assert "Traceback" not in response.text
        stored = await token(api, token_id)
        assert stored["status"] == "draft"
        assert stored["mlflow_run_id"] is None
        assert model_versions(api, f"hokusai-{token_id}") == []
        events = await outbox(api, token_id)
        if event:
            assert [e["event_type"] for e in events] == ["model_validation_failed"]
        else:
            assert events == []
        return body

    async def draft(self, api: Api, name: str, **benchmark: Any) -> str:
        token_id = f"{name}-{api.backend}".upper()
        await create_token(api.client, api.auth(), token_id=token_id, **benchmark)
        return token_id

    async def test_unknown_token(self, api: Api) -> None:
        response = await register(api.client, api.auth(), token_id="NO-SUCH-TOKEN")
        assert response.status_code == 404
        assert response.json()["code"] == "token_not_found"

    async def test_malformed_token_id(self, api: Api) -> None:
        response = await register(api.client, api.auth(), token_id="-bad-")
        assert response.status_code == 422
        assert response.json()["code"] == "validation_error"

    async def test_token_not_registrable(self, api: Api) -> None:
        token_id = await self.draft(api, "ARCH")
        await api.client.patch(
            f"/tokens/{token_id}", json={"status": "archived"}, headers=api.auth()
        )
        response = await register(api.client, api.auth(), token_id=token_id)
        assert response.status_code == 409
        assert response.json()["code"] == "token_not_registrable"
        assert (await token(api, token_id))["status"] == "archived"

    async def test_registered_token_is_not_registrable_again(self, api: Api) -> None:
        token_id = await self.draft(api, "TWICE")
        first = await register(api.client, api.auth(), token_id=token_id)
        assert first.status_code == 201
        second = await register(api.client, api.auth(), token_id=token_id)
        assert second.status_code == 409
        assert second.json()["code"] == "token_not_registrable"
        assert len(model_versions(api, f"hokusai-{token_id}")) == 1

    async def test_unsupported_metric(self, api: Api) -> None:
        token_id = await self.draft(api, "UNSUP")
        response = await register(api.client, api.auth(), token_id=token_id, metric="bleu")
        await self.assert_rejected(api, response, token_id, 422, "unsupported_metric")

    @pytest.mark.parametrize("baseline", ["1.5", "nan", "inf", "-0.1", "abc", "1e999"])
    async def test_invalid_baseline(self, api: Api, baseline: str) -> None:
        token_id = await self.draft(api, "BASE")
        response = await register(api.client, api.auth(), token_id=token_id, baseline=baseline)
        await self.assert_rejected(api, response, token_id, 422, "invalid_baseline")

    @pytest.mark.parametrize("value", ["1.01", "NaN", "-inf", "x"])
    async def test_invalid_metric_value(self, api: Api, value: str) -> None:
        token_id = await self.draft(api, "VAL")
        response = await register(api.client, api.auth(), token_id=token_id, metric_value=value)
        await self.assert_rejected(api, response, token_id, 422, "invalid_metric_value")

    async def test_benchmark_mismatch_on_metric(self, api: Api) -> None:
        token_id = await self.draft(api, "BENCH", metric="auroc", baseline=0.82)
        response = await register(
            api.client, api.auth(), token_id=token_id, metric="accuracy", baseline=0.82
        )
        await self.assert_rejected(api, response, token_id, 422, "benchmark_mismatch")

    async def test_early_refusal_event_carries_the_metric_fields(self, api: Api) -> None:
        token_id = await self.draft(api, "EARLY", metric="auroc", baseline=0.82)
        response = await register(
            api.client,
            api.auth(),
            token_id=token_id,
            metric="Accuracy",
            baseline=0.7,
            metric_value=0.9,
        )
        await self.assert_rejected(api, response, token_id, 422, "benchmark_mismatch")
        async with api.database.transaction() as session:
            payload = (
                await session.execute(
                    sa.text("SELECT payload FROM events WHERE token_id = :t"), {"t": token_id}
                )
            ).scalar_one()
        if isinstance(payload, str):
            payload = json.loads(payload)
        assert payload["metric_name"] == "accuracy"
        assert payload["baseline_value"] == 0.7
        assert payload["metric_value"] == 0.9
        assert payload["code"] == "benchmark_mismatch"

    async def test_benchmark_mismatch_on_lowered_baseline(self, api: Api) -> None:
        token_id = await self.draft(api, "LOWER", metric="auroc", baseline=0.82)
        response = await register(api.client, api.auth(), token_id=token_id, baseline=0.5)
        await self.assert_rejected(api, response, token_id, 422, "benchmark_mismatch")

    async def test_metric_below_baseline(self, api: Api) -> None:
        token_id = await self.draft(api, "BELOW")
        response = await register(api.client, api.auth(), token_id=token_id, metric_value=0.81)
        body = await self.assert_rejected(api, response, token_id, 422, "metric_below_baseline")
        listed = await api.client.get(f"/tokens/{token_id}/registrations", headers=api.auth())
        attempt = listed.json()["items"][0]
        assert attempt["status"] == "rejected"
        assert attempt["error"]["code"] == "metric_below_baseline"
        assert attempt["registration_id"] == body["registration_id"]

    async def test_min_improvement_not_met(self, api: Api) -> None:
        token_id = await self.draft(api, "MINIMP")
        response = await register(
            api.client, api.auth(), token_id=token_id, fields={"min_improvement": "0.05"}
        )
        await self.assert_rejected(api, response, token_id, 422, "metric_below_baseline")

    async def test_invalid_model_file_content(self, api: Api) -> None:
        token_id = await self.draft(api, "BADPKL")
        response = await register(
            api.client, api.auth(), token_id=token_id, model=b"just some text", filename="model.pkl"
        )
        await self.assert_rejected(api, response, token_id, 422, "invalid_model_file")

    async def test_invalid_model_file_extension(self, api: Api) -> None:
        token_id = await self.draft(api, "BADEXT")
        response = await register(
            api.client, api.auth(), token_id=token_id, model=b"MZ\x90\x00", filename="model.exe"
        )
        await self.assert_rejected(api, response, token_id, 422, "invalid_model_file")

    async def test_zip_with_path_traversal(self, api: Api) -> None:
        token_id = await self.draft(api, "EVILZIP")
        archive = mlflow_zip(extra={"../../escape.txt": b"owned"})
        response = await register(
            api.client, api.auth(), token_id=token_id, model=archive, filename="model.zip"
        )
        await self.assert_rejected(api, response, token_id, 422, "invalid_model_file")

    async def test_invalid_predictions(self, api: Api) -> None:
        token_id = await self.draft(api, "BADCSV")
        response = await register(
            api.client,
            api.auth(),
            token_id=token_id,
            metric_value=None,
            predictions=b"y_true,y_score\n0,0.1\n1,oops\n",
        )
        await self.assert_rejected(api, response, token_id, 422, "invalid_predictions")

    async def test_checksum_mismatch(self, api: Api) -> None:
        token_id = await self.draft(api, "SHA")
        response = await register(
            api.client, api.auth(), token_id=token_id, fields={"sha256": "0" * 64}
        )
        await self.assert_rejected(api, response, token_id, 422, "checksum_mismatch")

    async def test_payload_too_large(self, api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
        token_id = await self.draft(api, "BIG")
        monkeypatch.setattr(api.settings, "max_upload_bytes", 4096)
        response = await register(
            api.client, api.auth(), token_id=token_id, model=pickle_bytes(size=10_000)
        )
        await self.assert_rejected(api, response, token_id, 413, "payload_too_large")

    async def test_both_metric_value_and_predictions(self, api: Api) -> None:
        token_id = await self.draft(api, "BOTH")
        response = await register(
            api.client, api.auth(), token_id=token_id, predictions=b"y_true,y_score\n0,0.1\n1,0.9\n"
        )
        await self.assert_rejected(api, response, token_id, 422, "validation_error")

    async def test_missing_model_file(self, api: Api) -> None:
        token_id = await self.draft(api, "NOFILE")
        response = await api.client.post(
            f"/models/{token_id}/register",
            data={"metric": "auroc", "baseline": "0.8", "metric_value": "0.9"},
            files={"other": ("x.txt", b"x")},
            headers=api.auth(),
        )
        await self.assert_rejected(api, response, token_id, 422, "invalid_model_file")

    async def test_not_multipart(self, api: Api) -> None:
        token_id = await self.draft(api, "JSON")
        response = await api.client.post(
            f"/models/{token_id}/register", json={"metric": "auroc"}, headers=api.auth()
        )
        await self.assert_rejected(
            api, response, token_id, 415, "unsupported_media_type", event=False
        )

    async def test_reserved_tag(self, api: Api) -> None:
        token_id = await self.draft(api, "TAGS")
        response = await register(
            api.client,
            api.auth(),
            token_id=token_id,
            fields=tags_field({"hokusai.token_id": "OTHER"}),
        )
        await self.assert_rejected(api, response, token_id, 422, "validation_error")


class TestConcurrency:
    async def test_two_racing_registrations_give_one_201_and_one_409(self, api: Api) -> None:
        token_id = f"RACE-{api.backend}".upper()
        await create_token(api.client, api.auth(), token_id=token_id)
        responses = await asyncio.gather(
            *(register(api.client, api.auth(), token_id=token_id) for _ in range(2))
        )
        codes = sorted(r.status_code for r in responses)
        assert codes == [201, 409]
        loser = next(r for r in responses if r.status_code == 409)
        assert loser.json()["code"] in ("registration_in_progress", "token_not_registrable")
        assert len(model_versions(api, f"hokusai-{token_id}")) == 1
        assert (await token(api, token_id))["status"] == "registered"


async def _record_model_name(api: Api, token_id: str, name: str) -> None:
    """Write `name` as the token's model name straight into the database (not into MLflow)."""
    async with api.database.transaction() as session:
        await session.execute(
            sa.text("UPDATE tokens SET model_name = :name WHERE token_id = :token_id"),
            {"name": name, "token_id": token_id},
        )


class TestClaimModelName:
    """The claim's own update refuses a model name another token records in the database (the
    MLflow check before it sees only what MLflow holds)."""

    async def test_a_name_another_token_records_is_refused_at_the_claim(self, api: Api) -> None:
        name = f"recorded-{api.backend}"
        holder = f"HOLDER-{api.backend}".upper()
        claimant = f"CLAIMANT-{api.backend}".upper()
        for token_id in (holder, claimant):
            await create_token(api.client, api.auth(), token_id=token_id)
        await _record_model_name(api, holder, name)

        response = await register(
            api.client, api.auth(), token_id=claimant, fields={"model_name": name}
        )

        assert response.status_code == 422, response.text
        assert response.json()["code"] == "model_name_taken"
        assert (await token(api, claimant))["status"] == "draft"
        assert model_versions(api, name) == []
        listed = await api.client.get(f"/tokens/{claimant}/registrations", headers=api.auth())
        [attempt] = listed.json()["items"]
        assert attempt["status"] == "rejected"
        assert attempt["error"]["code"] == "model_name_taken"

    async def test_the_token_recording_the_name_may_claim_it_again(self, api: Api) -> None:
        name = f"own-{api.backend}"
        token_id = f"OWNER-{api.backend}".upper()
        await create_token(api.client, api.auth(), token_id=token_id)
        await _record_model_name(api, token_id, name)

        response = await register(
            api.client, api.auth(), token_id=token_id, fields={"model_name": name}
        )

        assert response.status_code == 201, response.text
        assert (await token(api, token_id))["model_name"] == name


class TestIdempotency:
    async def test_same_key_and_request_replays_without_mlflow(self, api: Api) -> None:
        token_id = f"IDEM-{api.backend}".upper()
        await create_token(api.client, api.auth(), token_id=token_id)
        headers = api.auth() | {"Idempotency-Key": "retry-1"}
        first = await register(api.client, headers, token_id=token_id)
        second = await register(api.client, headers, token_id=token_id)
        assert first.status_code == second.status_code == 201
        assert second.json()["registration_id"] == first.json()["registration_id"]
        assert len(model_versions(api, f"hokusai-{token_id}")) == 1

    async def test_same_key_with_other_request_is_422(self, api: Api) -> None:
        token_id = f"IDEM2-{api.backend}".upper()
        await create_token(api.client, api.auth(), token_id=token_id)
        headers = api.auth() | {"Idempotency-Key": "retry-2"}
        assert (await register(api.client, headers, token_id=token_id)).status_code == 201
        other = await register(api.client, headers, token_id=token_id, metric_value=0.9)
        assert other.status_code == 422
        assert other.json()["code"] == "idempotency_key_reused"

    async def test_a_passing_conflict_is_not_replayed(self, api: Api) -> None:
        token_id = f"IDEM4-{api.backend}".upper()
        await create_token(api.client, api.auth(), token_id=token_id)
        update = "UPDATE tokens SET status = :s WHERE token_id = :t"
        async with api.database.transaction() as session:
            await session.execute(sa.text(update), {"s": "registering", "t": token_id})
        headers = api.auth() | {"Idempotency-Key": "retry-4"}
        busy = await register(api.client, headers, token_id=token_id)
        assert busy.status_code == 409
        assert busy.json()["code"] == "registration_in_progress"
        async with api.database.transaction() as session:
            await session.execute(sa.text(update), {"s": "draft", "t": token_id})
        retried = await register(api.client, headers, token_id=token_id)
        assert retried.status_code == 201, retried.text

    async def test_replays_a_rejection(self, api: Api) -> None:
        token_id = f"IDEM3-{api.backend}".upper()
        await create_token(api.client, api.auth(), token_id=token_id)
        headers = api.auth() | {"Idempotency-Key": "retry-3"}
        first = await register(api.client, headers, token_id=token_id, metric_value=0.5)
        second = await register(api.client, headers, token_id=token_id, metric_value=0.5)
        assert first.status_code == second.status_code == 422
        assert second.json()["code"] == "metric_below_baseline"
        assert second.json()["registration_id"] == first.json()["registration_id"]
