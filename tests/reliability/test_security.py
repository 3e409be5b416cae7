"""The holes of the security review, each closed for its whole class (in process, both databases).

Row numbers refer to the review: 1 client file names as paths, 2 multipart caps, 3 model names of
other tokens, 7 non-UTF-8 part headers, 8 the shared failed-auth limit, 9 the metadata cap on
update, 10 default caps. The rows that need a real server (timing, RSS, dropped connections) are in
test_security_processes.py; the bounded memory of row 4 is in tests/scoring.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from mlflow import MlflowClient

from app.auth.service import create_api_key
from app.config import GiB, Settings
from app.main import create_app
from app.manage import migrate
from app.registration.multipart import MAX_HEADER_BYTES
from app.registration.upload import MAX_PARTS
from tests.factories import create_token, pickle_bytes, register
from tests.support.service import Api, make_settings

PROBLEM = "application/problem+json"
CSV = b"y_true,y_score\n1,0.9\n0,0.2\n1,0.7\n0,0.4\n"


def mlflow(api: Api) -> MlflowClient:
    uri = api.settings.resolved_tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def versions(api: Api, name: str) -> list[Any]:
    try:
        return list(mlflow(api).search_model_versions(f"name='{name}'"))
    except Exception:  # no such model
        return []


async def draft(api: Api, prefix: str = "SEC") -> str:
    token_id = f"{prefix}-{api.backend}-{uuid.uuid4().hex[:8]}".upper()
    await create_token(api.client, api.auth(), token_id=token_id)
    return token_id


def disposition(name: str, filename: bytes | None = None) -> bytes:
    head = b'Content-Disposition: form-data; name="' + name.encode() + b'"'
    return head + (filename or b"")


def raw_body(boundary: str, parts: list[bytes], *, close: bool = True) -> bytes:
    b = boundary.encode()
    body = b"".join(b"--" + b + b"\r\n" + part + b"\r\n" for part in parts)
    return body + (b"--" + b + b"--\r\n" if close else b"")


def text_part(name: str, value: str) -> bytes:
    return disposition(name) + b"\r\n\r\n" + value.encode()


def metric_parts(*, with_value: bool = True) -> list[bytes]:
    parts = [text_part("metric", "auroc"), text_part("baseline", "0.5")]
    return parts + ([text_part("metric_value", "0.9")] if with_value else [])


def file_part(name: str, filename_params: bytes, data: bytes, content_type: bytes = b"") -> bytes:
    headers = disposition(name, filename_params)
    if content_type:
        headers += b"\r\nContent-Type: " + content_type
    return headers + b"\r\n\r\n" + data


async def post(api: Api, token_id: str, body: bytes, boundary: str) -> httpx.Response:
    return await api.client.post(
        f"/models/{token_id}/register",
        content=body,
        headers={**api.auth(), "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )


async def token_state(api: Api, token_id: str) -> dict[str, Any]:
    response = await api.client.get(f"/tokens/{token_id}", headers=api.auth())
    body: dict[str, Any] = response.json()
    return body


async def registrations(api: Api, token_id: str) -> list[dict[str, Any]]:
    response = await api.client.get(f"/tokens/{token_id}/registrations", headers=api.auth())
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def event_types(api: Api, token_id: str) -> list[str]:
    async with api.database.transaction() as session:
        rows = await session.execute(
            sa.text("SELECT event_type FROM events WHERE token_id = :t ORDER BY sequence"),
            {"t": token_id},
        )
        return [str(row) for row in rows.scalars().all()]


def assert_problem(response: httpx.Response, status: int, codes: set[str]) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["code"] in codes, body
    assert "Traceback" not in response.text
    return body


async def assert_untouched(api: Api, token_id: str) -> None:
    state = await token_state(api, token_id)
    assert state["status"] == "draft" and state["mlflow_run_id"] is None
    assert versions(api, f"hokusai-{token_id}") == []


def every_file(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


# Row 1: client file names are metadata, never paths -----------------------------------------------


def rfc2231(name: str) -> bytes:
    quoted = "".join(
        f"%{byte:02X}"
        if not (chr(byte).isascii() and (chr(byte).isalnum() or chr(byte) in "._-"))
        else chr(byte)
        for byte in name.encode()
    )
    return b"; filename*=UTF-8''" + quoted.encode()


def rfc2047(name: str) -> bytes:
    return b'; filename="=?utf-8?B?' + base64.b64encode(name.encode()) + b'?="'


def plain(name: bytes) -> bytes:
    return b'; filename="' + name.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


class TestClientFileNames:
    PATHS = [
        "../../../../outside/x.csv",
        "/tmp/hokusai-outside/x.csv",
        "a/b/c.csv",
        "..\\..\\x.csv",
        "..",
        "x\x00.csv",
        "x\n.csv",
        "\u202ex.csv",
        "a" * 300 + ".csv",
    ]

    async def test_predictions_names_that_are_paths_are_refused_in_every_encoding(
        self, api: Api, tmp_path: Path
    ) -> None:
        data_dir = api.settings.data_dir.resolve()
        before = every_file(data_dir.parent)
        token_id = await draft(api)
        for name in self.PATHS:
            for encoded in (plain(name.encode()), rfc2231(name), rfc2047(name)):
                boundary = uuid.uuid4().hex
                body = raw_body(
                    boundary,
                    [
                        *metric_parts(with_value=False),
                        file_part("predictions", encoded, CSV),
                        file_part("model_file", b'; filename="m.pkl"', pickle_bytes()),
                    ],
                )
                response = await post(api, token_id, body, boundary)
                assert_problem(response, 422, {"invalid_predictions", "validation_error"})
        await assert_untouched(api, token_id)
        assert not Path("/tmp/hokusai-outside").exists()
        created = every_file(data_dir.parent) - before
        # Only the service's own files may have changed (its databases, never an upload).
        assert all(data_dir in p.parents and "uploads" not in p.parts for p in created), created

    async def test_names_are_decoded_once_and_kept_as_metadata(self, api: Api) -> None:
        cases = [
            (rfc2231("modèl.pkl"), "modèl.pkl"),
            (rfc2047("模型.pkl"), "模型.pkl"),
            (plain("модель.pkl".encode()), "модель.pkl"),
            # Decoded once: what was percent-encoded twice keeps its percent signs.
            (b"; filename*=UTF-8''%252e%252e%252fm.pkl", "%2e%2e%2fm.pkl"),
            (plain(b"..%2F..%2Fm.pkl"), "..%2F..%2Fm.pkl"),
            (b"; filename*=iso-8859-1'en'caf%E9.pkl", "café.pkl"),
        ]
        for encoded, shown in cases:
            token_id = await draft(api)
            boundary = uuid.uuid4().hex
            body = raw_body(
                boundary,
                [*metric_parts(), file_part("model_file", encoded, pickle_bytes())],
            )
            response = await post(api, token_id, body, boundary)
            assert response.status_code == 201, response.text
            registration = response.json()
            assert registration["artifact"]["filename"] == shown
            # The artifact in MLflow has the name the service chose, whatever the client sent.
            listed = mlflow(api).list_artifacts(registration["mlflow_run_id"], "model")
            assert [a.path for a in listed] == ["model/model.pkl"]

    async def test_filename_star_wins_over_filename(self, api: Api) -> None:
        token_id = await draft(api)
        boundary = uuid.uuid4().hex
        params = b'; filename="../evil.pkl"' + rfc2231("good.pkl")
        body = raw_body(
            boundary, [*metric_parts(), file_part("model_file", params, pickle_bytes())]
        )
        response = await post(api, token_id, body, boundary)
        assert response.status_code == 201, response.text
        assert response.json()["artifact"]["filename"] == "good.pkl"

    async def test_undecodable_encodings_are_refused(self, api: Api) -> None:
        token_id = await draft(api)
        for params in [
            b"; filename*=UTF-8''%FF%FE.pkl",
            b"; filename*=koi8-r''m.pkl",
            b"; filename*=m.pkl",
            b'; filename="=?utf-8?B?!!!?="',
            b'; filename="=?ebcdic?Q?m.pkl?="',
        ]:
            boundary = uuid.uuid4().hex
            body = raw_body(
                boundary, [*metric_parts(), file_part("model_file", params, pickle_bytes())]
            )
            response = await post(api, token_id, body, boundary)
            assert_problem(response, 422, {"validation_error"})
        await assert_untouched(api, token_id)


# Row 2: caps on the multipart body ----------------------------------------------------------------


class TestMultipartCaps:
    async def test_a_part_header_over_the_cap_is_refused(self, api: Api) -> None:
        token_id = await draft(api)
        boundary = uuid.uuid4().hex
        flood = b"; a=b" * (MAX_HEADER_BYTES // 5 + 1)
        body = raw_body(boundary, [disposition("metric", flood) + b"\r\n\r\nauroc"])
        assert_problem(await post(api, token_id, body, boundary), 413, {"payload_too_large"})
        await assert_untouched(api, token_id)

    async def test_too_many_parameters_or_header_lines_are_refused(self, api: Api) -> None:
        token_id = await draft(api)
        for part in [
            disposition("metric", b"; a=b" * 20) + b"\r\n\r\nauroc",
            disposition("metric", b'; name="x"') + b"\r\n\r\nauroc",
            disposition("metric") + b"\r\nX-A: 1" * 20 + b"\r\n\r\nauroc",
            disposition("metric") + b"\r\n folded: line\r\n\r\nauroc",
            b"Content-Type: text/plain\r\n\r\nauroc",
            b'Content-Disposition: attachment; name="metric"\r\n\r\nauroc',
        ]:
            boundary = uuid.uuid4().hex
            response = await post(api, token_id, raw_body(boundary, [part]), boundary)
            assert_problem(response, 422, {"validation_error"})
        await assert_untouched(api, token_id)

    async def test_more_parts_than_the_cap_are_refused(self, api: Api) -> None:
        token_id = await draft(api)
        boundary = uuid.uuid4().hex
        parts = [text_part(f"unknown{i}", "") for i in range(MAX_PARTS + 1)]
        body = raw_body(boundary, parts)
        assert_problem(await post(api, token_id, body, boundary), 422, {"validation_error"})
        await assert_untouched(api, token_id)

    async def test_a_chunked_body_is_capped_whatever_its_parts(
        self, api: Api, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(api.settings, "max_upload_bytes", 1024 * 1024)
        monkeypatch.setattr(api.settings, "max_predictions_bytes", 1024 * 1024)
        token_id = await draft(api)
        boundary = uuid.uuid4().hex
        sent = 0

        async def chunks() -> AsyncIterator[bytes]:
            nonlocal sent
            yield f'--{boundary}\r\nContent-Disposition: form-data; name="junk"\r\n\r\n'.encode()
            for _ in range(64):
                sent += 1
                yield b"j" * (256 * 1024)

        response = await api.client.post(
            f"/models/{token_id}/register",
            content=chunks(),
            headers={**api.auth(), "Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        assert_problem(response, 413, {"payload_too_large"})
        # Refused once past the cap (2 MiB and the envelope), not after the whole 16 MiB.
        assert sent < 32
        await assert_untouched(api, token_id)

    async def test_sha256_after_the_model_is_still_checked(self, api: Api) -> None:
        token_id = await draft(api)
        boundary = uuid.uuid4().hex
        body = raw_body(
            boundary,
            [
                *metric_parts(),
                file_part("model_file", b'; filename="m.pkl"', pickle_bytes()),
                text_part("sha256", "0" * 64),
            ],
        )
        assert_problem(await post(api, token_id, body, boundary), 422, {"checksum_mismatch"})
        await assert_untouched(api, token_id)


# Row 3: a registration names only its own token's model ----------------------------------------


class TestModelNames:
    async def test_another_tokens_default_name_is_refused_even_when_deployed(
        self, api: Api
    ) -> None:
        victim = await draft(api, "VICTIM")
        assert (await register(api.client, api.auth(), token_id=victim)).status_code == 201
        patched = await api.client.patch(
            f"/tokens/{victim}", json={"status": "deployed"}, headers=api.auth()
        )
        assert patched.status_code == 200
        attacker = await draft(api, "ATTACKER")
        for name in (f"hokusai-{victim}", f"HOKUSAI-{victim.lower()}", "hokusai-NOT-YET-A-TOKEN"):
            response = await register(
                api.client, api.auth(), token_id=attacker, fields={"model_name": name}
            )
            assert_problem(response, 422, {"model_name_taken"})
        assert [str(v.version) for v in versions(api, f"hokusai-{victim}")] == ["1"]
        alias = mlflow(api).get_model_version_by_alias(f"hokusai-{victim}", "registered")
        assert str(alias.version) == "1"
        await assert_untouched(api, attacker)
        assert (await registrations(api, attacker))[0]["error"]["code"] == "model_name_taken"
        assert await event_types(api, attacker) == ["model_validation_failed"] * 3

    async def test_a_custom_name_belongs_to_the_token_that_registered_it(self, api: Api) -> None:
        name = f"team-model-{uuid.uuid4().hex[:8]}"
        owner = await draft(api, "OWNER")
        first = await register(api.client, api.auth(), token_id=owner, fields={"model_name": name})
        assert first.status_code == 201, first.text
        thief = await draft(api, "THIEF")
        response = await register(
            api.client, api.auth(), token_id=thief, fields={"model_name": name}
        )
        assert_problem(response, 422, {"model_name_taken"})
        assert len(versions(api, name)) == 1
        await assert_untouched(api, thief)

    async def test_a_model_made_outside_the_service_is_not_taken_over(self, api: Api) -> None:
        name = f"outside-{uuid.uuid4().hex[:8]}"
        mlflow(api).create_registered_model(name)
        token_id = await draft(api)
        response = await register(
            api.client, api.auth(), token_id=token_id, fields={"model_name": name}
        )
        # A registered model with no versions and no owner holds nothing: it may be used.
        assert response.status_code == 201, response.text
        default = mlflow(api).get_experiment_by_name("Default")
        assert default is not None
        run = mlflow(api).create_run(default.experiment_id)
        other = f"outside-{uuid.uuid4().hex[:8]}"
        mlflow(api).create_registered_model(other)
        mlflow(api).create_model_version(other, f"runs:/{run.info.run_id}/m", run.info.run_id)
        token_id = await draft(api)
        response = await register(
            api.client, api.auth(), token_id=token_id, fields={"model_name": other}
        )
        assert_problem(response, 422, {"model_name_taken"})
        await assert_untouched(api, token_id)

    async def test_a_token_may_reuse_its_own_name_after_a_failure(self, api: Api) -> None:
        name = f"mine-{uuid.uuid4().hex[:8]}"
        token_id = await draft(api)
        refused = await register(
            api.client,
            api.auth(),
            token_id=token_id,
            metric_value=0.1,
            fields={"model_name": name},
        )
        assert_problem(refused, 422, {"metric_below_baseline"})
        again = await register(
            api.client, api.auth(), token_id=token_id, fields={"model_name": name}
        )
        assert again.status_code == 201, again.text
        assert again.json()["model_name"] == name


# Row 7: part headers that are not UTF-8 ----------------------------------------------------------


class TestNonUtf8PartHeaders:
    async def test_each_is_a_clear_422_and_recorded(self, api: Api) -> None:
        token_id = await draft(api)
        cases = [
            file_part("model_file", b'; filename="m\xff\xfe.pkl"', pickle_bytes()),
            b'Content-Disposition: form-data; name="model\xff"\r\n\r\nx',
            file_part("model_file", b'; filename="m.pkl"', pickle_bytes(), b"application/\xff"),
            file_part("model_file", b'; filename="m\xc0\xae.pkl"', pickle_bytes()),
        ]
        for bad in cases:
            boundary = uuid.uuid4().hex
            response = await post(
                api, token_id, raw_body(boundary, [*metric_parts(), bad]), boundary
            )
            body = assert_problem(response, 422, {"validation_error"})
            assert "UTF-8" in body["detail"]
        await assert_untouched(api, token_id)
        recorded = await registrations(api, token_id)
        assert len(recorded) == len(cases)
        assert {r["status"] for r in recorded} == {"rejected"}


# Row 8: the failed-auth limit, shared through Redis --------------------------------------------

BAD_KEY = {"Authorization": "Bearer hok_ffffffffffff_not-a-real-secret"}


async def _app_client(settings: Settings, address: str) -> AsyncGenerator[httpx.AsyncClient, None]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, client=(address, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


class TestSharedFailedAuthLimit:
    async def test_failures_in_one_process_count_in_another(
        self, tmp_path: Path, mlflow_dir: Path
    ) -> None:
        url = f"sqlite:///{tmp_path / 'hokusai.db'}"
        migrate(url)
        settings = make_settings(
            tmp_path,
            url,
            mlflow_dir,
            redis_url="redis://127.0.0.1:6379/0",
            auth_failure_limit=5,
            auth_failure_window_seconds=60,
        )
        address = f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.7"
        first = _app_client(settings, address)
        second = _app_client(settings.model_copy(), address)
        a = await anext(first)
        b = await anext(second)
        try:
            for _ in range(3):
                assert (await a.get("/tokens", headers=BAD_KEY)).status_code == 401
            for _ in range(2):
                assert (await b.get("/tokens", headers=BAD_KEY)).status_code == 401
            refused = await a.get("/tokens", headers=BAD_KEY)
            also = await b.get("/tokens")
        finally:
            await first.aclose()
            await second.aclose()
        assert_problem(refused, 429, {"too_many_requests"})
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert also.status_code == 429

    async def test_without_redis_answering_each_process_still_limits(
        self, tmp_path: Path, mlflow_dir: Path
    ) -> None:
        url = f"sqlite:///{tmp_path / 'hokusai.db'}"
        migrate(url)
        settings = make_settings(
            tmp_path,
            url,
            mlflow_dir,
            redis_url="redis://127.0.0.1:1/0",
            auth_failure_limit=3,
            auth_failure_window_seconds=60,
        )
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            async with app.state.database.transaction() as session:
                _, key = await create_api_key(session, name="a", scopes=["admin"])
            transport = httpx.ASGITransport(app=app, client=("192.0.2.99", 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                codes = [
                    (await client.get("/tokens", headers=BAD_KEY)).status_code for _ in range(4)
                ]
                good = await client.get("/tokens", headers={"Authorization": f"Bearer {key}"})
        assert codes == [401, 401, 401, 429]
        assert good.status_code == 429


# Row 9 and 10 ------------------------------------------------------------------------------------


class TestTokenMetadataCap:
    async def test_update_has_the_same_cap_as_create(self, api: Api) -> None:
        token_id = await draft(api)
        for metadata in (
            {"blob": "x" * 900_000},
            {"k": "é" * 9000},
            {str(i): i for i in range(3000)},
        ):
            response = await api.client.patch(
                f"/tokens/{token_id}", json={"metadata": metadata}, headers=api.auth()
            )
            assert_problem(response, 422, {"validation_error"})
        assert (await token_state(api, token_id))["metadata"] == {}
        fits = await api.client.patch(
            f"/tokens/{token_id}", json={"metadata": {"team": "x" * 1000}}, headers=api.auth()
        )
        assert fits.status_code == 200
        assert (await token_state(api, token_id))["metadata"] == {"team": "x" * 1000}


class TestDefaultCaps:
    def test_unpacking_is_bounded_by_default(self) -> None:
        # The contract's default, 4 x MAX_UPLOAD_BYTES; the free disk bounds it further.
        settings = Settings(_env_file=None)
        assert settings.max_upload_bytes == 2 * GiB
        assert settings.unpacked_limit == 8 * GiB
        assert Settings(_env_file=None, max_upload_bytes=GiB // 2).unpacked_limit == 2 * GiB
        assert Settings(_env_file=None, max_unpacked_bytes=10 * GiB).unpacked_limit == 10 * GiB

    def test_no_proxy_is_trusted_by_default(self) -> None:
        assert Settings(_env_file=None).forwarded_allow_ips is None
