"""One error hierarchy, rendered as RFC 9457 problem+json.

Every expected failure is an `AppError` subclass carrying its HTTP status, a stable `code` from the
contract and a short `title`. The handlers in app/error_handlers.py turn them (and request
validation errors, and anything unexpected) into `application/problem+json` bodies; nothing else
reaches a client, and never a stack trace.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://hokusai.ai/problems/"


# Realistic ids for the examples the OpenAPI document shows.
EXAMPLE_REGISTRATION_ID = "7d9e2c41-5b0a-4f3e-9c8d-1a2b3c4d5e6f"
EXAMPLE_WEBHOOK_ID = "5b1e8f2a-3c4d-4e5f-8a9b-0c1d2e3f4a5b"
EXAMPLE_DELIVERY_ID = "c3d4e5f6-a7b8-4c9d-8e0f-1a2b3c4d5e6f"
_RETRY_AFTER = {"Retry-After": "seconds to wait"}


class AppError(Exception):
    """An expected failure with a contract error code.

    `example` and `example_extra` are the `detail` and extra members the OpenAPI document shows
    for the error, as the code that raises it words them; `documented_headers` describes the
    response headers the error always carries.
    """

    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    title: ClassVar[str] = "Bad request"
    headers: Mapping[str, str] = {}
    example: ClassVar[str] = ""
    example_extra: ClassVar[Mapping[str, Any]] = {}
    documented_headers: ClassVar[Mapping[str, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # An example belongs to its own class: a subclass without one shows its title instead.
        cls.example = vars(cls).get("example", "")
        cls.example_extra = vars(cls).get("example_extra", {})

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
    example = "the API key is not valid"
    documented_headers = {"WWW-Authenticate": "`Bearer`"}


class Forbidden(AppError):
    status = 403
    code = "forbidden"
    title = "The API key lacks the scope this endpoint needs"
    example = "this endpoint needs the 'tokens:read' scope"


class NotFound(AppError):
    status = 404
    code = "not_found"
    title = "Not found"
    example = "Not Found"  # Starlette's words for a path no route serves


class TokenNotFound(NotFound):
    code = "token_not_found"
    title = "Token not found"
    example = "no token XRAY"


class RegistrationNotFound(NotFound):
    code = "registration_not_found"
    title = "Registration not found"
    example = f"no registration {EXAMPLE_REGISTRATION_ID}"


class WebhookNotFound(NotFound):
    code = "webhook_not_found"
    title = "Webhook endpoint not found"
    example = f"no webhook {EXAMPLE_WEBHOOK_ID}"


class BenchmarkNotFound(NotFound):
    code = "benchmark_not_found"
    title = "The token has no benchmark"
    example = "token XRAY has no benchmark"


class ReceiptNotFound(NotFound):
    code = "receipt_not_found"
    title = "The registration has no evaluation receipt"
    example = (
        f"registration {EXAMPLE_REGISTRATION_ID} has no evaluation receipt (it was not evaluated, "
        "or its evaluation has not produced a value)"
    )


class DeliveryNotFound(NotFound):
    code = "delivery_not_found"
    title = "Delivery not found"
    example = f"no delivery {EXAMPLE_DELIVERY_ID} for webhook {EXAMPLE_WEBHOOK_ID}"


class MethodNotAllowed(AppError):
    status = 405
    code = "method_not_allowed"
    title = "Method not allowed"
    example = "Method Not Allowed"


# 409 ---------------------------------------------------------------------------------------------


class Conflict(AppError):
    status = 409
    code = "conflict"
    title = "Conflict with the resource's current state"
    example = "token XRAY changed while this request ran; read it again"


class TokenAlreadyExists(Conflict):
    code = "token_already_exists"
    title = "A token with this id already exists"
    example = "token XRAY already exists"


class TokenNotRegistrable(Conflict):
    code = "token_not_registrable"
    title = "The token cannot be registered in its current status"
    example = "token XRAY is registered; only draft and failed tokens can be registered"
    example_extra = {"token_status": "registered"}


class InvalidStatusTransition(Conflict):
    code = "invalid_status_transition"
    title = "The token cannot move to that status"
    example = "token XRAY is draft; it cannot become deployed"
    example_extra = {"token_status": "draft"}


class RegistrationInProgress(Conflict):
    code = "registration_in_progress"
    title = "A registration for this token is already in progress"
    example = "token XRAY is being registered right now"


class StaticWebhookReadOnly(Conflict):
    code = "static_webhook_readonly"
    title = "The static webhook endpoint is managed by HOKUSAI_WEBHOOK_URL"
    example = (
        "webhook static is configured by HOKUSAI_WEBHOOK_URL and HOKUSAI_WEBHOOK_SECRET; it "
        "cannot be changed through the API"
    )


class WebhookInactive(Conflict):
    code = "webhook_inactive"
    title = "The webhook endpoint is inactive"
    example = f"webhook {EXAMPLE_WEBHOOK_ID} is inactive; re-activate it before retrying"
    example_extra = {"disabled_reason": "the receiver answered 410 Gone"}


# 413 / 415 / 422 / 429 / 431 ----------------------------------------------------------------------


class UploadIncomplete(AppError):
    """The client went away or stalled before its upload was complete: refused, not recorded."""

    status = 400
    code = "upload_incomplete"
    title = "The upload did not arrive"
    example = "the client closed the connection before the upload was complete"


class UploadTimedOut(UploadIncomplete):
    status = 408
    code = "request_timeout"
    title = "The upload was too slow"
    example = "no bytes of the upload arrived for 30 seconds"


class PayloadTooLarge(AppError):
    status = 413
    code = "payload_too_large"
    title = "The request is larger than the service accepts"
    example = "the request body is larger than 1048576 bytes"


class UnsupportedMediaType(AppError):
    status = 415
    code = "unsupported_media_type"
    title = "Unsupported content type"
    example = "send the registration as multipart/form-data"
    example_extra = {"content_type": "application/json"}


class TooManyRequests(AppError):
    """Too many failed authentications from one client address; `Retry-After` says when to retry."""

    status = 429
    code = "too_many_requests"
    title = "Too many failed authentications from this address"
    example = "too many failed authentications from this address; retry in 42 s"
    documented_headers = _RETRY_AFTER


class RequestHeaderFieldsTooLarge(AppError):
    status = 431
    code = "request_header_fields_too_large"
    title = "The request has too many header fields"
    example = "the request has 120 header fields; at most 100 are accepted"


class ValidationFailed(AppError):
    """A registration check rejected the request (422)."""

    status = 422
    code = "validation_error"
    title = "The request is not valid"
    example = "limit: Input should be less than or equal to 200"
    example_extra = {
        "errors": [
            {
                "loc": ["query", "limit"],
                "msg": "Input should be less than or equal to 200",
                "type": "less_than_equal",
            }
        ]
    }


class ModelNameTaken(ValidationFailed):
    code = "model_name_taken"
    title = "The model name belongs to another token"
    example = "the model name 'hokusai-OTHER' belongs to token OTHER"


class UnsupportedMetric(ValidationFailed):
    code = "unsupported_metric"
    title = "Unsupported metric"
    example = (
        "unsupported metric 'auprc'; supported metrics: accuracy, auroc, f1, precision, recall, "
        "log_loss, mse, rmse, mae, r2, reply_rate, conversion_rate, engagement_score"
    )


class InvalidBaseline(ValidationFailed):
    code = "invalid_baseline"
    title = "Invalid baseline"
    example = "baseline must be a finite number in [0, 1] for auroc; got 1.5"
    example_extra = {"metric_name": "auroc", "valid_range": "[0, 1]"}


class InvalidMetricValue(ValidationFailed):
    code = "invalid_metric_value"
    title = "Invalid metric value"
    example = "metric_value must be a finite number in [0, 1] for auroc; got 1.2"
    example_extra = {"metric_name": "auroc", "valid_range": "[0, 1]"}


class BenchmarkMismatch(ValidationFailed):
    code = "benchmark_mismatch"
    title = "The metric or baseline differs from the token's benchmark"
    example = "token XRAY has the baseline 0.82; got 0.8"
    example_extra = {"benchmark": {"metric": "auroc", "baseline": 0.82}}


class MetricBelowBaseline(ValidationFailed):
    code = "metric_below_baseline"
    title = "The model does not beat the baseline"
    example = "auroc 0.8 is below the baseline 0.82 (higher is better)"
    example_extra = {
        "metric": {
            "name": "auroc",
            "value": 0.8,
            "baseline": 0.82,
            "min_improvement": 0.0,
            "improvement": -0.02,
            "higher_is_better": True,
            "passed": False,
        },
        "registration_id": EXAMPLE_REGISTRATION_ID,
    }


class InvalidModelFile(ValidationFailed):
    code = "invalid_model_file"
    title = "The model file is not acceptable"
    example = "The model file is empty."


class InvalidPredictions(ValidationFailed):
    code = "invalid_predictions"
    title = "The predictions file is not acceptable"
    example = "predictions must be a .csv file"


class ChecksumMismatch(ValidationFailed):
    code = "checksum_mismatch"
    title = "The upload does not match the given sha256"
    example = (
        "the upload's sha256 is 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08, "
        "not e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    example_extra = {
        "expected_sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "actual_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    }


class IdempotencyKeyReused(ValidationFailed):
    code = "idempotency_key_reused"
    title = "The idempotency key was used for a different request"
    example = "this Idempotency-Key was used for a different request; use a new key"
    example_extra = {"registration_id": EXAMPLE_REGISTRATION_ID}


class InvalidBenchmark(ValidationFailed):
    code = "invalid_benchmark"
    title = "The benchmark file is not acceptable"
    example = "row 17 has 4 fields; the header has 5"
    example_extra = {"row": 17}


class EvaluationFailed(ValidationFailed):
    """The sandbox could not score the model: it did not load, raised, or broke a limit."""

    code = "evaluation_failed"
    title = "The model could not be evaluated"
    example = (
        "the model raised an error (raised): ValueError: X has 3 features, but "
        "LogisticRegression is expecting 4 features as input."
    )
    example_extra = {"reason": "raised"}


class WebhookUrlNotAllowed(ValidationFailed):
    code = "webhook_url_not_allowed"
    title = "The webhook URL is not allowed here"
    example = "webhooks may not target internal addresses: 10.0.0.7 is a private address"


# 500 / 502 / 503 ---------------------------------------------------------------------------------


class InternalError(AppError):
    status = 500
    code = "internal_error"
    title = "Internal server error"
    example = "the registration failed unexpectedly; the token is now failed"


class RegistrationInterrupted(InternalError):
    """The process registering a model died; the recovery sweep settled the attempt."""

    code = "registration_interrupted"
    title = "Registration interrupted"
    example = (
        "the process registering this model stopped before the registration finished; "
        "the token can be registered again"
    )


class MlflowFailed(AppError):
    """MLflow answered but refused an operation (not a transient outage)."""

    status = 502
    code = "mlflow_error"
    title = "MLflow refused the operation"
    example = "MLflow refused the registration: RESOURCE_ALREADY_EXISTS"


# 503 ---------------------------------------------------------------------------------------------


class ServiceUnavailable(AppError):
    status = 503
    code = "service_unavailable"
    title = "A dependency is unavailable"
    headers = {"Retry-After": "5"}
    example = "a dependency did not answer; try again shortly"
    documented_headers = _RETRY_AFTER


class MlflowUnavailable(ServiceUnavailable):
    code = "mlflow_unavailable"
    title = "MLflow is unavailable"
    example = "MLflow did not answer (create_run) after 4 attempt(s) in 30.2 s"


class DatabaseUnavailable(ServiceUnavailable):
    code = "database_unavailable"
    title = "The database is unavailable"
    example = "the database did not answer; try again shortly"


class EvaluationUnavailable(ServiceUnavailable):
    """This host cannot run models in an isolated sandbox."""

    code = "evaluation_unavailable"
    title = "Models cannot be evaluated on this host"
    example = (
        "this service cannot run models in an isolated sandbox, so it cannot evaluate them (no "
        "bubblewrap or unshare); ask the operator to install bubblewrap"
    )
    example_extra = {"sandbox": "none"}
    headers = {"Retry-After": "60"}


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


# The errors Starlette itself raises (unknown route, wrong method) and the request limits'
# middleware, rendered as the service's own classes.
HTTP_ERRORS: dict[int, type[AppError]] = {
    error.status: error
    for error in (NotFound, MethodNotAllowed, PayloadTooLarge, UnsupportedMediaType)
}
