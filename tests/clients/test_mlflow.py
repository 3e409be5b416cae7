"""The MLflow client against a real local store, a real `mlflow server`, and dead endpoints."""

from __future__ import annotations

import errno
import http.server
import json
import logging
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import sqlalchemy.exc
from mlflow import MlflowClient
from mlflow.entities.model_registry import RegisteredModelTag
from mlflow.exceptions import MlflowException, RestException
from mlflow.protos.databricks_pb2 import (
    INTERNAL_ERROR,
    INVALID_PARAMETER_VALUE,
    REQUEST_LIMIT_EXCEEDED,
    RESOURCE_DOES_NOT_EXIST,
    TEMPORARILY_UNAVAILABLE,
)
from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore
from mlflow.telemetry import get_telemetry_client
from mlflow.utils.file_utils import local_file_uri_to_path

from app.clients.mlflow import (
    EXPERIMENT_NAME,
    REGISTERED_ALIAS,
    MlflowError,
    MlflowRegistry,
    ModelVersionRef,
    client_environment,
    configured_mlflow,
    is_transient,
)
from app.errors import MlflowUnavailable
from tests.mlflow_server import MlflowServer, free_port

# --- fixtures and factories ---------------------------------------------------------------------


@dataclass(frozen=True)
class Store:
    tracking_uri: str
    artifact_dir: Path


@pytest.fixture(scope="module", autouse=True)
def mlflow_set_up() -> Iterator[None]:
    """MLflow set up as the application's lifespan does it, for the registries made here."""
    with configured_mlflow(request_timeout=30):
        yield


@pytest.fixture(scope="module", autouse=True)
def early_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MlflowServer | None]:
    """Boot `mlflow server` (~20-30 s) in the background while the local-store tests run."""
    selected = any(
        isinstance(item, pytest.Function)
        and item.get_closest_marker("e2e") is not None
        and item.module is request.module
        for item in request.session.items
    )
    if not selected:
        yield None
        return
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield server
    finally:
        server.stop()


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass(frozen=True)
class Template:
    path: Path
    records: list[logging.LogRecord]  # everything logged while MLflow created the store


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    """An empty, migrated MLflow database to copy, so each store skips the ~1-3 s migration."""
    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    root, collect = logging.getLogger(), _Collect()
    previous = root.level
    root.addHandler(collect)
    root.setLevel(logging.DEBUG)
    try:
        MlflowRegistry(tracking_uri=f"sqlite:///{path}").ping()
    finally:
        root.removeHandler(collect)
        root.setLevel(previous)
    return Template(path, collect.records)


@pytest.fixture(scope="module")
def template_db(template: Template) -> Path:
    return template.path


def make_store(template_db: Path, directory: Path) -> Store:
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(template_db, directory / "mlflow.db")
    return Store(f"sqlite:///{directory / 'mlflow.db'}", directory / "artifacts")


def make_registry(store: Store, *, retry_seconds: float = 5.0) -> MlflowRegistry:
    return MlflowRegistry(
        tracking_uri=store.tracking_uri,
        artifact_location=str(store.artifact_dir),
        retry_seconds=retry_seconds,
    )


