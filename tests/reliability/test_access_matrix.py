"""Every endpoint against every scope: 401 without a key, 403 without the scope, through with it.

The endpoints are read from the app itself (its OpenAPI operations), so an endpoint added without
an entry in `REQUIRED_SCOPE` fails here rather than going untested.
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest

from app.auth.models import Scope
from app.main import create_app
from tests.support.service import Api, make_settings

OPEN = None

# The contract's table: which scope each operation needs (`OPEN`: no key at all).
REQUIRED_SCOPE: dict[tuple[str, str], Scope | None] = {
    ("GET", "/health"): OPEN,
    ("GET", "/ready"): OPEN,
    ("POST", "/tokens"): Scope.TOKENS_WRITE,
    ("GET", "/tokens"): Scope.TOKENS_READ,
    ("GET", "/tokens/{token_id}"): Scope.TOKENS_READ,
    ("PATCH", "/tokens/{token_id}"): Scope.TOKENS_WRITE,
    ("POST", "/models/{token_id}/register"): Scope.MODELS_REGISTER,
    ("GET", "/registrations/{registration_id}"): Scope.TOKENS_READ,
    ("GET", "/tokens/{token_id}/registrations"): Scope.TOKENS_READ,
    ("GET", "/events"): Scope.EVENTS_READ,
    ("POST", "/webhooks"): Scope.WEBHOOKS_MANAGE,
    ("GET", "/webhooks"): Scope.WEBHOOKS_MANAGE,
    ("GET", "/webhooks/{webhook_id}"): Scope.WEBHOOKS_MANAGE,
    ("PATCH", "/webhooks/{webhook_id}"): Scope.WEBHOOKS_MANAGE,
    ("POST", "/webhooks/{webhook_id}/rotate-secret"): Scope.WEBHOOKS_MANAGE,
    ("DELETE", "/webhooks/{webhook_id}"): Scope.WEBHOOKS_MANAGE,
    ("GET", "/webhooks/{webhook_id}/deliveries"): Scope.WEBHOOKS_MANAGE,
    ("POST", "/webhooks/{webhook_id}/deliveries/{delivery_id}/retry"): Scope.WEBHOOKS_MANAGE,
    ("POST", "/webhooks/{webhook_id}/test"): Scope.WEBHOOKS_MANAGE,
    ("PUT", "/tokens/{token_id}/benchmark"): Scope.BENCHMARKS_MANAGE,
    ("GET", "/tokens/{token_id}/benchmark"): Scope.TOKENS_READ,
    ("GET", "/registrations/{registration_id}/receipt"): Scope.TOKENS_READ,
    ("GET", "/.well-known/jwks.json"): OPEN,
}

# The columns: a key holding exactly one scope, and no key at all.
CALLERS: list[Scope | None] = [*Scope, None]

_PATH_VALUES = {
    "token_id": "XRAY",
    "registration_id": str(uuid.uuid4()),
    "webhook_id": str(uuid.uuid4()),
    "delivery_id": str(uuid.uuid4()),
}
_JSON_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/tokens"): {"token_id": "MATRIX"},
    ("PATCH", "/tokens/{token_id}"): {"status": "archived"},
    ("POST", "/webhooks"): {"url": "http://127.0.0.1:9/hook", "event_types": ["*"]},
    ("PATCH", "/webhooks/{webhook_id}"): {"description": "x"},
}


def _operations() -> list[tuple[str, str]]:
    """Every (method, path) the app documents, read from a freshly built app."""
    scratch = Path(tempfile.gettempdir()) / "hokusai-access-matrix"
    app = create_app(make_settings(scratch, f"sqlite:///{scratch / 'unused.db'}", scratch))
    paths: dict[str, dict[str, Any]] = app.openapi()["paths"]
    return sorted(
        (method.upper(), path)
        for path, item in paths.items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    )


OPERATIONS = _operations()


def test_every_operation_has_a_declared_scope() -> None:
    assert set(OPERATIONS) == set(REQUIRED_SCOPE), (
        "declare the scope of each new endpoint in REQUIRED_SCOPE (and drop removed ones)"
    )


def test_the_matrix_covers_every_operation_and_caller() -> None:
    assert len(OPERATIONS) * len(CALLERS) >= 18 * 7


async def _call(api: Api, method: str, path: str, headers: dict[str, str]) -> Any:
    url = path.format(**_PATH_VALUES)
    if method == "POST" and path == "/models/{token_id}/register":
        return await api.client.post(
            url,
            data={"metric": "auroc", "baseline": "0.8", "metric_value": "0.9"},
            files={"model_file": ("model.pkl", b"not a model")},
            headers=headers,
        )
    body = _JSON_BODIES.get((method, path))
    return await api.client.request(method, url, json=body, headers=headers)


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
async def test_access(api: Api, method: str, path: str) -> None:
    assert (method, path) in REQUIRED_SCOPE, f"no scope declared for {method} {path}"
    required = REQUIRED_SCOPE[(method, path)]
    keys = {scope: await api.key_with(scope.value) for scope in Scope}
    wrong: list[str] = []
    for caller in CALLERS:
        headers = api.auth(keys[caller]) if caller is not None else {}
        response = await _call(api, method, path, headers)
        status = response.status_code
        if required is OPEN:
            expected = "neither 401 nor 403"
            ok = status not in (401, 403)
        elif caller is None:
            expected = "401 unauthorized"
            ok = status == 401 and response.json()["code"] == "unauthorized"
            bogus = await _call(api, method, path, {"Authorization": "Bearer hok_0_nope"})
            ok = ok and bogus.status_code == 401
        elif caller in (required, Scope.ADMIN):
            expected = "neither 401 nor 403"
            ok = status not in (401, 403)
        else:
            expected = "403 forbidden"
            ok = (
                status == 403
                and response.headers["content-type"] == "application/problem+json"
                and response.json()["code"] == "forbidden"
            )
        if not ok:
            wrong.append(f"{caller or 'no key'}: got {status}, expected {expected}")
    assert not wrong, f"{method} {path}: " + "; ".join(wrong)
