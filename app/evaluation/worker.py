"""Running evaluation jobs: claimed with a lease from the database, at most N sandboxes at once.

Every process that runs evaluations (`serve` unless HOKUSAI_RUN_EVALUATIONS is off, and each
`hokusai-registry worker`) runs one `Evaluator`. It takes the oldest queued job, or a running one
whose lease ran out because its process died, renews the lease while the sandbox runs, and settles
the registration. A job is started at most HOKUSAI_EVALUATION_MAX_ATTEMPTS times: a model that
kills whatever runs it is refused with `evaluation_failed` rather than tried forever.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import anyio
import structlog
from anyio import CapacityLimiter

from app import background, observability
from app.clients.mlflow import MlflowError, MlflowRegistry, configured_mlflow
from app.config import Settings
from app.db import Database, utcnow
from app.errors import AppError, EvaluationFailed, InternalError, MlflowFailed
from app.evaluation import repository
from app.evaluation.models import Benchmark, EvaluationJob, JobStatus
from app.evaluation.receipts import load_signer
from app.evaluation.sandbox import SandboxFailure, detect_sandbox, prewarm
from app.evaluation.service import (
    RECEIPT_ARTIFACT,
    EvaluationServices,
    Measured,
    evaluation_failed,
    evaluation_json,
    form_of,
    gate,
    measure,
    receipt_payload,
    refusal_for_check,
    remove_model,
    sandbox_limits,
    sandbox_usable,
    signed_receipt,
)
from app.events.outbox import EventType, NewEvent, write_events
from app.events.signal import EventSignal
from app.registration import repository as registrations
from app.registration.artifacts import ModelFormat
from app.registration.attempt import Attempt, RegistrationServices
from app.registration.mlflow_step import log_to_mlflow
from app.registration.models import Registration, RegistrationStatus
from app.registration.sdk_fields import SDK_FIELDS
from app.registration.settle import commit_registration, record_failure
from app.scoring import MetricCheck
from app.scoring.registry import METRICS
from app.tokens import repository as tokens
from app.tokens.models import TokenStatus

log = structlog.get_logger(__name__)

# How often an idle evaluator looks for jobs queued by other processes.
POLL_SECONDS = 1.0


def _owner() -> str:
    return f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Evaluator:
    """Claims and runs evaluation jobs in this process."""

    def __init__(self, registration: RegistrationServices, evaluation: EvaluationServices) -> None:
        self.registration = registration
        self.evaluation = evaluation
        self.settings = evaluation.settings
        self.database = evaluation.database
        self.owner = _owner()
        self.slots = asyncio.Semaphore(self.settings.evaluation_concurrency)
        # Sandboxes block a thread each; scoring and settling need threads of their own.
        self.threads = CapacityLimiter(self.settings.evaluation_concurrency)

    @property
    def lease(self) -> dt.timedelta:
        return dt.timedelta(seconds=self.settings.evaluation_lease_seconds)

    async def run(self) -> None:
        """Take jobs as slots free up, until cancelled."""
        structlog.contextvars.clear_contextvars()
        try:
            await self._run()
        except Exception:
            log.exception("evaluator_stopped")
            raise

    async def _run(self) -> None:
        async with anyio.create_task_group() as group:
            while True:
                await self.slots.acquire()
                try:
                    job = await self.claim()
                except Exception as e:
                    self.slots.release()
                    code = e.code if isinstance(e, AppError) else type(e).__name__
                    log.warning("evaluation_claim_failed", error=code)
                    await anyio.sleep(POLL_SECONDS)
                    continue
                if job is None:
                    self.slots.release()
                    await self.evaluation.jobs.wait(POLL_SECONDS)
                    continue
                group.start_soon(self._run_in_slot, job)

    async def claim(self) -> EvaluationJob | None:
        now = utcnow()
        # An idle evaluator looks every second: a read first, so looking takes no write lock.
        async with self.database.transaction(read_only=True) as session:
            if not await repository.any_claimable(session, now=now):
                return None
        async with self.database.transaction() as session:
            return await repository.claim_next_job(
                session, owner=self.owner, now=now, lease_until=now + self.lease
            )

    async def _run_in_slot(self, job: EvaluationJob) -> None:
        structlog.contextvars.bind_contextvars(
            registration_id=job.registration_id, token_id=job.token_id
        )
        try:
            async with anyio.create_task_group() as group:
                # The lease is renewed for as long as this process works on the job: the
                # sandboxed run, and the MLflow step after it.
                group.start_soon(self._renew, job)
                try:
                    await self.run_job(job)
                finally:
                    group.cancel_scope.cancel()
        except anyio.get_cancelled_exc_class():
            # Shutting down: hand the job back untouched (this start does not count).
            with anyio.CancelScope(shield=True):
                await self._release(job)
            raise
        except Exception:
            # The lease runs out and the job is taken again (up to the attempt limit).
            log.exception("evaluation_job_crashed", attempts=job.attempts)
        finally:
            self.slots.release()

    async def _renew(self, job: EvaluationJob) -> None:
        while True:
            await anyio.sleep(self.settings.evaluation_lease_seconds / 3)
            try:
                async with self.database.transaction() as session:
                    held = await repository.renew_lease(
                        session,
                        job.registration_id,
                        owner=self.owner,
                        lease_until=utcnow() + self.lease,
                    )
                if not held:
                    log.warning("evaluation_lease_lost")
            except AppError as e:
                log.warning("evaluation_lease_not_renewed", code=e.code)

    async def _release(self, job: EvaluationJob) -> None:
        try:
            async with self.database.transaction() as session:
                await repository.release_job(session, job.registration_id, owner=self.owner)
            log.info("evaluation_job_released")
        except Exception:
            log.warning("evaluation_job_not_released")

    # One job ---------------------------------------------------------------------------------

    async def run_job(self, job: EvaluationJob) -> None:
        async with self.database.transaction(read_only=True) as session:
            row = await registrations.get(session, job.registration_id)
            benchmark = await repository.get_benchmark(session, job.benchmark_id)
        if row is None or row.status != RegistrationStatus.EVALUATING:
            # Settled already (by an earlier holder of this job, or the recovery sweep).
            done = row is not None and row.status == RegistrationStatus.REGISTERED
            await self._finish(job, JobStatus.SUCCEEDED if done else JobStatus.FAILED)
            await anyio.to_thread.run_sync(remove_model, self.settings, job.registration_id)
            return
        if benchmark is None:  # pragma: no cover - deleted only with its token
            await self._refuse(
                job, row, None, EvaluationFailed("the token's benchmark no longer exists")
            )
            return
        log.info("evaluation_started", attempt=job.attempts, benchmark_version=benchmark.version)
        if job.attempts > self.settings.evaluation_max_attempts:
            failure = SandboxFailure(
                "killed",
                f"the evaluation was started {job.attempts - 1} times and the process running it "
                "stopped each time before it finished",
            )
            await self._refuse(job, row, benchmark, evaluation_failed(failure, self.settings))
            return
        started = utcnow()
        await self._mark_running(row, benchmark, started)
        try:
            measured = await self._measure(job, row, benchmark)
        except SandboxFailure as failure:
            log.info("evaluation_refused", reason=failure.reason)
            await self._refuse(
                job,
                row,
                benchmark,
                evaluation_failed(failure, self.settings),
                started=started,
            )
            return
        spec = METRICS[benchmark.metric]
        check, interval_reason = gate(spec, row, measured, confidence=job.confidence)
        finished = utcnow()
        payload = receipt_payload(
            row=row,
            job=job,
            benchmark=benchmark,
            check=check,
            measured=measured,
            evaluated_at=finished,
        )
        receipt = signed_receipt(self.evaluation.signer, payload)
        _apply_measurement(row, check, measured, receipt)
        row.evaluation = evaluation_json(
            benchmark,
            measured.sandbox,
            status=JobStatus.SUCCEEDED,
            started_at=started,
            finished_at=finished,
            seconds=measured.seconds,
        )
        log.info(
            "evaluation_measured",
            metric=check.name,
            value=check.value,
            ci95=list(measured.ci95),
            passed=check.passed,
            seconds=round(measured.seconds, 3),
        )
        if not check.passed:
            await self._refuse(
                job,
                row,
                benchmark,
                refusal_for_check(check, interval_reason),
                evaluation=row.evaluation,
            )
            return
        await self._publish(job, row, check, receipt)

    async def _measure(
        self, job: EvaluationJob, row: Registration, benchmark: Benchmark
    ) -> Measured:
        """Run the sandbox and score its output in a worker thread."""
        return await anyio.to_thread.run_sync(
            lambda: measure(
                self.settings, self.evaluation.sandbox, job=job, row=row, benchmark=benchmark
            ),
            limiter=self.threads,
            abandon_on_cancel=True,
        )

    async def _mark_running(
        self, row: Registration, benchmark: Benchmark, started: dt.datetime
    ) -> None:
        row.evaluation = evaluation_json(
            benchmark, self.evaluation.sandbox, status=JobStatus.RUNNING, started_at=started
        )
        row.updated_at = utcnow()
        async with self.database.transaction() as session:
            await registrations.update(session, row)

    async def _finish(
        self,
        job: EvaluationJob,
        status: JobStatus,
        error: dict[str, object] | None = None,
    ) -> None:
        async with self.database.transaction() as session:
            await repository.finish_job(
                session, job.registration_id, owner=None, status=status, now=utcnow(), error=error
            )

    # Settling --------------------------------------------------------------------------------

    async def _refuse(
        self,
        job: EvaluationJob,
        row: Registration,
        benchmark: Benchmark | None,
        error: AppError,
        *,
        started: dt.datetime | None = None,
        evaluation: dict[str, object] | None = None,
    ) -> None:
        """Registration `rejected`, token as it was, `model_validation_failed`: one transaction."""
        problem = {k: v for k, v in error.problem().items() if k != "request_id"}
        now = utcnow()
        if evaluation is None and benchmark is not None:
            evaluation = evaluation_json(
                benchmark,
                self.evaluation.sandbox,
                status=JobStatus.FAILED,
                started_at=started,
                finished_at=now,
            )
        elif evaluation is not None:
            evaluation = {**evaluation, "status": JobStatus.FAILED.value}
        event = NewEvent(
            EventType.MODEL_VALIDATION_FAILED,
            row.token_id,
            {
                "token_id": row.token_id,
                "registration_id": row.id,
                "code": error.code,
                "detail": error.detail,
                "metric_name": row.metric_name,
                "metric_value": row.metric_value,
                "baseline_value": row.baseline,
            },
        )
        async with self.database.transaction() as session:
            released = await tokens.compare_and_set(
                session,
                row.token_id,
                expected=(TokenStatus.REGISTERING,),
                registration_id=row.id,
                values={
                    "status": TokenStatus(job.previous_token_status),
                    "current_registration_id": None,
                    "claimed_at": None,
                },
            )
            if not released:
                log.warning("evaluated_token_moved_on")
            row.status = RegistrationStatus.REJECTED
            row.error = problem
            row.event_ids = [event.event_id]
            row.response_status = error.status
            row.updated_at = now
            if evaluation is not None:
                row.evaluation = evaluation
            await registrations.update(session, row)
            await repository.finish_job(
                session,
                job.registration_id,
                owner=None,
                status=JobStatus.FAILED,
                now=now,
                error=problem,
            )
            await write_events(session, [event])
        await anyio.to_thread.run_sync(remove_model, self.settings, job.registration_id)
        observability.REGISTRATIONS.labels("rejected", error.code).inc()
        log.info("registration_rejected", code=error.code, detail=error.detail)

    async def _publish(
        self,
        job: EvaluationJob,
        row: Registration,
        check: MetricCheck,
        receipt: dict[str, object],
    ) -> None:
        """MLflow and the commit, exactly as a synchronous registration does them."""
        services = self.registration
        attempt = _attempt_of(row, check)
        attempt.extra_run_tags = {
            "hokusai.metric_source": "evaluated",
            "hokusai.benchmark_sha256": str((row.evaluation or {}).get("benchmark_sha256", "")),
        }
        low, high = row.metric_ci95 or [float("nan"), float("nan")]
        attempt.extra_run_metrics = {f"{check.name}_ci95_low": low, f"{check.name}_ci95_high": high}
        attempt.extra_artifacts = {RECEIPT_ARTIFACT: _receipt_text(receipt)}
        form = form_of(self.settings, job, row)
        unpacked = form.model.path if job.model_path == "unpacked" else None
        try:
            # A run left by an earlier holder of this job (killed mid-MLflow) is undone first.
            await self._undo_earlier_runs(row)
            await anyio.to_thread.run_sync(
                log_to_mlflow,
                services,
                attempt,
                form,
                unpacked,
                limiter=services.mlflow_limiter,
            )
            row.mlflow_run_id = attempt.run_id
            row.model_version = attempt.model_version
            row.model_uri = attempt.model_uri
            await commit_registration(self.database, row)
        except Exception as e:
            # Cancellation (shutting down) is not a failure: the job goes back to the queue and
            # whoever takes it next undoes this attempt's MLflow run first.
            with anyio.CancelScope(shield=True):
                await self._fail(job, row, attempt, e)
            return
        await self._finish(job, JobStatus.SUCCEEDED)
        await anyio.to_thread.run_sync(remove_model, self.settings, job.registration_id)
        log.info(
            "registration_committed",
            model_name=row.model_name,
            model_version=row.model_version,
            mlflow_run_id=row.mlflow_run_id,
            metric_source="evaluated",
        )

    async def _undo_earlier_runs(self, row: Registration) -> None:
        services = self.registration
        runs = await anyio.to_thread.run_sync(
            services.mlflow.find_registration_runs, row.id, limiter=services.mlflow_limiter
        )
        for run in runs:
            await anyio.to_thread.run_sync(
                functools.partial(
                    services.mlflow.fail_registration,
                    run_id=run.run_id,
                    model_name=row.model_name,
                    version=None,
                    reason="a duplicate run of an interrupted evaluation",
                ),
                limiter=services.mlflow_limiter,
            )

    async def _fail(
        self, job: EvaluationJob, row: Registration, attempt: Attempt, error: BaseException
    ) -> None:
        """After a pass, MLflow or the commit broke: undo MLflow, token `failed`."""
        services = self.registration
        async with self.database.transaction(read_only=True) as session:
            token = await tokens.get(session, row.token_id)
        if (
            token is not None
            and token.status in (TokenStatus.REGISTERED, TokenStatus.DEPLOYED)
            and attempt.run_id is not None
            and token.mlflow_run_id == attempt.run_id
        ):
            # The commit went through but its acknowledgement was lost.
            await self._finish(job, JobStatus.SUCCEEDED)
            return
        if isinstance(error, AppError):
            client_error: AppError = error
        elif isinstance(error, MlflowError):
            client_error = MlflowFailed(str(error)[:500] or "MLflow refused the registration")
        else:
            client_error = InternalError(
                "the registration failed unexpectedly; the token is now failed"
            )
        problem = client_error.problem()
        log.error(
            "registration_failed",
            code=problem["code"],
            error=repr(error)[:500],
            mlflow_run_id=attempt.run_id,
        )
        try:
            await anyio.to_thread.run_sync(
                lambda: services.mlflow.fail_registration(
                    run_id=attempt.run_id,
                    model_name=attempt.model_name,
                    version=attempt.model_version,
                    reason=f"{problem['code']}: {problem['detail']}",
                ),
                limiter=services.mlflow_limiter,
            )
        except Exception:
            log.exception("evaluated_registration_not_undone")
        row.idempotency_key = None if client_error.status >= 500 else row.idempotency_key
        row.mlflow_run_id = attempt.run_id
        row.evaluation = {**(row.evaluation or {}), "status": JobStatus.FAILED.value}
        try:
            await record_failure(
                self.database,
                row.token_id,
                row.id,
                row,
                problem=problem,
                response_status=client_error.status,
            )
            await self._finish(job, JobStatus.FAILED, {"code": problem["code"]})
        except Exception:
            # The job's lease runs out and it is taken again; the token stays `registering`.
            log.exception("evaluated_registration_failure_not_recorded")
        await anyio.to_thread.run_sync(remove_model, self.settings, job.registration_id)


def _apply_measurement(
    row: Registration, check: MetricCheck, measured: Measured, receipt: dict[str, object]
) -> None:
    row.metric_name = check.name
    row.metric_value = check.value
    row.baseline = check.baseline
    row.min_improvement = check.min_improvement
    row.improvement = check.improvement
    row.higher_is_better = check.higher_is_better
    row.passed = check.passed
    row.metric_source = "evaluated"
    row.metric_ci95 = list(measured.ci95)
    row.receipt = receipt


def _attempt_of(row: Registration, check: MetricCheck) -> Attempt:
    """The registration's attempt as the MLflow step needs it, rebuilt from its row."""
    return Attempt(
        id=row.id,
        token_id=row.token_id,
        principal_id=row.principal_id or "",
        idempotency_key=row.idempotency_key,
        fingerprint=row.request_fingerprint,
        created_at=row.created_at,
        check=replace(check),
        metric_name=check.name,
        metric_value=check.value,
        baseline=check.baseline,
        metric_source="evaluated",
        min_improvement=check.min_improvement,
        reported_value=row.metric_reported_value,
        model_name=row.model_name,
        tags=dict(row.tags),
        filename=row.artifact_filename,
        size_bytes=row.artifact_size_bytes,
        sha256=row.artifact_sha256,
        format=ModelFormat(row.artifact_format) if row.artifact_format else None,
        api_schema=row.api_schema,
        api_json_schema=row.api_json_schema,
        sdk_fields={
            name: value for name in SDK_FIELDS if (value := getattr(row, name)) is not None
        },
    )


