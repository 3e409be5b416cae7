"""Every query on the benchmarks and evaluation_jobs tables."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.evaluation.models import LIVE_JOB_STATUSES, Benchmark, EvaluationJob, JobStatus

# Read on every registration: built once, the token id bound at each call.
_LATEST_BENCHMARK = (
    select(Benchmark)
    .where(Benchmark.token_id == sa.bindparam("token_id"))
    .order_by(col(Benchmark.version).desc())
    .limit(1)
)


async def latest_benchmark(session: AsyncSession, token_id: str) -> Benchmark | None:
    return (await session.exec(_LATEST_BENCHMARK, params={"token_id": token_id})).first()


async def get_benchmark(session: AsyncSession, benchmark_id: str) -> Benchmark | None:
    return await session.get(Benchmark, benchmark_id)


async def get_job(session: AsyncSession, registration_id: str) -> EvaluationJob | None:
    return await session.get(EvaluationJob, registration_id)


def _claimable(now: dt.datetime) -> sa.ColumnElement[bool]:
    return sa.or_(
        col(EvaluationJob.status) == JobStatus.QUEUED.value,
        sa.and_(
            col(EvaluationJob.status) == JobStatus.RUNNING.value,
            col(EvaluationJob.lease_expires_at) < now,
        ),
    )


async def any_claimable(session: AsyncSession, *, now: dt.datetime) -> bool:
    """Whether some job could be claimed (a cheap read before taking any lock)."""
    statement = select(EvaluationJob.registration_id).where(_claimable(now)).limit(1)
    return (await session.exec(statement)).first() is not None


async def claim_next_job(
    session: AsyncSession, *, owner: str, now: dt.datetime, lease_until: dt.datetime
) -> EvaluationJob | None:
    """Take the oldest job that is queued, or running under a lease that ran out.

    On PostgreSQL the row is locked with `FOR UPDATE SKIP LOCKED`, so concurrent claimers take
    different jobs without waiting; SQLite's write transactions are serial (BEGIN IMMEDIATE).
    """
    statement = (
        select(EvaluationJob)
        .where(_claimable(now))
        .order_by(col(EvaluationJob.created_at))
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    job = (await session.exec(statement)).first()
    if job is None:
        return None
    job.status = JobStatus.RUNNING
    job.attempts += 1
    job.lease_owner = owner
    job.lease_expires_at = lease_until
    job.started_at = job.started_at or now
    session.add(job)
    await session.flush()
    return job


async def renew_lease(
    session: AsyncSession, registration_id: str, *, owner: str, lease_until: dt.datetime
) -> bool:
    """Extend the lease if `owner` still holds the job; False when it was taken over."""
    result = await session.execute(
        sa.update(EvaluationJob)
        .where(col(EvaluationJob.registration_id) == registration_id)
        .where(col(EvaluationJob.lease_owner) == owner)
        .where(col(EvaluationJob.status) == JobStatus.RUNNING.value)
        .values(lease_expires_at=lease_until)
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


async def release_job(session: AsyncSession, registration_id: str, *, owner: str) -> None:
    """Hand a job this owner holds back to the queue, its start not counted (a clean shutdown)."""
    await session.execute(
        sa.update(EvaluationJob)
        .where(col(EvaluationJob.registration_id) == registration_id)
        .where(col(EvaluationJob.lease_owner) == owner)
        .where(col(EvaluationJob.status) == JobStatus.RUNNING.value)
        .values(
            status=JobStatus.QUEUED.value,
            lease_owner=None,
            lease_expires_at=None,
            attempts=col(EvaluationJob.attempts) - 1,
        )
    )


async def finish_job(
    session: AsyncSession,
    registration_id: str,
    *,
    owner: str | None,
    status: JobStatus,
    now: dt.datetime,
    error: dict[str, object] | None = None,
) -> bool:
    """Close the job (only while `owner` holds it, when given); False if someone else did."""
    statement = (
        sa.update(EvaluationJob)
        .where(col(EvaluationJob.registration_id) == registration_id)
        .where(col(EvaluationJob.status).in_([s.value for s in LIVE_JOB_STATUSES]))
        .values(
            status=status.value,
            finished_at=now,
            lease_owner=None,
            lease_expires_at=None,
            error=error,
        )
    )
    if owner is not None:
        statement = statement.where(col(EvaluationJob.lease_owner) == owner)
    result = await session.execute(statement)
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


async def live_job_ids(session: AsyncSession) -> Sequence[str]:
    statement = select(EvaluationJob.registration_id).where(
        col(EvaluationJob.status).in_([s.value for s in LIVE_JOB_STATUSES])
    )
    return (await session.exec(statement)).all()
