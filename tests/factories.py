"""Small builders for test data: tokens, model files and registration requests."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import zipfile
from typing import Any

import httpx

MLMODEL_WITH_SIGNATURE = """\
artifact_path: model
flavors:
  python_function:
    loader_module: mlflow.sklearn
    python_version: 3.11.7
  sklearn:
    pickled_model: model.pkl
    sklearn_version: 1.5.2
signature:
  inputs: '[{"type": "double", "name": "age", "required": true},
    {"type": "double", "name": "bmi", "required": true}]'
  outputs: '[{"type": "long", "required": true}]'
  params: null
"""


def pickle_bytes(*, size: int = 1024) -> bytes:
    """A real pickle of about `size` bytes (a dict holding padding)."""
    return pickle.dumps({"weights": b"\x00" * max(size - 64, 0), "kind": "test"}, protocol=5)


def mlflow_zip(
    *, mlmodel: str = MLMODEL_WITH_SIGNATURE, extra: dict[str, bytes] | None = None
) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("MLmodel", mlmodel)
        archive.writestr("model.pkl", pickle_bytes(size=2048))
        archive.writestr("requirements.txt", "scikit-learn==1.5.2\n")
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def create_token(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    *,
    token_id: str = "XRAY",
    metric: str | None = None,
    baseline: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {"token_id": token_id, "name": f"{token_id} model", **extra}
    if metric is not None:
        body["metric"] = metric
    if baseline is not None:
        body["baseline"] = baseline
    response = await client.post("/tokens", json=body, headers=headers)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


async def register(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    *,
    token_id: str = "XRAY",
    model: bytes | None = None,
    filename: str = "model.pkl",
    metric: str = "auroc",
    baseline: str | float = 0.82,
    metric_value: str | float | None = 0.86,
    predictions: bytes | None = None,
    fields: dict[str, str] | None = None,
) -> httpx.Response:
    """POST a registration as multipart/form-data, text fields first like the CLI sends them."""
    data: dict[str, str] = {"metric": metric, "baseline": str(baseline)}
    if metric_value is not None:
        data["metric_value"] = str(metric_value)
    data.update(fields or {})
    files: dict[str, tuple[str, bytes, str]] = {
        "model_file": (
            filename,
            pickle_bytes() if model is None else model,
            "application/octet-stream",
        )
    }
    if predictions is not None:
        files["predictions"] = ("predictions.csv", predictions, "text/csv")
    return await client.post(
        f"/models/{token_id}/register", data=data, files=files, headers=headers
    )


def tags_field(tags: dict[str, str]) -> dict[str, str]:
    return {"tags": json.dumps(tags)}
