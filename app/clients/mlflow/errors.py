"""What MLflow's failures mean to the service: worth retrying or not, and how they read in a log.

Callers of the package see two errors only: `MlflowUnavailable` (MLflow did not answer within the
retry budget) and `MlflowError` (MLflow answered, and the answer was a failure that retrying will
not fix).
"""

from __future__ import annotations

import re

import requests
import sqlalchemy.exc
from mlflow.exceptions import MlflowException, RestException

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


class MlflowError(Exception):
    """MLflow refused an operation for a reason that retrying will not fix."""

    def __init__(self, message: str, *, error_code: str | None = None) -> None:
        super().__init__(message)
        # MLflow's own code (e.g. "INVALID_PARAMETER_VALUE"), when MLflow gave one.
        self.error_code = error_code


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


def is_unique_violation(exc: BaseException) -> bool:
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


def describe(exc: BaseException, limit: int = 300) -> str:
    # MLflow's messages embed request URLs; keep any user:password@ out of the logs.
    text = _URL_CREDENTIALS.sub("//***@", f"{type(exc).__name__}: {exc}")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def error_code(exc: BaseException) -> str | None:
    return exc.error_code if isinstance(exc, MlflowException) else None


def has_code(exc: BaseException, code: str) -> bool:
    return isinstance(exc, MlflowException) and exc.error_code == code
