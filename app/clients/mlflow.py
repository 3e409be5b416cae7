"""The one module that talks to MLflow: the registration run, its artifacts and the model version.

Everything here is synchronous; the service calls it from a bounded worker-thread pool. Callers
see two errors only: `MlflowUnavailable` (MLflow did not answer within the retry budget) and
`MlflowError` (MLflow answered, and the answer was a failure that retrying will not fix).
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import requests
import sqlalchemy.exc
import stamina
import structlog
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion, ModelVersionTag
from mlflow.environment_variables import MLFLOW_ENABLE_WORKSPACES
from mlflow.exceptions import MlflowException, RestException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.store.model_registry.abstract_store import AbstractStore as RegistryStore
from mlflow.telemetry import set_telemetry_client
from mlflow.utils.file_utils import local_file_uri_to_path
from mlflow.utils.logging_utils import MlflowFormatter

from app import observability
from app.errors import MlflowUnavailable

EXPERIMENT_NAME = "hokusai-registrations"
REGISTERED_ALIAS = "registered"
ARTIFACT_PATH = "model"
# On a registered model and each of its versions: the token whose registrations it holds.
OWNER_TAG = "hokusai_token_id"

log = structlog.get_logger(__name__)

T = TypeVar("T")

# MLflow error codes that mean "the service could not do it now", not "the request is wrong".
_TRANSIENT_CODES = frozenset(
    {
        "TEMPORARILY_UNAVAILABLE",
        "REQUEST_LIMIT_EXCEEDED",
        "RESOURCE_EXHAUSTED",
        "SERVICE_UNDER_MAINTENANCE",
        "WORKSPACE_TEMPORARILY_UNAVAILABLE",
        "DEADLINE_EXCEEDED",
        "ABORTED",
        "COULD_NOT_ACQUIRE_LOCK",
    }
)
_TRANSIENT_HTTP_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError,  # includes ConnectTimeout
    requests.exceptions.Timeout,
    requests.exceptions.RetryError,  # urllib3 gave up on a 408/429/5xx status
    requests.exceptions.ChunkedEncodingError,
    ConnectionError,
    TimeoutError,
    sqlalchemy.exc.OperationalError,  # "database is locked", lost connections
    sqlalchemy.exc.DisconnectionError,
    sqlalchemy.exc.TimeoutError,  # connection pool exhausted
)
_URL_CREDENTIALS = re.compile(r"//[^/@\s]+@")
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_REGISTRATION_ID = re.compile(r"^[0-9a-f-]{1,36}$")
_ERROR_TAG_MAX = 1000
_READY_POLL_SECONDS = 0.25


class MlflowError(Exception):
    """MLflow refused an operation for a reason that retrying will not fix."""

    def __init__(self, message: str, *, error_code: str | None = None) -> None:
        super().__init__(message)
        # MLflow's own code (e.g. "INVALID_PARAMETER_VALUE"), when MLflow gave one.
        self.error_code = error_code


@dataclass(frozen=True, slots=True)
class ModelVersionRef:
    model_name: str
    version: str
    model_uri: str


@dataclass(frozen=True, slots=True)
class RegistrationRun:
    """What MLflow holds of one registration's run."""

    run_id: str
    status: str  # RUNNING, FINISHED, FAILED, KILLED, SCHEDULED
    tags: dict[str, str]
    metrics: dict[str, float]
    artifacts: list[str]  # paths under the run's `model/`


def is_transient(exc: BaseException) -> bool:
    """Whether a failure from MLflow is worth retrying."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _TRANSIENT_TYPES):
            return True
        if isinstance(current, requests.exceptions.HTTPError):
            response = current.response
            return response is not None and response.status_code in _TRANSIENT_HTTP_STATUS
        cause = current.__cause__ or current.__context__
        if isinstance(current, MlflowException):
            if current.error_code in _TRANSIENT_CODES:
                return True
            if current.error_code != "INTERNAL_ERROR":
                return False
            # INTERNAL_ERROR is also MLflow's default for any exception it wraps, so it only
            # counts when a server reported it or nothing more specific lies underneath.
            if isinstance(current, RestException) or cause is None:
                return True
        else:
            return False
        current = cause
    return False


def _is_unique_violation(exc: BaseException) -> bool:
    """A database unique-constraint failure anywhere in the exception's chain."""
    current: BaseException | None = exc
    for _ in range(10):
        if current is None:
            return False
        text = str(current)
        if "UNIQUE constraint failed" in text or "duplicate key value" in text:
            return True
        current = current.__cause__ or current.__context__
    return False


