"""The recovery sweep: settling registrations whose process died part-way.

A registration killed after its claim (during the MLflow work, or after MLflow but before the
commit) leaves its token `registering`. Once the claim is older than the lease
(`HOKUSAI_REGISTRATION_LEASE_SECONDS`), a sweep takes the token over with a compare-and-set that
renews the claim, so with several processes sweeping at once exactly one settles each token and
holds a fresh lease while doing so. What MLflow holds decides the outcome: a FINISHED run tagged
with the registration, carrying its metric and model, with a READY version tagged with the same
registration, is committed exactly as the registration would have committed it. Anything less is
undone in MLflow (run FAILED, versions deleted) and the token goes `failed` with
`registration_failed`. Upload folders left by a process killed mid-upload are removed too.

A token held by an evaluated registration stays `registering` for as long as its evaluation job
is queued or running: the job queue re-runs a job whose process died, so the sweep only renews
the claim. An evaluating registration without a live job is settled like any other, and kept
models of finished evaluations are removed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import os
import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

import anyio
import structlog

from app import background
from app.clients.mlflow import ModelVersionRef, RegistrationRun
from app.db import utcnow
from app.errors import AppError, MlflowUnavailable, RegistrationInterrupted
from app.evaluation import repository as evaluations
from app.evaluation.kept_models import remove_abandoned_models
from app.evaluation.models import LIVE_JOB_STATUSES, EvaluationJob
from app.registration import repository
from app.registration.attempt import RegistrationServices
from app.registration.models import Registration, RegistrationStatus
from app.registration.service import running_attempts
from app.registration.settle import commit_registration, record_failure
from app.tokens import repository as tokens
from app.tokens.models import Token

log = structlog.get_logger(__name__)

T = TypeVar("T")

MAX_SWEEP_INTERVAL_SECONDS = 60.0
SWEEP_BATCH = 100


class Outcome(StrEnum):
    REGISTERED = "registered"
    FAILED = "failed"
    DEFERRED = "deferred"  # MLflow could not be asked; tried again after the renewed lease
    SKIPPED = "skipped"  # another process took the token first


@dataclass(slots=True)
class RecoveryReport:
    """What one sweep did; token ids per outcome."""

    registered: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    uploads_removed: int = 0
    evaluation_models_removed: int = 0

    @property
    def settled(self) -> int:
        return len(self.registered) + len(self.failed)

    def add(self, token_id: str, outcome: Outcome) -> None:
        {
            Outcome.REGISTERED: self.registered,
            Outcome.FAILED: self.failed,
            Outcome.DEFERRED: self.deferred,
            Outcome.SKIPPED: self.skipped,
        }[outcome].append(token_id)


async def recover_stale(
    services: RegistrationServices, *, now: dt.datetime | None = None
) -> RecoveryReport:
    """Settle every token left `registering` past the lease; safe to run in several processes."""
    now = now or utcnow()
    lease = services.settings.registration_lease_seconds
    stale_before = now - dt.timedelta(seconds=lease)
    report = RecoveryReport()
    async with services.database.transaction() as session:
        stale = await tokens.list_stale_registering(
            session, stale_before=stale_before, limit=SWEEP_BATCH
        )
    for token in stale:
        try:
            outcome = await _settle(services, token, stale_before=stale_before, now=now)
        except Exception:
            # Its claim was renewed: the sweep after the next lease tries this token again.
            log.exception("stale_registration_not_settled", token_id=token.token_id)
            outcome = Outcome.DEFERRED
        report.add(token.token_id, outcome)
    report.uploads_removed = await anyio.to_thread.run_sync(
        _remove_abandoned_uploads,
        services.settings.upload_dir,
        now.timestamp() - lease,
        running_attempts(services),
    )
    async with services.database.transaction(read_only=True) as session:
        live = frozenset(await evaluations.live_job_ids(session))
    report.evaluation_models_removed = await anyio.to_thread.run_sync(
        remove_abandoned_models, services.settings, live, now.timestamp() - lease
    )
    if stale or report.uploads_removed or report.evaluation_models_removed:
        log.info(
            "recovery_sweep_finished",
            registered=report.registered,
            failed=report.failed,
            deferred=report.deferred,
            skipped=report.skipped,
            uploads_removed=report.uploads_removed,
            evaluation_models_removed=report.evaluation_models_removed,
        )
    return report


@asynccontextmanager
async def recovery_loop(services: RegistrationServices) -> AsyncIterator[None]:
    """Sweep at start-up, then every quarter lease (at most every minute), in the background."""
    interval = min(services.settings.registration_lease_seconds / 4, MAX_SWEEP_INTERVAL_SECONDS)

    async def run() -> None:
        # The task copied the start-up context; its log lines belong to no request.
        structlog.contextvars.clear_contextvars()
        while True:
            try:
                await recover_stale(services)
            except AppError as e:
                # The database is down, say: the next sweep tries again.
                log.warning("recovery_sweep_failed", code=e.code, error=e.detail[:300])
            except Exception:
                log.exception("recovery_sweep_failed")
            await asyncio.sleep(interval)

    async with background.running(run, name="hokusai-recovery"):
        yield


async def _settle(
    services: RegistrationServices, token: Token, *, stale_before: dt.datetime, now: dt.datetime
) -> Outcome:
    registration_id = token.current_registration_id
    context = {"token_id": token.token_id, "registration_id": registration_id}
    taken = await _take_over(services, token, stale_before=stale_before, now=now)
    if taken is None:
        log.info("stale_registration_taken_by_another", **context)
        return Outcome.SKIPPED
    row, job = taken
    if job is not None and job.status in LIVE_JOB_STATUSES:
        # The evaluation queue owns it (a dead worker's job is taken again after its lease).
        log.info("stale_registration_evaluating", job_status=job.status.value, **context)
        return Outcome.DEFERRED
    log.info("stale_registration_claimed", claimed_at=token.claimed_at, **context)
    if row is not None and row.status not in (
        RegistrationStatus.IN_PROGRESS,
        RegistrationStatus.EVALUATING,
    ):
        # The attempt's outcome is on record (and MLflow was settled with it) but the token never
        # followed it: end the claim without rewriting that record or touching MLflow.
        return await _fail_interrupted(services, token, None, [], context)
    try:
        runs = await _mlflow(services, _find_runs, services, registration_id)
        found = await _finished_version(services, row, runs) if row is not None else None
    except MlflowUnavailable as e:
        log.warning("stale_registration_deferred", error=e.detail[:300], **context)
        return Outcome.DEFERRED
    if row is not None and found is not None:
        return await _commit_found(services, row, runs, *found, context)
    return await _fail_interrupted(services, token, row, runs, context)


async def _take_over(
    services: RegistrationServices, token: Token, *, stale_before: dt.datetime, now: dt.datetime
) -> tuple[Registration | None, EvaluationJob | None] | None:
    """Renew the stale claim for this sweep: the attempt's row and evaluation job, or None when
    another process took the token first."""
    registration_id = token.current_registration_id
    async with services.database.transaction() as session:
        claimed = await tokens.claim_stale_registration(
            session,
            token.token_id,
            registration_id=registration_id,
            stale_before=stale_before,
            now=now,
        )
        row = await repository.get(session, registration_id) if registration_id else None
        evaluating = row is not None and row.status == RegistrationStatus.EVALUATING
        job = await evaluations.get_job(session, row.id) if row is not None and evaluating else None
    return (row, job) if claimed else None


async def _commit_found(
    services: RegistrationServices,
    row: Registration,
    runs: list[RegistrationRun],
    run: RegistrationRun,
    version: ModelVersionRef,
    context: dict[str, str | None],
) -> Outcome:
    """MLflow finished the attempt's work: commit it as the registration would have."""
    for other in runs:
        if other.run_id != run.run_id:
            await _undo_run(services, row.model_name, other, "a duplicate run of the attempt")
    row.mlflow_run_id, row.model_version = run.run_id, version.version
    row.model_uri = version.model_uri
    await commit_registration(services.database, row)
    log.info(
        "stale_registration_finished",
        mlflow_run_id=run.run_id,
        model_name=version.model_name,
        model_version=version.version,
        **context,
    )
    return Outcome.REGISTERED


