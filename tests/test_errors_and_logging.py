"""Problem+json for every kind of failure, the request id, and what a request writes to the log."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import structlog

import app.tokens.service
from app.log_config import configure_logging
from tests.factories import create_token, register
from tests.support.service import Api

PROBLEM = "application/problem+json"
SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
REGISTRATION_STEPS = {
    "receive_upload",
    "check_metric",
    "check_upload",
    "claim_token",
    "log_to_mlflow",
    "commit",
}


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"].endswith(code)
    assert body["title"]
    assert isinstance(body["detail"], str)
    assert body["request_id"] == response.headers["X-Request-ID"]
    return body


def secret_part(key: str) -> str:
    """What follows `hok_<id>_`: the part of a key that authenticates."""
    secret = key.split("_", 2)[2]
    assert len(secret) >= 32
    return secret


@contextmanager
def logging_config(*, level: str, json: bool, to_current_stderr: bool) -> Iterator[None]:
    """Log with another configuration, then as the `api` fixture does again, to its stream.

    `to_current_stderr` writes to `sys.stderr` as it is now (inside a test body, the stream
    `capfd` reads); otherwise the lines go where the session's logging already went.
    """
    root = logging.getLogger()
    streams = [h.stream for h in root.handlers if type(h) is logging.StreamHandler]

    def restore_stream() -> None:
        for handler in root.handlers:
            if streams and type(handler) is logging.StreamHandler:
                handler.setStream(streams[0])

    configure_logging(level=level, json=json)
    if not to_current_stderr:
        restore_stream()
    try:
        yield
    finally:
        configure_logging(level="WARNING", json=False)
        restore_stream()


@contextmanager
def captured_json_logs() -> Iterator[None]:
    """INFO-level JSON lines on the stderr `capfd` reads; call inside the test body."""
    with logging_config(level="INFO", json=True, to_current_stderr=True):
        yield


@pytest.fixture
def quiet_json_logs() -> Iterator[None]:
    """JSON logs: an unhandled error's console traceback takes seconds to render."""
    with logging_config(level="WARNING", json=True, to_current_stderr=False):
        yield


