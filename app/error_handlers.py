"""The handlers that render every error as RFC 9457 problem+json (the classes: app/errors.py).

An `AppError` as its own problem; a request validation error as a 422 `validation_error` naming
the field, never echoing the input; Starlette's own errors (unknown route, wrong method) as the
service's classes (`HTTP_ERRORS`); anything else as a bare 500 `internal_error`, logged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.errors import HTTP_ERRORS, PROBLEM_CONTENT_TYPE, AppError, problem_body

# The name unhandled_error lines have always carried (it is in every JSON log line).
log = structlog.get_logger("app.errors")


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
    error = HTTP_ERRORS.get(exc.status_code)
    code, title = (error.code, error.title) if error else ("http_error", "Request failed")
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
