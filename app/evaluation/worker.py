"""Running evaluation jobs: claimed with a lease from the database, at most N sandboxes at once.

Every process that runs evaluations (`serve` unless HOKUSAI_RUN_EVALUATIONS is off, and each
`hokusai-registry worker`) runs one `Evaluator`. It takes the oldest queued job, or a running one
whose lease ran out because its process died, renews the lease while the sandbox runs, and settles
the registration. A job is started at most HOKUSAI_EVALUATION_MAX_ATTEMPTS times: a model that
kills whatever runs it is refused with `evaluation_failed` rather than tried forever.

This module holds the leasing (claiming, renewing, releasing) and the start-up; one job is run by
app.evaluation.running and its registration settled by app.evaluation.settling.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import structlog
from anyio import CapacityLimiter

from app import background
from app.clients.mlflow import MlflowRegistry, configured_mlflow
from app.config import Settings
from app.db import Database, utcnow
from app.errors import AppError
from app.evaluation import repository
from app.evaluation.measuring import sandbox_limits
from app.evaluation.models import EvaluationJob
from app.evaluation.receipts import load_signer
from app.evaluation.running import JobRunner
from app.evaluation.sandbox import detect_sandbox, prewarm
from app.evaluation.service import EvaluationServices, sandbox_usable
from app.events.signal import EventSignal
from app.registration.attempt import RegistrationServices

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
        self.jobs = JobRunner(registration, evaluation, self.threads)

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
                    await self.jobs.run_job(job)
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