def _describe(exc: BaseException, limit: int = 300) -> str:
    # MLflow's messages embed request URLs; keep any user:password@ out of the logs.
    text = _URL_CREDENTIALS.sub("//***@", f"{type(exc).__name__}: {exc}")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _error_code(exc: BaseException) -> str | None:
    return exc.error_code if isinstance(exc, MlflowException) else None


def _has_code(exc: BaseException, code: str) -> bool:
    return isinstance(exc, MlflowException) and exc.error_code == code


def _quote(value: str) -> str:
    # MLflow's search grammar has no escape sequences, only a choice of quote characters.
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise MlflowError(f"cannot search for a name containing both quote characters: {value!r}")


def _is_database_uri(uri: str) -> bool:
    scheme = uri.partition(":")[0].partition("+")[0].lower()
    return scheme in {"sqlite", "postgresql", "mysql", "mssql"}


def _database_registry_store(uri: str) -> RegistryStore | None:
    """The model registry store MLflow builds for a database URI, or None when it builds another.

    MlflowClient checks before each version and alias write that the name is not a prompt, which
    loads the whole registered model (tags, aliases, latest versions) each time. A registration
    that has just created its registered model knows that already and writes through the store,
    MLflow's documented registry-store interface. The store shares MLflow's cached engine for
    the URI, so it adds no connection pool.
    """
    if MLFLOW_ENABLE_WORKSPACES.get():
        return None  # MLflow builds a workspace-aware store then; the client path stays
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore

    return SqlAlchemyStore(uri)


def _as_artifact_uri(location: str) -> str:
    # A bare path becomes an absolute file URI, so the store never resolves it against the cwd.
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", location):
        return location
    return Path(location).expanduser().resolve().as_uri()


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    logger = logging.getLogger(logger_name)
    previous = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(previous)


def client_environment(*, request_timeout: float) -> dict[str, str]:
    """The environment variables that make MLflow's REST client fail fast and stay quiet.

    MLflow reads these on every request (`mlflow.environment_variables`); they are its only way
    to configure the client, and they are process-wide. Without them its own loop would retry 7
    times with backoff, 120 s each: minutes per call, under the service's bounded retry.
    """
    return {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, math.ceil(request_timeout))),
        # Against a server, set_terminated prints the run's UI link to stdout (with an extra
        # GET): stdout carries the service's JSON logs.
        "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
        # MLflow's usage telemetry would report every client call to MLflow's servers from a
        # thread of its own, and inspects each call's signature to do so.
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }


def adopt_mlflow_loggers() -> None:
    """Hand MLflow's loggers back to the application's logging setup, MLflow's at WARNING."""
    # Importing mlflow gives these loggers their own stderr handler and turns propagation off,
    # which would bypass the service's structured log formatter.
    for name in ("mlflow", "alembic", "huey", "sqlalchemy.engine"):
        logger = logging.getLogger(name)
        logger.handlers = [
            h for h in logger.handlers if not isinstance(h.formatter, MlflowFormatter)
        ]
        logger.propagate = True
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    # alembic also runs the service's own migrations, so only MLflow's store setup is quieted.
    logging.getLogger("alembic").setLevel(logging.NOTSET)
    logging.getLogger("huey").setLevel(logging.NOTSET)


# The environments of the `configured_mlflow` blocks that are open, newest last, and the values
# they replaced. Several blocks may overlap (an application per test backend) and end in any order.
_open_environments: list[dict[str, str]] = []
_replaced: dict[str, str | None] = {}
_environment_lock = threading.Lock()


def _apply(environment: Mapping[str, str | None]) -> None:
    for name, value in environment.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@contextmanager