async def _fail_interrupted(
    services: RegistrationServices,
    token: Token,
    row: Registration | None,
    runs: list[RegistrationRun],
    context: dict[str, str | None],
) -> Outcome:
    """Undo the attempt's runs and settle it as failed (`row` None: its record stays as is)."""
    detail = (
        "the process registering this model stopped before the registration finished; "
        "the token can be registered again"
    )
    # Without the attempt's record, its model can only be the default one of the token.
    model_name = row.model_name if row is not None else f"hokusai-{token.token_id}"
    for run in runs:
        await _undo_run(services, model_name, run, f"registration_interrupted: {detail}")
    if row is not None:
        row.mlflow_run_id = row.mlflow_run_id or (runs[0].run_id if runs else None)
        # A retry with the same Idempotency-Key should try again, not replay the crash.
        row.idempotency_key = None
    error = RegistrationInterrupted(detail)
    settled = await record_failure(
        services.database,
        token.token_id,
        token.current_registration_id,
        row,
        problem=error.problem(),
        response_status=500,
    )
    log.warning(
        "stale_registration_failed",
        mlflow_runs=[run.run_id for run in runs],
        mlflow_run_status=[run.status for run in runs],
        recorded=settled,
        **context,
    )
    return Outcome.FAILED


def _find_runs(
    services: RegistrationServices, registration_id: str | None
) -> list[RegistrationRun]:
    if registration_id is None:
        return []
    return services.mlflow.find_registration_runs(registration_id)


