"""Verified evaluation as a registration sees it: queueing an evaluation, waiting for its outcome.

A registration for a token with a benchmark is checked as any other, then claims the token and
queues an evaluation job in one transaction, and answers `evaluating`. A process running
evaluations (app.evaluation.worker) runs the model in the sandbox on the benchmark's features,
computes the metric and its bootstrap interval from what comes back (app.evaluation.measuring),
and settles the registration (app.evaluation.settling): a pass goes through the same MLflow step
and the same committing transaction as a synchronous registration; a refusal leaves the token as
it was, with `model_validation_failed`. Benchmarks are stored by app.evaluation.benchmark_versions,
receipts written by app.evaluation.receipt_payload.
"""

from __future__ import annotations

import datetime as dt
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import anyio
import structlog
from sqlalchemy.exc import IntegrityError
from sqlmodel.ext.asyncio.session import AsyncSession

from app import observability
from app.config import Environment, Settings
from app.db import Database, utcnow
from app.errors import (
    EvaluationUnavailable,
    InvalidModelFile,
    RegistrationInProgress,
    StoredProblem,
    TokenNotFound,
    TokenNotRegistrable,
)
from app.evaluation import repository
from app.evaluation.kept_models import keep_model
from app.evaluation.models import Benchmark, EvaluationJob, JobStatus
from app.evaluation.receipts import ReceiptSigner
from app.evaluation.sandbox import ModelKind, SandboxInfo, SandboxMode
from app.events.signal import EventSignal, new_events
from app.registration import repository as registrations
from app.registration.artifacts import ModelFormat
from app.registration.models import Registration, RegistrationStatus
from app.registration.schemas import RegistrationPublic
from app.registration.settle import claim_in
from app.registration.upload import RegistrationForm
from app.tokens import repository as tokens
from app.tokens.models import REGISTRABLE, Token, TokenStatus

__all__ = [
    "EvaluationServices",
    "await_outcome",
    "evaluation_json",
    "parse_prefer_wait",
    "sandbox_usable",
]

log = structlog.get_logger(__name__)

_MODEL_KINDS = {
    ModelFormat.PICKLE: ModelKind.PICKLE,
    ModelFormat.JOBLIB: ModelKind.JOBLIB,
    ModelFormat.MLFLOW_ZIP: ModelKind.MLFLOW,
    ModelFormat.MLFLOW_TAR: ModelKind.MLFLOW,
}


def sandbox_usable(settings: Settings, sandbox: SandboxInfo) -> bool:
    """Whether this process may run models: never without isolation in production."""
    if sandbox.mode is SandboxMode.NONE:
        return False
    return sandbox.isolated or settings.env is not Environment.PRODUCTION


@dataclass(slots=True)
class EvaluationServices:
    """Verified evaluation in a running process; implements the registration's `Evaluations`."""

    settings: Settings
    database: Database
    signer: ReceiptSigner
    sandbox: SandboxInfo
    # Woken when a job is queued here, so this process's evaluator starts it at once.
    jobs: EventSignal

    # The registration's side ---------------------------------------------------------------------

    async def benchmark_for(self, session: AsyncSession, token: Token) -> object | None:
        return await repository.latest_benchmark(session, token.token_id)

    async def enqueue(
        self,
        services: Any,
        attempt: Any,
        form: RegistrationForm,
        unpacked: Path | None,
        *,
        token: Token,
        benchmark: object,
    ) -> RegistrationPublic:
        """Keep the model, claim the token and queue the job in one transaction."""
        assert isinstance(benchmark, Benchmark)
        kind = self._model_kind(attempt)
        folder = self.settings.evaluation_dir / attempt.id
        model_path = await anyio.to_thread.run_sync(keep_model, folder, form.model.path, unpacked)
        now = utcnow()
        evaluation = evaluation_json(benchmark, self.sandbox, status=JobStatus.QUEUED)
        row = attempt.row(RegistrationStatus.EVALUATING, evaluation=evaluation)
        job = EvaluationJob(
            registration_id=attempt.id,
            token_id=attempt.token_id,
            status=JobStatus.QUEUED,
            benchmark_id=benchmark.id,
            benchmark_version=benchmark.version,
            model_kind=kind.value,
            model_path=model_path,
            request_fields=dict(form.fields),
            previous_token_status=token.status.value,
            confidence=token.confidence,
            created_at=now,
        )
        await self._claim_and_queue(attempt, row, job, folder=folder)
        self.jobs.notify()
        observability.REGISTRATIONS.labels("evaluating", "").inc()
        log.info(
            "evaluation_queued",
            benchmark_version=benchmark.version,
            model_kind=kind.value,
            sandbox=self.sandbox.mode.value,
        )
        return RegistrationPublic.of(row)

    def _model_kind(self, attempt: Any) -> ModelKind:
        """How the sandbox loads the attempt's model; refused when this process cannot run it."""
        if not sandbox_usable(self.settings, self.sandbox):
            raise EvaluationUnavailable(
                "this service cannot run models in an isolated sandbox, so it cannot evaluate "
                f"them ({self.sandbox.detail}); ask the operator to install bubblewrap",
                extra={"sandbox": self.sandbox.mode.value},
            )
        kind = _MODEL_KINDS.get(attempt.format)
        if kind is None:
            raise InvalidModelFile(
                "this token has a sealed benchmark, so the service runs the model itself: send a "
                "pickle (.pkl) or joblib (.joblib) file of an object with the scikit-learn "
                "interface, or an MLflow model archive (.zip or .tar.gz)",
                extra={"format": attempt.format.value if attempt.format else None},
            )
        return kind

    async def _claim_and_queue(
        self,
        attempt: Any,
        row: Registration,
        job: EvaluationJob,
        *,
        folder: Path,
    ) -> None:
        """Claim the token and add the registration and its job in one transaction; the kept
        model is removed when that does not happen."""
        try:
            async with self.database.transaction() as session:
                claimed = await claim_in(session, attempt, row)
                if claimed:
                    session.add(job)
                    await session.flush()
                else:
                    current = await tokens.get(session, attempt.token_id)
        except BaseException as e:
            await anyio.to_thread.run_sync(shutil.rmtree, folder, True)
            if isinstance(e, IntegrityError):
                raise RegistrationInProgress(
                    "a registration with this Idempotency-Key is already running"
                ) from e
            raise
        if not claimed:
            await anyio.to_thread.run_sync(shutil.rmtree, folder, True)
            _not_claimed(attempt.token_id, current)


