"""Hostile registration input: every trick is refused with a 4xx problem and leaves no trace.

Each case is sent to `POST /models/{token_id}/register` on SQLite and PostgreSQL. A refusal must be
an `application/problem+json` 4xx with a fitting code, the token must still be a `draft` without an
MLflow run, and MLflow must have no new registered model or version.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import tarfile
import uuid
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.factories import (
    MLMODEL_WITH_SIGNATURE,
    create_token,
    mlflow_zip,
    pickle_bytes,
    register,
)
from tests.support.mlflow import mlflow_client, model_versions
from tests.support.service import Api

PROBLEM = "application/problem+json"
TRIED: dict[str, list[str]] = {}

METRIC_CODES = {"invalid_metric_value", "validation_error"}
BASELINE_CODES = {"invalid_baseline", "validation_error"}
VALIDATION = {"validation_error"}
MODEL_FILE = {"invalid_model_file"}
TOO_LARGE = {"payload_too_large"}
PREDICTIONS = {"invalid_predictions"}


@pytest.fixture(scope="module", autouse=True)
def _report_count(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    counts = ", ".join(f"{backend} {len(labels)}" for backend, labels in sorted(TRIED.items()))
    line = f"hostile registration inputs tried so far: {counts}"
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if capture is None:
        print(line)
        return
    with capture.global_and_fixture_disabled():
        print(f"\n{line}")


def registered_models(api: Api) -> set[tuple[str, str]]:
    """Every (model name, version) in the MLflow store."""
    client = mlflow_client(api)
    return {
        (version.name, str(version.version))
        for model in client.search_registered_models(max_results=1000)
        for version in client.search_model_versions(f"name='{model.name}'")
    }


@dataclass
class Target:
    """A draft token to throw hostile requests at, and what MLflow held before."""

    api: Api
    token_id: str
    models_before: set[tuple[str, str]]
    failures: list[str] = field(default_factory=list)

    async def refused(
        self, label: str, response: httpx.Response, codes: set[str], *, token_id: str | None = None
    ) -> None:
        """Record whether `response` is a fitting refusal that left everything as it was."""
        TRIED.setdefault(self.api.backend, []).append(label)
        problems: list[str] = []
        if not 400 <= response.status_code < 500:
            problems.append(f"status {response.status_code}")
        if not response.headers.get("content-type", "").startswith(PROBLEM):
            problems.append(f"content-type {response.headers.get('content-type')!r}")
        else:
            body = response.json()
            if body.get("code") not in codes:
                problems.append(f"code {body.get('code')!r} not in {sorted(codes)}")
            if body.get("status") != response.status_code:
                problems.append("problem status differs from the HTTP status")
        token = await self.api.client.get(
            f"/tokens/{token_id or self.token_id}", headers=self.api.auth()
        )
        if token.status_code == 200:
            state = token.json()
            if state["status"] != "draft" or state["mlflow_run_id"] is not None:
                problems.append(f"token changed: {state['status']} {state['mlflow_run_id']}")
        if problems:
            self.failures.append(f"{label}: {'; '.join(problems)} ({response.text[:200]!r})")

    def check(self) -> None:
        """Fail with every case that went wrong; then MLflow must hold nothing new."""
        assert self.failures == [], "\n".join(self.failures)
        assert model_versions(self.api, f"hokusai-{self.token_id}") == []
        assert registered_models(self.api) == self.models_before


@pytest.fixture
async def target(api: Api) -> Target:
    # The MLflow store lives for the whole session: a fresh name keeps each test's check its own.
    token_id = f"HOSTILE-{api.backend}-{uuid.uuid4().hex[:8]}".upper()
    await create_token(api.client, api.auth(), token_id=token_id)
    return Target(api, token_id, registered_models(api))


async def send(target: Target, **kwargs: Any) -> httpx.Response:
    return await register(target.api.client, target.api.auth(), token_id=target.token_id, **kwargs)


async def send_raw_file_name(target: Target, filename: str) -> httpx.Response:
    """A registration whose model_file part names `filename` exactly, unescaped, as UTF-8."""
    boundary = "hostile" + uuid.uuid4().hex
    fields = {"metric": "auroc", "baseline": "0.82", "metric_value": "0.86"}
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="model_file"; '.encode()
        + b'filename="'
        + filename.replace("\\", "\\\\").replace('"', '\\"').encode()
        + b'"\r\nContent-Type: application/octet-stream\r\n\r\n'
        + pickle_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return await target.api.client.post(
        f"/models/{target.token_id}/register",
        content=b"".join(parts),
        headers={
            **target.api.auth(),
            "Content-Type": f"multipart/form-data; boundary={boundary}",
        },
    )


# Archive builders -------------------------------------------------------------------------------


def zip_of(entries: Sequence[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
    """An MLflow model zip (MLmodel at the root) with the given extra entries."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("MLmodel", MLMODEL_WITH_SIGNATURE)
        archive.writestr("model.pkl", pickle_bytes())
        for info, data in entries:
            archive.writestr(info, data)
    return buffer.getvalue()


