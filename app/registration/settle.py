"""Settling a registration attempt: the claim on its token, and its one ending.

An attempt that passed its checks claims its token (`registering`). It ends in one transaction
with its events: committed (`registered`, `model_registered`, `token_ready_for_deploy`), rejected
before the claim (`rejected`, `model_validation_failed` for a failed check), or failed after it
(token `failed`, `registration_failed`, MLflow undone). The recovery sweep and the evaluation
worker settle through the same functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio
import structlog
from sqlalchemy.exc import IntegrityError
from sqlmodel.ext.asyncio.session import AsyncSession

from app import observability
from app.clients.mlflow import MlflowError
from app.db import Database, utcnow
from app.errors import (
    AppError,
    InternalError,
    MlflowFailed,
    RegistrationInProgress,
    TokenNotFound,
    TokenNotRegistrable,
)
from app.events.outbox import EventType, NewEvent, write_events
from app.registration import mlflow_step, repository
from app.registration.attempt import Attempt, RegistrationServices
from app.registration.checks import require_name_unheld, require_registrable
from app.registration.models import Registration, RegistrationStatus
from app.registration.schemas import RegistrationPublic
from app.registration.sdk_fields import SDK_FIELDS
from app.tokens import repository as tokens
from app.tokens.models import REGISTRABLE, TokenStatus

log = structlog.get_logger(__name__)

# Codes that announce a refused check with `model_validation_failed`.
_VALIDATION_STATUSES = (413, 422)


async def claim(database: Database, attempt: Attempt) -> None:
    """Move the token to `registering` if nobody else did first."""
    try:
        async with database.transaction() as session:
            claimed = await claim_in(session, attempt, attempt.row(RegistrationStatus.IN_PROGRESS))
            if claimed:
                return
            token = await tokens.get(session, attempt.token_id)
    except IntegrityError as e:
        # Another request with the same Idempotency-Key got here first.
        raise RegistrationInProgress(
            "a registration with this Idempotency-Key is already running"
        ) from e
    if token is None:
        raise TokenNotFound(f"no token {attempt.token_id}")
    require_registrable(token)
    # The token was registrable a moment ago and is again; someone else's attempt just ended.
    raise RegistrationInProgress(f"token {attempt.token_id} is being registered right now")


async def claim_in(session: AsyncSession, attempt: Attempt, row: Registration) -> bool:
    """In the caller's transaction: move the token to `registering` for `attempt` and add its
    registration `row`, when the token is registrable and no other token holds the model name.
    Answers whether the claim was made."""
    assert attempt.model_name is not None
    # The model name's check rides in the claim's UPDATE; only a refused claim asks which
    # condition failed.
    claimed = await tokens.compare_and_set(
        session,
        attempt.token_id,
        expected=REGISTRABLE,
        model_name_unheld=attempt.model_name,
        values={
            "status": TokenStatus.REGISTERING,
            "current_registration_id": attempt.id,
            "claimed_at": utcnow(),
        },
    )
    if not claimed:
        await require_name_unheld(session, attempt)
        return False
    await repository.insert(session, row)
    return True


async def commit_registration(database: Database, row: Registration) -> RegistrationPublic:
    """Token, registration and events in one transaction.

    `row` is the attempt's registration with its MLflow run and version filled in; the service
    commits it right after MLflow, the recovery sweep when it finds the work finished in MLflow.
    """
    assert row.metric_name is not None and row.mlflow_run_id is not None
    now = utcnow()
    async with database.transaction() as session:
        committed = await tokens.compare_and_set(
            session,
            row.token_id,
            expected=(TokenStatus.REGISTERING,),
            registration_id=row.id,
            values={
                "status": TokenStatus.REGISTERED,
                "metric": row.metric_name,
                "baseline": row.baseline,
                "metric_value": row.metric_value,
                "mlflow_run_id": row.mlflow_run_id,
                "model_name": row.model_name,
                "model_version": row.model_version,
                "model_uri": row.model_uri,
                "registered_at": now,
                "current_registration_id": None,
                "claimed_at": None,
            },
        )
        if not committed:
            raise TokenNotRegistrable(
                f"token {row.token_id} changed while its model was being registered"
            )
        events = _registered_events(row)
        row.status = RegistrationStatus.REGISTERED
        row.event_ids = [event.event_id for event in events]
        row.registered_at = now
        row.updated_at = now
        row.response_status = 201
        row.error = None
        await repository.update(session, row)
        # Last, as the outbox requires: on PostgreSQL it holds the outbox lock until commit.
        await write_events(session, events)
    observability.REGISTRATIONS.labels("registered", "").inc()
    return RegistrationPublic.of(row)


def _registered_events(row: Registration) -> list[NewEvent]:
    """`model_registered` and `token_ready_for_deploy` for the committed row."""
    common: dict[str, Any] = {
        "token_id": row.token_id,
        "mlflow_run_id": row.mlflow_run_id,
        "model_name": row.model_name,
        "model_version": row.model_version,
        "metric_name": row.metric_name,
        "metric_value": row.metric_value,
        "baseline_value": row.baseline,
    }
    if row.metric_source == "evaluated":
        common |= {
            "metric_source": row.metric_source,
            "ci95": row.metric_ci95,
            "benchmark_sha256": (row.evaluation or {}).get("benchmark_sha256"),
        }
    return [
        NewEvent(
            EventType.MODEL_REGISTERED,
            row.token_id,
            {
                **common,
                "registration_id": row.id,
                "model_uri": row.model_uri,
                "improvement": row.improvement,
                "sha256": row.artifact_sha256,
                "api_schema": row.api_schema,
                # What the Hokusai site's payload format needs, so that a delivery is built
                # from the event alone.
                "api_json_schema": row.api_json_schema,
                "user_id": user_id_of(row.tags),
                **{name: getattr(row, name) for name in SDK_FIELDS},
            },
        ),
        NewEvent(EventType.TOKEN_READY_FOR_DEPLOY, row.token_id, common),
    ]


def user_id_of(tags: Mapping[str, str]) -> str | None:
    """The registrant's site user, from the run tag `user_id` or `fulfilled_by_user_id`."""
    return tags.get("user_id") or tags.get("fulfilled_by_user_id") or None


