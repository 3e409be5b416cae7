"""Registering a model for a token, stage by stage; and reading registrations.

The order is cheap checks first: the token, then the metric (before the upload when the fields come
first), then the upload itself, and only then the claim on the token and the work in MLflow. A
request refused by a check leaves the token and MLflow untouched and is recorded as a `rejected`
registration with a `model_validation_failed` event. Once the token is claimed, any failure sends
the token to `failed`, undoes what MLflow holds for the attempt, and writes `registration_failed`.

The stages live in their own modules: `intake` (the upload, the Idempotency-Key's replay),
`checks`, `mlflow_step` and `settle` (claim, commit, rejection, failure).
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

import anyio
import structlog
from starlette.requests import Request

from app import observability
from app.auth.service import Principal
from app.db import Database
from app.errors import AppError, RegistrationNotFound, TokenNotFound, UploadIncomplete
from app.registration import checks, intake, mlflow_step, repository, settle
from app.registration.attempt import Attempt, RegistrationServices
from app.registration.hooks import Stage
from app.registration.models import RegistrationStatus
from app.registration.schemas import RegistrationList, RegistrationPublic
from app.registration.upload import RegistrationForm
from app.tokens import repository as tokens
from app.tokens.models import Token
from app.tokens.schemas import normalize_token_id

log = structlog.get_logger(__name__)


# Reading -----------------------------------------------------------------------------------------


async def get_registration(database: Database, registration_id: str) -> RegistrationPublic:
    async with database.transaction(read_only=True) as session:
        row = await repository.get(session, registration_id[:64])
    if row is None:
        raise RegistrationNotFound(f"no registration {registration_id[:64]}")
    return RegistrationPublic.of(row)


async def list_registrations(
    database: Database, raw_token_id: str, *, limit: int
) -> RegistrationList:
    token_id = normalize_token_id(raw_token_id)
    async with database.transaction(read_only=True) as session:
        if await tokens.get(session, token_id) is None:
            raise TokenNotFound(f"no token {token_id}")
        rows = await repository.list_for_token(session, token_id, limit=limit)
    return RegistrationList(items=[RegistrationPublic.of(row) for row in rows])


# Registering -------------------------------------------------------------------------------------


async def register(
    services: RegistrationServices,
    request: Request,
    *,
    raw_token_id: str,
    principal: Principal,
    idempotency_key: str | None,
) -> RegistrationPublic:
    """Run one registration from the streamed request to the committed token."""
    token_id = normalize_token_id(raw_token_id)
    attempt = Attempt(
        id=str(uuid.uuid4()),
        token_id=token_id,
        principal_id=principal.key_id,
        idempotency_key=idempotency_key,
    )
    structlog.contextvars.bind_contextvars(registration_id=attempt.id, token_id=token_id)
    workdir = services.settings.upload_dir / attempt.id
    services.running.add(attempt.id)
    try:
        if idempotency_key:
            previous = await intake.previous_attempt(services, principal, idempotency_key)
            if previous is not None:
                form = await intake.receive(services, request, workdir, before_model=None)
                return intake.replay(previous, intake.fingerprint(token_id, form))
        async with services.database.transaction(read_only=True) as session:
            token = await tokens.get(session, token_id)
        if token is None:
            raise TokenNotFound(f"no token {token_id}")
        evaluations = services.evaluations
        benchmark = await evaluations.benchmark_for(token) if evaluations else None
        claimed = await _check_and_claim(services, request, token, benchmark, attempt, workdir)
        if isinstance(claimed, RegistrationPublic):
            return claimed
        return await _publish(services, attempt, *claimed)
    finally:
        await anyio.to_thread.run_sync(shutil.rmtree, workdir, True)
        services.running.discard(attempt.id)


def running_attempts(services: RegistrationServices) -> frozenset[str]:
    """The registration ids these services are working on right now."""
    return frozenset(services.running)


async def _check_and_claim(
    services: RegistrationServices,
    request: Request,
    token: Token,
    benchmark: object | None,
    attempt: Attempt,
    workdir: Path,
) -> tuple[RegistrationForm, Path | None] | RegistrationPublic:
    """Receive and check the request, then claim the token; a refusal is recorded as rejected.

    Answers the received form and the unpacked model, or the queued registration of a token
    whose model the service evaluates itself.
    """
    try:
        return await _checked_and_claimed(services, request, token, benchmark, attempt, workdir)
    except UploadIncomplete as e:
        # The client went away or stalled mid-form: nothing was decided, nothing to announce.
        log.info("upload_abandoned", code=e.code, detail=e.detail)
        observability.REGISTRATIONS.labels("abandoned", e.code).inc()
        raise
    except AppError as e:
        await settle.record_rejection(services.database, attempt, e)
        raise


async def _checked_and_claimed(
    services: RegistrationServices,
    request: Request,
    token: Token,
    benchmark: object | None,
    attempt: Attempt,
    workdir: Path,
) -> tuple[RegistrationForm, Path | None] | RegistrationPublic:
    evaluations = services.evaluations
    checks.require_registrable(token)
    with attempt.step("receive_upload"):
        form = await intake.receive(
            services,
            request,
            workdir,
            before_model=lambda sent: checks.early_metric_check(token, sent, attempt),
        )
    attempt.fingerprint = intake.fingerprint(attempt.token_id, form)
    with attempt.step("check_metric"):
        fields = checks.read_fields(form.fields, attempt)
        if benchmark is None:
            await checks.check_metric(token, fields, form.predictions, attempt)
        else:
            await checks.check_reported_metric(token, fields, form.predictions, attempt)
    with attempt.step("check_upload"):
        unpacked = await checks.check_upload(services, form.model, fields.sha256, attempt, workdir)
    checks.apply_options(token, fields, attempt)
    with attempt.step("check_model_name"):
        await checks.check_model_name(services, attempt)
    if evaluations is not None and benchmark is not None:
        # The model is scored in the sandbox; the outcome commits when that is done.
        with attempt.step("queue_evaluation"):
            return await evaluations.enqueue(
                services, attempt, form, unpacked, token=token, benchmark=benchmark
            )
    with attempt.step("claim_token"):
        await settle.claim(services.database, attempt)
    return form, unpacked


async def _publish(
    services: RegistrationServices, attempt: Attempt, form: RegistrationForm, unpacked: Path | None
) -> RegistrationPublic:
    """After the claim: MLflow, then the commit; any failure fails the token and undoes MLflow."""
    try:
        await services.hooks.reached(Stage.AFTER_CLAIM, attempt.id)
        with attempt.step("log_to_mlflow"):
            await anyio.to_thread.run_sync(
                mlflow_step.log_to_mlflow,
                services,
                attempt,
                form,
                unpacked,
                limiter=services.mlflow_limiter,
            )
        await services.hooks.reached(Stage.AFTER_MLFLOW, attempt.id)
        with attempt.step("commit"):
            result = await settle.commit_registration(
                services.database, attempt.row(RegistrationStatus.IN_PROGRESS)
            )
    except BaseException as e:
        with anyio.CancelScope(shield=True):
            await settle.fail(services, attempt, e)
        if isinstance(e, Exception):
            raise settle.client_error(e) from e
        raise
    log.info(
        "registration_committed",
        model_name=attempt.model_name,
        model_version=attempt.model_version,
        mlflow_run_id=attempt.run_id,
        duration_ms=round((time.perf_counter() - attempt.started) * 1000, 2),
    )
    return result
