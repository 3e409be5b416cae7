"""Verified evaluation: sealed benchmarks, queueing a registration's evaluation, and settling it.

A registration for a token with a benchmark is checked as any other, then claims the token and
queues an evaluation job in one transaction, and answers `evaluating`. A process running
evaluations (app.evaluation.worker) runs the model in the sandbox on the benchmark's features,
computes the metric and its bootstrap interval from what comes back, and settles the registration:
a pass goes through the same MLflow step and the same committing transaction as a synchronous
registration; a refusal leaves the token as it was, with `model_validation_failed`.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import structlog
from sqlalchemy.exc import IntegrityError
from starlette.requests import Request

from app import observability
from app.config import Environment, Settings
from app.db import Database, utcnow
from app.errors import (
    AppError,
    BenchmarkNotFound,
    EvaluationFailed,
    EvaluationUnavailable,
    InvalidModelFile,
    InvalidPredictions,
    MetricBelowBaseline,
    ReceiptNotFound,
    RegistrationInProgress,
    RegistrationNotFound,
    StoredProblem,
    TokenNotFound,
    TokenNotRegistrable,
)
from app.evaluation import benchmarks, repository
from app.evaluation.confidence import bootstrap_values, interval, seed_for
from app.evaluation.models import Benchmark, EvaluationJob, JobStatus
from app.evaluation.receipts import ReceiptSigner
from app.evaluation.sandbox import (
    ModelKind,
    OutputKind,
    SandboxFailure,
    SandboxInfo,
    SandboxLimits,
    SandboxMode,
    run_model,
)
from app.evaluation.schemas import BenchmarkPublic, Receipt
from app.events.signal import EventSignal, new_events
from app.registration import repository as registrations
from app.registration.artifacts import ModelFormat
from app.registration.models import Registration, RegistrationStatus
from app.registration.schemas import RegistrationPublic
from app.registration.upload import ReceivedFile, RegistrationForm, UploadLimits
from app.scoring import MetricCheck, evaluate, require_passed
from app.scoring.compute import COLUMNS, compute_from_columns, first_unusable
from app.scoring.registry import METRICS, MetricSpec
from app.scoring.validation import format_number
from app.tokens import repository as tokens
from app.tokens.models import REGISTRABLE, Token, TokenStatus
from app.tokens.schemas import normalize_token_id

log = structlog.get_logger(__name__)

CONFIDENCE_LEVEL = 0.95
RECEIPT_ARTIFACT = "hokusai/evaluation_receipt.json"
# Metrics scored from a continuous score rather than a predicted label.
SCORE_METRICS = frozenset({"auroc", "log_loss"})
MAX_EXCERPT = 500
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_MODEL_KINDS = {
    ModelFormat.PICKLE: ModelKind.PICKLE,
    ModelFormat.JOBLIB: ModelKind.JOBLIB,
    ModelFormat.MLFLOW_ZIP: ModelKind.MLFLOW,
    ModelFormat.MLFLOW_TAR: ModelKind.MLFLOW,
}
REASONS = {
    "load_failed": "the model did not load",
    "raised": "the model raised an error",
    "wrong_row_count": "the model returned the wrong number of rows",
    "non_finite": "the model returned non-finite values",
    "bad_output": "the model's output is not usable for the metric",
    "timeout": "the evaluation ran past its time limit",
    "memory": "the model exceeded its memory limit",
    "output_too_large": "the model's output exceeded its size limit",
    "no_output": "the model exited without output",
    "killed": "the sandbox stopped the model",
}


def evaluator_version() -> str:
    try:
        return metadata.version("hokusai-registry")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0.0.0"


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

    async def benchmark_for(self, token: Token) -> object | None:
        async with self.database.transaction(read_only=True) as session:
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
        folder = self.settings.evaluation_dir / attempt.id
        model_path = await anyio.to_thread.run_sync(_keep_model, folder, form.model.path, unpacked)
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
        try:
            async with self.database.transaction() as session:
                claimed = await tokens.compare_and_set(
                    session,
                    attempt.token_id,
                    expected=REGISTRABLE,
                    values={
                        "status": TokenStatus.REGISTERING,
                        "current_registration_id": attempt.id,
                        "claimed_at": now,
                    },
                )
                if claimed:
                    session.add(row)
                    await session.flush()
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
            if current is None:
                raise TokenNotFound(f"no token {attempt.token_id}")
            if current.status not in REGISTRABLE and current.status != TokenStatus.REGISTERING:
                raise TokenNotRegistrable(
                    f"token {attempt.token_id} is {current.status.value}; only draft and failed "
                    "tokens can be registered",
                    extra={"token_status": current.status.value},
                )
            raise RegistrationInProgress(f"token {attempt.token_id} is being registered right now")
        self.jobs.notify()
        observability.REGISTRATIONS.labels("evaluating", "").inc()
        log.info(
            "evaluation_queued",
            benchmark_version=benchmark.version,
            model_kind=kind.value,
            sandbox=self.sandbox.mode.value,
        )
        return RegistrationPublic.of(row)


def _keep_model(folder: Path, model: Path, unpacked: Path | None) -> str:
    """Move the upload out of the request's working folder into the evaluation's own."""
    folder.mkdir(mode=0o700, parents=True)
    if unpacked is not None:
        target = folder / "unpacked"
        shutil.move(unpacked, target)
        return "unpacked"
    (folder / "model").mkdir(mode=0o700)
    target = folder / "model" / model.name
    shutil.move(model, target)
    return f"model/{model.name}"


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


# Benchmarks --------------------------------------------------------------------------------------


async def put_benchmark(
    settings: Settings, database: Database, request: Request, raw_token_id: str
) -> tuple[BenchmarkPublic, bool]:
    """Store a new version of the token's benchmark; returns it and whether it is the first."""
    token_id = normalize_token_id(raw_token_id)
    async with database.transaction(read_only=True) as session:
        token = await tokens.get(session, token_id)
    if token is None:
        raise TokenNotFound(f"no token {token_id}")
    spec = benchmarks.metric_for_benchmark(token.metric)
    incoming = settings.benchmark_dir / ".incoming" / str(uuid.uuid4())
    await anyio.to_thread.run_sync(lambda: incoming.mkdir(mode=0o700, parents=True))
    folder: Path | None = None
    try:
        received = await benchmarks.receive_dataset(
            request,
            directory=incoming,
            limits=UploadLimits(
                max_upload_bytes=settings.max_benchmark_bytes,
                max_predictions_bytes=0,
                idle_timeout_seconds=settings.upload_idle_timeout_seconds,
                min_bytes_per_second=settings.upload_min_bytes_per_second,
                deadline_seconds=settings.upload_deadline_seconds,
            ),
        )
        benchmark_id, storage = await anyio.to_thread.run_sync(
            benchmarks.new_storage, settings.benchmark_dir
        )
        folder = storage
        parsed = await anyio.to_thread.run_sync(
            lambda: benchmarks.parse_benchmark(
                spec, received.path, storage, label_column=received.label_column
            )
        )
        row = await _insert_benchmark(
            database,
            Benchmark(
                id=benchmark_id,
                token_id=token_id,
                version=0,
                sha256=received.sha256,
                size_bytes=received.size,
                rows=parsed.rows,
                label_column=parsed.label_column,
                metric=spec.name,
                features=parsed.features,
                classes=parsed.classes,
            ),
        )
    except BaseException:
        if folder is not None:
            await anyio.to_thread.run_sync(benchmarks.remove, folder)
        raise
    finally:
        await anyio.to_thread.run_sync(benchmarks.remove, incoming)
    log.info(
        "benchmark_stored",
        token_id=token_id,
        version=row.version,
        rows=row.rows,
        columns=len(row.features),
        sha256=row.sha256,
    )
    return BenchmarkPublic.of(row), row.version == 1


