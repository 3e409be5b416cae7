"""Running one claimed evaluation job: the registration re-read, the attempt limit, the sandboxed
measurement in a worker thread, the gate and the signed receipt, then the settling."""

from __future__ import annotations

import datetime as dt

import anyio
import structlog
from anyio import CapacityLimiter

from app.db import utcnow
from app.errors import EvaluationFailed
from app.evaluation import repository
from app.evaluation.kept_models import remove_model
from app.evaluation.measuring import Measured, gate, measure
from app.evaluation.models import Benchmark, EvaluationJob, JobStatus
from app.evaluation.receipt_payload import receipt_payload, signed_receipt
from app.evaluation.refusals import evaluation_failed, refusal_for_check
from app.evaluation.sandbox import SandboxFailure
from app.evaluation.service import EvaluationServices, evaluation_json
from app.evaluation.settling import Settler
from app.registration import repository as registrations
from app.registration.attempt import RegistrationServices
from app.registration.models import Registration, RegistrationStatus
from app.scoring import MetricCheck
from app.scoring.registry import METRICS

log = structlog.get_logger(__name__)


class JobRunner:
    """Runs claimed jobs to their end; `threads` bounds the sandboxes running at once."""

    def __init__(
        self,
        registration: RegistrationServices,
        evaluation: EvaluationServices,
        threads: CapacityLimiter,
    ) -> None:
        self.evaluation = evaluation
        self.settings = evaluation.settings
        self.database = evaluation.database
        self.threads = threads
        self.settle = Settler(registration, evaluation)

    async def run_job(self, job: EvaluationJob) -> None:
        async with self.database.transaction(read_only=True) as session:
            row = await registrations.get(session, job.registration_id)
            benchmark = await repository.get_benchmark(session, job.benchmark_id)
        if row is None or row.status != RegistrationStatus.EVALUATING:
            # Settled already (by an earlier holder of this job, or the recovery sweep).
            done = row is not None and row.status == RegistrationStatus.REGISTERED
            await self.settle.finish(job, JobStatus.SUCCEEDED if done else JobStatus.FAILED)
            await anyio.to_thread.run_sync(remove_model, self.settings, job.registration_id)
            return
        if benchmark is None:  # pragma: no cover - deleted only with its token
            await self.settle.refuse(
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
            await self.settle.refuse(job, row, benchmark, evaluation_failed(failure, self.settings))
            return
        started = utcnow()
        await self._mark_running(row, benchmark, started)
        try:
            measured = await self._measure(job, row, benchmark)
        except SandboxFailure as failure:
            log.info("evaluation_refused", reason=failure.reason)
            await self.settle.refuse(
                job,
                row,
                benchmark,
                evaluation_failed(failure, self.settings),
                started=started,
            )
            return
        await self._judge(job, row, benchmark, measured, started=started)

    async def _judge(
        self,
        job: EvaluationJob,
        row: Registration,
        benchmark: Benchmark,
        measured: Measured,
        *,
        started: dt.datetime,
    ) -> None:
        """Gate the measured value, sign its receipt, and publish or refuse the registration."""
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
            await self.settle.refuse(
                job,
                row,
                benchmark,
                refusal_for_check(check, interval_reason),
                evaluation=row.evaluation,
            )
            return
        await self.settle.publish(job, row, check, receipt)

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