async def record_rejection(database: Database, attempt: Attempt, error: AppError) -> None:
    """A refused attempt: its row, and `model_validation_failed` for a failed check."""
    problem = error.problem()
    if error.status >= 500 or isinstance(error, RegistrationInProgress):
        # Passing conditions: a retry with the same Idempotency-Key should try again.
        attempt.idempotency_key = None
    events: list[NewEvent] = []
    if error.status in _VALIDATION_STATUSES:
        events.append(
            NewEvent(
                EventType.MODEL_VALIDATION_FAILED,
                attempt.token_id,
                {
                    "token_id": attempt.token_id,
                    "registration_id": attempt.id,
                    "code": error.code,
                    "detail": error.detail,
                    "metric_name": attempt.metric_name,
                    "metric_value": attempt.metric_value,
                    "baseline_value": attempt.baseline,
                },
            )
        )
    try:
        async with database.transaction() as session:
            await repository.insert(
                session,
                attempt.row(
                    RegistrationStatus.REJECTED,
                    error={k: v for k, v in problem.items() if k != "request_id"},
                    event_ids=[event.event_id for event in events],
                    response_status=error.status,
                ),
            )
            await write_events(session, events)
    except (AppError, IntegrityError):
        # The refusal stands even if recording it failed (e.g. the database is down).
        log.warning("rejection_not_recorded", code=error.code)
    error.extra.setdefault("registration_id", attempt.id)
    observability.REGISTRATIONS.labels("rejected", error.code).inc()
    log.info("registration_rejected", code=error.code, detail=error.detail)