async def _insert_benchmark(database: Database, row: Benchmark) -> Benchmark:
    """Give the row the token's next version number; a racing upload takes the next one."""
    for _ in range(5):
        try:
            async with database.transaction() as session:
                latest = await repository.latest_benchmark(session, row.token_id)
                row.version = (latest.version if latest else 0) + 1
                row.created_at = utcnow()
                session.add(row)
                await session.flush()
            return row
        except IntegrityError:
            continue
    raise RegistrationInProgress("the benchmark is being replaced by another upload; try again")


async def get_benchmark(database: Database, raw_token_id: str) -> BenchmarkPublic:
    token_id = normalize_token_id(raw_token_id)
    async with database.transaction(read_only=True) as session:
        if await tokens.get(session, token_id) is None:
            raise TokenNotFound(f"no token {token_id}")
        row = await repository.latest_benchmark(session, token_id)
    if row is None:
        raise BenchmarkNotFound(f"token {token_id} has no benchmark")
    return BenchmarkPublic.of(row)


# Receipts ----------------------------------------------------------------------------------------


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


# Measuring (in a worker thread) ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Measured:
    """What the service measured: the metric, its interval(s), the sandboxed run's facts."""

    value: float
    ci95: tuple[float, float]
    gate_interval: tuple[float, float] | None
    seconds: float
    sandbox: SandboxInfo