@pytest.fixture(scope="module")
def store(template_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Store:
    return make_store(template_db, tmp_path_factory.mktemp("mlflow-store"))


@pytest.fixture(scope="module")
def registry(store: Store) -> MlflowRegistry:
    registry = make_registry(store)
    registry.ensure_experiment()
    return registry


@pytest.fixture(scope="module")
def reader(store: Store) -> MlflowClient:
    """An independent MlflowClient to read back what the registry wrote."""
    return MlflowClient(tracking_uri=store.tracking_uri, registry_uri=store.tracking_uri)


def unique_model_name() -> str:
    return f"hokusai-T{uuid.uuid4().hex[:8].upper()}"


def dead_uri() -> str:
    return f"http://127.0.0.1:{free_port()}"


def run_tags(*, token_id: str = "XRAY", registration_id: str | None = None) -> dict[str, str]:
    return {
        "hokusai.token_id": token_id,
        "hokusai.metric": "accuracy",
        "hokusai.baseline": "0.8",
        "hokusai.metric_value": "0.91",
        "hokusai.registration_id": registration_id or str(uuid.uuid4()),
        "hokusai.sha256": "ab" * 32,
        "team": "vision",
    }


def version_tags(*, token_id: str = "XRAY") -> dict[str, str]:
    return {
        "hokusai_token_id": token_id,
        "benchmark_metric": "accuracy",
        "benchmark_value": "0.8",
        "hokusai_status": "registered",
    }


def register(
    registry: MlflowRegistry,
    model_file: Path,
    *,
    model_name: str,
    token_id: str = "XRAY",
    value: float = 0.91,
) -> tuple[str, ModelVersionRef]:
    """The whole happy path, as the registration service drives it."""
    run_id = registry.start_run(run_name=f"register-{token_id}", tags=run_tags(token_id=token_id))
    registry.log_metric(run_id, "accuracy", value)
    registry.log_model_file(run_id, model_file)
    ref = registry.register_version(
        run_id=run_id, model_name=model_name, tags=version_tags(token_id=token_id)
    )
    registry.finish_run(run_id)
    return run_id, ref


def artifact_dir(reader: MlflowClient, run_id: str) -> Path:
    """Where a run's artifacts lie in a local store."""
    return Path(local_file_uri_to_path(reader.get_run(run_id).info.artifact_uri))


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.pkl"
    path.write_bytes(b"\x80\x04pickled-model-bytes")
    return path


def assert_registered(
    reader: MlflowClient, run_id: str, ref: ModelVersionRef, *, model_file: Path, tmp_path: Path
) -> None:
    run = reader.get_run(run_id)
    experiment = reader.get_experiment(run.info.experiment_id)
    assert experiment.name == EXPERIMENT_NAME
    assert run.info.status == "FINISHED"
    for key, value in run_tags().items():
        if key != "hokusai.registration_id":
            assert run.data.tags[key] == value
    assert run.data.metrics == {"accuracy": pytest.approx(0.91)}

    downloaded = Path(reader.download_artifacts(run_id, "model", str(tmp_path)))
    assert (downloaded / model_file.name).read_bytes() == model_file.read_bytes()

    version = reader.get_model_version(ref.model_name, ref.version)
    assert version.status == "READY"
    assert version.run_id == run_id
    assert version.source == f"runs:/{run_id}/model"
    assert version.tags == version_tags()
    alias = reader.get_model_version_by_alias(ref.model_name, REGISTERED_ALIAS)
    assert str(alias.version) == ref.version
    assert ref.model_uri == f"models:/{ref.model_name}/{ref.version}"


class StubMlflowServer:
    """A real HTTP server that answers every MLflow API request with one fixed response."""

    def __init__(self, status: int, body: dict[str, str]) -> None:
        self.requests = 0
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                stub.requests += 1
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _answer

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> StubMlflowServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


# --- behaviour ----------------------------------------------------------------------------------


class TestFirstUse:
    def test_migrates_a_new_store_without_info_chatter(self, template: Template) -> None:
        tables = sqlite3.connect(template.path).execute("SELECT name FROM sqlite_master").fetchall()
        assert ("registered_models",) in tables
        noisy = [
            r.getMessage()
            for r in template.records
            if r.name.split(".")[0] in {"mlflow", "alembic"} and r.levelno < logging.WARNING
        ]
        assert noisy == []
        # Not silent by accident: MLflow's records do reach the application's handlers.
        assert logging.getLogger("mlflow").propagate

    def test_creates_the_experiment_at_the_artifact_location(
        self, template_db: Path, tmp_path: Path
    ) -> None:
        store = make_store(template_db, tmp_path)
        experiment_id = make_registry(store).ensure_experiment()

        experiment = MlflowClient(tracking_uri=store.tracking_uri).get_experiment(experiment_id)
        assert experiment.name == EXPERIMENT_NAME
        assert experiment.artifact_location == store.artifact_dir.resolve().as_uri()

    def test_restores_a_deleted_experiment(self, template_db: Path, tmp_path: Path) -> None:
        store = make_store(template_db, tmp_path)
        client = MlflowClient(tracking_uri=store.tracking_uri)
        old_id = client.create_experiment(EXPERIMENT_NAME)
        client.delete_experiment(old_id)

        assert make_registry(store).ensure_experiment() == old_id
        assert client.get_experiment(old_id).lifecycle_stage == "active"


class TestHappyPath:
    def test_records_run_metric_artifact_version_and_alias(
        self, registry: MlflowRegistry, reader: MlflowClient, model_file: Path, tmp_path: Path
    ) -> None:
        model_name = unique_model_name()
        run_id, ref = register(registry, model_file, model_name=model_name)

        assert ref == ModelVersionRef(model_name, "1", f"models:/{model_name}/1")
        assert_registered(reader, run_id, ref, model_file=model_file, tmp_path=tmp_path)

    def test_logs_several_metrics_in_one_batch_at_step_zero(
        self, registry: MlflowRegistry, reader: MlflowClient
    ) -> None:
        run_id = registry.start_run(run_name="metrics", tags=run_tags())

        registry.log_metrics(run_id, {"accuracy": 0.91, "accuracy_ci95_low": 0.88})

        assert reader.get_run(run_id).data.metrics == {
            "accuracy": pytest.approx(0.91),
            "accuracy_ci95_low": pytest.approx(0.88),
        }
        (point,) = reader.get_metric_history(run_id, "accuracy_ci95_low")
        assert point.step == 0 and point.value == pytest.approx(0.88)

    def test_logs_a_directory_contents_under_model(
        self, registry: MlflowRegistry, reader: MlflowClient, tmp_path: Path
    ) -> None:
        unpacked = tmp_path / "unpacked"
        (unpacked / "data").mkdir(parents=True)
        (unpacked / "MLmodel").write_text("flavors: {}\n")
        (unpacked / "data" / "weights.bin").write_bytes(b"\x00\x01\x02")
        run_id = registry.start_run(run_name="dir", tags=run_tags())

        registry.log_model_dir(run_id, unpacked)

        listed = {a.path for a in reader.list_artifacts(run_id, "model")}
        assert listed == {"model/MLmodel", "model/data"}
        nested = Path(reader.download_artifacts(run_id, "model/data/weights.bin", str(tmp_path)))
        assert nested.read_bytes() == b"\x00\x01\x02"

    def test_a_local_store_gets_the_upload_by_hard_link_not_a_copy(
        self, registry: MlflowRegistry, reader: MlflowClient, model_file: Path, tmp_path: Path
    ) -> None:
        run_id = registry.start_run(run_name="link", tags=run_tags())

        registry.log_model_file(run_id, model_file)

        stored = artifact_dir(reader, run_id) / "model" / "model.pkl"
        assert stored.stat().st_ino == model_file.stat().st_ino
        model_file.unlink()  # the service removes its upload folder afterwards
        assert stored.read_bytes() == b"\x80\x04pickled-model-bytes"

    def test_falls_back_to_mlflow_when_the_store_is_on_another_file_system(
        self,
        registry: MlflowRegistry,
        reader: MlflowClient,
        model_file: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        def cross_device(src: object, dst: object) -> None:
            raise OSError(errno.EXDEV, "Invalid cross-device link")

        monkeypatch.setattr(os, "link", cross_device)
        run_id = registry.start_run(run_name="copy", tags=run_tags())

        registry.log_model_file(run_id, model_file)

        stored = artifact_dir(reader, run_id) / "model" / "model.pkl"
        assert stored.stat().st_ino != model_file.stat().st_ino
        assert stored.read_bytes() == model_file.read_bytes()

    def test_next_registration_gets_the_next_version_and_the_alias(
        self, registry: MlflowRegistry, reader: MlflowClient, model_file: Path
    ) -> None:
        model_name = unique_model_name()
        _, first = register(registry, model_file, model_name=model_name)
        second_run, second = register(registry, model_file, model_name=model_name)

        assert (first.version, second.version) == ("1", "2")
        assert str(reader.get_model_version_by_alias(model_name, REGISTERED_ALIAS).version) == "2"
        assert registry.find_versions_for_run(model_name, second_run) == [second]


class TestExistingRegisteredModel:
    """A registered model the registration did not create goes through the client's checks."""

    def test_a_prompts_name_gets_no_alias(
        self, store: Store, registry: MlflowRegistry, reader: MlflowClient, model_file: Path
    ) -> None:
        name = unique_model_name()
        # MlflowClient refuses prompt tags on a registered model; the store writes what a
        # prompt registration leaves behind.
        SqlAlchemyStore(store.tracking_uri).create_registered_model(
            name, tags=[RegisteredModelTag("mlflow.prompt.is_prompt", "true")]
        )
        run_id = registry.start_run(run_name="prompt", tags=run_tags())
        registry.log_model_file(run_id, model_file)

        with pytest.raises(MlflowError, match="set_registered_model_alias"):
            registry.register_version(run_id=run_id, model_name=name, tags=version_tags())

        with pytest.raises(MlflowException):
            reader.get_model_version_by_alias(name, REGISTERED_ALIAS)


class TestConcurrency:
    def test_concurrent_ensure_experiment_creates_one_experiment(
        self, template_db: Path, tmp_path: Path
    ) -> None:
        store = make_store(template_db, tmp_path)
        registries = [make_registry(store), make_registry(store)]
        for registry in registries:
            registry.ping()
        barrier = threading.Barrier(8)

        def ensure(i: int) -> str:
            barrier.wait()
            return registries[i % 2].ensure_experiment()

        with ThreadPoolExecutor(8) as pool:
            ids = set(pool.map(ensure, range(8)))

        experiments = MlflowClient(tracking_uri=store.tracking_uri).search_experiments(
            filter_string=f"name = '{EXPERIMENT_NAME}'"
        )
        assert len(experiments) == 1
        assert ids == {experiments[0].experiment_id}

    def test_concurrent_registrations_get_distinct_versions(
        self, registry: MlflowRegistry, reader: MlflowClient, model_file: Path
    ) -> None:
        model_name = unique_model_name()
        count = 6
        barrier = threading.Barrier(count)

        def one(i: int) -> tuple[str, ModelVersionRef]:
            barrier.wait()
            return register(registry, model_file, model_name=model_name, token_id=f"T{i}")

        with ThreadPoolExecutor(count) as pool:
            results = list(pool.map(one, range(count)))

        assert sorted(int(ref.version) for _, ref in results) == list(range(1, count + 1))
        for run_id, ref in results:
            assert reader.get_model_version(model_name, ref.version).run_id == run_id
            assert reader.get_run(run_id).info.status == "FINISHED"
        alias = reader.get_model_version_by_alias(model_name, REGISTERED_ALIAS)
        assert str(alias.version) in {ref.version for _, ref in results}


class TestFailRegistration:
    def test_deletes_the_version_and_marks_the_run_failed(
        self, registry: MlflowRegistry, reader: MlflowClient, model_file: Path
    ) -> None:
        model_name = unique_model_name()
        run_id, ref = register(registry, model_file, model_name=model_name)

        registry.fail_registration(
            run_id=run_id, model_name=model_name, version=ref.version, reason="x" * 5000
        )

        run = reader.get_run(run_id)
        assert run.info.status == "FAILED"
        assert run.data.tags["hokusai.error"].startswith("xxx")
        assert len(run.data.tags["hokusai.error"]) <= 1000
        with pytest.raises(MlflowException) as excinfo:
            reader.get_model_version(model_name, ref.version)
        assert excinfo.value.error_code == "RESOURCE_DOES_NOT_EXIST"
        with pytest.raises(MlflowException):
            reader.get_model_version_by_alias(model_name, REGISTERED_ALIAS)

    def test_finds_a_version_the_caller_never_learned_of(
        self, registry: MlflowRegistry, model_file: Path
    ) -> None:
        model_name = unique_model_name()
        run_id, _ = register(registry, model_file, model_name=model_name)

        registry.fail_registration(run_id=run_id, model_name=model_name, version=None, reason="x")

        assert registry.find_versions_for_run(model_name, run_id) == []

    def test_marks_an_undeletable_version_failed_and_unaliased(
        self, registry: MlflowRegistry, reader: MlflowClient, model_file: Path
    ) -> None:
        model_name = unique_model_name()
        _, ref = register(registry, model_file, model_name=model_name)

        def attempt_refusing_delete(op: str, fn: Callable[[MlflowClient], object]) -> bool:
            if op == "delete_model_version":
                return False
            fn(reader)
            return True

        registry._discard_version(model_name, ref.version, attempt_refusing_delete)

        version = reader.get_model_version(model_name, ref.version)
        assert version.tags["hokusai_status"] == "failed"
        assert version.aliases == []

    def test_never_raises_and_stays_bounded_when_mlflow_is_down(self) -> None:
        registry = MlflowRegistry(tracking_uri=dead_uri(), retry_seconds=1.0)
        started = time.monotonic()

        # Every step fails: tag and terminate the run, look for versions by run, delete one.
        registry.fail_registration(
            run_id="a" * 32, model_name="hokusai-DOWN", version=None, reason="boom"
        )
        registry.fail_registration(
            run_id=None, model_name="hokusai-DOWN", version="3", reason="boom"
        )

        assert time.monotonic() - started < 6.0


class TestUnavailable:
    def test_ping_against_a_closed_port_fails_fast(self) -> None:
        registry = MlflowRegistry(tracking_uri=dead_uri(), retry_seconds=2.0)
        started = time.monotonic()

        with pytest.raises(MlflowUnavailable):
            registry.ping()

        assert time.monotonic() - started < 2.0

    def test_calls_retry_within_the_budget_then_give_up(self) -> None:
        registry = MlflowRegistry(tracking_uri=dead_uri(), retry_seconds=2.0)
        started = time.monotonic()

        with pytest.raises(MlflowUnavailable) as excinfo:
            registry.ensure_experiment()

        elapsed = time.monotonic() - started
        assert 1.5 < elapsed < 5.0
        assert excinfo.value.status == 503
        assert excinfo.value.headers["Retry-After"]
        assert "attempt" in excinfo.value.detail

    def test_a_server_that_never_answers_times_out(self) -> None:
        with socket.socket() as listener:
            # Connections complete in the kernel backlog; nothing ever reads or answers them.
            listener.bind(("127.0.0.1", 0))
            listener.listen(16)
            uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
            registry = MlflowRegistry(tracking_uri=uri, retry_seconds=1.0)
            started = time.monotonic()

            with configured_mlflow(request_timeout=1), pytest.raises(MlflowUnavailable):
                registry.start_run(run_name="hang", tags={})

            assert time.monotonic() - started < 5.0

    def test_http_503_is_retried_then_unavailable(self) -> None:
        body = {"error_code": "TEMPORARILY_UNAVAILABLE", "message": "overloaded"}
        with StubMlflowServer(503, body) as stub:
            registry = MlflowRegistry(tracking_uri=stub.uri, retry_seconds=1.0)
            with pytest.raises(MlflowUnavailable):
                registry.ensure_experiment()
        assert stub.requests > 1

    def test_mlflow_client_does_not_retry_on_its_own(self) -> None:
        from mlflow.environment_variables import (
            MLFLOW_HTTP_REQUEST_MAX_RETRIES,
            MLFLOW_HTTP_REQUEST_TIMEOUT,
        )

        with configured_mlflow(request_timeout=2.5):
            assert MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() == 0
            assert MLFLOW_HTTP_REQUEST_TIMEOUT.get() == 3


class TestSetUp:
    """`configured_mlflow` is the only place that touches the environment, and it cleans up."""

    OTHERS = tuple(set(client_environment(request_timeout=1)) - {"MLFLOW_HTTP_REQUEST_TIMEOUT"})

    def test_importing_and_constructing_change_nothing(self) -> None:
        code = (
            "import json, logging, os\n"
            "before = dict(os.environ)\n"
            "import app.clients.mlflow as m\n"
            "m.MlflowRegistry(tracking_uri='http://127.0.0.1:9', retry_seconds=1)\n"
            "names = ('mlflow', 'alembic', 'huey', 'sqlalchemy.engine')\n"
            "print(json.dumps({'environ_changed': dict(os.environ) != before,\n"
            "    'propagate': [logging.getLogger(n).propagate for n in names]}))\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        seen = json.loads(out.stdout.strip().splitlines()[-1])
        assert seen["environ_changed"] is False
        # mlflow's import turns propagation off; only the set-up turns it back on.
        assert seen["propagate"] == [False, False, False, False]

    def test_sets_up_loggers_and_restores_the_environment(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "77")
        monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
        monkeypatch.setattr(logging.getLogger("mlflow"), "propagate", False)
        with configured_mlflow(request_timeout=4):
            assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "4"
            assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
            assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
            assert get_telemetry_client() is None
            assert logging.getLogger("mlflow").propagate is True
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "30"  # the module's own block
        assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" in os.environ

    def test_overlapping_blocks_may_end_in_any_order(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # As if no block were open (this module's own stays open around the test).
        monkeypatch.setattr("app.clients.mlflow.setup._open_environments", [])
        monkeypatch.setattr("app.clients.mlflow.setup._replaced", {})
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "77")
        for name in self.OTHERS:
            monkeypatch.delenv(name, raising=False)
        first, second = configured_mlflow(request_timeout=5), configured_mlflow(request_timeout=6)
        first.__enter__()
        second.__enter__()
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "6"
        first.__exit__(None, None, None)  # the older block ends first
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "6"
        assert all(name in os.environ for name in self.OTHERS)
        second.__exit__(None, None, None)
        assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "77"
        assert not any(name in os.environ for name in self.OTHERS)


class TestNonTransient:
    def test_invalid_metric_name_is_an_mlflow_error_at_once(self, registry: MlflowRegistry) -> None:
        run_id = registry.start_run(run_name="bad-metric", tags={})
        started = time.monotonic()

        with pytest.raises(MlflowError) as excinfo:
            registry.log_metric(run_id, "bad name?*", 1.0)

        assert excinfo.value.error_code == "INVALID_PARAMETER_VALUE"
        assert isinstance(excinfo.value.__cause__, MlflowException)
        assert time.monotonic() - started < 1.0

    def test_unknown_run_is_an_mlflow_error(self, registry: MlflowRegistry) -> None:
        with pytest.raises(MlflowError) as excinfo:
            registry.finish_run("0" * 32)
        assert excinfo.value.error_code == "RESOURCE_DOES_NOT_EXIST"

    def test_http_400_is_not_retried(self) -> None:
        body = {"error_code": "INVALID_PARAMETER_VALUE", "message": "no"}
        with StubMlflowServer(400, body) as stub:
            registry = MlflowRegistry(tracking_uri=stub.uri, retry_seconds=5.0)
            with pytest.raises(MlflowError) as excinfo:
                registry.ensure_experiment()
        assert stub.requests == 1
        assert excinfo.value.error_code == "INVALID_PARAMETER_VALUE"

    def test_ping_reports_a_refusing_server_as_unavailable(self) -> None:
        body = {"error_code": "PERMISSION_DENIED", "message": "no"}
        with StubMlflowServer(403, body) as stub, pytest.raises(MlflowUnavailable):
            MlflowRegistry(tracking_uri=stub.uri).ping()

    @pytest.mark.parametrize("run_id", ["", "abc", "A" * 32, "0" * 31 + "'"])
    def test_malformed_run_id_is_refused(self, registry: MlflowRegistry, run_id: str) -> None:
        with pytest.raises(MlflowError):
            registry.find_versions_for_run("hokusai-X", run_id)

    def test_missing_model_file_is_refused(self, registry: MlflowRegistry, tmp_path: Path) -> None:
        with pytest.raises(MlflowError):
            registry.log_model_file("0" * 32, tmp_path / "absent.pkl")


def _wrapped(outer: MlflowException, inner: BaseException) -> MlflowException:
    try:
        raise outer from inner
    except MlflowException as e:
        return e


class TestIsTransient:
    @pytest.mark.parametrize(
        "exc",
        [
            requests.exceptions.ConnectionError("refused"),
            requests.exceptions.ReadTimeout("slow"),
            requests.exceptions.RetryError("too many 503 error responses"),
            ConnectionResetError(),
            sqlalchemy.exc.OperationalError("INSERT", {}, Exception("database is locked")),
            MlflowException("busy", error_code=TEMPORARILY_UNAVAILABLE),
            MlflowException("slow down", error_code=REQUEST_LIMIT_EXCEEDED),
            MlflowException("Model Version creation error. Giving up after 3 attempts."),
            RestException({"error_code": "INTERNAL_ERROR", "message": "boom"}),
            RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "busy"}),
            _wrapped(MlflowException("API request failed"), requests.exceptions.ConnectionError()),
        ],
        ids=repr,
    )
    def test_transient(self, exc: BaseException) -> None:
        assert is_transient(exc)

    @pytest.mark.parametrize(
        "exc",
        [
            MlflowException("bad", error_code=INVALID_PARAMETER_VALUE),
            MlflowException("gone", error_code=RESOURCE_DOES_NOT_EXIST),
            RestException({"error_code": "RESOURCE_ALREADY_EXISTS", "message": "dup"}),
            _wrapped(MlflowException("wrapped bug", error_code=INTERNAL_ERROR), ValueError("x")),
            ValueError("bug"),
            FileNotFoundError("model.pkl"),
        ],
        ids=repr,
    )
    def test_not_transient(self, exc: BaseException) -> None:
        assert not is_transient(exc)


class TestRetryLoop:
    def test_retries_a_transient_failure_until_it_succeeds(self, registry: MlflowRegistry) -> None:
        calls: list[int] = []

        def flaky(_: MlflowClient) -> str:
            calls.append(1)
            if len(calls) < 3:
                raise requests.exceptions.ConnectionError("blip")
            return "ok"

        assert registry._call("flaky", flaky) == "ok"
        assert len(calls) == 3

    def test_recovers_the_result_of_an_attempt_that_only_looked_failed(
        self, registry: MlflowRegistry
    ) -> None:
        created: list[str] = []

        def create(_: MlflowClient) -> str:
            created.append("run")
            raise requests.exceptions.ReadTimeout("answer lost")

        def recover(_: MlflowClient) -> str | None:
            return created[0] if created else None

        assert registry._call("create", create, recover=recover) == "run"
        assert created == ["run"]


@pytest.mark.e2e
class TestAgainstMlflowServer:
    def test_happy_path_and_compensation_over_http(
        self, early_server: MlflowServer | None, model_file: Path, tmp_path: Path
    ) -> None:
        assert early_server is not None
        uri = early_server.wait_healthy()
        registry = MlflowRegistry(tracking_uri=uri, retry_seconds=5.0)
        reader = MlflowClient(tracking_uri=uri, registry_uri=uri)
        registry.ping()
        model_name = unique_model_name()

        run_id, ref = register(registry, model_file, model_name=model_name)

        assert ref.version == "1"
        assert_registered(reader, run_id, ref, model_file=model_file, tmp_path=tmp_path)
        assert registry.find_versions_for_run(model_name, run_id) == [ref]

        registry.fail_registration(
            run_id=run_id, model_name=model_name, version=ref.version, reason="late failure"
        )
        assert reader.get_run(run_id).info.status == "FAILED"
        assert registry.find_versions_for_run(model_name, run_id) == []
