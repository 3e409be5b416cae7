"""One error hierarchy, rendered as RFC 9457 problem+json.

Every expected failure is an `AppError` subclass carrying its HTTP status, a stable `code` from the
contract and a short `title`. Handlers in `install_error_handlers` turn them (and request validation
errors, and anything unexpected) into `application/problem+json` bodies; nothing else reaches a
client, and never a stack trace.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import structlog
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = structlog.get_logger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://hokusai.ai/problems/"


class AppError(Exception):
    """An expected failure with a contract error code."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    title: ClassVar[str] = "Bad request"
    headers: Mapping[str, str] = {}

    def __init__(
        self,
        detail: str,
        *,
        extra: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra: dict[str, Any] = dict(extra or {})
        if headers is not None:
            self.headers = dict(headers)

    def problem(self, request_id: str | None = None) -> dict[str, Any]:
        """The problem+json body for this error."""
        return problem_body(
            status=self.status,
            code=self.code,
            title=self.title,
            detail=self.detail,
            request_id=request_id,
            extra=self.extra,
        )


def problem_body(
    *,
    status: int,
    code: str,
    title: str,
    detail: str,
    request_id: str | None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        "request_id": request_id,
    }
    for key, value in (extra or {}).items():
        body.setdefault(key, value)
    return body


# 400 / 401 / 403 / 404 ------------------------------------------------------------------------


class Unauthorized(AppError):
    status = 401
    code = "unauthorized"
    title = "Missing or unknown API key"
    headers = {"WWW-Authenticate": "Bearer"}


class Forbidden(AppError):
    status = 403
    code = "forbidden"
    title = "The API key lacks the scope this endpoint needs"


class NotFound(AppError):
    status = 404
    code = "not_found"
    title = "Not found"


class TokenNotFound(NotFound):
    code = "token_not_found"
    title = "Token not found"


class RegistrationNotFound(NotFound):
    code = "registration_not_found"
    title = "Registration not found"


class WebhookNotFound(NotFound):
    code = "webhook_not_found"
    title = "Webhook endpoint not found"


class DeliveryNotFound(NotFound):
    code = "delivery_not_found"
    title = "Delivery not found"


# 409 ---------------------------------------------------------------------------------------------


class Conflict(AppError):
    status = 409
    code = "conflict"
    title = "Conflict"


class TokenAlreadyExists(Conflict):
    code = "token_already_exists"
    title = "A token with this id already exists"


class TokenNotRegistrable(Conflict):
    code = "token_not_registrable"
    title = "The token cannot be registered in its current status"


class InvalidStatusTransition(Conflict):
    code = "invalid_status_transition"
    title = "The token cannot move to that status"


class RegistrationInProgress(Conflict):
    code = "registration_in_progress"
    title = "A registration for this token is already in progress"


class StaticWebhookReadOnly(Conflict):
    code = "static_webhook_readonly"
    title = "The static webhook endpoint is managed by HOKUSAI_WEBHOOK_URL"


class WebhookInactive(Conflict):
    code = "webhook_inactive"
    title = "The webhook endpoint is inactive"


# 413 / 415 / 422 / 429 / 431 ----------------------------------------------------------------------


class UploadIncomplete(AppError):
    """The client went away or stalled before its upload was complete: refused, not recorded."""

    status = 400
    code = "upload_incomplete"
    title = "The upload did not arrive"


class UploadTimedOut(UploadIncomplete):
    status = 408
    code = "request_timeout"
    title = "The upload was too slow"


class PayloadTooLarge(AppError):
    status = 413
    code = "payload_too_large"
    title = "The upload is larger than the service accepts"


class UnsupportedMediaType(AppError):
    status = 415
    code = "unsupported_media_type"
    title = "Unsupported content type"


class TooManyRequests(AppError):
    """Too many failed authentications from one client address; `Retry-After` says when to retry."""

    status = 429
    code = "too_many_requests"
    title = "Too many failed authentications from this address"


class RequestHeaderFieldsTooLarge(AppError):
    status = 431
    code = "request_header_fields_too_large"
    title = "The request has too many header fields"


class ValidationFailed(AppError):
    """A registration check rejected the request (422)."""

    status = 422
    code = "validation_error"
    title = "The request is not valid"


class ModelNameTaken(ValidationFailed):
    code = "model_name_taken"
    title = "The model name belongs to another token"


class UnsupportedMetric(ValidationFailed):
    code = "unsupported_metric"
    title = "Unsupported metric"


class InvalidBaseline(ValidationFailed):
    code = "invalid_baseline"
    title = "Invalid baseline"


class InvalidMetricValue(ValidationFailed):
    code = "invalid_metric_value"
    title = "Invalid metric value"


class BenchmarkMismatch(ValidationFailed):
    code = "benchmark_mismatch"
    title = "The metric or baseline differs from the token's benchmark"


class MetricBelowBaseline(ValidationFailed):
    code = "metric_below_baseline"
    title = "The model does not beat the baseline"


class InvalidModelFile(ValidationFailed):
    code = "invalid_model_file"
    title = "The model file is not acceptable"


class InvalidPredictions(ValidationFailed):
    code = "invalid_predictions"
    title = "The predictions file is not acceptable"


class ChecksumMismatch(ValidationFailed):
    code = "checksum_mismatch"
    title = "The upload does not match the given sha256"


class IdempotencyKeyReused(ValidationFailed):
    code = "idempotency_key_reused"
    title = "The idempotency key was used for a different request"


class WebhookUrlNotAllowed(ValidationFailed):
    code = "webhook_url_not_allowed"
    title = "The webhook URL is not allowed here"


# 500 / 502 / 503 ---------------------------------------------------------------------------------


class InternalError(AppError):
    status = 500
    code = "internal_error"
    title = "Internal server error"


class RegistrationInterrupted(InternalError):
    """The process registering a model died; the recovery sweep settled the attempt."""

    code = "registration_interrupted"
    title = "Registration interrupted"


class MlflowFailed(AppError):
    """MLflow answered but refused an operation (not a transient outage)."""

    status = 502
    code = "mlflow_error"
    title = "MLflow refused the operation"


# 503 ---------------------------------------------------------------------------------------------


class ServiceUnavailable(AppError):
    status = 503
    code = "service_unavailable"
    title = "A dependency is unavailable"
    headers = {"Retry-After": "5"}


class MlflowUnavailable(ServiceUnavailable):
    code = "mlflow_unavailable"
    title = "MLflow is unavailable"


class DatabaseUnavailable(ServiceUnavailable):
    code = "database_unavailable"
    title = "The database is unavailable"


class StoredProblem(AppError):
    """A problem recorded earlier, raised again when an Idempotency-Key replays it."""

    def __init__(self, problem: Mapping[str, Any]) -> None:
        super().__init__(str(problem.get("detail", "")))
        # Instance values shadow the class defaults: the stored outcome decides.
        self.status = int(problem.get("status", 500))  # type: ignore[misc]
        self.code = str(problem.get("code", "internal_error"))  # type: ignore[misc]
        self.title = str(problem.get("title", "Request failed"))  # type: ignore[misc]
        self.extra = {
            k: v
            for k, v in problem.items()
            if k not in ("type", "title", "status", "detail", "code", "request_id")
        }
        self.extra["idempotent_replay"] = True


# Rendering ---------------------------------------------------------------------------------------


def install_error_handlers(app: FastAPI) -> None:
    """Render every error as problem+json; unexpected ones as a bare 500 with no internals."""
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)