def _not_claimed(token_id: str, current: Token | None) -> NoReturn:
    """Why the token could not be claimed for the registration."""
    if current is None:
        raise TokenNotFound(f"no token {token_id}")
    if current.status not in REGISTRABLE and current.status != TokenStatus.REGISTERING:
        raise TokenNotRegistrable(
            f"token {token_id} is {current.status.value}; only draft and failed "
            "tokens can be registered",
            extra={"token_status": current.status.value},
        )
    raise RegistrationInProgress(f"token {token_id} is being registered right now")


def evaluation_json(
    benchmark: Benchmark,
    sandbox: SandboxInfo,
    *,
    status: JobStatus,
    started_at: dt.datetime | None = None,
    finished_at: dt.datetime | None = None,
    seconds: float | None = None,
) -> dict[str, Any]:
    return {
        "status": status.value,
        "benchmark_version": benchmark.version,
        "benchmark_sha256": benchmark.sha256,
        "rows": benchmark.rows,
        "sandbox": sandbox.mode.value,
        "sandbox_detail": sandbox.detail,
        "started_at": started_at.isoformat() if started_at else None,
        "finished_at": finished_at.isoformat() if finished_at else None,
        "seconds": round(seconds, 3) if seconds is not None else None,
    }


# Waiting for an outcome (Prefer: wait) ----------------------------------------------------------


async def await_outcome(
    database: Database, registration: RegistrationPublic, seconds: float
) -> RegistrationPublic:
    """The registration once it leaves `evaluating`, or as it is after `seconds`.

    A refusal is raised as its problem, so the request answers as a synchronous one would.
    """
    deadline = anyio.current_time() + seconds
    current = registration
    while True:
        async with database.transaction(read_only=True) as session:
            row = await registrations.get(session, registration.registration_id)
        if row is None:  # pragma: no cover - the row is never deleted while its token exists
            return current
        current = RegistrationPublic.of(row)
        if row.status == RegistrationStatus.REGISTERED:
            return current
        if row.status in (RegistrationStatus.REJECTED, RegistrationStatus.FAILED):
            error = StoredProblem({**(row.error or {}), "registration_id": row.id})
            error.extra.pop("idempotent_replay", None)
            raise error
        remaining = deadline - anyio.current_time()
        if remaining <= 0:
            return current
        # Settling writes events, which wake this (across processes on PostgreSQL); the poll
        # covers SQLite shared by several processes.
        await new_events.wait(min(remaining, 1.0))


def parse_prefer_wait(header: str | None, *, limit: int = 300) -> int:
    """Seconds from `Prefer: wait=N` (RFC 7240), at most `limit`; 0 when absent or unusable."""
    if not header:
        return 0
    for preference in header.split(","):
        name, _, value = preference.split(";")[0].strip().partition("=")
        if name.strip().lower() == "wait":
            text = value.strip().strip('"')
            if text.isdigit() and len(text) <= 6:
                return min(int(text), limit)
    return 0
