"""The exceptions the client raises: one base class, one subclass per kind of failure.

A refusal by the service carries its RFC 9457 problem (`code`, `title`, `detail`, `request_id`)
and the body as it came, so a caller can branch on `code` or show the service's own words.
"""

from __future__ import annotations

import json
from typing import Any


class HokusaiError(Exception):
    """Anything the client could not do."""


class UsageError(HokusaiError, ValueError):
    """An argument the client refuses before sending anything (a bad URL, a bad option)."""


class ConnectionFailed(HokusaiError):
    """The service could not be reached, or the connection broke before an answer came.

    `reached` tells the two apart: when it is true the service may have received the request.
    """

    def __init__(self, message: str, *, api_url: str, reached: bool) -> None:
        super().__init__(message)
        self.api_url = api_url
        self.reached = reached


class UnexpectedResponse(HokusaiError):
    """An answer the client does not understand (a status it did not expect, a body not JSON)."""

    def __init__(self, message: str, *, status: int, text: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.text = text


class ApiError(HokusaiError):
    """The service refused the request: a 4xx or 5xx answer, usually with a problem+json body."""

    def __init__(
        self,
        status: int,
        problem: dict[str, Any],
        *,
        text: str = "",
        reason: str = "",
        api_url: str = "",
    ) -> None:
        self.status = status
        self.problem = problem
        self.text = text
        self.reason = reason
        self.api_url = api_url
        self.code = str(problem.get("code") or "")
        self.title = str(problem.get("title") or f"HTTP {status}")
        self.detail = str(problem.get("detail") or "")
        request_id = problem.get("request_id")
        self.request_id = str(request_id) if request_id else None
        super().__init__(self.summary())

    def summary(self) -> str:
        """One line: `title: detail (code)`, or the status and body for a non-problem answer."""
        if not self.code:
            line = f"HTTP {self.status} {self.reason}".rstrip() + (
                f" from {self.api_url}" if self.api_url else ""
            )
            if self.text and len(self.text) < 300:
                line += f": {self.text.strip()}"
            return line
        line = (
            f"{self.title}: {self.detail} ({self.code})"
            if self.detail
            else f"{self.title} ({self.code})"
        )
        if self.status >= 500 and self.request_id:
            line += f" [request_id {self.request_id}]"
        return line


class AuthError(ApiError):
    """401 or 403: a missing or unknown key, or one without the needed scope."""


class NotFound(ApiError):
    """404 or 410: no such token, registration, benchmark, receipt or webhook."""


class Conflict(ApiError):
    """409: the current state does not allow it (a token in the wrong status, a running attempt)."""


class InvalidRequest(ApiError):
    """400, 413, 415, 422 and other 4xx: the service refused the input; nothing changed."""


class ServiceUnavailable(ApiError):
    """5xx: the service or one of its dependencies failed (after the client's retries)."""


class RegistrationRefused(ApiError):
    """A registration that ended `rejected` or `failed`; `registration` holds its JSON."""

    def __init__(self, registration: dict[str, Any], *, api_url: str = "") -> None:
        problem = registration.get("error") if isinstance(registration.get("error"), dict) else {}
        assert isinstance(problem, dict)
        status = problem.get("status")
        super().__init__(
            status if isinstance(status, int) else 422,
            problem,
            text=json.dumps(registration),
            api_url=api_url,
        )
        self.registration = registration


class ReceiptInvalid(HokusaiError):
    """A receipt whose signature does not verify against the service's published keys."""


def error_for_status(
    status: int, problem: dict[str, Any], *, text: str, reason: str, api_url: str
) -> ApiError:
    """The ApiError subclass for an HTTP error status."""
    kind: type[ApiError]
    if status in (401, 403):
        kind = AuthError
    elif status in (404, 410):
        kind = NotFound
    elif status == 409:
        kind = Conflict
    elif status >= 500:
        kind = ServiceUnavailable
    else:
        kind = InvalidRequest
    return kind(status, problem, text=text, reason=reason, api_url=api_url)
