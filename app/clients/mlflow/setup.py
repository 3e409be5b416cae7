"""MLflow set up for the service: its loggers, its REST client's environment, its stores' URIs."""

from __future__ import annotations

import logging
import math
import os
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from mlflow.environment_variables import MLFLOW_ENABLE_WORKSPACES
from mlflow.store.model_registry.abstract_store import AbstractStore as RegistryStore
from mlflow.telemetry import set_telemetry_client
from mlflow.utils.logging_utils import MlflowFormatter


def is_database_uri(uri: str) -> bool:
    scheme = uri.partition(":")[0].partition("+")[0].lower()
    return scheme in {"sqlite", "postgresql", "mysql", "mssql"}


def database_registry_store(uri: str) -> RegistryStore | None:
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


def as_artifact_uri(location: str) -> str:
    # A bare path becomes an absolute file URI, so the store never resolves it against the cwd.
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", location):
        return location
    return Path(location).expanduser().resolve().as_uri()


@contextmanager
def quiet(logger_name: str) -> Iterator[None]:
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
