"""Oversized bodies and header floods are refused before they cost anything."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from app.config import MiB
from app.middleware import RequestLimitsMiddleware
from tests.support.service import Api

PROBLEM = "application/problem+json"


def _oversized_token_body() -> bytes:
    return json.dumps({"token_id": "BIG", "metadata": {"blob": "x" * (MiB + 10)}}).encode()


async def _chunks(body: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


class TestOversizedJson:
    async def test_declared_length_over_the_cap_is_413(self, api: Api) -> None:
        response = await api.client.post(
            "/tokens",
            content=_oversized_token_body(),
            headers={**api.auth(), "Content-Type": "application/json"},
        )
        assert response.status_code == 413, response.text
        assert response.headers["content-type"] == PROBLEM
        assert response.json()["code"] == "payload_too_large"
        assert response.headers["X-Request-ID"] == response.json()["request_id"]
        assert (await api.client.get("/tokens/BIG", headers=api.auth())).status_code == 404

    async def test_chunked_body_over_the_cap_is_413(self, api: Api) -> None:
        response = await api.client.post(
            "/tokens",
            content=_chunks(_oversized_token_body()),
            headers={**api.auth(), "Content-Type": "application/json"},
        )
        assert "content-length" not in response.request.headers
        assert response.status_code == 413, response.text
        assert response.headers["content-type"] == PROBLEM
        assert response.json()["code"] == "payload_too_large"
        assert (await api.client.get("/tokens/BIG", headers=api.auth())).status_code == 404

    async def test_chunked_body_under_the_cap_is_accepted(self, api: Api) -> None:
        # Half a MiB of insignificant whitespace: large on the wire, a tiny token.
        body = b'{"token_id": "SMALL"' + b" " * (MiB // 2) + b"}"
        response = await api.client.post(
            "/tokens",
            content=_chunks(body),
            headers={**api.auth(), "Content-Type": "application/json"},
        )
        assert response.status_code == 201, response.text

    async def test_multipart_uploads_are_not_capped_by_the_json_limit(self, api: Api) -> None:
        response = await api.client.post(
            "/models/NOPE/register",
            data={"metric": "auroc", "baseline": "0.8", "metric_value": "0.9"},
            files={"model_file": ("model.pkl", b"\0" * (2 * MiB))},
            headers=api.auth(),
        )
        assert response.status_code != 413
        assert response.json()["code"] == "token_not_found"

    async def test_multipart_elsewhere_is_capped(self, api: Api) -> None:
        # A JSON route reads any other body whole, so the exemption is the upload route's alone.
        response = await api.client.post(
            "/tokens",
            data={"token_id": "BIG"},
            files={"blob": ("blob.bin", b"\0" * (2 * MiB))},
            headers=api.auth(),
        )
        assert response.status_code == 413, response.text
        assert response.json()["code"] == "payload_too_large"


class TestMalformedJson:
    async def test_a_body_that_is_not_utf8_is_a_422_validation_error(self, api: Api) -> None:
        # Found by the fuzz: FastAPI answered this with an undocumented bare 400.
        response = await api.client.post(
            "/tokens",
            content=b"a\x1e\xff\x19\xfe=",
            headers={**api.auth(), "Content-Type": "application/json"},
        )
        assert response.status_code == 422
        assert response.headers["content-type"] == PROBLEM
        assert response.json()["code"] == "validation_error"


class TestHeaderFlood:
    async def test_more_than_100_headers_is_431(self, api: Api) -> None:
        flood = {f"X-Flood-{i}": "1" for i in range(120)}
        response = await api.client.get("/health", headers=flood)
        assert response.status_code == 431
        assert response.headers["content-type"] == PROBLEM
        assert response.json()["code"] == "request_header_fields_too_large"
        assert response.headers["X-Request-ID"]

    async def test_a_few_dozen_headers_are_fine(self, api: Api) -> None:
        response = await api.client.get("/health", headers={f"X-H-{i}": "1" for i in range(60)})
        assert response.status_code == 200


async def _call(
    app: RequestLimitsMiddleware, headers: list[tuple[bytes, bytes]], body: bytes = b""
) -> tuple[int, dict[str, Any]]:
    scope: Scope = {"type": "http", "method": "POST", "path": "/", "headers": headers}
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status = sent[0]["status"]
    payload = b"".join(m.get("body", b"") for m in sent[1:])
    return status, json.loads(payload) if payload.startswith(b"{") else {}


async def _ok(scope: Scope, receive: Receive, send: Send) -> None:
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


class TestLimitsAtTheBoundary:
    @pytest.mark.parametrize(("count", "status"), [(100, 204), (101, 431)])
    async def test_header_count(self, count: int, status: int) -> None:
        app = RequestLimitsMiddleware(_ok, max_body_bytes=10, max_headers=100)
        headers = [(f"x-h-{i}".encode(), b"1") for i in range(count)]
        assert (await _call(app, headers))[0] == status

    @pytest.mark.parametrize(("length", "status"), [(10, 204), (11, 413)])
    async def test_declared_length(self, length: int, status: int) -> None:
        app = RequestLimitsMiddleware(_ok, max_body_bytes=10, max_headers=100)
        headers = [(b"content-length", str(length).encode())]
        code, body = await _call(app, headers, b"x" * length)
        assert code == status
        if status == 413:
            assert body["code"] == "payload_too_large"

    async def test_streamed_bytes_are_counted_without_a_declared_length(self) -> None:
        app = RequestLimitsMiddleware(_ok, max_body_bytes=10, max_headers=100)
        code, body = await _call(app, [(b"transfer-encoding", b"chunked")], b"x" * 11)
        assert code == 413
        assert body["code"] == "payload_too_large"
