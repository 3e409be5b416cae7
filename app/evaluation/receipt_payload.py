"""What an evaluation receipt says (exactly the contract's fields), signed; and reading one back."""

from __future__ import annotations

import datetime as dt
from importlib import metadata
from typing import Any

from app.db import Database
from app.errors import ReceiptNotFound, RegistrationNotFound
from app.evaluation.measuring import Measured
from app.evaluation.models import Benchmark, EvaluationJob
from app.evaluation.receipts import ReceiptSigner
from app.evaluation.schemas import Receipt
from app.registration import repository as registrations
from app.registration.models import Registration
from app.scoring import MetricCheck

RECEIPT_ARTIFACT = "hokusai/evaluation_receipt.json"


def evaluator_version() -> str:
    try:
        return metadata.version("hokusai-registry")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0.0.0"


def receipt_payload(
    *,
    row: Registration,
    job: EvaluationJob,
    benchmark: Benchmark,
    check: MetricCheck,
    measured: Measured,
    evaluated_at: dt.datetime,
) -> dict[str, Any]:
    """Exactly the contract's receipt fields."""
    return {
        "registration_id": row.id,
        "token_id": row.token_id,
        "model_sha256": row.artifact_sha256,
        "benchmark_sha256": benchmark.sha256,
        "benchmark_version": benchmark.version,
        "metric": check.name,
        "value": check.value,
        "ci95": list(measured.ci95),
        "rows": benchmark.rows,
        "baseline": check.baseline,
        "min_improvement": check.min_improvement,
        "confidence": job.confidence,
        "passed": check.passed,
        "evaluated_at": evaluated_at.isoformat().replace("+00:00", "Z"),
        "evaluator": {"version": evaluator_version(), "sandbox": measured.sandbox.mode.value},
    }


def signed_receipt(signer: ReceiptSigner, payload: dict[str, Any]) -> dict[str, Any]:
    return {"payload": payload, "jws": signer.sign(payload)}


async def get_receipt(database: Database, registration_id: str) -> Receipt:
    async with database.transaction(read_only=True) as session:
        row = await registrations.get(session, registration_id[:64])
    if row is None:
        raise RegistrationNotFound(f"no registration {registration_id[:64]}")
    if not row.receipt:
        raise ReceiptNotFound(
            f"registration {row.id} has no evaluation receipt (it was not evaluated, or its "
            "evaluation has not produced a value)"
        )
    return Receipt(**row.receipt)