def problem_response(
    body: dict[str, Any], *, status: int, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    all_headers = dict(headers or {})
    if body.get("request_id"):
        all_headers.setdefault("X-Request-ID", body["request_id"])
    return JSONResponse(
        body, status_code=status, headers=all_headers, media_type=PROBLEM_CONTENT_TYPE
    )


def current_request_id() -> str | None:
    value = structlog.contextvars.get_contextvars().get("request_id")
    return str(value) if value is not None else None


async def _app_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AppError)
    return problem_response(
        exc.problem(current_request_id()), status=exc.status, headers=exc.headers
    )


async def _validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    # Field locations and messages only: the rejected input is not echoed back.
    errors = [
        {"loc": list(error.get("loc", ())), "msg": error.get("msg", ""), "type": error.get("type")}
        for error in exc.errors()
    ]
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(part) for part in first["loc"] if part != "body") or "request"
    body = problem_body(
        status=422,
        code="validation_error",
        title="The request is not valid",
        detail=f"{where}: {first['msg']}",
        request_id=current_request_id(),
        extra={"errors": errors},
    )
    return problem_response(body, status=422)


_HTTP_CODES = {
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    413: ("payload_too_large", "The request is larger than the service accepts"),
    415: ("unsupported_media_type", "Unsupported content type"),
}


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and isinstance(exc.__cause__, UnicodeDecodeError):
        # FastAPI reports a JSON body that is not UTF-8 as a bare 400; malformed JSON is a 422
        # validation error, and so is this.
        body = problem_body(
            status=422,
            code="validation_error",
            title="The request is not valid",
            detail="body: the JSON body is not valid UTF-8",
            request_id=current_request_id(),
            extra={"errors": [{"loc": ["body"], "msg": "not valid UTF-8", "type": "json_invalid"}]},
        )
        return problem_response(body, status=422)
    code, title = _HTTP_CODES.get(exc.status_code, ("http_error", "Request failed"))
    detail = exc.detail if isinstance(exc.detail, str) else title
    body = problem_body(
        status=exc.status_code,
        code=code,
        title=title,
        detail=detail,
        request_id=current_request_id(),
    )
    return problem_response(body, status=exc.status_code, headers=exc.headers)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled_error", method=request.method, path=request.url.path)
    body = problem_body(
        status=500,
        code="internal_error",
        title="Internal server error",
        detail="the service hit an unexpected error; it has been logged under this request_id",
        request_id=current_request_id(),
    )
    return problem_response(body, status=500)