async def _finished_version(
    services: RegistrationServices, row: Registration, runs: list[RegistrationRun]
) -> tuple[RegistrationRun, ModelVersionRef] | None:
    """The run and version that show the attempt's MLflow work completed, if there are any."""
    for run in runs:
        if not _run_complete(row, run) or row.model_name is None:
            continue
        versions = await _mlflow(
            services,
            services.mlflow.find_registration_versions,
            row.model_name,
            run.run_id,
            row.id,
        )
        if versions:
            return run, versions[-1]
    return None


def _run_complete(row: Registration, run: RegistrationRun) -> bool:
    """FINISHED, tagged with this attempt, holding its metric and its model."""
    if run.status != "FINISHED" or not run.artifacts:
        return False
    if run.tags.get("hokusai.registration_id") != row.id:
        return False
    if row.artifact_sha256 and run.tags.get("hokusai.sha256") != row.artifact_sha256:
        return False
    logged = run.metrics.get(row.metric_name or "")
    return (
        logged is not None
        and row.metric_value is not None
        and math.isclose(logged, row.metric_value, rel_tol=0.0, abs_tol=1e-12)
    )


async def _undo_run(
    services: RegistrationServices, model_name: str | None, run: RegistrationRun, reason: str
) -> None:
    await _mlflow(
        services,
        lambda: services.mlflow.fail_registration(
            run_id=run.run_id, model_name=model_name, version=None, reason=reason
        ),
    )


async def _mlflow(services: RegistrationServices, fn: Callable[..., T], *args: object) -> T:
    return await anyio.to_thread.run_sync(fn, *args, limiter=services.mlflow_limiter)


def _remove_abandoned_uploads(upload_dir: Path, older_than: float, running: frozenset[str]) -> int:
    """Delete upload folders of attempts not running here that nothing wrote to since
    `older_than` (a POSIX time): what a process killed mid-upload left behind."""
    if not upload_dir.is_dir():
        return 0
    removed = 0
    for folder in upload_dir.iterdir():
        if folder.name in running or not folder.is_dir() or _last_write(folder) >= older_than:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed += 1
        log.info("abandoned_upload_removed", folder=folder.name)
    return removed


def _last_write(folder: Path) -> float:
    latest = folder.stat().st_mtime
    for root, _dirs, files in os.walk(folder):
        for name in files:
            with suppress(OSError):
                latest = max(latest, (Path(root) / name).stat().st_mtime)
    return latest