def sandbox_limits(settings: Settings) -> SandboxLimits:
    """The limits of every evaluation in this process (its warm spare is started with them)."""
    return SandboxLimits(
        wall_seconds=settings.evaluation_timeout_seconds,
        memory_mb=settings.evaluation_memory_mb,
    )


def output_kind(spec: MetricSpec) -> OutputKind:
    return OutputKind.SCORE if spec.name in SCORE_METRICS else OutputKind.PREDICT


def measure(
    settings: Settings,
    sandbox: SandboxInfo,
    *,
    job: EvaluationJob,
    row: Registration,
    benchmark: Benchmark,
) -> Measured:
    """Run the model on the benchmark's features in the sandbox and score what it returns.

    Raises `SandboxFailure` when the model could not be evaluated. The labels are read only
    after the sandbox has finished, in this (trusted) process.
    """
    spec = METRICS[benchmark.metric]
    folder = settings.benchmark_dir / benchmark.id
    result = run_model(
        model_path=settings.evaluation_dir / job.registration_id / job.model_path,
        model_kind=ModelKind(job.model_kind),
        features_path=folder / benchmarks.FEATURES_FILE,
        dtypes={column["name"]: column["dtype"] for column in benchmark.features},
        output=output_kind(spec),
        expected_rows=benchmark.rows,
        limits=sandbox_limits(settings),
        sandbox=sandbox,
    )
    predictions = _as_numbers(result.values, spec)
    labels = benchmarks.load_labels(folder)
    try:
        value = compute_from_columns(spec, labels, predictions)
    except InvalidPredictions as e:
        raise SandboxFailure("bad_output", e.detail.replace("y_true", "the labels")) from None
    samples = bootstrap_values(
        spec,
        labels,
        predictions,
        seed=seed_for(row.artifact_sha256 or "", benchmark.sha256, spec.name),
    )
    ci95 = interval(samples, CONFIDENCE_LEVEL)
    gate = interval(samples, job.confidence) if job.confidence is not None else None
    return Measured(
        value=value, ci95=ci95, gate_interval=gate, seconds=result.seconds, sandbox=result.sandbox
    )


def _as_numbers(values: np.ndarray[Any, Any], spec: MetricSpec) -> np.ndarray[Any, Any]:
    """The model's output as float64 of the kind the metric needs, or `bad_output`."""
    kind = COLUMNS[spec.name][1].kind
    if values.dtype.kind not in "fiub":
        try:
            values = np.char.strip(values.astype(str)).astype(np.float64)
        except ValueError:
            first = str(values[0])[:40] if values.size else ""
            raise SandboxFailure(
                "bad_output",
                f"{spec.name} needs numbers ({kind.value}); the model returned text such as "
                f"{first!r}",
            ) from None
    numbers = values.astype(np.float64)
    bad = first_unusable(numbers, kind)
    if bad is not None:
        raise SandboxFailure(
            "bad_output",
            f"row {bad + 1}: the model returned {numbers[bad]!r}; {spec.name} needs {kind.value}",
        )
    return numbers