def tar_gz_of(entries: Sequence[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    """An MLflow model .tar.gz (MLmodel at the root) with the given extra members."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in (("MLmodel", MLMODEL_WITH_SIGNATURE.encode()), ("model.pkl", b"x")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for info, data in entries:
            archive.addfile(info, io.BytesIO(data) if data else None)
    return buffer.getvalue()


def tar_member(name: str, data: bytes = b"", **attributes: Any) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in attributes.items():
        setattr(info, key, value)
    return info, data


def zip_symlink(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # Unix, so the mode in external_attr counts
    info.external_attr = (0o120777 << 16) | 0x20
    return info, target.encode()


def zeros_zip(size: int) -> bytes:
    """A legitimate MLflow zip with one entry of `size` zero bytes (it compresses ~1000:1)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("MLmodel", MLMODEL_WITH_SIGNATURE)
        with archive.open("weights.bin", "w", force_zip64=True) as entry:
            chunk = b"\x00" * (1 << 20)
            for _ in range(size // len(chunk)):
                entry.write(chunk)
    return buffer.getvalue()


def lying_zip(real_size: int, declared_size: int) -> bytes:
    """A zip whose big entry declares `declared_size` bytes in both headers but inflates to more."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("MLmodel", MLMODEL_WITH_SIGNATURE)
        archive.writestr("bomb.bin", b"\x00" * real_size)
        info = archive.getinfo("bomb.bin")
    data = bytearray(buffer.getvalue())
    # Local file header: the uncompressed size is at offset 22.
    assert data[info.header_offset : info.header_offset + 4] == b"PK\x03\x04"
    struct.pack_into("<I", data, info.header_offset + 22, declared_size)
    # Central directory entry: the uncompressed size is at offset 24.
    central = data.index(b"PK\x01\x02")
    while data[central + 46 : central + 46 + len(b"bomb.bin")] != b"bomb.bin":
        central = data.index(b"PK\x01\x02", central + 4)
    struct.pack_into("<I", data, central + 24, declared_size)
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as check:
        assert check.getinfo("bomb.bin").file_size == declared_size
    return bytes(data)


# The cases --------------------------------------------------------------------------------------

HOSTILE_NUMBERS = [
    "NaN",
    "nan",
    "-nan",
    "inf",
    "-inf",
    "Infinity",
    "1e999",
    "-1e999",
    "1e308",
    "9" * 5000,
    "1" * 200_000,
    "0x1p-1",
    "1_0",
    "\u0660.\u0668\u0666",  # Arabic-Indic digits: float() reads 0.86
    "\uff10.\uff18\uff16",  # full-width digits: float() reads 0.86
    "0.86\x00",
    "0.86 0.9",
    "",
    " ",
    "true",
    "[0.9]",
    "--0.9",
    "0.9e",
]


class TestHostileNumbers:
    async def test_metric_value(self, target: Target) -> None:
        for value in HOSTILE_NUMBERS:
            response = await send(target, metric_value=value)
            codes = METRIC_CODES | (TOO_LARGE if len(value) > 100_000 else set())
            await target.refused(f"metric_value={value[:20]!r}", response, codes)
        target.check()

    async def test_baseline(self, target: Target) -> None:
        for value in HOSTILE_NUMBERS:
            response = await send(target, baseline=value)
            codes = BASELINE_CODES | (TOO_LARGE if len(value) > 100_000 else set())
            await target.refused(f"baseline={value[:20]!r}", response, codes)
        target.check()

    async def test_min_improvement(self, target: Target) -> None:
        for value in [*HOSTILE_NUMBERS, "-0.1", "1e-999x"]:
            if not value.strip():
                continue  # an empty min_improvement means the default
            response = await send(target, fields={"min_improvement": value})
            codes = VALIDATION | METRIC_CODES | {"metric_below_baseline"}
            codes |= TOO_LARGE if len(value) > 100_000 else set()
            await target.refused(f"min_improvement={value[:20]!r}", response, codes)
        target.check()

    async def test_metric_name(self, target: Target) -> None:
        for metric in ["AUROC\u200d", "auroc\x00", "\u0430uroc", "auroc " * 1000, "__class__"]:
            response = await send(target, metric=metric)
            await target.refused(
                f"metric={metric[:20]!r}", response, {"unsupported_metric", "validation_error"}
            )
        target.check()


class TestHostileTokenIds:
    async def test_path_token_ids(self, target: Target) -> None:
        lookalike = target.token_id.replace("O", "\u041e")  # Cyrillic capital O
        paths = [
            lookalike,
            "%2e%2e",
            "..%2f" + target.token_id,
            "A" * 65,
            target.token_id + "-",
            "-" + target.token_id,
            target.token_id + "%00",
            target.token_id + "%20",
            target.token_id + "%E2%80%8B",  # zero-width space
            target.token_id.lower() + "\u200d",
            "%C0%AE%C0%AE",  # overlong UTF-8 dots
            target.token_id.replace("-", "_"),
        ]
        body = {"metric": "auroc", "baseline": "0.82", "metric_value": "0.86"}
        for path in paths:
            response = await target.api.client.post(
                f"/models/{path}/register",
                data=body,
                files={"model_file": ("model.pkl", pickle_bytes(), "application/octet-stream")},
                headers=target.api.auth(),
            )
            await target.refused(
                f"token_id={path!r}",
                response,
                {"validation_error", "token_not_found", "not_found"},
            )
        target.check()


class TestHostileNamesAndTags:
    async def test_model_names(self, target: Target) -> None:
        names = [
            f"hokusai-{target.token_id}\u202egnp",  # RTL override
            f"hokusai\u200d-{target.token_id}",  # zero-width joiner
            "model\x00name",
            "model\x01\x1fname",
            "model\nname",
            "x" * 201,
            "../../etc/passwd",
            "-leading-hyphen",
            ".hidden",
            "name with spaces",
            "\u041d\u041e\u041a\u0423\u0421\u0410\u0418",  # Cyrillic
            "model'name",
            "model\u00a0name",
        ]
        for name in names:
            response = await send(target, fields={"model_name": name})
            await target.refused(f"model_name={name[:30]!r}", response, VALIDATION)
            assert model_versions(target.api, name) == []
        target.check()

    async def test_tags(self, target: Target) -> None:
        bad: list[tuple[str, str]] = [
            ("rtl key", '{"a\\u202eb": "v"}'),
            ("rtl value", '{"team": "x\\u202ey"}'),
            ("zwj key", '{"te\\u200dam": "v"}'),
            ("nul key", '{"a\\u0000": "v"}'),
            ("nul value", '{"a": "v\\u0000"}'),
            ("control chars", '{"a": "line\\nbreak\\u001b[31m"}'),
            ("upper reserved", '{"HOKUSAI.token_id": "EVIL"}'),
            ("mixed reserved", '{"Hokusai.Metric_Value": "0.99"}'),
            ("underscore reserved", '{"HOKUSAI_STATUS": "registered"}'),
            ("mlflow reserved", '{"MLflow.runName": "x"}'),
            ("huge value", '{"a": "' + "x" * 6000 + '"}'),
            ("huge key", '{"' + "k" * 300 + '": "v"}'),
            ("too many", "{" + ",".join(f'"k{i}": "v"' for i in range(51)) + "}"),
            ("huge json", '{"a": "' + "x" * 2_000_000 + '"}'),
            ("list", '["a", "b"]'),
            ("string", '"tags"'),
            ("number", "1"),
            ("null", "null"),
            ("nested", '{"a": {"b": "c"}}'),
            ("number value", '{"a": 1}'),
            ("nan value", '{"a": NaN}'),
            ("not json", "{a: b}"),
            ("truncated", '{"a": "b"'),
            ("deep", "[" * 100_000 + "]" * 100_000),
            ("empty key", '{"": "v"}'),
        ]
        for label, raw in bad:
            response = await send(target, fields={"tags": raw})
            codes = VALIDATION | (TOO_LARGE if len(raw) > 1_000_000 else set())
            await target.refused(f"tags {label}", response, codes)
        target.check()


class TestHostileFileNames:
    async def test_model_file_names(self, target: Target) -> None:
        names = [
            "model\x00.pkl",
            "model\x01.pkl",
            "lkp.\u202emodel.pkl",  # RTL override hides the real extension
            "mo\u200ddel.pkl",
            "../../model.pkl",
            "..\\model.pkl",
            "/etc/model.pkl",
            "a" * 300 + ".pkl",
            ".pkl",
            "model.exe",
            "model.pkl.sh",
        ]
        for name in names:
            # httpx would percent-escape the name; the raw bytes go in a hand-made body.
            response = await send_raw_file_name(target, name)
            await target.refused(f"filename={name[:30]!r}", response, MODEL_FILE | VALIDATION)
        target.check()


def _rfc2231(name: str) -> bytes:
    return (
        b"filename*=UTF-8''"
        + "".join(
            chr(b) if chr(b).isascii() and (chr(b).isalnum() or chr(b) in "._-") else f"%{b:02X}"
            for b in name.encode("utf-8", "surrogatepass")
        ).encode()
    )


def _rfc2047(name: str) -> bytes:
    encoded = base64.b64encode(name.encode("utf-8", "surrogatepass"))
    return b'filename="=?utf-8?B?' + encoded + b'?="'


async def send_raw_parts(
    target: Target, parts: list[bytes], *, idempotency_key: bytes | None = None
) -> httpx.Response:
    """A registration made of `parts` (each a part's raw headers, blank line and data)."""
    boundary = "hostile" + uuid.uuid4().hex
    body = b"".join(b"--" + boundary.encode() + b"\r\n" + part + b"\r\n" for part in parts)
    body += b"--" + boundary.encode() + b"--\r\n"
    # As bytes throughout, so that a hostile key goes out exactly as given.
    headers = {name.encode(): value.encode() for name, value in target.api.auth().items()}
    headers[b"Content-Type"] = f"multipart/form-data; boundary={boundary}".encode()
    if idempotency_key is not None:
        headers[b"Idempotency-Key"] = idempotency_key
    return await target.api.client.post(
        f"/models/{target.token_id}/register", content=body, headers=headers
    )


def _fields() -> list[bytes]:
    return [
        f'Content-Disposition: form-data; name="{name}"\r\n\r\n{value}'.encode()
        for name, value in (("metric", "auroc"), ("baseline", "0.82"), ("metric_value", "0.86"))
    ]


def _model(disposition_params: bytes, content_type: bytes = b"application/octet-stream") -> bytes:
    return (
        b'Content-Disposition: form-data; name="model_file"; '
        + disposition_params
        + b"\r\nContent-Type: "
        + content_type
        + b"\r\n\r\n"
        + pickle_bytes()
    )


HOSTILE_FILE_NAMES = [
    "model\x00.pkl",
    "model\x01.pkl",
    "lkp.\u202emodel.pkl",
    "mo\u200ddel.pkl",
    "../../model.pkl",
    "..\\model.pkl",
    "/etc/model.pkl",
    "a" * 300 + ".pkl",
    "\u00e9" * 200 + ".pkl",  # 255 characters but 400 bytes
    ".pkl",
    "model.exe",
    "model.pkl\n.sh",
    "model.pkl\ud800",
]


class TestHostileEncodedFileNames:
    async def test_model_file_names_in_rfc_2231_and_2047(self, target: Target) -> None:
        for name in HOSTILE_FILE_NAMES:
            for label, params in (("2231", _rfc2231(name)), ("2047", _rfc2047(name))):
                response = await send_raw_parts(target, [*_fields(), _model(params)])
                await target.refused(
                    f"filename RFC {label} {name[:20]!r}", response, MODEL_FILE | VALIDATION
                )
        target.check()

    async def test_predictions_file_names_in_every_encoding(self, target: Target) -> None:
        csv = b"y_true,y_score\n1,0.9\n0,0.2\n"
        # A predictions file's name is metadata only, so a bare ".csv" is harmless and accepted.
        names = [n.replace(".pkl", ".csv") for n in HOSTILE_FILE_NAMES if n != ".pkl"]
        for name in [*names, "p.txt", "p.csv.exe"]:
            raw = name.encode("utf-8", "surrogatepass")
            raw = raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
            for label, params in (
                ("plain", b'filename="' + raw + b'"'),
                ("2231", _rfc2231(name)),
                ("2047", _rfc2047(name)),
            ):
                predictions = (
                    b'Content-Disposition: form-data; name="predictions"; '
                    + params
                    + b"\r\n\r\n"
                    + csv
                )
                parts = [*_fields()[:2], predictions, _model(b'filename="m.pkl"')]
                response = await send_raw_parts(target, parts)
                await target.refused(
                    f"predictions filename {label} {name[:20]!r}",
                    response,
                    PREDICTIONS | VALIDATION,
                )
        target.check()


class TestHostilePartHeaders:
    async def test_part_names(self, target: Target) -> None:
        names = [
            b"model\xff",
            b"x" * 200,
            b"model_file\x00",
            b"metric\r\nX-Evil: 1",
            b"\xe2\x80\xaemetric",
            b"",
        ]
        for name in names:
            part = b'Content-Disposition: form-data; name="' + name + b'"\r\n\r\nauroc'
            response = await send_raw_parts(target, [*_fields(), part, _model(b'filename="m.pkl"')])
            # A name that is merely unknown is ignored: the request then fails the metric check.
            await target.refused(
                f"part name {name[:20]!r}", response, VALIDATION | TOO_LARGE | METRIC_CODES
            )
        target.check()

    async def test_content_types_and_dispositions(self, target: Target) -> None:
        for content_type in [
            b"application/\xff",
            b"text/plain\x00",
            b"a" * 300,
            b"multipart/mixed; boundary=inner",
        ]:
            response = await send_raw_parts(
                target, [*_fields()[:2], _model(b'filename="m.pkl"', content_type)]
            )
            await target.refused(f"content type {content_type[:20]!r}", response, VALIDATION)
        for params in [
            b'filename="m.pkl"; filename="n.pkl"',
            b'filename="m.pkl"; a=b' + b"; a=b" * 20,
            b'filename="m.pkl',  # unterminated quoted string
            b"filename=m.pkl; name=metric",
            b"filename*=UTF-8''%FF.pkl",
            b"filename*=utf-16''m.pkl",
        ]:
            response = await send_raw_parts(target, [*_fields()[:2], _model(params)])
            await target.refused(f"disposition {params[:30]!r}", response, VALIDATION)
        target.check()

    async def test_idempotency_keys(self, target: Target) -> None:
        for key in [b"k" * 256, "\u00e9".encode() * 200, b"key\x00", b"\xff\xfe", b"k\x1b[31m"]:
            # Sent without metric_value: a key the service accepts is then refused by that check.
            response = await send_raw_parts(
                target, [*_fields()[:2], _model(b'filename="m.pkl"')], idempotency_key=key
            )
            await target.refused(f"Idempotency-Key {key[:20]!r}", response, VALIDATION)
        target.check()


class TestHostileTokenMetadata:
    async def test_metadata_on_create_and_update(self, target: Target) -> None:
        api = target.api
        hostile: list[Any] = [
            {"blob": "x" * 20_000},
            {str(i): "v" for i in range(2000)},
            {"deep": json.loads("[" * 50 + "]" * 50), "pad": "x" * 17_000},
            "not an object",
            ["a", "b"],
        ]
        for metadata in hostile:
            created = await api.client.post(
                "/tokens",
                json={"token_id": f"META-{uuid.uuid4().hex[:8]}", "metadata": metadata},
                headers=api.auth(),
            )
            await target.refused(f"create metadata {str(metadata)[:20]}", created, VALIDATION)
            patched = await api.client.patch(
                f"/tokens/{target.token_id}", json={"metadata": metadata}, headers=api.auth()
            )
            await target.refused(f"patch metadata {str(metadata)[:20]}", patched, VALIDATION)
        token = await api.client.get(f"/tokens/{target.token_id}", headers=api.auth())
        assert token.json()["metadata"] == {}
        target.check()


class TestHostileArchives:
    async def test_zip_bomb_of_zeros_over_the_unpacked_limit(
        self, target: Target, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(target.api.settings, "max_unpacked_bytes", 50 * 1024 * 1024)
        bomb = zeros_zip(200 * 1024 * 1024)
        assert len(bomb) < 1024 * 1024
        response = await send(target, model=bomb, filename="model.zip")
        await target.refused("zip of 200 MB of zeros", response, TOO_LARGE)
        target.check()

    async def test_zip_whose_headers_understate_the_size(
        self, target: Target, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(target.api.settings, "max_unpacked_bytes", 1024 * 1024)
        response = await send(target, model=lying_zip(20 * 1024 * 1024, 1000), filename="model.zip")
        await target.refused(
            "zip declaring 1000 bytes, inflating to 20 MB", response, TOO_LARGE | MODEL_FILE
        )
        target.check()

    async def test_links_and_traversal(self, target: Target) -> None:
        cases: list[tuple[str, bytes, str]] = [
            ("zip symlink", zip_of([zip_symlink("data/passwd", "/etc/passwd")]), "model.zip"),
            ("zip symlink dir", zip_of([zip_symlink("up", "..")]), "model.zip"),
            ("zip traversal", zip_of([("../escape.txt", b"x")]), "model.zip"),
            ("zip deep traversal", zip_of([("a/../../escape.txt", b"x")]), "model.zip"),
            ("zip absolute", zip_of([("/tmp/escape.txt", b"x")]), "model.zip"),
            ("zip backslash", zip_of([("..\\escape.txt", b"x")]), "model.zip"),
            ("zip rtl name", zip_of([("evil\u202etxt.pkl", b"x")]), "model.zip"),
            (
                "tar symlink",
                tar_gz_of([tar_member("passwd", type=tarfile.SYMTYPE, linkname="/etc/passwd")]),
                "model.tar.gz",
            ),
            (
                "tar hardlink",
                tar_gz_of([tar_member("hard", type=tarfile.LNKTYPE, linkname="MLmodel")]),
                "model.tar.gz",
            ),
            ("tar traversal", tar_gz_of([tar_member("../escape.txt", b"x")]), "model.tar.gz"),
            (
                "tar deep traversal",
                tar_gz_of([tar_member("a/b/../../../escape.txt", b"x")]),
                "model.tar.gz",
            ),
            ("tar absolute", tar_gz_of([tar_member("/tmp/escape.txt", b"x")]), "model.tar.gz"),
            (
                "tar fifo",
                tar_gz_of([tar_member("pipe", type=tarfile.FIFOTYPE)]),
                "model.tar.gz",
            ),
            (
                "tar device",
                tar_gz_of([tar_member("null", type=tarfile.CHRTYPE, devmajor=1, devminor=3)]),
                "model.tar.gz",
            ),
            ("zip named tar.gz", mlflow_zip(), "model.tar.gz"),
            ("truncated zip", mlflow_zip()[:-40], "model.zip"),
            ("zip without MLmodel", _plain_zip(), "model.zip"),
        ]
        for label, data, filename in cases:
            response = await send(target, model=data, filename=filename)
            await target.refused(label, response, MODEL_FILE)
        target.check()

    async def test_too_many_files(self, target: Target, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(target.api.settings, "max_archive_files", 5)
        many_zip = zip_of([(f"data/{i}.txt", b"x") for i in range(20)])
        many_tar = tar_gz_of([tar_member(f"data/{i}.txt", b"x") for i in range(20)])
        zipped = await send(target, model=many_zip, filename="model.zip")
        tarred = await send(target, model=many_tar, filename="model.tar.gz")
        await target.refused("zip with 22 entries, limit 5", zipped, TOO_LARGE | MODEL_FILE)
        await target.refused("tar.gz with 22 entries, limit 5", tarred, TOO_LARGE | MODEL_FILE)
        target.check()


def _plain_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model.pkl", pickle_bytes())
    return buffer.getvalue()


class TestHostileContentTypes:
    async def test_bodies_that_are_not_multipart(self, target: Target) -> None:
        api = target.api
        path = f"/models/{target.token_id}/register"
        cases: list[tuple[str, dict[str, str], bytes]] = [
            ("text/plain", {"Content-Type": "text/plain"}, b"metric=auroc&baseline=0.8"),
            (
                "application/json",
                {"Content-Type": "application/json"},
                b'{"metric": "auroc", "baseline": 0.82, "metric_value": 0.86}',
            ),
            (
                "form-urlencoded",
                {"Content-Type": "application/x-www-form-urlencoded"},
                b"metric=auroc&baseline=0.82&metric_value=0.86",
            ),
            ("no content type", {}, b"metric=auroc"),
            ("multipart without boundary", {"Content-Type": "multipart/form-data"}, b"--x\r\n"),
            (
                "multipart with empty boundary",
                {"Content-Type": "multipart/form-data; boundary="},
                b"----\r\n",
            ),
            (
                "multipart with the wrong boundary",
                {"Content-Type": "multipart/form-data; boundary=abc"},
                b'--xyz\r\nContent-Disposition: form-data; name="metric"\r\n\r\n'
                b"auroc\r\n--xyz--\r\n",
            ),
            (
                "multipart cut short",
                {"Content-Type": "multipart/form-data; boundary=abc"},
                b'--abc\r\nContent-Disposition: form-data; name="model_file"; filename="m.pkl"\r\n'
                b"\r\n" + pickle_bytes()[:100],
            ),
            (
                "multipart/mixed",
                {"Content-Type": "multipart/mixed; boundary=abc"},
                b'--abc\r\nContent-Disposition: form-data; name="metric"\r\n\r\n'
                b"auroc\r\n--abc--\r\n",
            ),
        ]
        for label, headers, content in cases:
            response = await api.client.post(
                path, content=content, headers={**api.auth(), **headers}
            )
            # A multipart body cut short inside the file part is an incomplete model file.
            await target.refused(
                label,
                response,
                {"unsupported_media_type", "validation_error", "bad_request", "invalid_model_file"},
            )
        target.check()


class TestHostilePredictions:
    async def test_prediction_files(self, target: Target) -> None:
        huge_field = b"y_true,y_score\n1," + b"9" * 2_000_000 + b"\n0,0.1\n"
        many_columns = b"y_true,y_score," + b",".join(b"c%d" % i for i in range(10_000)) + b"\n"
        cases: list[tuple[str, bytes]] = [
            ("nan score", b"y_true,y_score\n1,NaN\n0,0.2\n"),
            ("nan label", b"y_true,y_score\nnan,0.9\n0,0.2\n"),
            ("inf score", b"y_true,y_score\n1,inf\n0,0.2\n"),
            ("-inf score", b"y_true,y_score\n1,-Infinity\n0,0.2\n"),
            ("1e999 score", b"y_true,y_score\n1,1e999\n0,0.2\n"),
            ("huge field", huge_field),
            ("many columns", many_columns + b"1,0.5" + b",0" * 10_000 + b"\n"),
            ("wrong columns", b"label,prob\n1,0.9\n0,0.2\n"),
            ("no header", b"1,0.9\n0,0.2\n"),
            ("header only", b"y_true,y_score\n"),
            ("empty", b""),
            ("ragged rows", b"y_true,y_score\n1,0.9,7\n0\n"),
            ("arabic digits", "y_true,y_score\n\u0661,0.9\n0,0.2\n".encode()),
            ("underscore number", b"y_true,y_score\n1,0_9\n0,0.2\n"),
            ("nul byte", b"y_true,y_score\n1,0.9\x00\n0,0.2\n"),
            ("one class only", b"y_true,y_score\n1,0.9\n1,0.2\n"),
            ("labels not binary", b"y_true,y_score\n2,0.9\n0,0.2\n"),
            ("duplicate columns", b"y_true,y_true,y_score\n1,1,0.9\n0,0,0.2\n"),
            ("binary junk", bytes(range(256)) * 10),
            ("utf-16", "y_true,y_score\n1,0.9\n0,0.2\n".encode("utf-16")),
        ]
        for label, csv in cases:
            response = await send(target, metric_value=None, predictions=csv)
            await target.refused(f"predictions {label}", response, PREDICTIONS)
        target.check()

    async def test_mse_overflow_is_refused(self, target: Target) -> None:
        # Finite inputs whose squared error overflows to inf.
        csv = b"y_true,y_pred\n1e200,-1e200\n0,0\n"
        response = await send(
            target, metric="mse", baseline="1", metric_value=None, predictions=csv
        )
        await target.refused("predictions mse overflow", response, PREDICTIONS | METRIC_CODES)
        target.check()


class TestControls:
    """The builders above make acceptable requests once the hostile part is left out."""

    @pytest.mark.parametrize("kind", ["zip", "tar.gz", "zeros zip", "raw file name", "predictions"])
    async def test_benign_variant_registers(self, api: Api, kind: str) -> None:
        token_id = f"CONTROL-{api.backend}-{uuid.uuid4().hex[:8]}".upper()
        await create_token(api.client, api.auth(), token_id=token_id)
        target = Target(api, token_id, set())
        if kind == "raw file name":
            response = await send_raw_file_name(target, "model.pkl")
        elif kind == "predictions":
            csv = b"y_true,y_score\n1,0.9\n0,0.2\n1,0.7\n0,0.4\n"
            response = await send(target, metric_value=None, predictions=csv)
        else:
            model, filename = {
                "zip": (zip_of([("data/readme.txt", b"x")]), "model.zip"),
                "tar.gz": (tar_gz_of([tar_member("data/readme.txt", b"x")]), "model.tar.gz"),
                "zeros zip": (zeros_zip(2 * 1024 * 1024), "model.zip"),
            }[kind]
            response = await send(target, model=model, filename=filename)
        assert response.status_code == 201, response.text
        assert len(model_versions(api, f"hokusai-{token_id}")) == 1
