"""OpenAPI helpers: problem+json error responses, each with an example of every code it can carry.

Routers list the errors an endpoint can answer with (`AppError` classes); `problem_responses`
turns them into `responses=` entries: one per status, the `Problem` schema under
`application/problem+json`, and one named example per `code`, built by the same `problem_body`
that renders real errors, so the examples cannot drift from what the service sends.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.auth.models import Scope
from app.errors import (
    PROBLEM_CONTENT_TYPE,
    AppError,
    BenchmarkMismatch,
    ChecksumMismatch,
    DatabaseUnavailable,
    DeliveryNotFound,
    Forbidden,
    IdempotencyKeyReused,
    InternalError,
    InvalidBaseline,
    InvalidMetricValue,
    InvalidModelFile,
    InvalidPredictions,
    InvalidStatusTransition,
    MetricBelowBaseline,
    MlflowFailed,
    MlflowUnavailable,
    PayloadTooLarge,
    RegistrationInProgress,
    RegistrationNotFound,
    RequestHeaderFieldsTooLarge,
    StaticWebhookReadOnly,
    TokenAlreadyExists,
    TokenNotFound,
    TokenNotRegistrable,
    TooManyRequests,
    Unauthorized,
    UnsupportedMediaType,
    UnsupportedMetric,
    ValidationFailed,
    WebhookInactive,
    WebhookNotFound,
    WebhookUrlNotAllowed,
    problem_body,
)

PROBLEM_REF = "#/components/schemas/Problem"
EXAMPLE_REQUEST_ID = "4f1c2b0e9a8d4c7e9b1a2c3d4e5f6a7b"
EXAMPLE_REGISTRATION_ID = "7d9e2c41-5b0a-4f3e-9c8d-1a2b3c4d5e6f"
EXAMPLE_WEBHOOK_ID = "5b1e8f2a-3c4d-4e5f-8a9b-0c1d2e3f4a5b"
EXAMPLE_DELIVERY_ID = "c3d4e5f6-a7b8-4c9d-8e0f-1a2b3c4d5e6f"


class Problem(BaseModel):
    """An RFC 9457 problem document; some codes add members of their own (e.g. `token_status`)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(examples=["https://hokusai.ai/problems/token_not_found"])
    title: str = Field(examples=["Token not found"])
    status: int = Field(examples=[404])
    detail: str = Field(examples=["no token XRAY"])
    code: str = Field(
        examples=["token_not_found"], description="stable snake_case error code; branch on this"
    )
    request_id: str | None = Field(
        examples=[EXAMPLE_REQUEST_ID], description="also in the `X-Request-ID` response header"
    )
    errors: list[dict[str, Any]] | None = Field(
        default=None,
        description="with `validation_error` from request parsing: each failing field's "
        "`loc`, `msg` and `type`",
    )


