"""The client's copies of what it shares with the service match the service: its registries and
the OpenAPI document it serves. A change on one side that the other does not follow fails here.

The verified-evaluation additions of the contract (a registration `evaluating`, the
`benchmarks:manage` scope, the benchmark and receipt error codes) are known to the client before
the service serves them; they may be missing from the service, never different in it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypeVar

import pytest

from app import errors
from app.auth.models import Scope
from app.events.models import DeliveryStatus
from app.events.outbox import EventType
from app.main import create_app
from app.registration.models import RegistrationStatus
from app.scoring.registry import METRICS as SERVICE_METRICS
from app.tokens.models import TokenStatus
from hokusai_client import constants
from hokusai_client.commands.errors import HINTS

CONTRACT = Path(__file__).resolve().parents[3] / "shared" / "CONTRACT.md"
# Named in the contract's "Verified evaluation" section; the service may not serve them yet.
EVALUATION_CODES = {
    "benchmark_not_found": 404,
    "receipt_not_found": 404,
    "invalid_benchmark": 422,
    "evaluation_failed": 422,
    "evaluation_unavailable": 503,
}


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    document: dict[str, Any] = create_app().openapi()
    return document


def _enum(openapi: dict[str, Any], name: str) -> list[str]:
    values: list[str] = openapi["components"]["schemas"][name]["enum"]
    return values


def test_metrics_are_the_services_metrics() -> None:
    assert list(constants.METRICS) == list(SERVICE_METRICS)
    for name, spec in SERVICE_METRICS.items():
        mine = constants.METRICS[name]
        assert (mine.aliases, mine.lower, mine.upper) == (spec.aliases, spec.lower, spec.upper)
        assert (mine.higher_is_better, mine.computable) == (spec.higher_is_better, spec.computable)
        for alias in (name, *spec.aliases):
            assert constants.resolve_metric(alias.upper()) is mine


def test_token_statuses(openapi: dict[str, Any]) -> None:
    assert list(constants.TOKEN_STATUSES) == [s.value for s in TokenStatus]
    assert list(constants.TOKEN_STATUSES) == _enum(openapi, "TokenStatus")


def test_delivery_statuses(openapi: dict[str, Any]) -> None:
    assert list(constants.DELIVERY_STATUSES) == [s.value for s in DeliveryStatus]
    assert list(constants.DELIVERY_STATUSES) == _enum(openapi, "DeliveryStatus")


def test_registration_statuses(openapi: dict[str, Any]) -> None:
    served = set(_enum(openapi, "RegistrationStatus"))
    assert served == {s.value for s in RegistrationStatus}
    assert served <= set(constants.REGISTRATION_STATUSES)
    assert set(constants.REGISTRATION_STATUSES) - served <= {"evaluating"}
    assert served >= constants.FINAL_REGISTRATION_STATUSES


def test_scopes_and_event_types() -> None:
    assert {s.value for s in Scope} <= set(constants.SCOPES)
    assert set(constants.SCOPES) - {s.value for s in Scope} <= {"benchmarks:manage"}
    served = {v for k, v in vars(EventType).items() if k.isupper()}
    assert served == set(constants.EVENT_TYPES)


T = TypeVar("T")


def _subclasses(cls: type[T]) -> list[type[T]]:
    found: list[type[T]] = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def _service_codes() -> dict[str, int | None]:
    """Every code app/errors.py and its handlers (app/error_handlers.py) can put in a problem,
    with its status where a class says it."""
    classes: list[type[errors.AppError]] = [errors.AppError, *_subclasses(errors.AppError)]
    codes: dict[str, int | None] = {cls.code: cls.status for cls in classes}
    for status, error in errors.HTTP_ERRORS.items():
        codes.setdefault(error.code, status)
    folder = Path(errors.__file__).parent
    source = "\n".join((folder / name).read_text() for name in ("errors.py", "error_handlers.py"))
    for code in re.findall(r'code="([a-z_]+)"', source):
        codes.setdefault(code, None)
    codes.setdefault("http_error", None)
    return codes


def test_every_service_error_code_is_known_with_its_status() -> None:
    service = _service_codes()
    assert set(service) <= set(constants.ERROR_CODES), set(service) - set(constants.ERROR_CODES)
    for code, status in service.items():
        if status is not None and code != errors.AppError.code:
            assert constants.ERROR_CODES[code] == status, code
    extra = set(constants.ERROR_CODES) - set(service)
    assert extra <= set(EVALUATION_CODES), extra
    for code, status in EVALUATION_CODES.items():
        assert constants.ERROR_CODES[code] == status


def test_every_contract_error_code_is_known() -> None:
    if not CONTRACT.exists():
        pytest.skip("CONTRACT.md is not beside the repository")
    text = CONTRACT.read_text()
    named = set(re.findall(r"`([a-z]+(?:_[a-z]+)+)`\s+(?:4\d\d|5\d\d)", text))
    named |= set(re.findall(r"(?:4\d\d|5\d\d) `([a-z]+(?:_[a-z]+)+)`", text))
    assert named, "no error codes found in the contract"
    assert named <= set(constants.ERROR_CODES), named - set(constants.ERROR_CODES)


def test_hints_are_for_known_codes() -> None:
    assert set(HINTS) <= set(constants.ERROR_CODES)
