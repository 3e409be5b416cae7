"""The registration form as browsers send it: Swagger UI's "Try it out" on /docs and plain HTML
forms send the optional fields left empty as empty parts, a file field left empty included.
Those count as not sent. The predictions file's name is the client's: it never becomes a path.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.factories import create_token, pickle_bytes
from tests.support.service import Api

BOUNDARY = "----WebKitFormBoundaryhokusaiTest"
PREDICTIONS = b"y_true,y_score\n1,0.9\n0,0.2\n1,0.7\n0,0.4\n"


def part(name: str, value: bytes, *, filename: str | None = None, media: str = "") -> bytes:
    disposition = f'form-data; name="{name}"'
    if filename is not None:
        disposition += f'; filename="{filename}"'
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
    if media:
        head += f"Content-Type: {media}\r\n"
    return head.encode() + b"\r\n" + value + b"\r\n"


def model_part() -> bytes:
    return part(
        "model_file", pickle_bytes(), filename="model.pkl", media="application/octet-stream"
    )


async def post(api: Api, token_id: str, *parts: bytes) -> httpx.Response:
    body = b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()
    return await api.client.post(
        f"/models/{token_id}/register",
        content=body,
        headers=api.auth() | {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
    )


@pytest.fixture
async def token_id(api: Api) -> str:
    token_id = f"FORM-{api.backend}-{uuid.uuid4().hex[:8]}".upper()
    await create_token(api.client, api.auth(), token_id=token_id, metric="auroc", baseline=0.82)
    return token_id


class TestSwaggerUiForm:
    async def test_empty_optional_fields_and_file_field_are_not_sent(
        self, api: Api, token_id: str
    ) -> None:
        # The body Swagger UI 5 sends when only the required fields and the score are filled in.
        response = await post(
            api,
            token_id,
            part("model_name", b""),
            part("metric_value", b"0.86"),
            part("predictions", b""),
            part("baseline", b"0.82"),
            part("sha256", b""),
            part("min_improvement", b"0"),
            part("metric", b"auroc"),
            model_part(),
            part("tags", b'{"framework": "sklearn"}'),
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        assert body["status"] == "registered"
        assert body["model_name"] == f"hokusai-{token_id}"
        assert body["metric"]["value"] == 0.86

    async def test_predictions_with_the_score_left_empty_are_scored(
        self, api: Api, token_id: str
    ) -> None:
        response = await post(
            api,
            token_id,
            part("metric", b"auroc"),
            part("baseline", b"0.82"),
            part("metric_value", b""),
            part("predictions", PREDICTIONS, filename="scores.csv", media="text/csv"),
            model_part(),
        )
        assert response.status_code == 201, response.text
        assert response.json()["metric"]["value"] == 1.0


class TestHtmlForm:
    async def test_a_file_field_left_empty_is_not_sent(self, api: Api, token_id: str) -> None:
        # What a browser sends for <input type=file> with no file chosen.
        response = await post(
            api,
            token_id,
            part("metric", b"auroc"),
            part("baseline", b"0.82"),
            part("metric_value", b"0.9"),
            part("predictions", b"", filename="", media="application/octet-stream"),
            model_part(),
        )
        assert response.status_code == 201, response.text

    async def test_predictions_sent_as_text_are_refused(self, api: Api, token_id: str) -> None:
        response = await post(
            api,
            token_id,
            part("metric", b"auroc"),
            part("baseline", b"0.82"),
            part("predictions", PREDICTIONS),
            model_part(),
        )
        assert response.status_code == 422, response.text
        assert response.json()["code"] == "invalid_predictions"
        token = (await api.client.get(f"/tokens/{token_id}", headers=api.auth())).json()
        assert token["status"] == "draft"


class TestPredictionsFileName:
    async def test_a_name_with_parent_folders_writes_nothing_outside_the_upload(
        self, api: Api, token_id: str
    ) -> None:
        escaped = api.settings.upload_dir.parent / f"escaped-{uuid.uuid4().hex}.csv"
        # upload_dir/<attempt>/predictions/<name>: three levels up is upload_dir's parent.
        response = await post(
            api,
            token_id,
            part("metric", b"auroc"),
            part("baseline", b"0.82"),
            part("predictions", PREDICTIONS, filename=f"../../../{escaped.name}", media="text/csv"),
            model_part(),
        )
        assert response.status_code == 422, response.text
        assert response.json()["code"] == "invalid_predictions"
        assert not escaped.exists()
