"""Registering a model for a token, stage by stage; and reading registrations.

The order is cheap checks first: the token, then the metric (before the upload when the fields come
first), then the upload itself, and only then the claim on the token and the work in MLflow. A
request refused by a check leaves the token and MLflow untouched and is recorded as a `rejected`
registration with a `model_validation_failed` event. Once the token is claimed, any failure sends
the token to `failed`, undoes what MLflow holds for the attempt, and writes `registration_failed`.

The router opens a registration (`registering`), streams the upload into it and hands it the
received form (`Registering.complete`). The stages live in their own modules: `intake` (the
upload's limits, the Idempotency-Key's replay), `checks`, `mlflow_step` and `settle` (claim,
commit, rejection, failure).
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import structlog
from sqlmodel.ext.asyncio.session import AsyncSession

from app import observability
from app.auth.service import Principal
from app.db import Database
from app.errors import AppError, RegistrationNotFound, TokenNotFound, UploadIncomplete
from app.registration import checks, intake, mlflow_step, repository, settle
from app.registration.attempt import Attempt, RegistrationServices
from app.registration.hooks import Stage
from app.registration.models import Registration, RegistrationStatus
from app.registration.schemas import RegistrationList, RegistrationPublic
from app.registration.upload import RegistrationForm, UploadLimits
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


@dataclass(slots=True)
class Registering:
    """A registration opened for its request: where its upload goes, and what comes after it.

    The caller streams the upload into `workdir` (calling `before_model` when the model part
    starts) and hands the received form to `complete`.
    """

    services: RegistrationServices
    attempt: Attempt
    workdir: Path
    limits: UploadLimits
    # The finished attempt the request's Idempotency-Key names: the request is then a replay.
    previous: Registration | None = None
    token: Token | None = None
    benchmark: object | None = None
    claimed: bool = False

    def step(self, name: str) -> AbstractContextManager[None]:
        """Log how long a step of the registration took."""
        return self.attempt.step(name)

    def before_model(self, fields: Mapping[str, str]) -> None:
        """The metric fields sent before the model file, refused before the upload if bad."""
        if self.token is not None:
            checks.early_metric_check(self.token, fields, self.attempt)

    async def complete(self, form: RegistrationForm) -> RegistrationPublic:
        """Check the received request, claim the token, then MLflow and the commit."""
        attempt = self.attempt
        request_fingerprint = intake.fingerprint(attempt.token_id, form)
        if self.previous is not None:
            return intake.replay(self.previous, request_fingerprint)
        assert self.token is not None
        attempt.fingerprint = request_fingerprint
        unpacked = await _check(
            self.services, self.token, self.benchmark, attempt, form, self.workdir
        )
        evaluations = self.services.evaluations
        if evaluations is not None and self.benchmark is not None:
            # The model is scored in the sandbox; the outcome commits when that is done.
            with attempt.step("queue_evaluation"):
                return await evaluations.enqueue(
                    self.services,
                    attempt,
                    form,
                    unpacked,
                    token=self.token,
                    benchmark=self.benchmark,
                )
        with attempt.step("claim_token"):
            await settle.claim(self.services.database, attempt)
        self.claimed = True
        return await _publish(self.services, attempt, form, unpacked)


@dataclass(frozen=True, slots=True)
class TokenRead:
    """A registration's token and its sealed benchmark, read before anything else."""

    token_id: str
    token: Token | None
    benchmark: object | None


async def read_token(
    services: RegistrationServices, session: AsyncSession, raw_token_id: str
) -> TokenRead | None:
    """The token a registration names (and its sealed benchmark), read in the caller's
    transaction: the one that authenticated the request. None for a token id that is not
    valid; `registering` refuses it in its turn."""
    try:
        token_id = normalize_token_id(raw_token_id)
    except AppError:
        return None
    token, benchmark = await _token_and_benchmark_in(services, session, token_id)
    return TokenRead(token_id, token, benchmark)


# Schedules a call for after the response has gone out (FastAPI's `BackgroundTasks.add_task`).
AfterResponse = Callable[[Callable[[Path], Awaitable[None]], Path], None]


