"""Hostile and odd multipart bodies sent to `POST /models/{token_id}/register`.

Bodies are built byte by byte, so nothing in the client tidies them up. Every refusal leaves the
token a draft, MLflow without a version, and the upload folder without leftovers.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from mlflow import MlflowClient

from app.registration import checks
from tests.factories import create_token, pickle_bytes, register, sha256
from tests.support.mlflow import model_versions
from tests.support.service import Api

MiB = 1024 * 1024
BOUNDARY = "hokusai-test-boundary-7f3a"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def part(
    name: str,
    value: bytes,
    *,
    filename: str | None = None,
    content_type: str | None = None,
    boundary: str = BOUNDARY,
) -> bytes:
    disposition = f'form-data; name="{name}"'
    if filename is not None:
        disposition += f'; filename="{filename}"'
    head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
    if content_type is not None:
        head += f"Content-Type: {content_type}\r\n"
    return head.encode() + b"\r\n" + value + b"\r\n"


def model_part(value: bytes | None = None, *, filename: str = "model.pkl") -> bytes:
    return part(
        "model_file",
        pickle_bytes() if value is None else value,
        filename=filename,
        content_type="application/octet-stream",
    )


def metric_parts(*, metric: bytes = b"auroc") -> list[bytes]:
    return [part("metric", metric), part("baseline", b"0.82"), part("metric_value", b"0.86")]


def multipart(*parts: bytes, closed: bool = True, boundary: str = BOUNDARY) -> bytes:
    return b"".join(parts) + (f"--{boundary}--\r\n".encode() if closed else b"")


def leftovers(api: Api) -> set[Path]:
    return set(api.settings.upload_dir.rglob("*"))


@pytest.fixture
async def draft(api: Api) -> AsyncIterator[str]:
    """A draft token of its own (MLflow outlives the database); no upload leftovers after."""
    token_id = f"UP-{api.backend}-{uuid.uuid4().hex[:8]}".upper()
    await create_token(api.client, api.auth(), token_id=token_id)
    before = leftovers(api)
    yield token_id
    assert leftovers(api) == before


async def post_raw(
    api: Api, token_id: str, body: bytes, *, content_type: str = CONTENT_TYPE
) -> httpx.Response:
    return await api.client.post(
        f"/models/{token_id}/register",
        content=body,
        headers=api.auth() | {"Content-Type": content_type},
    )


async def assert_refused(
    api: Api, response: httpx.Response, token_id: str, *, status: int, code: str
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert "Traceback" not in response.text
    stored = await api.client.get(f"/tokens/{token_id}", headers=api.auth())
    assert stored.json()["status"] == "draft"
    assert stored.json()["mlflow_run_id"] is None
    assert stored.json()["model_version"] is None
    assert model_versions(api, f"hokusai-{token_id}") == []
    return body


class TestMalformedMultipart:
    @pytest.mark.parametrize(
        ("body", "content_type", "code"),
        [
            pytest.param(
                multipart(*metric_parts(), model_part()),
                "multipart/form-data",
                "validation_error",
                id="no-boundary-parameter",
            ),
            pytest.param(
                multipart(*metric_parts(), model_part()),
                "multipart/form-data; boundary=not-the-one-used",
                "validation_error",
                id="boundary-differs-from-body",
            ),
            pytest.param(
                b"\x00\x01 this is not multipart at all \xff" * 50,
                CONTENT_TYPE,
                "validation_error",
                id="garbage-body",
            ),
            pytest.param(
                multipart(*metric_parts(), model_part(pickle_bytes(size=8192)))[:-3000],
                CONTENT_TYPE,
                "invalid_model_file",
                id="truncated-inside-the-model",
            ),
            pytest.param(
                multipart(*metric_parts(), model_part(), closed=False),
                CONTENT_TYPE,
                "invalid_model_file",
                id="no-closing-delimiter",
            ),
            pytest.param(
                multipart(*metric_parts(), closed=False)[:-10],
                CONTENT_TYPE,
                "invalid_model_file",
                id="ends-before-the-model",
            ),
        ],
    )
    async def test_is_refused_with_422(
        self, api: Api, draft: str, body: bytes, content_type: str, code: str
    ) -> None:
        response = await post_raw(api, draft, body, content_type=content_type)
        await assert_refused(api, response, draft, status=422, code=code)

    async def test_well_formed_raw_body_is_accepted(self, api: Api, draft: str) -> None:
        # The hand-built framing is right: the refusals above are about what was broken.
        response = await post_raw(api, draft, multipart(*metric_parts(), model_part()))
        assert response.status_code == 201, response.text


class TestRepeatedOrOversizedFields:
    async def test_model_file_sent_twice(self, api: Api, draft: str) -> None:
        body = multipart(
            *metric_parts(),
            model_part(filename="first.pkl"),
            model_part(filename="second.pkl"),
        )
        response = await post_raw(api, draft, body)
        problem = await assert_refused(api, response, draft, status=422, code="validation_error")
        assert "more than once" in problem["detail"]

    async def test_text_field_sent_twice(self, api: Api, draft: str) -> None:
        body = multipart(*metric_parts(), part("metric", b"accuracy"), model_part())
        response = await post_raw(api, draft, body)
        problem = await assert_refused(api, response, draft, status=422, code="validation_error")
        assert "metric" in problem["detail"]

    async def test_text_field_over_64_kib(self, api: Api, draft: str) -> None:
        body = multipart(*metric_parts(), part("tags", b"x" * (64 * 1024 + 1)), model_part())
        response = await post_raw(api, draft, body)
        problem = await assert_refused(api, response, draft, status=422, code="validation_error")
        assert "tags" in problem["detail"]

    async def test_text_field_not_utf8(self, api: Api, draft: str) -> None:
        body = multipart(*metric_parts(metric=b"\xff\xfeauroc\xc0"), model_part())
        response = await post_raw(api, draft, body)
        problem = await assert_refused(api, response, draft, status=422, code="validation_error")
        assert "UTF-8" in problem["detail"]


class TestDeclaredLength:
    async def test_too_large_is_refused_before_the_body_is_read(
        self, api: Api, draft: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        body = multipart(*metric_parts(), model_part(pickle_bytes(size=2 * MiB)))
        chunks_read = 0

        async def stream() -> AsyncIterator[bytes]:
            nonlocal chunks_read
            for start in range(0, len(body), 64 * 1024):
                chunks_read += 1
                yield body[start : start + 64 * 1024]

        monkeypatch.setattr(api.settings, "max_upload_bytes", 1024)
        monkeypatch.setattr(api.settings, "max_predictions_bytes", 1024)
        response = await api.client.post(
            f"/models/{draft}/register",
            content=stream(),
            headers=api.auth() | {"Content-Type": CONTENT_TYPE, "Content-Length": str(len(body))},
        )
        problem = await assert_refused(api, response, draft, status=413, code="payload_too_large")
        assert problem["limit_bytes"] == 1024
        assert chunks_read == 0

    async def test_undeclared_length_is_cut_off_while_streaming(
        self, api: Api, draft: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        body = multipart(*metric_parts(), model_part(pickle_bytes(size=2 * MiB)))
        chunk = 64 * 1024
        total = -(-len(body) // chunk)
        chunks_read = 0

        async def stream() -> AsyncIterator[bytes]:
            nonlocal chunks_read
            for start in range(0, len(body), chunk):
                chunks_read += 1
                yield body[start : start + chunk]

        monkeypatch.setattr(api.settings, "max_upload_bytes", 128 * 1024)
        # No Content-Length: the body comes chunked, and only the running count can stop it.
        response = await api.client.post(
            f"/models/{draft}/register",
            content=stream(),
            headers=api.auth() | {"Content-Type": CONTENT_TYPE},
        )
        await assert_refused(api, response, draft, status=413, code="payload_too_large")
        assert 0 < chunks_read < total


class TestModelFileName:
    @pytest.mark.parametrize(
        "filename",
        ["../../etc/passwd.pkl", "/tmp/hokusai-evil.pkl", r"..\\..\\hokusai-evil.pkl"],
    )
    async def test_path_in_filename_is_refused_and_nothing_escapes(
        self, api: Api, draft: str, tmp_path_factory: pytest.TempPathFactory, filename: str
    ) -> None:
        response = await post_raw(
            api, draft, multipart(*metric_parts(), model_part(filename=filename))
        )
        await assert_refused(api, response, draft, status=422, code="invalid_model_file")
        base = tmp_path_factory.getbasetemp()
        assert not [p for p in base.rglob("*") if p.name in ("passwd.pkl", "hokusai-evil.pkl")]
        assert not Path("/etc/passwd.pkl").exists()
        assert not Path("/tmp/hokusai-evil.pkl").exists()

    @pytest.mark.parametrize("filename", ["", "model.exe", ".pkl"])
    async def test_unusable_name_is_refused(self, api: Api, draft: str, filename: str) -> None:
        response = await post_raw(
            api, draft, multipart(*metric_parts(), model_part(filename=filename))
        )
        await assert_refused(api, response, draft, status=422, code="invalid_model_file")


class TestEmptyModelFile:
    async def test_is_refused(self, api: Api, draft: str) -> None:
        response = await post_raw(api, draft, multipart(*metric_parts(), model_part(b"")))
        problem = await assert_refused(api, response, draft, status=422, code="invalid_model_file")
        assert "empty" in problem["detail"]


@pytest.fixture
def upload_dir_during_checks(api: Api, monkeypatch: pytest.MonkeyPatch) -> list[set[Path]]:
    """What the upload folder held while the upload was checked, one set per registration."""
    seen: list[set[Path]] = []
    original: Callable[..., Any] = checks.check_upload

    async def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append({p for p in api.settings.upload_dir.rglob("*") if p.is_file()})
        return await original(*args, **kwargs)

    monkeypatch.setattr(checks, "check_upload", spy)
    return seen


class TestNoLeftovers:
    async def test_after_a_successful_registration(
        self, api: Api, draft: str, upload_dir_during_checks: list[set[Path]]
    ) -> None:
        response = await register(api.client, api.auth(), token_id=draft)
        assert response.status_code == 201, response.text
        # The upload went through the folder under test...
        [during] = upload_dir_during_checks
        assert [p.name for p in during] == ["model.pkl"]
        # ...and is gone from it.
        assert list(api.settings.upload_dir.iterdir()) == []

    async def test_after_a_rejected_registration(
        self, api: Api, draft: str, upload_dir_during_checks: list[set[Path]]
    ) -> None:
        response = await register(
            api.client, api.auth(), token_id=draft, fields={"sha256": "0" * 64}
        )
        await assert_refused(api, response, draft, status=422, code="checksum_mismatch")
        [during] = upload_dir_during_checks
        assert [p.name for p in during] == ["model.pkl"]
        assert list(api.settings.upload_dir.iterdir()) == []

    async def test_after_an_upload_cut_off_by_the_size_limit(
        self, api: Api, draft: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(api.settings, "max_upload_bytes", 64 * 1024)
        response = await register(
            api.client, api.auth(), token_id=draft, model=pickle_bytes(size=256 * 1024)
        )
        await assert_refused(api, response, draft, status=413, code="payload_too_large")
        assert list(api.settings.upload_dir.iterdir()) == []


class TestLargeUpload:
    async def test_five_mib_model_is_registered_intact(self, api: Api, draft: str) -> None:
        model = pickle_bytes(size=5 * MiB)
        response = await register(
            api.client, api.auth(), token_id=draft, model=model, fields={"sha256": sha256(model)}
        )
        assert response.status_code == 201, response.text
        artifact = response.json()["artifact"]
        assert artifact["size_bytes"] == len(model)
        assert artifact["sha256"] == sha256(model)
        assert artifact["filename"] == "model.pkl"
        assert list(api.settings.upload_dir.iterdir()) == []
        [version] = model_versions(api, f"hokusai-{draft}")
        uri = api.settings.resolved_tracking_uri
        assert version.run_id is not None
        local = MlflowClient(tracking_uri=uri).download_artifacts(version.run_id, "model/model.pkl")
        assert sha256(Path(local).read_bytes()) == sha256(model)