def failure_detail(failure: SandboxFailure, settings: Settings) -> str:
    """`evaluation_failed`'s detail: which limit or fault, and a bounded excerpt of the model's."""
    text = REASONS.get(failure.reason, "the model could not be evaluated")
    if failure.reason == "timeout":
        text += f" of {format_number(settings.evaluation_timeout_seconds)} s"
    elif failure.reason == "memory":
        text += f" of {settings.evaluation_memory_mb} MiB"
    detail = f"{text} ({failure.reason})"
    excerpt = _CONTROL.sub("", failure.excerpt or "").strip()
    if excerpt:
        if len(excerpt) > MAX_EXCERPT:
            excerpt = "…" + excerpt[-MAX_EXCERPT:]
        detail += f": {excerpt}"
    return detail


def gate(
    spec: MetricSpec, row: Registration, measured: Measured, *, confidence: float | None
) -> tuple[MetricCheck, str | None]:
    """The registration's check on the measured value, and why the interval failed it, if so."""
    check = evaluate(
        spec,
        value=measured.value,
        baseline=row.baseline if row.baseline is not None else math.nan,
        min_improvement=row.min_improvement or 0.0,
    )
    if measured.gate_interval is None or confidence is None or not check.passed:
        return check, None
    low, high = measured.gate_interval
    bound = low if spec.higher_is_better else high
    at_bound = evaluate(
        spec, value=bound, baseline=check.baseline, min_improvement=check.min_improvement
    )
    if at_bound.passed and math.isfinite(bound):
        return check, None
    reason = (
        f"{spec.name} {format_number(check.value)} clears the target "
        f"{format_number(check.target)}, but its {confidence:.4g} confidence interval "
        f"[{format_number(low)}, {format_number(high)}] does not: the token requires the whole "
        "interval to clear it"
    )
    return replace(check, passed=False), reason


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


def refusal_for_check(check: MetricCheck, interval_reason: str | None) -> AppError:
    """The 422 of a measured value that does not clear the bar."""
    if interval_reason is not None:
        return MetricBelowBaseline(interval_reason, extra={"metric": check.as_dict()})
    try:
        require_passed(check)
    except MetricBelowBaseline as e:
        return e
    raise AssertionError("a passing check is not a refusal")  # pragma: no cover


def evaluation_failed(failure: SandboxFailure, settings: Settings) -> EvaluationFailed:
    return EvaluationFailed(failure_detail(failure, settings), extra={"reason": failure.reason})


def model_file(settings: Settings, job: EvaluationJob) -> Path:
    return settings.evaluation_dir / job.registration_id / job.model_path


def form_of(settings: Settings, job: EvaluationJob, row: Registration) -> RegistrationForm:
    """The request as the registration's MLflow step reads it, rebuilt from what was kept."""
    path = model_file(settings, job)
    return RegistrationForm(
        fields=dict(job.request_fields),
        model=ReceivedFile(
            path=path,
            filename=row.artifact_filename or path.name,
            size=row.artifact_size_bytes or 0,
            sha256=row.artifact_sha256 or "",
            head=b"",
        ),
        predictions=None,
    )


def remove_model(settings: Settings, registration_id: str) -> None:
    shutil.rmtree(settings.evaluation_dir / registration_id, ignore_errors=True)


def remove_abandoned_models(settings: Settings, live: frozenset[str], older_than: float) -> int:
    """Delete kept models whose evaluation is over (the worker deletes them; a crash may not)."""
    root = settings.evaluation_dir
    if not root.is_dir():
        return 0
    removed = 0
    for folder in root.iterdir():
        if folder.name in live or not folder.is_dir():
            continue
        try:
            if folder.stat().st_mtime >= older_than:
                continue
        except OSError:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed += 1
        log.info("abandoned_evaluation_model_removed", folder=folder.name)
    return removed


def json_text(value: Mapping[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, indent=2) + "\n"
