"""HTTP endpoints of verified evaluation: sealed benchmarks, receipts and their public keys."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response, status

from app.auth.models import Scope
from app.deps import BenchmarksManage, DatabaseDep, SettingsDep, TokensRead
from app.errors import (
    BenchmarkNotFound,
    InvalidBenchmark,
    PayloadTooLarge,
    ReceiptNotFound,
    RegistrationNotFound,
    TokenNotFound,
    UnsupportedMediaType,
    UnsupportedMetric,
    ValidationFailed,
)
from app.evaluation import benchmark_versions, receipt_payload, service
from app.evaluation.benchmarks import DEFAULT_LABEL_COLUMN
from app.evaluation.schemas import EXAMPLE_BENCHMARK, BenchmarkPublic, Jwks, Receipt
from app.openapi import REQUEST_NOT_VALID, json_example, problem_responses

router = APIRouter(tags=["evaluation"])

TokenIdPath = Annotated[
    str,
    Path(
        description="the token's id, any case",
        openapi_examples={"xray": {"summary": "a token id", "value": "XRAY"}},
    ),
]

_BENCHMARK_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["dataset"],
                "properties": {
                    "label_column": {
                        "type": "string",
                        "default": DEFAULT_LABEL_COLUMN,
                        "description": "the column holding the true labels; every other "
                        "column is a feature the model receives",
                    },
                    "dataset": {
                        "type": "string",
                        "format": "binary",
                        "contentMediaType": "text/csv",
                        "description": "held-out rows as CSV (UTF-8, a header row, one row per "
                        "example): the feature columns and the label column",
                    },
                },
            },
            "encoding": {"dataset": {"contentType": "text/csv"}},
        }
    },
}

_BAD_TOKEN_ID = (
    ValidationFailed,
    "token_id must be 1-64 characters of A-Z, a-z, 0-9 and '-', with no leading or trailing hyphen",
)


@router.put(
    "/tokens/{token_id}/benchmark",
    summary="Upload a token's sealed benchmark",
    status_code=status.HTTP_201_CREATED,
    responses={
        200: json_example(
            {**EXAMPLE_BENCHMARK, "version": 2}, description="A new version replaced the last"
        ),
        201: json_example(EXAMPLE_BENCHMARK, description="The token's first benchmark"),
        **problem_responses(
            TokenNotFound,
            (
                PayloadTooLarge,
                "the benchmark file is larger than the limit of 268435456 bytes",
                {"limit_bytes": 268435456},
            ),
            (
                UnsupportedMediaType,
                "send the benchmark as multipart/form-data with the CSV in the field 'dataset'",
                {"content_type": "application/json"},
            ),
            (
                UnsupportedMetric,
                "reply_rate cannot be computed from a model's predictions, so a benchmark "
                "cannot score it; benchmarks support accuracy, auroc, f1, precision, recall, "
                "log_loss, mse, rmse, mae, r2",
                {},
            ),
            (InvalidBenchmark, "row 17 has 4 fields; the header has 5", {"row": 17}),
            _BAD_TOKEN_ID,
            scope=Scope.BENCHMARKS_MANAGE,
        ),
    },
    openapi_extra={"requestBody": _BENCHMARK_BODY},
)
async def put_benchmark(
    token_id: TokenIdPath,
    request: Request,
    response: Response,
    settings: SettingsDep,
    database: DatabaseDep,
    _: BenchmarksManage,
) -> BenchmarkPublic:
    """Upload held-out rows that registrations for this token are evaluated on (multipart).

    The CSV is stored privately and versioned (1, 2, …): 201 for the first upload, 200 for a
    new version. Only its metadata comes back: rows, the feature columns and their dtypes, the
    classes and the file's sha256. The labels never leave the service. From now on every model
    registered for the token is run on these features in a sandbox and scored by the service on
    the token's metric, which must be one computable from predictions.
    """
    result, created = await benchmark_versions.put_benchmark(settings, database, request, token_id)
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return result


@router.get(
    "/tokens/{token_id}/benchmark",
    summary="Get a token's benchmark metadata",
    responses=problem_responses(
        TokenNotFound,
        (BenchmarkNotFound, "token XRAY has no benchmark", {}),
        _BAD_TOKEN_ID,
        scope=Scope.TOKENS_READ,
    ),
)
async def get_benchmark(
    token_id: TokenIdPath, database: DatabaseDep, _: TokensRead
) -> BenchmarkPublic:
    """Show the latest version of the token's sealed benchmark (metadata only, never rows)."""
    return await benchmark_versions.get_benchmark(database, token_id)


@router.get(
    "/registrations/{registration_id}/receipt",
    summary="Get an evaluation receipt",
    responses=problem_responses(
        RegistrationNotFound,
        (
            ReceiptNotFound,
            "registration 7d9e2c41-5b0a-4f3e-9c8d-1a2b3c4d5e6f has no evaluation receipt (it "
            "was not evaluated, or its evaluation has not produced a value)",
            {},
        ),
        REQUEST_NOT_VALID,
        scope=Scope.TOKENS_READ,
    ),
)
async def get_receipt(
    registration_id: Annotated[str, Path(description="the `registration_id` of the attempt")],
    database: DatabaseDep,
    _: TokensRead,
) -> Receipt:
    """The signed outcome of an evaluated registration.

    `jws` is a compact JWS (alg EdDSA, header `kid`) whose payload is exactly `payload`; verify
    it with any JOSE library against `/.well-known/jwks.json`.
    """
    return await receipt_payload.get_receipt(database, registration_id)


@router.get("/.well-known/jwks.json", summary="Receipt signing keys", responses=problem_responses())
async def jwks(request: Request) -> Jwks:
    """The public keys evaluation receipts are signed with, older (rotated) keys included.

    Needs no API key.
    """
    evaluation: service.EvaluationServices = request.app.state.evaluation
    return Jwks(**evaluation.signer.jwks())
