"""Sample answers of the service, and a reader of recorded multipart bodies, for the CLI tests."""

from __future__ import annotations

from typing import Any

from tests.cli.servers import Recorded

EVALUATING: dict[str, Any] = {
    "registration_id": "r-9",
    "token_id": "XRAY",
    "status": "evaluating",
    "metric": None,
    "evaluation": {"status": "queued"},
    "error": None,
}
RUNNING = {**EVALUATING, "evaluation": {"status": "running", "rows": 1000}}
REGISTERED = {
    **EVALUATING,
    "status": "registered",
    "model_name": "hokusai-XRAY",
    "model_version": "1",
    "metric": {
        "name": "auroc",
        "value": 0.9,
        "baseline": 0.82,
        "improvement": 0.08,
        "source": "evaluated",
        "ci95": [0.88, 0.92],
    },
    "evaluation": {
        "status": "succeeded",
        "rows": 1000,
        "benchmark_version": 1,
        "seconds": 1.5,
        "sandbox": "bubblewrap",
    },
}
REJECTED = {
    **EVALUATING,
    "status": "rejected",
    "evaluation": {"status": "failed"},
    "error": {
        "type": "https://hokusai.ai/problems/evaluation_failed",
        "title": "The model could not be evaluated",
        "status": 422,
        "detail": "predict raised ValueError: bad input",
        "code": "evaluation_failed",
        "request_id": "req-1",
    },
}


def form_fields(request: Recorded) -> dict[str, bytes]:
    boundary = request.headers["content-type"].split("boundary=", 1)[1]
    parts = request.head.split(f"--{boundary}".encode())[1:-1]
    fields = {}
    for part in parts:
        head, _, value = part.partition(b"\r\n\r\n")
        name = head.split(b'name="', 1)[1].split(b'"', 1)[0].decode()
        fields[name] = value[:-2]
    return fields
