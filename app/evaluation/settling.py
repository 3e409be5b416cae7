"""Settling an evaluated registration: refused (token as it was, `model_validation_failed`),
published (the same MLflow step and commit as a synchronous registration), or failed after a pass
(MLflow undone, token `failed`); and the job finished with it."""

from __future__ import annotations

import datetime as dt
import functools
import json
from dataclasses import replace

import anyio
import structlog

from app import observability
from app.clients.mlflow import MlflowError
from app.db import utcnow
from app.errors import AppError, InternalError, MlflowFailed
from app.evaluation import repository
from app.evaluation.kept_models import form_of, remove_model
from app.evaluation.models import Benchmark, EvaluationJob, JobStatus
from app.evaluation.receipt_payload import RECEIPT_ARTIFACT
from app.evaluation.service import EvaluationServices, evaluation_json
from app.events.outbox import EventType, NewEvent, write_events
from app.registration import repository as registrations
from app.registration.artifacts import ModelFormat
from app.registration.attempt import Attempt, RegistrationServices
from app.registration.mlflow_step import log_to_mlflow
from app.registration.models import Registration, RegistrationStatus
from app.registration.sdk_fields import SDK_FIELDS
from app.registration.settle import commit_registration, record_failure
from app.scoring import MetricCheck
from app.tokens import repository as tokens
from app.tokens.models import TokenStatus

log = structlog.get_logger(__name__)


class Settler:
    """Writes an evaluated registration's outcome and finishes its job."""

    def __init__(self, registration: RegistrationServices, evaluation: EvaluationServices) -> None:
        self.registration = registration
        self.evaluation = evaluation
        self.settings = evaluation.settings
        self.database = evaluation.database

    async def finish(
        self,
        job: EvaluationJob,
        status: JobStatus,
        error: dict[str, object] | None = None,
    ) -> None:
        async with self.database.transaction() as session:
            await repository.finish_job(
                session, job.registration_id, owner=None, status=status, now=utcnow(), error=error
            )

    # Refused ---------------------------------------------------------------------------------

    async def refuse(
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
        evaluation = self._failed_evaluation(benchmark, evaluation, started=started, now=now)
        event = _refusal_event(row, error)
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

    def _failed_evaluation(
        self,
        benchmark: Benchmark | None,
        evaluation: dict[str, object] | None,
        *,
        started: dt.datetime | None,
        now: dt.datetime,
    ) -> dict[str, object] | None:
        """The registration's `evaluation` object of a refusal (None: leave it as it is)."""
        if evaluation is None and benchmark is not None:
            return evaluation_json(
                benchmark,
                self.evaluation.sandbox,
                status=JobStatus.FAILED,
                started_at=started,
                finished_at=now,
            )
        if evaluation is not None:
            return {**evaluation, "status": JobStatus.FAILED.value}
        return None

    # Published -------------------------------------------------------------------------------

    async def publish(
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
        await self.finish(job, JobStatus.SUCCEEDED)
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

    # Failed after a pass -----------------------------------------------------------------------

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
            await self.finish(job, JobStatus.SUCCEEDED)
            return
        client_error = _client_error(error)
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
            await self.finish(job, JobStatus.FAILED, {"code": problem["code"]})
        except Exception:
            # The job's lease runs out and it is taken again; the token stays `registering`.
            log.exception("evaluated_registration_failure_not_recorded")
        await anyio.to_thread.run_sync(remove_model, self.settings, job.registration_id)


def _refusal_event(row: Registration, error: AppError) -> NewEvent:
    return NewEvent(
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


def _client_error(error: BaseException) -> AppError:
    """What the client is told of a failure after a pass."""
    if isinstance(error, AppError):
        return error
    if isinstance(error, MlflowError):
        return MlflowFailed(str(error)[:500] or "MLflow refused the registration")
    return InternalError("the registration failed unexpectedly; the token is now failed")


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