async def fail(services: RegistrationServices, attempt: Attempt, error: BaseException) -> None:
    """After the claim: undo MLflow, mark the token failed, announce `registration_failed`."""
    if await _committed_anyway(services.database, attempt):
        # The commit went through but its acknowledgement was lost: nothing to undo.
        log.warning("registration_commit_unacknowledged", mlflow_run_id=attempt.run_id)
        observability.REGISTRATIONS.labels("registered", "").inc()
        return
    told = client_error(error)
    problem = told.problem()
    if told.status >= 500:
        # A retry with the same key should try again, not replay an outage.
        attempt.idempotency_key = None
    log.error(
        "registration_failed",
        code=problem["code"],
        error=repr(error)[:500],
        mlflow_run_id=attempt.run_id,
        model_version=attempt.model_version,
    )
    await anyio.to_thread.run_sync(
        mlflow_step.undo,
        services,
        attempt,
        f"{problem['code']}: {problem['detail']}",
        limiter=services.mlflow_limiter,
    )
    try:
        await record_failure(
            services.database,
            attempt.token_id,
            attempt.id,
            attempt.row(RegistrationStatus.IN_PROGRESS),
            problem=problem,
            response_status=told.status,
        )
    except Exception:
        # The token stays `registering`; the recovery sweep settles it after the lease.
        log.exception("registration_failure_not_recorded")


async def record_failure(
    database: Database,
    token_id: str,
    registration_id: str | None,
    row: Registration | None,
    *,
    problem: Mapping[str, Any],
    response_status: int,
) -> bool:
    """Token `failed`, the attempt's row `failed`, and `registration_failed`, in one transaction.

    Only while the token is still `registering` for the attempt `registration_id` (None: a claim
    naming no registration): whoever settled it first wrote the outcome, and a second settler
    writes nothing. `row` (the attempt's registration) is stored as failed when given. Returns
    whether this call settled it.
    """
    error = {k: v for k, v in problem.items() if k != "request_id"}
    async with database.transaction() as session:
        settled = await tokens.compare_and_set(
            session,
            token_id,
            expected=(TokenStatus.REGISTERING,),
            registration_id=registration_id,
            require_registration=True,
            values={
                "status": TokenStatus.FAILED,
                "current_registration_id": None,
                "claimed_at": None,
            },
        )
        if not settled:
            stored = await repository.get(session, registration_id) if registration_id else None
            if stored is None or stored.status != RegistrationStatus.IN_PROGRESS:
                log.warning("registration_already_settled", registration_id=registration_id)
                return False
            # The token moved on (e.g. archived) without settling this attempt: record its end.
        events = [
            NewEvent(
                EventType.REGISTRATION_FAILED,
                token_id,
                {
                    "token_id": token_id,
                    "registration_id": registration_id,
                    "code": problem["code"],
                    "detail": problem["detail"],
                },
            )
        ]
        if row is not None:
            row.status = RegistrationStatus.FAILED
            row.error = error
            row.event_ids = [event.event_id for event in events]
            row.updated_at = utcnow()
            row.response_status = response_status
            await repository.update(session, row)
        await write_events(session, events)
    observability.REGISTRATIONS.labels("failed", str(problem["code"])).inc()
    return True


async def _committed_anyway(database: Database, attempt: Attempt) -> bool:
    """Whether the token already records this attempt's run as registered."""
    if attempt.run_id is None:
        return False
    try:
        async with database.transaction() as session:
            token = await tokens.get(session, attempt.token_id)
    except AppError:
        return False
    return (
        token is not None
        and token.status in (TokenStatus.REGISTERED, TokenStatus.DEPLOYED)
        and token.mlflow_run_id == attempt.run_id
    )


def client_error(error: BaseException) -> AppError:
    """What the caller is told about a failure after the claim."""
    if isinstance(error, AppError):
        return error
    if isinstance(error, MlflowError):
        return MlflowFailed(str(error)[:500] or "MLflow refused the registration")
    return InternalError("the registration failed unexpectedly; the token is now failed")