@asynccontextmanager
async def registering(
    services: RegistrationServices,
    *,
    raw_token_id: str,
    principal: Principal,
    idempotency_key: str | None,
    read: TokenRead | None = None,
    after_response: AfterResponse | None = None,
) -> AsyncIterator[Registering]:
    """Open one registration for its request; a refusal before the claim is recorded as
    rejected, and the upload's folder is removed at the end whatever happened.

    `read` is the token as `read_token` found it, when the request's authentication read it.

    With `after_response`, a registration that ends without an error leaves the removal of its
    folder to run once the answer has gone out: the client need not wait for the file system.
    The caller passes it only when nothing after this block can still refuse the request (such
    an answer drops the tasks meant for after it); were the call dropped all the same, the
    recovery sweep would remove the folder as an abandoned upload.
    """
    token_id = normalize_token_id(raw_token_id)
    attempt = Attempt(
        id=str(uuid.uuid4()),
        token_id=token_id,
        principal_id=principal.key_id,
        idempotency_key=idempotency_key,
    )
    structlog.contextvars.bind_contextvars(registration_id=attempt.id, token_id=token_id)
    opened = Registering(
        services,
        attempt,
        workdir=services.settings.upload_dir / attempt.id,
        limits=intake.upload_limits(services.settings),
    )
    services.running.add(attempt.id)
    ended_well = False
    try:
        if idempotency_key:
            opened.previous = await intake.previous_attempt(services, principal, idempotency_key)
        if opened.previous is None:
            opened.token, opened.benchmark = await _token_and_benchmark(services, token_id, read)
            async with _rejections_recorded(opened):
                checks.require_registrable(opened.token)
                yield opened
        else:
            yield opened
        ended_well = True
    finally:
        services.running.discard(attempt.id)
        if ended_well and after_response is not None:
            after_response(remove_folder, opened.workdir)
        else:
            await remove_folder(opened.workdir)


async def remove_folder(folder: Path) -> None:
    """Delete an attempt's upload folder and everything in it, if it exists."""
    await anyio.to_thread.run_sync(shutil.rmtree, folder, True)


def running_attempts(services: RegistrationServices) -> frozenset[str]:
    """The registration ids these services are working on right now."""
    return frozenset(services.running)


async def _token_and_benchmark(
    services: RegistrationServices, token_id: str, read: TokenRead | None
) -> tuple[Token, object | None]:
    """The token and its sealed benchmark (if verified evaluation runs), in one read: `read`
    when it was made for this token id."""
    if read is not None and read.token_id == token_id:
        token, benchmark = read.token, read.benchmark
    else:
        async with services.database.transaction(read_only=True) as session:
            token, benchmark = await _token_and_benchmark_in(services, session, token_id)
    if token is None:
        raise TokenNotFound(f"no token {token_id}")
    return token, benchmark


async def _token_and_benchmark_in(
    services: RegistrationServices, session: AsyncSession, token_id: str
) -> tuple[Token | None, object | None]:
    token = await tokens.get(session, token_id)
    if token is None or services.evaluations is None:
        return token, None
    return token, await services.evaluations.benchmark_for(session, token)


@asynccontextmanager
async def _rejections_recorded(opened: Registering) -> AsyncIterator[None]:
    """A refusal before the claim becomes a `rejected` registration (after it, `fail` ran)."""
    try:
        yield
    except UploadIncomplete as e:
        # The client went away or stalled mid-form: nothing was decided, nothing to announce.
        if not opened.claimed:
            log.info("upload_abandoned", code=e.code, detail=e.detail)
            observability.REGISTRATIONS.labels("abandoned", e.code).inc()
        raise
    except AppError as e:
        if not opened.claimed:
            await settle.record_rejection(opened.services.database, opened.attempt, e)
        raise


async def _check(
    services: RegistrationServices,
    token: Token,
    benchmark: object | None,
    attempt: Attempt,
    form: RegistrationForm,
    workdir: Path,
) -> Path | None:
    """The checks in order; answers the unpacked model of an archive."""
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
    return unpacked


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