def _receipt_text(receipt: dict[str, object]) -> str:
    return json.dumps(receipt, indent=2, sort_keys=True) + "\n"


@asynccontextmanager
async def evaluating(
    registration: RegistrationServices, evaluation: EvaluationServices
) -> AsyncIterator[Evaluator]:
    """Run evaluation jobs in the background while the block runs."""
    evaluator = Evaluator(registration, evaluation)
    # The first evaluation gets a sandbox started ahead too, as every later one does.
    prewarm(evaluation.sandbox, sandbox_limits(evaluation.settings))
    log.info(
        "evaluator_started",
        concurrency=evaluation.settings.evaluation_concurrency,
        sandbox=evaluation.sandbox.mode.value,
        isolated=evaluation.sandbox.isolated,
    )
    async with background.running(evaluator.run, name="hokusai-evaluator"):
        yield evaluator


@asynccontextmanager
async def evaluating_standalone(settings: Settings, database: Database) -> AsyncIterator[None]:
    """`hokusai-registry worker`'s evaluator: its own MLflow client, sandbox probe and key."""
    sandbox = await anyio.to_thread.run_sync(detect_sandbox, settings.evaluation_sandbox)
    if not sandbox_usable(settings, sandbox):
        log.warning("evaluator_not_started", sandbox=sandbox.mode.value, detail=sandbox.detail)
        yield
        return
    mlflow = MlflowRegistry(
        tracking_uri=settings.resolved_tracking_uri,
        registry_uri=settings.mlflow_registry_uri,
        artifact_location=settings.mlflow_artifact_location,
        retry_seconds=settings.mlflow_retry_seconds,
    )
    evaluation = EvaluationServices(
        settings=settings,
        database=database,
        signer=await anyio.to_thread.run_sync(load_signer, settings),
        sandbox=sandbox,
        jobs=EventSignal(),
    )
    registration = RegistrationServices(
        settings=settings,
        database=database,
        mlflow=mlflow,
        mlflow_limiter=CapacityLimiter(settings.mlflow_threads),
        evaluations=evaluation,
    )
    with configured_mlflow(request_timeout=settings.mlflow_request_timeout):
        async with evaluating(registration, evaluation):
            yield
