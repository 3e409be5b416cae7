"""OpenAPI helpers: problem+json error responses, each with an example of every code it can carry.

Routers list the errors an endpoint can answer with (`AppError` classes); `problem_responses`
turns them into `responses=` entries: one per status, the `Problem` schema under
`application/problem+json`, and one named example per `code`, built by the same `problem_body`
that renders real errors, so the examples cannot drift from what the service sends.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field

from app.auth.models import Scope
from app.errors import (
    PROBLEM_CONTENT_TYPE,
    AppError,
    DatabaseUnavailable,
    Forbidden,
    RequestHeaderFieldsTooLarge,
    TooManyRequests,
    Unauthorized,
    ValidationFailed,
    problem_body,
)

PROBLEM_REF = "#/components/schemas/Problem"
EXAMPLE_REQUEST_ID = "4f1c2b0e9a8d4c7e9b1a2c3d4e5f6a7b"


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
    """The problem+json body `error` renders as, with its class's example unless given others."""
    return problem_body(
        status=error.status,
        code=error.code,
        title=error.title,
        detail=detail if detail is not None else (error.example or error.title),
        request_id=EXAMPLE_REQUEST_ID,
        extra=error.example_extra if extra is None else extra,
    )


def _status_error(status: int, errors: list[type[AppError]]) -> type[AppError]:
    """The general error of a status: the class all the errors of that status derive from."""
    error = errors[0]
    while error.__base__ is not None and getattr(error.__base__, "status", None) == status:
        error = error.__base__  # e.g. TokenNotFound -> NotFound
    return error


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
    classes: dict[int, list[type[AppError]]] = {}
    for spec in specs:
        error, detail, extra = _unpack(spec)
        classes.setdefault(error.status, []).append(error)
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
        general = _status_error(status, classes[status])
        headers = {
            name: {"description": text, "schema": {"type": "string"}}
            for error in classes[status]
            for name, text in error.documented_headers.items()
        }
        retry = "; retry after `Retry-After` seconds" if "Retry-After" in headers else ""
        entry: dict[str, Any] = {
            "description": f"{general.title}{retry}. `code`: {codes}.",
            "content": {
                PROBLEM_CONTENT_TYPE: {"schema": {"$ref": PROBLEM_REF}, "examples": examples}
            },
        }
        if headers:
            entry["headers"] = headers
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


def install_openapi(app: FastAPI) -> None:
    """Serve the document with the `Problem` schema and with the nulls of its examples.

    Both changes go through FastAPI's documented hook for extending the document (replacing
    `app.openapi`), and both make up for a FastAPI limitation:

    - FastAPI documents a `responses` entry's `model` under the route's own media type
      (`application/json`), never `application/problem+json` (fastapi/fastapi#3122, open), and
      the service answers errors only as problem+json. So `problem_responses` refers to
      `PROBLEM_REF`, and the schema is added to the components here. When a `responses` model can
      name its media type, give `problem_responses` `"model": Problem` and drop the addition.
    - FastAPI encodes the document with `exclude_none`, which also drops the nulls of examples
      (fastapi/fastapi#5559, open; a fix is proposed in fastapi/fastapi#15646). When a release
      keeps them, drop `restore_example_nulls`.

    tests/test_openapi.py (`TestFastApiLimits`) fails when either limitation is gone.
    """
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = original()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.setdefault("Problem", Problem.model_json_schema())
            app.openapi_schema = restore_example_nulls(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def restore_example_nulls(spec: dict[str, Any]) -> dict[str, Any]:
    """Put back the nulls FastAPI strips from examples; returns `spec`, changed in place.

    FastAPI encodes the whole document with `exclude_none`, which also drops the `null` members
    of examples, so an example loses its required nullable fields (`"error": null`). Each example
    is walked along its schema, and every required member that may be null and is missing is set
    to null again.
    """
    schemas: dict[str, Any] = spec.get("components", {}).get("schemas", {})
    nulls = _ExampleNulls(schemas)
    for schema in schemas.values():
        for example in schema.get("examples", []):
            nulls.fill(example, schema)
    for operations in spec.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict):
                continue
            nulls.fill_content(operation.get("requestBody", {}).get("content", {}))
            for response in operation.get("responses", {}).values():
                nulls.fill_content(response.get("content", {}))
    return spec


class _ExampleNulls:
    """Walks examples along their schemas (`$ref`s resolved against the document's components)
    and sets each missing required member that may be null to null."""

    def __init__(self, schemas: dict[str, Any]) -> None:
        self.schemas = schemas

    def resolve(self, schema: Any) -> dict[str, Any]:
        while isinstance(schema, dict) and "$ref" in schema:
            schema = self.schemas.get(str(schema["$ref"]).rsplit("/", 1)[-1], {})
        return schema if isinstance(schema, dict) else {}

    def branches(self, schema: dict[str, Any]) -> list[dict[str, Any]]:
        found = [schema]
        for keyword in ("anyOf", "oneOf", "allOf"):
            found += [self.resolve(branch) for branch in schema.get(keyword, [])]
        return found

    def nullable(self, schema: Any) -> bool:
        for branch in self.branches(self.resolve(schema)):
            kind = branch.get("type")
            if kind == "null" or (isinstance(kind, list) and "null" in kind):
                return True
        return False

    def fill(self, value: Any, schema: Any) -> None:
        for branch in self.branches(self.resolve(schema)):
            if isinstance(value, dict) and "properties" in branch:
                properties: dict[str, Any] = branch["properties"]
                for name in branch.get("required", []):
                    if name not in value and self.nullable(properties.get(name)):
                        value[name] = None
                for name, member in value.items():
                    if name in properties:
                        self.fill(member, properties[name])
            elif isinstance(value, list) and isinstance(branch.get("items"), dict):
                for item in value:
                    self.fill(item, branch["items"])

    def fill_content(self, content: dict[str, Any]) -> None:
        for media in content.values():
            schema = media.get("schema")
            if schema is None:
                continue
            if "example" in media:
                self.fill(media["example"], schema)
            for example in media.get("examples", {}).values():
                if isinstance(example, dict) and "value" in example:
                    self.fill(example["value"], schema)
