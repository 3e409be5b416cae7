"""Request and response bodies of verified evaluation: benchmarks, receipts, the JWKS."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.evaluation.models import Benchmark

EXAMPLE_BENCHMARK: dict[str, Any] = {
    "token_id": "XRAY",
    "version": 1,
    "sha256": "3b0c9f6e1d2a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9012345678",
    "rows": 2000,
    "label_column": "y_true",
    "features": [
        {"name": "age", "dtype": "int64"},
        {"name": "bmi", "dtype": "float64"},
        {"name": "smoker", "dtype": "bool"},
    ],
    "classes": [0, 1],
    "created_at": "2026-12-01T09:12:44.120000Z",
}

EXAMPLE_RECEIPT_PAYLOAD: dict[str, Any] = {
    "registration_id": "7d9e2c41-5b0a-4f3e-9c8d-1a2b3c4d5e6f",
    "token_id": "XRAY",
    "model_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "benchmark_sha256": EXAMPLE_BENCHMARK["sha256"],
    "benchmark_version": 1,
    "metric": "auroc",
    "value": 0.8712,
    "ci95": [0.8541, 0.8869],
    "rows": 2000,
    "baseline": 0.82,
    "min_improvement": 0.0,
    "confidence": 0.95,
    "passed": True,
    "evaluated_at": "2026-12-01T09:20:03.551000Z",
    "evaluator": {"version": "0.1.0", "sandbox": "bubblewrap"},
}


class FeatureColumn(BaseModel):
    name: str
    dtype: str = Field(
        description="how the model's DataFrame holds it: bool, int64, float64 or object"
    )


class BenchmarkPublic(BaseModel):
    """A sealed benchmark's metadata; its rows and labels are never returned."""

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE_BENCHMARK]})

    token_id: str
    version: int = Field(description="1 for the first upload, then 2, 3, …")
    sha256: str = Field(description="SHA-256 of the uploaded CSV file")
    rows: int
    label_column: str
    features: list[FeatureColumn] = Field(
        description="the columns a model receives, in order, with their dtypes"
    )
    classes: list[Any] | None = Field(
        description="sorted distinct labels for classification metrics, else null"
    )
    created_at: dt.datetime

    @classmethod
    def of(cls, row: Benchmark) -> BenchmarkPublic:
        return cls(
            token_id=row.token_id,
            version=row.version,
            sha256=row.sha256,
            rows=row.rows,
            label_column=row.label_column,
            features=[FeatureColumn(**column) for column in row.features],
            classes=row.classes,
            created_at=row.created_at,
        )


class Receipt(BaseModel):
    """An evaluation's signed outcome: `jws` is a compact JWS whose payload is `payload`."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "payload": EXAMPLE_RECEIPT_PAYLOAD,
                    "jws": "eyJhbGciOiJFZERTQSIsImtpZCI6Ii4uLiJ9.eyJiYXNlbGluZSI6MC44Mn0.c2ln",
                }
            ]
        }
    )

    payload: dict[str, Any]
    jws: str = Field(description="compact JWS, alg EdDSA, header kid; verify with the JWKS")


class Jwks(BaseModel):
    """The public keys evaluation receipts are signed with (RFC 7517), retired ones included."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "keys": [
                        {
                            "kty": "OKP",
                            "crv": "Ed25519",
                            "x": "ewCuUvpJsZ7m0Y7cdL4SgMB6nSz-4ej0rr5L_iaBwV0",
                            "kid": "wNA7RLXj75IFbRo1OLTOJFrVll4qRlUhcSv_aE1qqQw",
                            "alg": "EdDSA",
                            "use": "sig",
                        }
                    ]
                }
            ]
        }
    )

    keys: list[dict[str, Any]]