def configured_mlflow(*, request_timeout: float) -> Iterator[None]:
    """MLflow set up for the service while the block runs (the application's lifespan).

    MLflow's loggers go through the service's logging, and its REST client fails fast
    (`client_environment`). When the last open block ends, the environment is as it was.
    """
    adopt_mlflow_loggers()
    environment = client_environment(request_timeout=request_timeout)
    with _environment_lock:
        if not _open_environments:
            _replaced.update({name: os.environ.get(name) for name in environment})
        _open_environments.append(environment)
        _apply(environment)
        # MLflow decides at import whether to keep a telemetry client; decide again now.
        set_telemetry_client()
    try:
        yield
    finally:
        with _environment_lock:
            _open_environments.remove(environment)
            _apply(_open_environments[-1] if _open_environments else _replaced)
            if not _open_environments:
                _replaced.clear()


class MlflowRegistry:
    """Registers one model upload as an MLflow run plus a registered model version."""

    def __init__(
        self,
        *,
        tracking_uri: str,
        registry_uri: str | None = None,
        artifact_location: str | None = None,
        retry_seconds: float = 20.0,
    ) -> None:
        self._tracking_uri = tracking_uri
        self._registry_uri = registry_uri or tracking_uri
        self._artifact_location = (
            _as_artifact_uri(artifact_location) if artifact_location is not None else None
        )
        self._retry_seconds = retry_seconds
        self._wait_max = max(0.2, min(5.0, retry_seconds / 4))
        self._wait_jitter = min(1.0, self._wait_max / 2)
        self._lock = threading.Lock()
        self._client_instance: MlflowClient | None = None
        # The registry's own store, when the registry is a database (see `_client`).
        self._registry_store: RegistryStore | None = None
        self._experiment_id: str | None = None
        # Run id -> artifact URI of the runs this process created and has not logged to yet.
        self._artifact_uris: dict[str, str] = {}

    # plumbing -----------------------------------------------------------------------------------

    def _client(self) -> MlflowClient:
        """The shared MlflowClient, built (and a local store migrated) on first use."""
        client = self._client_instance
        if client is not None:
            return client
        with self._lock:
            if self._client_instance is None:
                with _quiet("alembic"):
                    client = MlflowClient(
                        tracking_uri=self._tracking_uri, registry_uri=self._registry_uri
                    )
                    if _is_database_uri(self._registry_uri):
                        # The registry store is built lazily too; build it now so its schema
                        # check runs here rather than racing in concurrent registrations.
                        client.search_registered_models(max_results=1)
                        self._registry_store = _database_registry_store(self._registry_uri)
                self._client_instance = client
            return self._client_instance

    def _call(
        self,
        op: str,
        fn: Callable[[MlflowClient], T],
        *,
        budget: float | None = None,
        recover: Callable[[MlflowClient], T | None] | None = None,
        quiet: bool = False,
        **context: str,
    ) -> T:
        """Run one MLflow operation with bounded retries and translate whatever it raises.

        `recover` runs before each re-attempt of a non-idempotent operation: if the earlier,
        failed-looking attempt did take effect, its result is returned instead of redoing it.
        """
        timeout = self._retry_seconds if budget is None else budget
        started = time.monotonic()
        attempts = 0
        try:
            for attempt in stamina.retry_context(
                on=is_transient,
                attempts=None if timeout > 0 else 1,
                timeout=timeout if timeout > 0 else None,
                wait_initial=0.1,
                wait_max=self._wait_max,
                wait_jitter=self._wait_jitter,
            ):
                with attempt:
                    attempts = attempt.num
                    t0 = time.perf_counter()
                    try:
                        client = self._client()
                        found = recover(client) if recover is not None and attempts > 1 else None
                        result = found if found is not None else fn(client)
                    except Exception as e:
                        transient = is_transient(e)
                        observability.MLFLOW_CALL_SECONDS.labels(
                            op, "transient" if transient else "error"
                        ).observe(time.perf_counter() - t0)
                        # stamina logs each scheduled retry itself; a final failure is logged below.
                        (log.info if transient else log.warning)(
                            "mlflow_call_failed",
                            op=op,
                            **context,
                            attempt=attempts,
                            duration_ms=round((time.perf_counter() - t0) * 1000, 1),
                            transient=transient,
                            error=_describe(e),
                        )
                        raise
                    observability.MLFLOW_CALL_SECONDS.labels(op, "ok").observe(
                        time.perf_counter() - t0
                    )
                    (log.debug if quiet else log.info)(
                        "mlflow_call",
                        op=op,
                        **context,
                        attempt=attempts,
                        recovered=found is not None,
                        duration_ms=round((time.perf_counter() - t0) * 1000, 1),
                    )
                    return result
        except (MlflowError, MlflowUnavailable):
            raise
        except Exception as e:
            elapsed = time.monotonic() - started
            if is_transient(e):
                observability.MLFLOW_UNAVAILABLE.labels(op).inc()
                log.error(
                    "mlflow_unavailable",
                    op=op,
                    **context,
                    attempts=attempts,
                    elapsed_s=round(elapsed, 2),
                )
                raise MlflowUnavailable(
                    f"MLflow did not answer ({op}) after {attempts} attempt(s) in {elapsed:.1f} s"
                ) from e
            raise MlflowError(
                f"MLflow {op} failed: {_describe(e)}", error_code=_error_code(e)
            ) from e
        raise AssertionError("stamina ended without a result or an exception")  # pragma: no cover

    # operations ---------------------------------------------------------------------------------

    def ping(self) -> None:
        """Prove the tracking store answers, with one attempt and no retries (for /ready)."""
        try:
            self._call(
                "ping",
                lambda c: c.search_experiments(max_results=1),
                budget=0,
                quiet=True,
            )
        except MlflowError as e:
            # For readiness a refusal is as bad as silence; the cause stays in the logs.
            raise MlflowUnavailable("MLflow answered the readiness check with an error") from e

    def ensure_experiment(self) -> str:
        """Get or create the registrations experiment and remember its id."""
        if self._experiment_id is not None:
            return self._experiment_id

        def get_or_create(client: MlflowClient) -> str:
            experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
            if experiment is None:
                try:
                    return client.create_experiment(
                        EXPERIMENT_NAME, artifact_location=self._artifact_location
                    )
                except MlflowException as e:
                    if not _has_code(e, "RESOURCE_ALREADY_EXISTS"):
                        raise
                # Another process or thread created it first.
                experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
                if experiment is None:
                    raise MlflowError(f"experiment {EXPERIMENT_NAME} vanished while being created")
            if experiment.lifecycle_stage == "deleted":
                # A deleted experiment still owns its name; bring it back rather than fail.
                client.restore_experiment(experiment.experiment_id)
            return str(experiment.experiment_id)

        experiment_id = self._call("ensure_experiment", get_or_create)
        self._experiment_id = experiment_id
        return experiment_id

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
            log.info("mlflow_artifact_link_skipped", run_id=run_id, error=_describe(e))
            shutil.rmtree(target, ignore_errors=True)
            return False
        log.info(
            "mlflow_call",
            op="link_artifacts",
            run_id=run_id,
            duration_ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return True

    def register_version(
        self, *, run_id: str, model_name: str, tags: Mapping[str, str]
    ) -> ModelVersionRef:
        """Create a READY version of `model_name` from the run's `model/` and alias it."""
        self._check_run_id(run_id)

        owner = tags.get("hokusai_token_id")

        def create_model(client: MlflowClient) -> bool:
            try:
                client.create_registered_model(
                    model_name, tags={OWNER_TAG: owner} if owner else None
                )
            except MlflowException as e:
                if not _has_code(e, "RESOURCE_ALREADY_EXISTS"):
                    raise
                return False
            return True

        created = self._call("create_registered_model", create_model, model_name=model_name)
        # A registered model this call created holds no prompt; the store skips the client's
        # check. One that existed before goes through the client, which checks.
        store = self._registry_store if created else None

        version_tags = {"hokusai_status": "registered", **tags}
        source = f"runs:/{run_id}/{ARTIFACT_PATH}"

        def create_version(client: MlflowClient) -> ModelVersion:
            if store is not None:
                created_version: ModelVersion = store.create_model_version(
                    model_name,
                    source,
                    run_id=run_id,
                    tags=[ModelVersionTag(key, str(value)) for key, value in version_tags.items()],
                )
                return created_version
            return client.create_model_version(
                model_name, source, run_id=run_id, tags=version_tags, await_creation_for=0
            )

        def recover(client: MlflowClient) -> ModelVersion | None:
            existing = self._search_versions(client, model_name, run_id)
            return max(existing, key=lambda mv: int(mv.version)) if existing else None

        version = self._call(
            "create_model_version",
            create_version,
            recover=recover,
            run_id=run_id,
            model_name=model_name,
        )
        # If anything below fails the version stays behind; fail_registration finds it by run.
        self._await_ready(version)
        number = str(version.version)

        def alias(client: MlflowClient) -> None:
            if store is not None:
                store.set_registered_model_alias(model_name, REGISTERED_ALIAS, number)
            else:
                client.set_registered_model_alias(model_name, REGISTERED_ALIAS, number)

        def set_alias(client: MlflowClient) -> None:
            try:
                alias(client)
            except MlflowException as e:
                if not _is_unique_violation(e):
                    raise
                # Two versions of one model were aliased at once and the store's insert-or-update
                # raced; the alias row exists now, so setting it again updates it.
                alias(client)

        self._call("set_registered_model_alias", set_alias, model_name=model_name, version=number)
        return ModelVersionRef(model_name, number, f"models:/{model_name}/{number}")

    def model_owners(self, model_name: str) -> frozenset[str]:
        """The token ids holding `model_name`: its own owner tag and each version's token tag.

        A version made outside the service (no token tag) counts as the owner "". Empty when no
        such registered model exists.
        """

        def look(client: MlflowClient) -> frozenset[str]:
            try:
                model = client.get_registered_model(model_name)
            except MlflowException as e:
                if _has_code(e, "RESOURCE_DOES_NOT_EXIST"):
                    return frozenset()
                raise
            owners = {model.tags[OWNER_TAG]} if model.tags.get(OWNER_TAG) else set()
            for version in client.search_model_versions(f"name={_quote(model_name)}"):
                owners.add(version.tags.get(OWNER_TAG, ""))
            return frozenset(owners)

        return self._call("get_registered_model", look, model_name=model_name)

    def finish_run(self, run_id: str) -> None:
        """Mark the run FINISHED."""
        self._call(
            "set_terminated", lambda c: c.set_terminated(run_id, status="FINISHED"), run_id=run_id
        )

    def fail_registration(
        self, *, run_id: str | None, model_name: str | None, version: str | None, reason: str
    ) -> None:
        """Best-effort undo after a failed registration; logs and never raises."""
        # One budget for the whole compensation: it runs on an error path, maybe with MLflow down.
        deadline = time.monotonic() + self._retry_seconds

        def attempt(op: str, fn: Callable[[MlflowClient], object]) -> bool:
            try:
                self._call(op, fn, budget=max(0.0, deadline - time.monotonic()))
            except Exception as e:
                log.warning("mlflow_compensation_failed", op=op, error=_describe(e))
                return False
            return True

        if run_id is not None:
            self._artifact_uris.pop(run_id, None)
            error = (
                reason if len(reason) <= _ERROR_TAG_MAX else reason[: _ERROR_TAG_MAX - 3] + "..."
            )
            attempt("set_tag", lambda c: c.set_tag(run_id, "hokusai.error", error))
            attempt("set_terminated", lambda c: c.set_terminated(run_id, status="FAILED"))

        if model_name is None:
            return
        versions = [version] if version is not None else []
        if version is None and run_id is not None:
            # register_version may have created a version before it failed without returning it.
            source_run = run_id
            found: list[ModelVersion] = []

            def search(client: MlflowClient) -> None:
                self._check_run_id(source_run)
                found[:] = self._search_versions(client, model_name, source_run)

            if attempt("search_model_versions", search):
                versions = [str(mv.version) for mv in found]

        for number in versions:
            self._discard_version(model_name, number, attempt)

    def find_versions_for_run(self, model_name: str, run_id: str) -> list[ModelVersionRef]:
        """Every live version of `model_name` created from the run, oldest first."""
        self._check_run_id(run_id)
        found = self._call(
            "search_model_versions",
            lambda c: self._search_versions(c, model_name, run_id),
            quiet=True,
        )
        refs = [
            ModelVersionRef(model_name, str(mv.version), f"models:/{model_name}/{mv.version}")
            for mv in found
        ]
        return sorted(refs, key=lambda ref: int(ref.version))

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

    def find_registration_versions(
        self, model_name: str, run_id: str, registration_id: str
    ) -> list[ModelVersionRef]:
        """READY versions of `model_name` from the run that carry the registration's tags."""
        self._check_run_id(run_id)
        found = self._call(
            "search_model_versions",
            lambda c: self._search_versions(c, model_name, run_id),
            quiet=True,
        )
        refs = [
            ModelVersionRef(model_name, str(mv.version), f"models:/{model_name}/{mv.version}")
            for mv in found
            if mv.status == "READY"
            and mv.tags.get("hokusai_registration_id") == registration_id
            and mv.tags.get("hokusai_status") == "registered"
        ]
        return sorted(refs, key=lambda ref: int(ref.version))

    # helpers ------------------------------------------------------------------------------------

    @staticmethod
    def _check_run_id(run_id: str) -> None:
        # It is interpolated into search filters.
        if not _RUN_ID.match(run_id):
            raise MlflowError(f"not an MLflow run id: {run_id!r}")

    @staticmethod
    def _search_versions(client: MlflowClient, model_name: str, run_id: str) -> list[ModelVersion]:
        query = f"name = {_quote(model_name)} AND run_id = '{run_id}'"
        versions: list[ModelVersion] = []
        page_token: str | None = None
        while True:
            page = client.search_model_versions(query, page_token=page_token)
            versions.extend(page)
            page_token = page.token
            if not page_token:
                return versions

    def _await_ready(self, version: ModelVersion) -> None:
        """Poll a new version until MLflow reports it READY, for at most the retry budget."""
        deadline = time.monotonic() + self._retry_seconds
        name, number = version.name, str(version.version)
        while version.status == "PENDING_REGISTRATION":
            if time.monotonic() >= deadline:
                raise MlflowUnavailable(f"model version {name}/{number} is not READY in time")
            time.sleep(_READY_POLL_SECONDS)
            version = self._call(
                "get_model_version",
                lambda c: c.get_model_version(name, number),
                quiet=True,
            )
        if version.status != "READY":
            raise MlflowError(
                f"model version {name}/{number} ended {version.status}: {version.status_message}"
            )

    def _discard_version(
        self,
        model_name: str,
        number: str,
        attempt: Callable[[str, Callable[[MlflowClient], object]], bool],
    ) -> None:
        """Delete a version, or failing that, mark it failed and take the alias off it."""
        if attempt("delete_model_version", self._deleter(model_name, number)):
            log.info("mlflow_version_deleted", model_name=model_name, version=number)
            return
        # Could not delete: at least make sure nothing deploys it.
        attempt(
            "set_model_version_tag",
            lambda c: c.set_model_version_tag(model_name, number, "hokusai_status", "failed"),
        )
        attempt("delete_registered_model_alias", self._alias_remover(model_name, number))

    @staticmethod
    def _deleter(model_name: str, number: str) -> Callable[[MlflowClient], None]:
        def delete(client: MlflowClient) -> None:
            try:
                client.delete_model_version(model_name, number)
            except MlflowException as e:
                # Already gone, e.g. an earlier attempt succeeded but its answer was lost.
                if not _has_code(e, "RESOURCE_DOES_NOT_EXIST"):
                    raise

        return delete

    @staticmethod
    def _alias_remover(model_name: str, number: str) -> Callable[[MlflowClient], None]:
        def remove(client: MlflowClient) -> None:
            try:
                current = client.get_model_version_by_alias(model_name, REGISTERED_ALIAS)
            except MlflowException as e:
                if _has_code(e, "RESOURCE_DOES_NOT_EXIST") or _has_code(
                    e, "INVALID_PARAMETER_VALUE"
                ):
                    return
                raise
            if str(current.version) == number:
                client.delete_registered_model_alias(model_name, REGISTERED_ALIAS)

        return remove