# A realistic `detail` (and extra members) for each error, taken from where the service raises it.
_EXAMPLES: dict[type[AppError], tuple[str, dict[str, Any]]] = {
    Unauthorized: ("the API key is not valid", {}),
    TooManyRequests: (
        "too many failed authentications from this address; retry in 42 s",
        {},
    ),
    TokenNotFound: ("no token XRAY", {}),
    RegistrationNotFound: (f"no registration {EXAMPLE_REGISTRATION_ID}", {}),
    WebhookNotFound: (f"no webhook {EXAMPLE_WEBHOOK_ID}", {}),
    DeliveryNotFound: (f"no delivery {EXAMPLE_DELIVERY_ID} for webhook {EXAMPLE_WEBHOOK_ID}", {}),
    TokenAlreadyExists: ("token XRAY already exists", {}),
    TokenNotRegistrable: (
        "token XRAY is registered; only draft and failed tokens can be registered",
        {"token_status": "registered"},
    ),
    InvalidStatusTransition: (
        "token XRAY is draft; it cannot become deployed",
        {"token_status": "draft"},
    ),
    RegistrationInProgress: ("token XRAY is being registered right now", {}),
    StaticWebhookReadOnly: (
        "webhook static is configured by HOKUSAI_WEBHOOK_URL and HOKUSAI_WEBHOOK_SECRET; it "
        "cannot be changed through the API",
        {},
    ),
    WebhookInactive: (
        f"webhook {EXAMPLE_WEBHOOK_ID} is inactive; re-activate it before retrying",
        {"disabled_reason": "the receiver answered 410 Gone"},
    ),
    PayloadTooLarge: ("the request body is larger than 1048576 bytes", {}),
    UnsupportedMediaType: (
        "send the registration as multipart/form-data",
        {"content_type": "application/json"},
    ),
    RequestHeaderFieldsTooLarge: (
        "the request has 120 header fields; at most 100 are accepted",
        {},
    ),
    ValidationFailed: (
        "limit: Input should be less than or equal to 200",
        {
            "errors": [
                {
                    "loc": ["query", "limit"],
                    "msg": "Input should be less than or equal to 200",
                    "type": "less_than_equal",
                }
            ]
        },
    ),
    UnsupportedMetric: (
        "unsupported metric 'auprc'; supported metrics: accuracy, auroc, f1, precision, recall, "
        "log_loss, mse, rmse, mae, r2, reply_rate, conversion_rate, engagement_score",
        {},
    ),
    InvalidBaseline: (
        "baseline must be a finite number in [0, 1] for auroc; got 1.5",
        {"metric_name": "auroc", "valid_range": "[0, 1]"},
    ),
    InvalidMetricValue: (
        "metric_value must be a finite number in [0, 1] for auroc; got 1.2",
        {"metric_name": "auroc", "valid_range": "[0, 1]"},
    ),
    BenchmarkMismatch: (
        "token XRAY has the baseline 0.82; got 0.8",
        {"benchmark": {"metric": "auroc", "baseline": 0.82}},
    ),
    MetricBelowBaseline: (
        "auroc 0.8 is below the baseline 0.82 (higher is better)",
        {
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
        },
    ),
    InvalidModelFile: ("The model file is empty.", {}),
    InvalidPredictions: ("predictions must be a .csv file", {}),
    ChecksumMismatch: (
        "the upload's sha256 is 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08, "
        "not e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        {
            "expected_sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "actual_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        },
    ),
    IdempotencyKeyReused: (
        "this Idempotency-Key was used for a different request; use a new key",
        {"registration_id": EXAMPLE_REGISTRATION_ID},
    ),
    WebhookUrlNotAllowed: (
        "webhooks may not target internal addresses: 10.0.0.7 is a private address",
        {},
    ),
    InternalError: ("the registration failed unexpectedly; the token is now failed", {}),
    MlflowFailed: ("MLflow refused the registration: RESOURCE_ALREADY_EXISTS", {}),
    MlflowUnavailable: (
        "MLflow did not answer (create_run) after 4 attempt(s) in 30.2 s",
        {},
    ),
    DatabaseUnavailable: ("the database did not answer; try again shortly", {}),
}

_STATUS_TEXT = {
    401: "Missing or unknown API key",
    403: "The API key lacks this endpoint's scope",
    404: "Not found",
    409: "Conflict with the resource's current state",
    413: "The request body is too large",
    415: "Unsupported content type",
    422: "The request is not valid",
    429: "Too many failed authentications from this address; retry after `Retry-After` seconds",
    431: "The request has too many header fields",
    500: "Internal error",
    502: "MLflow refused the operation",
    503: "A dependency is unavailable; retry after `Retry-After` seconds",
}

_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}},
    429: {"Retry-After": {"description": "seconds to wait", "schema": {"type": "string"}}},
    503: {"Retry-After": {"description": "seconds to wait", "schema": {"type": "string"}}},
}

ErrorSpec = type[AppError] | tuple[type[AppError], str] | tuple[type[AppError], str, dict[str, Any]]
"""An error an endpoint can answer with, optionally with the `detail` (and extra members) its
example shows there."""


# FastAPI documents a 422 for every route with parameters, even where only unconstrained path
# parameters could fail (they cannot); such routes document it in the shape the service uses.
REQUEST_NOT_VALID: ErrorSpec = (ValidationFailed, "the request is not valid", {})


def invalid_field(*loc: str | int, msg: str, type_: str) -> ErrorSpec:
    """A `validation_error` from request parsing, as the handler renders it."""
    where = ".".join(str(part) for part in loc if part != "body")
    return (
        ValidationFailed,
        f"{where}: {msg}",
        {"errors": [{"loc": list(loc), "msg": msg, "type": type_}]},
    )


