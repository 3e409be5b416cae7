"""Crash recovery: a registration killed at any point is settled by the recovery sweep.

The crash tests run `hokusai-registry serve` as real processes on one data dir (SQLite and a local
MLflow store), with a 2 s lease. A process started through tests/support/serve.py with
`--pause-at <stage>` has a hook that stalls a registration at that stage and writes a marker; the
test then SIGKILLs it there. Each restart's
recovery sweep must settle what the killed process left behind. To keep starts few, the crashes
are chained: the process that recovers one crash point is the one killed at the next, and a last
process without the hook (plain `hokusai-registry serve`) recovers the final one and is checked for
all of them.

The in-process tests drive `recover_stale` directly on both databases, and break registrations at
each stage with a hook on the app's registration services.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import sqlalchemy as sa
from mlflow import MlflowClient

from app.auth.service import create_api_key
from app.clients.mlflow import EXPERIMENT_NAME
from app.db import Database, UTCDateTime, utcnow
from app.manage import migrate
from app.registration.attempt import RegistrationServices
from app.registration.hooks import NO_HOOKS, Stage
from app.registration.recovery import recover_stale
from tests.factories import create_token, pickle_bytes, register
from tests.mlflow_server import free_port
from tests.support import serve
from tests.support.hooks import PauseAt, Recorder, installed, marker_path
from tests.support.mlflow import mlflow_client, model_versions
from tests.support.service import Api

BIN = Path(sys.executable).parent
LEASE_SECONDS = 2
STARTUP_SECONDS = 60.0
SETTLE_SECONDS = 30.0
STAGES = ("during_upload", "after_claim", "during_mlflow", "after_mlflow")
# What each crash point must settle to: only a run that finished with its version is kept.
EXPECTED = {
    "during_upload": "draft",
    "after_claim": "failed",
    "during_mlflow": "failed",
    "after_mlflow": "registered",
}


# Real processes -----------------------------------------------------------------------------


class Service:
    """One `hokusai-registry serve` process on the shared data dir."""

    def __init__(self, data_dir: Path, *, pause_at: str | None) -> None:
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith("HOKUSAI_") and not key.startswith("MLFLOW_")
        }
        env |= {
            "HOKUSAI_ENV": "test",
            "HOKUSAI_DATA_DIR": str(data_dir),
            "HOKUSAI_LOG_JSON": "true",
            "HOKUSAI_REGISTRATION_LEASE_SECONDS": str(LEASE_SECONDS),
            "HOKUSAI_MLFLOW_RETRY_SECONDS": "5",
        }
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir / f"service-{self.port}.log"
        args = ("serve", "--port", str(self.port), "--no-migrate")
        if pause_at is None:
            command = [str(BIN / "hokusai-registry"), *args]
        else:
            command = serve.command(pause_at, *args)
        with self.log_path.open("wb") as log_file:
            self.process = subprocess.Popen(
                command, cwd=serve.ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT
            )

    def wait_ready(self) -> Service:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            assert self.process.poll() is None, self.log_path.read_text()
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"not ready:\n{self.log_path.read_text()}"
            time.sleep(0.1)

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def _register_in_background(url: str, key: str, token_id: str) -> threading.Thread:
    """Start a registration that will never get its answer: the server dies under it."""

    def post() -> None:
        with suppress(httpx.TransportError):  # the kill
            httpx.post(
                f"{url}/models/{token_id}/register",
                headers={"Authorization": f"Bearer {key}"},
                data={"metric": "auroc", "baseline": "0.82", "metric_value": "0.86"},
                files={"model_file": ("model.pkl", pickle_bytes(size=64 * 1024))},
                timeout=120,
            )

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    return thread


def _start_partial_upload(url: str, key: str, token_id: str) -> socket.socket:
    """Send the headers and a first part of a multipart body, and leave the rest unsent."""
    boundary = uuid.uuid4().hex
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="metric"\r\n\r\nauroc\r\n'
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="baseline"\r\n\r\n0.82\r\n'
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="metric_value"\r\n\r\n0.86\r\n'
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="model_file"; filename="model.pkl"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    model = pickle_bytes(size=512 * 1024)
    tail = f"\r\n--{boundary}--\r\n".encode()
    port = int(url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    request = (
        f"POST /models/{token_id}/register HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {key}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(head) + len(model) + len(tail)}\r\n\r\n"
    ).encode()
    sock.sendall(request + head + model[: len(model) // 4])
    return sock


def _wait_for(condition: Any, what: str, *, timeout: float = SETTLE_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _upload_started(data_dir: Path) -> bool:
    uploads = data_dir / "uploads"
    # The file is opened when its part begins; its bytes sit in a write buffer for a while.
    return uploads.is_dir() and any(path.is_file() for path in uploads.rglob("model.pkl"))


@dataclass
class Campaign:
    """The chained crashes and what the surviving processes say afterwards."""

    data_dir: Path
    key: str
    url: str = ""
    tokens: dict[str, str] = field(default_factory=dict)
    tried: list[str] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=30
        )

    def token(self, stage: str) -> dict[str, Any]:
        with self.client() as client:
            result: dict[str, Any] = client.get(f"/tokens/{self.tokens[stage]}").json()
            return result

    def settled(self, stage: str) -> bool:
        status = self.token(stage)["status"]
        if stage == "during_upload":
            return status == "draft" and not any((self.data_dir / "uploads").iterdir())
        return bool(status == EXPECTED[stage])


def _bring_to(campaign: Campaign, service: Service, stage: str) -> socket.socket | None:
    """Start a registration on `service` and wait until it is stuck at `stage`."""
    token_id = f"CRASH-{stage.replace('_', '-')}".upper()
    campaign.tokens[stage] = token_id
    with campaign.client() as client:
        assert client.post("/tokens", json={"token_id": token_id}).status_code == 201
    campaign.tried.append(stage)
    if stage == "during_upload":
        sock = _start_partial_upload(service.url, campaign.key, token_id)
        _wait_for(lambda: _upload_started(campaign.data_dir), "the upload to start")
        return sock
    marker = marker_path(campaign.data_dir, stage)
    _register_in_background(service.url, campaign.key, token_id)
    _wait_for(marker.exists, f"the registration to pause at {stage}")
    return None


def _recovered(campaign: Campaign, stage: str) -> None:
    _wait_for(lambda: campaign.settled(stage), f"the recovery of {stage}")
    campaign.recovered.append(stage)


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Campaign]:
    data_dir = tmp_path_factory.mktemp("crash")
    url = f"sqlite:///{data_dir / 'hokusai.db'}"
    migrate(url)

    async def admin_key() -> str:
        database = Database(url)
        try:
            async with database.transaction() as session:
                return (await create_api_key(session, name="crash", scopes=["admin"]))[1]
        finally:
            await database.dispose()

    run = Campaign(data_dir=data_dir, key=asyncio.run(admin_key()))
    started = time.monotonic()
    # Each process recovers the previous crashes, then is killed with its own stages in flight.
    # The next process is spawned just before: its imports take seconds, so it reaches its
    # start-up sweep only after the kill (and if not, a sweep past the lease settles a stalled
    # registration the same way).
    pauses: list[str | None] = ["after_claim", "during_mlflow", "after_mlflow", None]
    crashes = [("during_upload", "after_claim"), ("during_mlflow",), ("after_mlflow",), ()]
    spawned = [Service(data_dir, pause_at=pauses[0])]
    try:
        for number, stages in enumerate(crashes):
            service = spawned[-1].wait_ready()
            run.url = service.url
            for stage in run.tried:
                if stage not in run.recovered:
                    _recovered(run, stage)
            if not stages:
                break
            spawned.append(Service(data_dir, pause_at=pauses[number + 1]))
            held = [_bring_to(run, service, stage) for stage in stages]
            service.kill()
            for sock in held:
                if sock is not None:
                    sock.close()
        print(
            f"\ncrash points tried: {len(run.tried)} ({', '.join(run.tried)}); "
            f"recovered: {len(run.recovered)}; {time.monotonic() - started:.1f} s"
        )
        yield run
    finally:
        for each in spawned:
            each.stop()


def _events(campaign: Campaign, token_id: str) -> list[dict[str, Any]]:
    with campaign.client() as client:
        response = client.get("/events", params={"token_id": token_id, "limit": 100})
        assert response.status_code == 200, response.text
        events: list[dict[str, Any]] = response.json()["events"]
        return events


def _registrations(campaign: Campaign, token_id: str) -> list[dict[str, Any]]:
    with campaign.client() as client:
        items: list[dict[str, Any]] = client.get(f"/tokens/{token_id}/registrations").json()[
            "items"
        ]
        return items


def _mlflow(campaign: Campaign) -> MlflowClient:
    uri = f"sqlite:///{campaign.data_dir / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


class TestCrashAtEveryStage:
    def test_every_crash_point_was_tried_and_recovered(self, campaign: Campaign) -> None:
        assert campaign.tried == list(STAGES)
        assert campaign.recovered == list(STAGES)

    @pytest.mark.parametrize("stage", ["after_claim", "during_mlflow"])
    def test_an_unfinished_registration_ends_failed_and_undone(
        self, campaign: Campaign, stage: str
    ) -> None:
        token_id = campaign.tokens[stage]
        token = campaign.token(stage)
        assert token["status"] == "failed"
        assert token["model_version"] is None
        [registration] = _registrations(campaign, token_id)
        assert registration["status"] == "failed"
        assert registration["error"]["code"] == "registration_interrupted"
        events = _events(campaign, token_id)
        assert [event["event_type"] for event in events] == ["registration_failed"]
        assert events[0]["payload"]["registration_id"] == registration["registration_id"]
        mlflow = _mlflow(campaign)
        assert mlflow.search_model_versions(f"name='hokusai-{token_id}'") == []
        experiment = mlflow.get_experiment_by_name(EXPERIMENT_NAME)
        assert experiment is not None
        runs = mlflow.search_runs(
            [experiment.experiment_id], f"tags.`hokusai.token_id` = '{token_id}'"
        )
        if stage == "after_claim":
            assert runs == []  # killed before MLflow was touched
        else:
            [run] = runs
            assert run.info.status == "FAILED"
            assert run.data.tags["hokusai.registration_id"] == registration["registration_id"]
            assert run.data.tags["hokusai.error"].startswith("registration_interrupted")

    def test_a_registration_done_in_mlflow_is_finished_from_it(self, campaign: Campaign) -> None:
        token_id = campaign.tokens["after_mlflow"]
        token = campaign.token("after_mlflow")
        [registration] = _registrations(campaign, token_id)
        assert registration["status"] == "registered"
        assert token["status"] == "registered"
        assert token["mlflow_run_id"] == registration["mlflow_run_id"]
        assert token["model_version"] == registration["model_version"] == "1"
        assert token["model_uri"] == f"models:/hokusai-{token_id}/1"
        assert token["metric"] == "auroc" and token["metric_value"] == 0.86
        events = _events(campaign, token_id)
        assert [event["event_type"] for event in events] == [
            "model_registered",
            "token_ready_for_deploy",
        ]
        assert sorted(registration["event_ids"]) == sorted(e["event_id"] for e in events)
        payload = events[0]["payload"]
        assert payload["registration_id"] == registration["registration_id"]
        assert payload["model_version"] == "1"
        assert payload["sha256"] == registration["artifact"]["sha256"]
        mlflow = _mlflow(campaign)
        run = mlflow.get_run(token["mlflow_run_id"])
        assert run.info.status == "FINISHED"
        version = mlflow.get_model_version(f"hokusai-{token_id}", "1")
        assert version.tags["hokusai_registration_id"] == registration["registration_id"]
        assert version.tags["hokusai_status"] == "registered"

    def test_a_crash_during_the_upload_leaves_the_token_and_disk_clean(
        self, campaign: Campaign
    ) -> None:
        token_id = campaign.tokens["during_upload"]
        assert campaign.token("during_upload")["status"] == "draft"
        assert not any(r["status"] == "in_progress" for r in _registrations(campaign, token_id))
        assert _events(campaign, token_id) == []
        assert list((campaign.data_dir / "uploads").iterdir()) == []

    def test_no_version_claims_a_registration_the_database_failed(self, campaign: Campaign) -> None:
        failed = {
            registration["registration_id"]
            for stage in STAGES
            for registration in _registrations(campaign, campaign.tokens[stage])
            if registration["status"] != "registered"
        }
        for model in _mlflow(campaign).search_registered_models():
            for version in _mlflow(campaign).search_model_versions(f"name='{model.name}'"):
                if version.tags.get("hokusai_registration_id") in failed:
                    assert version.tags.get("hokusai_status") == "failed"

    def test_a_token_recovered_as_failed_can_be_registered_again(self, campaign: Campaign) -> None:
        token_id = campaign.tokens["after_claim"]
        with campaign.client() as client:
            response = client.post(
                f"/models/{token_id}/register",
                data={"metric": "auroc", "baseline": "0.82", "metric_value": "0.9"},
                files={"model_file": ("model.pkl", pickle_bytes())},
            )
        assert response.status_code == 201, response.text
        assert campaign.token("after_claim")["status"] == "registered"


# In process -------------------------------------------------------------------------------------


def _services(api: Api) -> RegistrationServices:
    services: RegistrationServices = api.app.state.registration
    return services


async def _make_stale(
    api: Api, token_id: str, *, registration_id: str | None, age_seconds: float = 3600
) -> None:
    """Put the token back into a `registering` claim taken long ago by `registration_id`."""
    claimed_at = utcnow() - dt.timedelta(seconds=age_seconds)
    statement = sa.text(
        "UPDATE tokens SET status = 'registering', current_registration_id = :r, "
        "claimed_at = :c, mlflow_run_id = NULL, model_name = NULL, model_version = NULL, "
        "model_uri = NULL, registered_at = NULL WHERE token_id = :t"
    ).bindparams(sa.bindparam("c", type_=UTCDateTime()))
    async with api.database.transaction() as session:
        await session.execute(statement, {"r": registration_id, "c": claimed_at, "t": token_id})


async def _event_types(api: Api, token_id: str) -> list[str]:
    async with api.database.transaction() as session:
        rows = await session.execute(
            sa.text("SELECT event_type FROM events WHERE token_id = :t ORDER BY sequence"),
            {"t": token_id},
        )
        return list(rows.scalars().all())


class TestRecoverStale:
    async def test_finishes_a_registration_whose_commit_was_lost(self, api: Api) -> None:
        token_id = f"LOST-{api.backend}".upper()
        await create_token(api.client, api.auth(), token_id=token_id)
        done = await register(api.client, api.auth(), token_id=token_id)
        assert done.status_code == 201, done.text
        body = done.json()
        # As if the process died between MLflow and the commit.
        await _make_stale(api, token_id, registration_id=body["registration_id"])
        async with api.database.transaction() as session:
            await session.execute(
                sa.text("DELETE FROM events WHERE token_id = :t"), {"t": token_id}
            )
            await session.execute(
                sa.text(
                    "UPDATE registrations SET status = 'in_progress', event_ids = :e, "
                    "registered_at = NULL, model_version = NULL, model_uri = NULL, "
                    "mlflow_run_id = NULL WHERE id = :r"
                ),
                {"e": "[]", "r": body["registration_id"]},
            )

        report = await recover_stale(_services(api))

        assert report.registered == [token_id] and report.failed == []
        token = (await api.client.get(f"/tokens/{token_id}", headers=api.auth())).json()
        assert token["status"] == "registered"
        assert token["mlflow_run_id"] == body["mlflow_run_id"]
        assert token["model_version"] == body["model_version"]
        assert token["model_uri"] == body["model_uri"]
        row = (
            await api.client.get(f"/registrations/{body['registration_id']}", headers=api.auth())
        ).json()
        assert row["status"] == "registered"
        assert row["model_version"] == body["model_version"]
        assert len(row["event_ids"]) == 2
        assert await _event_types(api, token_id) == ["model_registered", "token_ready_for_deploy"]

    async def test_fails_an_unfinished_run_and_deletes_its_version(self, api: Api) -> None:
        token_id = f"HALF-{api.backend}".upper()
        await create_token(api.client, api.auth(), token_id=token_id)
        done = await register(api.client, api.auth(), token_id=token_id)
        body = done.json()
        mlflow = MlflowClient(
            tracking_uri=api.settings.resolved_tracking_uri,
            registry_uri=api.settings.resolved_tracking_uri,
        )
        # As if the process died after the version but before the run was marked FINISHED.
        mlflow.set_terminated(body["mlflow_run_id"], status="RUNNING")
        await _make_stale(api, token_id, registration_id=body["registration_id"])
        async with api.database.transaction() as session:
            await session.execute(
                sa.text("DELETE FROM events WHERE token_id = :t"), {"t": token_id}
            )
            await session.execute(
                sa.text("UPDATE registrations SET status = 'in_progress' WHERE id = :r"),
                {"r": body["registration_id"]},
            )

        report = await recover_stale(_services(api))

        assert report.failed == [token_id] and report.registered == []
        token = (await api.client.get(f"/tokens/{token_id}", headers=api.auth())).json()
        assert token["status"] == "failed"
        row = (
            await api.client.get(f"/registrations/{body['registration_id']}", headers=api.auth())
        ).json()
        assert row["status"] == "failed"
        assert row["error"]["code"] == "registration_interrupted"
        assert await _event_types(api, token_id) == ["registration_failed"]
        assert mlflow.get_run(body["mlflow_run_id"]).info.status == "FAILED"
        assert mlflow.search_model_versions(f"name='hokusai-{token_id}'") == []

    async def test_two_sweeps_at_once_settle_a_token_once(self, api: Api) -> None:
        token_id = f"RACE-{api.backend}".upper()
        await create_token(api.client, api.auth(), token_id=token_id)
        await _make_stale(api, token_id, registration_id=None)

        reports = await asyncio.gather(*(recover_stale(_services(api)) for _ in range(3)))

        assert sum(len(report.failed) for report in reports) == 1
        token = (await api.client.get(f"/tokens/{token_id}", headers=api.auth())).json()
        assert token["status"] == "failed"
        assert await _event_types(api, token_id) == ["registration_failed"]

    async def test_leaves_a_claim_inside_its_lease_alone(self, api: Api) -> None:
        token_id = f"FRESH-{api.backend}".upper()
        await create_token(api.client, api.auth(), token_id=token_id)
        await _make_stale(api, token_id, registration_id=None, age_seconds=1)

        report = await recover_stale(_services(api))
        assert report.settled == 0
        token = (await api.client.get(f"/tokens/{token_id}", headers=api.auth())).json()
        assert token["status"] == "registering"

        later = utcnow() + dt.timedelta(seconds=api.settings.registration_lease_seconds + 5)
        assert (await recover_stale(_services(api), now=later)).failed == [token_id]

    async def test_ends_a_claim_whose_registration_row_is_missing(self, api: Api) -> None:
        token_id = f"ORPHAN-{api.backend}".upper()
        await create_token(api.client, api.auth(), token_id=token_id)
        registration_id = str(uuid.uuid4())
        await _make_stale(api, token_id, registration_id=registration_id)

        report = await recover_stale(_services(api))

        assert report.failed == [token_id]
        token = (await api.client.get(f"/tokens/{token_id}", headers=api.auth())).json()
        assert token["status"] == "failed"
        async with api.database.transaction() as session:
            payload = (
                await session.execute(
                    sa.text("SELECT payload FROM events WHERE token_id = :t"), {"t": token_id}
                )
            ).scalar_one()
        payload = json.loads(payload) if isinstance(payload, str) else payload
        assert payload["registration_id"] == registration_id
        assert payload["code"] == "registration_interrupted"

    async def test_removes_abandoned_uploads_but_not_running_ones(self, api: Api) -> None:
        uploads = api.settings.upload_dir
        long_ago = time.time() - api.settings.registration_lease_seconds - 60
        abandoned, running = uploads / str(uuid.uuid4()), uploads / str(uuid.uuid4())
        for folder in (abandoned, running):
            (folder / "model").mkdir(parents=True)
            (folder / "model" / "model.pkl").write_bytes(b"partial")
            for path in (folder / "model" / "model.pkl", folder / "model", folder):
                os.utime(path, (long_ago, long_ago))
        services = _services(api)
        services.running.add(running.name)
        try:
            report = await recover_stale(services)
        finally:
            services.running.discard(running.name)
        assert report.uploads_removed == 1
        assert not abandoned.exists()
        assert running.exists()
        shutil.rmtree(running)  # the upload folder is shared with later tests


class TestRegistrationHooks:
    async def test_the_service_runs_with_hooks_that_do_nothing(self, api: Api) -> None:
        assert _services(api).hooks is NO_HOOKS
        token_id = f"QUIET-{api.backend}".upper()
        await create_token(api.client, api.auth(), token_id=token_id)
        response = await register(api.client, api.auth(), token_id=token_id)
        assert response.status_code == 201, response.text

    async def test_a_registration_passes_every_stage_in_order(self, api: Api) -> None:
        hooks = Recorder()
        token_id = f"STAGES-{api.backend}".upper()
        await create_token(api.client, api.auth(), token_id=token_id)
        with installed(api, hooks):
            response = await register(api.client, api.auth(), token_id=token_id)
        assert response.status_code == 201, response.text
        registration_id = response.json()["registration_id"]
        assert hooks.seen == [(stage, registration_id) for stage in Stage]
        # Only the MLflow step runs in a worker thread; a pause there must not block the loop.
        assert hooks.threads == {
            Stage.AFTER_CLAIM: False,
            Stage.DURING_MLFLOW: True,
            Stage.AFTER_MLFLOW: False,
        }

    async def test_a_refused_registration_reaches_no_stage(self, api: Api) -> None:
        hooks = Recorder()
        token_id = f"REFUSED-{api.backend}".upper()
        await create_token(api.client, api.auth(), token_id=token_id)
        with installed(api, hooks):
            response = await register(api.client, api.auth(), token_id=token_id, metric_value="0.5")
        assert response.status_code == 422, response.text
        assert hooks.seen == []

    @pytest.mark.parametrize("stage", list(Stage))
    async def test_a_registration_broken_at_a_stage_fails_and_is_undone(
        self, api: Api, stage: Stage
    ) -> None:
        token_id = f"BROKEN-{stage.value.replace('_', '-')}-{api.backend}".upper()
        await create_token(api.client, api.auth(), token_id=token_id)
        with installed(api, Recorder(break_at=stage)):
            response = await register(api.client, api.auth(), token_id=token_id)
        assert response.status_code == 500, response.text
        assert response.json()["code"] == "internal_error"
        token = (await api.client.get(f"/tokens/{token_id}", headers=api.auth())).json()
        assert token["status"] == "failed"
        assert token["model_version"] is None
        assert await _event_types(api, token_id) == ["registration_failed"]
        assert model_versions(api, f"hokusai-{token_id}") == []
        mlflow = mlflow_client(api)
        experiment = mlflow.get_experiment_by_name(EXPERIMENT_NAME)
        assert experiment is not None
        runs = mlflow.search_runs(
            [experiment.experiment_id], f"tags.`hokusai.token_id` = '{token_id}'"
        )
        if stage is Stage.AFTER_CLAIM:
            assert runs == []  # broken before MLflow was touched
        else:
            [run] = runs
            assert run.info.status == "FAILED"

    async def test_a_paused_registration_waits_for_its_marker(self, api: Api) -> None:
        hooks = PauseAt(Stage.AFTER_MLFLOW, api.settings.data_dir)
        token_id = f"PAUSED-{api.backend}".upper()
        await create_token(api.client, api.auth(), token_id=token_id)
        outcome: list[httpx.Response] = []

        async def post() -> None:
            outcome.append(await register(api.client, api.auth(), token_id=token_id))

        with installed(api, hooks):
            async with anyio.create_task_group() as group:
                group.start_soon(post)
                with anyio.fail_after(SETTLE_SECONDS):
                    while not hooks.marker.exists():
                        await anyio.sleep(0.05)
                token = (await api.client.get(f"/tokens/{token_id}", headers=api.auth())).json()
                assert token["status"] == "registering"
                assert outcome == []
                hooks.marker.unlink()
        [response] = outcome
        assert response.status_code == 201, response.text
        token = (await api.client.get(f"/tokens/{token_id}", headers=api.auth())).json()
        assert token["status"] == "registered"
