"""The registration's MLflow run: created with its tags, its metrics, its artifacts, its end."""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.utils.file_utils import local_file_uri_to_path

from app.clients.mlflow.calls import MlflowCalls, log
from app.clients.mlflow.errors import MlflowError, describe

ARTIFACT_PATH = "model"

_REGISTRATION_ID = re.compile(r"^[0-9a-f-]{1,36}$")
_ERROR_TAG_MAX = 1000

# Runs one compensating operation under the undo's budget; answers whether it succeeded.
Attempt = Callable[[str, Callable[[MlflowClient], object]], bool]


@dataclass(frozen=True, slots=True)
class RegistrationRun:
    """What MLflow holds of one registration's run."""

    run_id: str
    status: str  # RUNNING, FINISHED, FAILED, KILLED, SCHEDULED
    tags: dict[str, str]
    metrics: dict[str, float]
    artifacts: list[str]  # paths under the run's `model/`


class MlflowRuns(MlflowCalls):
    """The run of each registration, in the registrations experiment."""

    def start_run(self, *, run_name: str, tags: Mapping[str, str]) -> str:
        """Create a RUNNING run in the registrations experiment and return its id."""
        experiment_id = self.ensure_experiment()
        # Lets a retry after an ambiguous failure (a timeout after the server committed) find the
        # run it already created instead of leaving an orphan behind.
        create_key = uuid.uuid4().hex
        all_tags = {**tags, "hokusai.create_key": create_key}

        def create(client: MlflowClient) -> str:
            run = client.create_run(experiment_id, tags=all_tags, run_name=run_name)
            self._artifact_uris[str(run.info.run_id)] = str(run.info.artifact_uri)
            return str(run.info.run_id)

        def recover(client: MlflowClient) -> str | None:
            runs = client.search_runs(
                [experiment_id],
                filter_string=f"tags.`hokusai.create_key` = '{create_key}'",
                max_results=1,
            )
            return str(runs[0].info.run_id) if runs else None

        return self._call("create_run", create, recover=recover, run_name=run_name)

    def log_metric(self, run_id: str, name: str, value: float) -> None:
        """Log the benchmark metric on the run (step 0)."""
        # One timestamp for every attempt, so a retried write repeats the same data point.
        timestamp = int(time.time() * 1000)
        self._call(
            "log_metric",
            lambda c: c.log_metric(run_id, name, value, timestamp=timestamp, step=0),
            run_id=run_id,
        )

    def log_metrics(self, run_id: str, metrics: Mapping[str, float]) -> None:
        """Log several metrics on the run (step 0) in one MLflow call (`log_batch`)."""
        timestamp = int(time.time() * 1000)
        batch = [Metric(name, value, timestamp, 0) for name, value in metrics.items()]
        self._call("log_batch", lambda c: c.log_batch(run_id, metrics=batch), run_id=run_id)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        """Store `text` as the run's artifact `artifact_file` (e.g. `hokusai/receipt.json`)."""
        self._call("log_text", lambda c: c.log_text(run_id, text, artifact_file), run_id=run_id)

    def log_model_file(self, run_id: str, path: Path) -> None:
        """Upload one file under the run's `model/` artifact path."""
        if not path.is_file():
            raise MlflowError(f"not a file: {path}")
        self._log_model(run_id, path)

    def log_model_dir(self, run_id: str, directory: Path) -> None:
        """Upload a directory's contents under the run's `model/` artifact path."""
        if not directory.is_dir():
            raise MlflowError(f"not a directory: {directory}")
        self._log_model(run_id, directory)

    def _log_model(self, run_id: str, source: Path) -> None:
        # The run's artifact URI, kept from create_run: MlflowClient.log_artifact would fetch
        # the whole run again just to learn it.
        artifact_uri = self._artifact_uris.pop(run_id, None)
        if artifact_uri is not None and self._link_into_local_store(run_id, artifact_uri, source):
            return
        is_file = source.is_file()

        def upload(client: MlflowClient) -> None:
            if artifact_uri is None:
                if is_file:
                    client.log_artifact(run_id, str(source), artifact_path=ARTIFACT_PATH)
                else:
                    client.log_artifacts(run_id, str(source), artifact_path=ARTIFACT_PATH)
                return
            repository = get_artifact_repository(artifact_uri, tracking_uri=self._tracking_uri)
            if is_file:
                repository.log_artifact(str(source), ARTIFACT_PATH)
            else:
                repository.log_artifacts(str(source), ARTIFACT_PATH)

        self._call("log_artifact" if is_file else "log_artifacts", upload, run_id=run_id)

    def _link_into_local_store(self, run_id: str, artifact_uri: str, source: Path) -> bool:
        """Place the upload in a local artifact store by hard links instead of a copy.

        MLflow's local store copies a logged file into the run's artifact folder, so a large model
        would be written to disk twice. When the run's artifacts live in a local folder on the
        same file system as the upload, a hard link gives the same layout (`model/<name>`)
        without writing the bytes again; the upload's own name is removed afterwards and the
        artifact keeps them. Anywhere else (a tracking server, object storage, another disk) the
        caller falls back to MLflow's own upload. Returns whether the file(s) were placed.
        """
        if not artifact_uri.startswith("file:"):
            return False
        target = Path(local_file_uri_to_path(artifact_uri)) / ARTIFACT_PATH
        started = time.perf_counter()
        try:
            target.mkdir(parents=True, exist_ok=True)
            if source.is_file():
                os.link(source, target / source.name)
            else:
                shutil.copytree(source, target, copy_function=os.link, dirs_exist_ok=True)
        except OSError as e:
            # Another file system (EXDEV) or no hard links there: MLflow copies instead.
            log.info("mlflow_artifact_link_skipped", run_id=run_id, error=describe(e))
            shutil.rmtree(target, ignore_errors=True)
            return False
        log.info(
            "mlflow_call",
            op="link_artifacts",
            run_id=run_id,
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return True

    def finish_run(self, run_id: str) -> None:
        """Mark the run FINISHED."""
        self._call(
            "set_terminated", lambda c: c.set_terminated(run_id, status="FINISHED"), run_id=run_id
        )

    def _fail_run(self, run_id: str, reason: str, attempt: Attempt) -> None:
        """Tag the run with why it failed and mark it FAILED (best effort, through `attempt`)."""
        self._artifact_uris.pop(run_id, None)
        error = reason if len(reason) <= _ERROR_TAG_MAX else reason[: _ERROR_TAG_MAX - 3] + "..."
        attempt("set_tag", lambda c: c.set_tag(run_id, "hokusai.error", error))
        attempt("set_terminated", lambda c: c.set_terminated(run_id, status="FAILED"))

    def find_registration_runs(self, registration_id: str) -> list[RegistrationRun]:
        """The runs tagged with `hokusai.registration_id` = `registration_id`, with their state."""
        if not _REGISTRATION_ID.match(registration_id):
            raise MlflowError(f"not a registration id: {registration_id!r}")
        experiment_id = self.ensure_experiment()

        def search(client: MlflowClient) -> list[RegistrationRun]:
            runs = client.search_runs(
                [experiment_id],
                filter_string=f"tags.`hokusai.registration_id` = '{registration_id}'",
                max_results=10,
            )
            return [
                RegistrationRun(
                    run_id=str(run.info.run_id),
                    status=str(run.info.status),
                    tags=dict(run.data.tags),
                    metrics=dict(run.data.metrics),
                    artifacts=[
                        f.path for f in client.list_artifacts(run.info.run_id, ARTIFACT_PATH)
                    ],
                )
                for run in runs
            ]

        return self._call("search_runs", search, registration_id=registration_id)