def problem_example(
    error: type[AppError], detail: str | None = None, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The problem+json body `error` renders as, with a realistic detail."""
    default_detail, default_extra = _EXAMPLES.get(error, (error.title, {}))
    return problem_body(
        status=error.status,
        code=error.code,
        title=error.title,
        detail=detail if detail is not None else default_detail,
        request_id=EXAMPLE_REQUEST_ID,
        extra=default_extra if extra is None else extra,
    )


def problem_responses(
    *errors: ErrorSpec, scope: Scope | None = None
) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for these errors: one per status, one named example per error.

    `scope` marks an authenticated endpoint: it adds 401, 403 (naming the scope), 429 (an address
    that failed authentication too often) and 503 `database_unavailable` (the key is looked up in
    the database). 431 is added everywhere: the request limits apply to every route.
    """
    specs: list[ErrorSpec] = []
    if scope is not None:
        specs += [
            Unauthorized,
            (Forbidden, f"this endpoint needs the {scope.value!r} scope", {}),
            TooManyRequests,
        ]
    specs += errors
    if scope is not None:
        specs.append(DatabaseUnavailable)
    specs.append(RequestHeaderFieldsTooLarge)

    by_status: dict[int, dict[str, dict[str, Any]]] = {}
    for spec in specs:
        error, detail, extra = _unpack(spec)
        examples = by_status.setdefault(error.status, {})
        key, n = error.code, 1
        while key in examples:
            n += 1
            key = f"{error.code}_{n}"
        examples[key] = {"summary": error.title, "value": problem_example(error, detail, extra)}
    responses: dict[int | str, dict[str, Any]] = {}
    for status in sorted(by_status):
        examples = by_status[status]
        codes = ", ".join(
            f"`{code}`" for code in dict.fromkeys(e["value"]["code"] for e in examples.values())
        )
        entry: dict[str, Any] = {
            "description": f"{_STATUS_TEXT.get(status, 'Error')}. `code`: {codes}.",
            "content": {
                PROBLEM_CONTENT_TYPE: {"schema": {"$ref": PROBLEM_REF}, "examples": examples}
            },
        }
        if status in _HEADERS:
            entry["headers"] = _HEADERS[status]
        responses[status] = entry
    return responses


def _unpack(spec: ErrorSpec) -> tuple[type[AppError], str | None, dict[str, Any] | None]:
    if not isinstance(spec, tuple):
        return spec, None, None
    if len(spec) == 2:
        return spec[0], spec[1], {}
    return spec


def json_example(example: Any, *, description: str | None = None) -> dict[str, Any]:
    """A `responses=` entry giving a success response an example of its own."""
    entry: dict[str, Any] = {"content": {"application/json": {"example": example}}}
    if description is not None:
        entry["description"] = description
    return entry


def restore_example_nulls(spec: dict[str, Any]) -> dict[str, Any]:
    """Put back the nulls FastAPI strips from examples; returns `spec`, changed in place.

    FastAPI encodes the whole document with `exclude_none`, which also drops the `null` members
    of examples, so an example loses its required nullable fields (`"error": null`). Each example
    is walked along its schema, and every required member that may be null and is missing is set
    to null again.
    """
    schemas: dict[str, Any] = spec.get("components", {}).get("schemas", {})

    def resolve(schema: Any) -> dict[str, Any]:
        while isinstance(schema, dict) and "$ref" in schema:
            schema = schemas.get(str(schema["$ref"]).rsplit("/", 1)[-1], {})
        return schema if isinstance(schema, dict) else {}

    def branches(schema: dict[str, Any]) -> list[dict[str, Any]]:
        found = [schema]
        for keyword in ("anyOf", "oneOf", "allOf"):
            found += [resolve(branch) for branch in schema.get(keyword, [])]
        return found

    def nullable(schema: Any) -> bool:
        for branch in branches(resolve(schema)):
            kind = branch.get("type")
            if kind == "null" or (isinstance(kind, list) and "null" in kind):
                return True
        return False

    def fill(value: Any, schema: Any) -> None:
        for branch in branches(resolve(schema)):
            if isinstance(value, dict) and "properties" in branch:
                properties: dict[str, Any] = branch["properties"]
                for name in branch.get("required", []):
                    if name not in value and nullable(properties.get(name)):
                        value[name] = None
                for name, member in value.items():
                    if name in properties:
                        fill(member, properties[name])
            elif isinstance(value, list) and isinstance(branch.get("items"), dict):
                for item in value:
                    fill(item, branch["items"])

    def fill_content(content: dict[str, Any]) -> None:
        for media in content.values():
            schema = media.get("schema")
            if schema is None:
                continue
            if "example" in media:
                fill(media["example"], schema)
            for example in media.get("examples", {}).values():
                if isinstance(example, dict) and "value" in example:
                    fill(example["value"], schema)

    for schema in schemas.values():
        for example in schema.get("examples", []):
            fill(example, schema)
    for operations in spec.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict):
                continue
            fill_content(operation.get("requestBody", {}).get("content", {}))
            for response in operation.get("responses", {}).values():
                fill_content(response.get("content", {}))
    return spec
