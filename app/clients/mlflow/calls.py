"""The plumbing under every MLflow operation: one shared client, bounded retries, one log line.

Everything here is synchronous; the service calls it from a bounded worker-thread pool.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import stamina
import structlog
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.store.model_registry.abstract_store import AbstractStore as RegistryStore

from app import observability
from app.clients.mlflow.errors import MlflowError, describe, error_code, has_code, is_transient
from app.clients.mlflow.setup import (
    as_artifact_uri,
    database_registry_store,
    is_database_uri,
    quiet,
)
from app.errors import MlflowUnavailable

EXPERIMENT_NAME = "hokusai-registrations"

log = structlog.get_logger("app.clients.mlflow")

T = TypeVar("T")

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


class MlflowCalls:
    """The shared MlflowClient and `_call`, which runs one operation under the retry policy."""

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
            as_artifact_uri(artifact_location) if artifact_location is not None else None
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

    def _client(self) -> MlflowClient:
        """The shared MlflowClient, built (and a local store migrated) on first use."""
        client = self._client_instance
        if client is not None:
            return client
        with self._lock:
            if self._client_instance is None:
                with quiet("alembic"):
                    client = MlflowClient(
                        tracking_uri=self._tracking_uri, registry_uri=self._registry_uri
                    )
                    if is_database_uri(self._registry_uri):
                        # The registry store is built lazily too; build it now so its schema
                        # check runs here rather than racing in concurrent registrations.
                        client.search_registered_models(max_results=1)
                        self._registry_store = database_registry_store(self._registry_uri)
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
                    return self._attempt(
                        op,
                        fn,
                        recover if attempts > 1 else None,
                        number=attempts,
                        quiet=quiet,
                        context=context,
                    )
        except (MlflowError, MlflowUnavailable):
            raise
        except Exception as e:
            raise _failure(op, e, attempts, time.monotonic() - started, context) from e
        raise AssertionError("stamina ended without a result or an exception")  # pragma: no cover

    def _attempt(
        self,
        op: str,
        fn: Callable[[MlflowClient], T],
        recover: Callable[[MlflowClient], T | None] | None,
        *,
        number: int,
        quiet: bool,
        context: dict[str, Any],
    ) -> T:
        """One attempt of an operation, timed, counted and logged."""
        t0 = time.perf_counter()
        try:
            client = self._client()
            found = recover(client) if recover is not None else None
            result = found if found is not None else fn(client)
        except Exception as e:
            transient = is_transient(e)
            observability.MLFLOW_CALL_SECONDS.labels(
                op, "transient" if transient else "error"
            ).observe(time.perf_counter() - t0)
            # stamina logs each scheduled retry itself; a final failure is logged by `_failure`.
            (log.info if transient else log.warning)(
                "mlflow_call_failed",
                op=op,
                **context,
                attempt=number,
                duration_ms=round((time.perf_counter() - t0) * 1000, 1),
                transient=transient,
                error=describe(e),
            )
            raise
        observability.MLFLOW_CALL_SECONDS.labels(op, "ok").observe(time.perf_counter() - t0)
        (log.debug if quiet else log.info)(
            "mlflow_call",
            op=op,
            **context,
            attempt=number,
            recovered=found is not None,
            duration_ms=round((time.perf_counter() - t0) * 1000, 1),
        )
        return result

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
                    if not has_code(e, "RESOURCE_ALREADY_EXISTS"):
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

    @staticmethod
    def _check_run_id(run_id: str) -> None:
        # It is interpolated into search filters.
        if not _RUN_ID.match(run_id):
            raise MlflowError(f"not an MLflow run id: {run_id!r}")


def _failure(
    op: str, error: Exception, attempts: int, elapsed: float, context: dict[str, Any]
) -> Exception:
    """What an operation that failed for good raises: unavailable (transient) or refused."""
    if is_transient(error):
        observability.MLFLOW_UNAVAILABLE.labels(op).inc()
        log.error(
            "mlflow_unavailable", op=op, **context, attempts=attempts, elapsed_s=round(elapsed, 2)
        )
        return MlflowUnavailable(
            f"MLflow did not answer ({op}) after {attempts} attempt(s) in {elapsed:.1f} s"
        )
    return MlflowError(f"MLflow {op} failed: {describe(error)}", error_code=error_code(error))