@pytest.fixture
async def lenient_client(api: Api, quiet_json_logs: None) -> AsyncIterator[httpx.AsyncClient]:
    """A client that gets the 500 response instead of the app's exception, like a real server."""
    transport = httpx.ASGITransport(app=api.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


@pytest.fixture
def broken_get_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """`GET /tokens/{id}` hits a bug: the service raises an exception nobody expects."""

    async def boom(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(app.tokens.service, "get_token", boom)


def log_lines(text: str) -> list[dict[str, Any]]:
    lines = [line for line in text.splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            pytest.fail(f"a log line is not JSON: {line[:300]!r}")
    return parsed


class TestRequestId:
    async def test_every_response_carries_one(self, api: Api) -> None:
        # Probes, docs, 401, 200, 404 (app and router), 405: successes and every kind of failure.
        requests = [
            ("GET", "/health", False, 200),
            ("GET", "/ready", False, 200),
            ("GET", "/openapi.json", False, 200),
            ("GET", "/tokens", False, 401),
            ("GET", "/tokens", True, 200),
            ("GET", "/tokens/NOPE", True, 404),
            ("GET", "/no/such/route", False, 404),
            ("DELETE", "/health", False, 405),
        ]
        for method, path, authenticated, status in requests:
            headers = api.auth() if authenticated else {}
            response = await api.client.request(method, path, headers=headers)
            assert response.status_code == status, (method, path, response.text)
            assert SANE_REQUEST_ID.fullmatch(response.headers["X-Request-ID"]), (method, path)

    async def test_each_request_gets_its_own(self, api: Api) -> None:
        ids = {(await api.client.get("/health")).headers["X-Request-ID"] for _ in range(3)}
        assert len(ids) == 3

    async def test_sane_client_id_is_echoed_into_header_and_problem(self, api: Api) -> None:
        for supplied in ("client-req.42_A", "a" * 128, "0"):
            response = await api.client.get(
                "/tokens/NOPE", headers=api.auth() | {"X-Request-ID": supplied}
            )
            assert response.headers["X-Request-ID"] == supplied
            assert assert_problem(response, 404, "token_not_found")["request_id"] == supplied

    async def test_sane_client_id_is_echoed_on_success(self, api: Api) -> None:
        response = await api.client.get("/health", headers={"X-Request-ID": "probe-1"})
        assert response.status_code == 200
        assert response.headers["X-Request-ID"] == "probe-1"

    async def test_insane_client_id_is_replaced(self, api: Api) -> None:
        insane = [
            b"a" * 129,
            b"has space",
            b"semi;colon",
            b"<script>alert(1)</script>",
            b"new\tline",
            b"caf\xc3\xa9",
            b"",
        ]
        auth = [(name.encode(), value.encode()) for name, value in api.auth().items()]
        for supplied in insane:
            response = await api.client.get(
                "/tokens/NOPE", headers=[*auth, (b"X-Request-ID", supplied)]
            )
            replaced = response.headers["X-Request-ID"]
            text = supplied.decode("latin-1")
            assert replaced != text, supplied
            assert SANE_REQUEST_ID.fullmatch(replaced), supplied
            assert assert_problem(response, 404, "token_not_found")["request_id"] == replaced
            if text:
                assert text not in response.text, supplied


class TestUnknownRoute:
    async def test_is_404_problem(self, api: Api) -> None:
        response = await api.client.get("/no/such/route", headers={"X-Request-ID": "nf-1"})
        body = assert_problem(response, 404, "not_found")
        assert body["request_id"] == "nf-1"

    async def test_is_404_problem_without_a_key(self, api: Api) -> None:
        response = await api.client.post("/nothing-here", json={"a": 1})
        assert_problem(response, 404, "not_found")


class TestWrongMethod:
    @pytest.mark.parametrize(("method", "path"), [("DELETE", "/health"), ("PUT", "/tokens")])
    async def test_is_405_problem(self, api: Api, method: str, path: str) -> None:
        response = await api.client.request(method, path, headers=api.auth())
        assert_problem(response, 405, "method_not_allowed")
        assert response.headers["Allow"]


class TestUnexpectedError:
    async def test_is_a_bare_500_problem(
        self, api: Api, lenient_client: httpx.AsyncClient, broken_get_token: None
    ) -> None:
        response = await lenient_client.get("/tokens/XRAY", headers=api.auth())
        assert response.status_code == 500
        assert response.headers["content-type"] == PROBLEM
        body = response.json()
        assert body["code"] == "internal_error"
        assert body["status"] == 500
        assert "secret internals" not in response.text
        assert "Traceback" not in response.text
        assert "RuntimeError" not in response.text

    async def test_500_keeps_the_request_id(
        self, api: Api, lenient_client: httpx.AsyncClient, broken_get_token: None
    ) -> None:
        response = await lenient_client.get(
            "/tokens/XRAY", headers=api.auth() | {"X-Request-ID": "boom-1"}
        )
        assert response.status_code == 500
        assert response.json()["request_id"] == "boom-1"
        assert response.headers.get("X-Request-ID") == "boom-1"

    async def test_service_keeps_serving_after_it(
        self, api: Api, lenient_client: httpx.AsyncClient, broken_get_token: None
    ) -> None:
        assert (await lenient_client.get("/tokens/XRAY", headers=api.auth())).status_code == 500
        response = await lenient_client.get("/tokens", headers=api.auth())
        assert response.status_code == 200
        assert response.json()["items"] == []


class TestRequestValidation:
    async def test_invalid_body_field(self, api: Api) -> None:
        response = await api.client.post(
            "/tokens", json={"token_id": "-bad-zqx-"}, headers=api.auth()
        )
        body = assert_problem(response, 422, "validation_error")
        assert isinstance(body["errors"], list) and body["errors"]
        assert body["errors"][0]["loc"] == ["body", "token_id"]
        assert body["errors"][0]["msg"]
        assert body["errors"][0]["type"]
        assert "token_id" in body["detail"]
        # Locations and messages only: the rejected input is not echoed back.
        assert "zqx" not in response.text

    async def test_missing_body_field(self, api: Api) -> None:
        response = await api.client.post("/tokens", json={"name": "x"}, headers=api.auth())
        body = assert_problem(response, 422, "validation_error")
        assert ["body", "token_id"] in [error["loc"] for error in body["errors"]]

    async def test_malformed_json(self, api: Api) -> None:
        response = await api.client.post(
            "/tokens",
            content=b'{"token_id": ',
            headers=api.auth() | {"Content-Type": "application/json"},
        )
        body = assert_problem(response, 422, "validation_error")
        assert body["errors"]

    async def test_invalid_query_parameter(self, api: Api) -> None:
        response = await api.client.get("/tokens?limit=0", headers=api.auth())
        body = assert_problem(response, 422, "validation_error")
        assert body["errors"][0]["loc"] == ["query", "limit"]


class TestRegistrationLogging:
    @pytest.mark.parametrize("header", ["Authorization", "X-API-Key"])
    async def test_one_request_id_steps_timed_and_no_key(
        self, api: Api, capfd: pytest.CaptureFixture[str], header: str
    ) -> None:
        token_id = f"LOG-{api.backend}".upper()
        await create_token(api.client, api.auth(), token_id=token_id)
        auth = api.auth() if header == "Authorization" else {"X-API-Key": api.admin_key}

        with captured_json_logs():
            capfd.readouterr()
            response = await register(
                api.client, auth | {"X-Request-ID": "reg-log-1"}, token_id=token_id
            )
            captured = capfd.readouterr()

        assert response.status_code == 201, response.text
        registration_id = response.json()["registration_id"]
        output = captured.out + captured.err
        assert api.admin_key not in output
        assert secret_part(api.admin_key) not in output
        lines = log_lines(captured.err)
        assert {line.get("request_id") for line in lines} == {"reg-log-1"}
        steps = [line for line in lines if line["event"] == "registration_step"]
        assert {line["step"] for line in steps} >= REGISTRATION_STEPS
        for line in steps:
            assert isinstance(line["duration_ms"], int | float)
            assert line["duration_ms"] >= 0
            assert line["registration_id"] == registration_id
            assert line["token_id"] == token_id
        finished = [line for line in lines if line["event"] == "request_finished"]
        assert len(finished) == 1
        assert finished[0]["status"] == 201
        assert finished[0]["path"] == f"/models/{token_id}/register"
        assert finished[0]["method"] == "POST"

    async def test_rejected_registration_logs_under_its_request_id(
        self, api: Api, capfd: pytest.CaptureFixture[str]
    ) -> None:
        token_id = f"LOGNO-{api.backend}".upper()
        await create_token(api.client, api.auth(), token_id=token_id)

        with captured_json_logs():
            capfd.readouterr()
            response = await register(
                api.client,
                api.auth() | {"X-Request-ID": "reg-log-2"},
                token_id=token_id,
                metric_value=0.5,
            )
            captured = capfd.readouterr()

        assert response.status_code == 422
        lines = log_lines(captured.err)
        assert {line.get("request_id") for line in lines} == {"reg-log-2"}
        rejected = [line for line in lines if line["event"] == "registration_rejected"]
        assert [line["code"] for line in rejected] == ["metric_below_baseline"]
        assert secret_part(api.admin_key) not in captured.out + captured.err

    async def test_unhandled_error_is_logged_without_the_key(
        self,
        api: Api,
        capfd: pytest.CaptureFixture[str],
        lenient_client: httpx.AsyncClient,
        broken_get_token: None,
    ) -> None:
        with captured_json_logs():
            capfd.readouterr()
            response = await lenient_client.get("/tokens/XRAY", headers=api.auth())
            captured = capfd.readouterr()

        assert response.status_code == 500
        lines = log_lines(captured.err)
        errors = [line for line in lines if line["event"] == "unhandled_error"]
        assert len(errors) == 1
        assert "secret internals" in errors[0]["exception"]
        assert secret_part(api.admin_key) not in captured.out + captured.err

    async def test_unhandled_error_log_carries_the_request_id(
        self,
        api: Api,
        capfd: pytest.CaptureFixture[str],
        lenient_client: httpx.AsyncClient,
        broken_get_token: None,
    ) -> None:
        with captured_json_logs():
            capfd.readouterr()
            await lenient_client.get(
                "/tokens/XRAY", headers=api.auth() | {"X-Request-ID": "boom-2"}
            )
            captured = capfd.readouterr()

        errors = [line for line in log_lines(captured.err) if line["event"] == "unhandled_error"]
        assert [line.get("request_id") for line in errors] == ["boom-2"]


class TestConsoleLogging:
    def test_traceback_does_not_show_local_secrets(self, capfd: pytest.CaptureFixture[str]) -> None:
        key = "hok_0123456789ab_" + "S3cr3tPartOfTheKeyThatMustNotBeLogged0"

        def handler(scope: dict[str, Any]) -> None:
            raise RuntimeError("secret internals")

        with logging_config(level="WARNING", json=False, to_current_stderr=True):
            capfd.readouterr()
            try:
                handler({"headers": [(b"authorization", f"Bearer {key}".encode())]})
            except RuntimeError:
                structlog.get_logger("app.errors").exception("unhandled_error")
            captured = capfd.readouterr()

        assert "unhandled_error" in captured.err
        assert "S3cr3tPartOfTheKey" not in captured.out + captured.err
