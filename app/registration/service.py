"""Registering a model for a token: checks, the claim, MLflow, and the one committing transaction.

The order is cheap checks first: the token, then the metric (before the upload when the fields come
first), then the upload itself, and only then the claim on the token and the work in MLflow. A
request refused by a check leaves the token and MLflow untouched and is recorded as a `rejected`
registration with a `model_validation_failed` event. Once the token is claimed, any failure sends
the token to `failed`, undoes what MLflow holds for the attempt, and writes `registration_failed`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import anyio
import structlog
from anyio import CapacityLimiter
from sqlalchemy.exc import IntegrityError
from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.requests import Request

from app import observability
from app.auth.service import Principal
from app.clients.mlflow import MlflowError, MlflowRegistry
from app.config import Settings
from app.db import Database, utcnow
from app.errors import (
    AppError,
    BenchmarkMismatch,
    ChecksumMismatch,
    IdempotencyKeyReused,
    InternalError,
    InvalidBaseline,
    InvalidMetricValue,
    InvalidPredictions,
    MlflowFailed,
    MlflowUnavailable,
    ModelNameTaken,
    PayloadTooLarge,
    RegistrationInProgress,
    RegistrationNotFound,
    StoredProblem,
    TokenNotFound,
    TokenNotRegistrable,
    UploadIncomplete,
    ValidationFailed,
)
from app.events.outbox import EventType, NewEvent, write_events
from app.registration import repository
from app.registration.artifacts import (
    ARCHIVE_FORMATS,
    ArchiveInfo,
    ModelFormat,
    check_content,
    extract_archive,
    format_for_filename,
    inspect_archive,
)
from app.registration.hooks import NO_HOOKS, RegistrationHooks, Stage
from app.registration.json_schema import signature_json_schema
from app.registration.models import Registration, RegistrationStatus
from app.registration.schemas import RegistrationList, RegistrationPublic
from app.registration.sdk_fields import SDK_FIELDS, parse_sdk_fields
from app.registration.upload import RegistrationForm, UploadLimits, receive_form
from app.scoring import (
    MetricCheck,
    MetricSpec,
    compute_from_predictions,
    evaluate,
    parse_number,
    require_passed,
    resolve_metric,
    validate_baseline,
    validate_metric_value,
    validate_min_improvement,
)
from app.tokens import repository as tokens
from app.tokens.models import REGISTRABLE, Token, TokenStatus
from app.tokens.schemas import normalize_token_id

log = structlog.get_logger(__name__)

DEFAULT_MODEL_PREFIX = "hokusai-"
MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
SHA256_PATTERN = re.compile(r"^[0-9a-fA-F]{64}$")
MAX_TAGS = 50
MAX_TAG_KEY = 250
MAX_TAG_VALUE = 5000
RESERVED_TAG_PREFIXES = ("hokusai.", "hokusai_", "mlflow.")
# Codes that announce a refused check with `model_validation_failed`.
_VALIDATION_STATUSES = (413, 422)


class Evaluations(Protocol):
    """Verified evaluation, as a registration sees it (app.evaluation.service implements it)."""

    async def benchmark_for(self, token: Token) -> object | None:
        """The token's sealed benchmark, if it has one: then the model is evaluated."""

    async def enqueue(
        self,
        services: RegistrationServices,
        attempt: Attempt,
        form: RegistrationForm,
        unpacked: Path | None,
        *,
        token: Token,
        benchmark: object,
    ) -> RegistrationPublic:
        """Claim the token and queue the evaluation in one transaction; refusals raise first."""


@dataclass(frozen=True, slots=True)
class RegistrationServices:
    """What a registration needs from the running service."""

    settings: Settings
    database: Database
    mlflow: MlflowRegistry
    mlflow_limiter: CapacityLimiter
    evaluations: Evaluations | None = None
    hooks: RegistrationHooks = NO_HOOKS
    # The attempts this process is running; their upload folders are not abandoned however old.
    running: set[str] = field(default_factory=set)


@dataclass(slots=True)
class Attempt:
    """What is known about one registration attempt as it goes; becomes its row."""

    id: str
    token_id: str
    principal_id: str
    idempotency_key: str | None
    fingerprint: str | None = None
    started: float = field(default_factory=time.perf_counter)
    created_at: dt.datetime = field(default_factory=utcnow)
    check: MetricCheck | None = None
    metric_name: str | None = None
    metric_value: float | None = None
    baseline: float | None = None
    metric_source: str | None = None
    min_improvement: float | None = None
    reported_value: float | None = None
    model_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    format: ModelFormat | None = None
    api_schema: dict[str, Any] | None = None
    api_json_schema: dict[str, Any] | None = None
    sdk_fields: dict[str, str] = field(default_factory=dict)
    # An evaluated registration's extra MLflow run tags, metrics and text artifacts.
    extra_run_tags: dict[str, str] = field(default_factory=dict)
    extra_run_metrics: dict[str, float] = field(default_factory=dict)
    extra_artifacts: dict[str, str] = field(default_factory=dict)
    # Filled in from the MLflow worker thread, read by the compensation on failure.
    run_id: str | None = None
    model_version: str | None = None
    model_uri: str | None = None

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Log how long a step of the registration took."""
        began = time.perf_counter()
        try:
            yield
        finally:
            log.info(
                "registration_step",
                step=name,
                registration_id=self.id,
                token_id=self.token_id,
                duration_ms=round((time.perf_counter() - began) * 1000, 2),
            )

    def row(self, status: RegistrationStatus, **values: Any) -> Registration:
        check = self.check
        sdk_columns: dict[str, Any] = {name: self.sdk_fields.get(name) for name in SDK_FIELDS}
        return Registration(
            id=self.id,
            token_id=self.token_id,
            status=status,
            principal_id=self.principal_id,
            # A key is bound only to an outcome it can replay: one whose request was read whole.
            idempotency_key=self.idempotency_key if self.fingerprint else None,
            request_fingerprint=self.fingerprint,
            metric_name=check.name if check else self.metric_name,
            metric_value=check.value if check else self.metric_value,
            baseline=check.baseline if check else self.baseline,
            min_improvement=check.min_improvement if check else self.min_improvement,
            improvement=check.improvement if check else None,
            higher_is_better=check.higher_is_better if check else None,
            passed=check.passed if check else None,
            metric_source=self.metric_source,
            metric_reported_value=self.reported_value,
            artifact_filename=self.filename,
            artifact_size_bytes=self.size_bytes,
            artifact_sha256=self.sha256,
            artifact_format=self.format.value if self.format else None,
            api_schema=self.api_schema,
            api_json_schema=self.api_json_schema,
            **sdk_columns,
            model_name=self.model_name,
            model_version=self.model_version,
            model_uri=self.model_uri,
            mlflow_run_id=self.run_id,
            tags=self.tags,
            created_at=self.created_at,
            **values,
        )


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
            previous = await _previous_attempt(services, principal, idempotency_key)
            if previous is not None:
                form = await _receive(services, request, workdir, before_model=None)
                return _replay(previous, _fingerprint(token_id, form))
        async with services.database.transaction(read_only=True) as session:
            token = await tokens.get(session, token_id)
        if token is None:
            raise TokenNotFound(f"no token {token_id}")
        evaluations = services.evaluations
        benchmark = await evaluations.benchmark_for(token) if evaluations else None
        try:
            _require_registrable(token)
            with attempt.step("receive_upload"):
                form = await _receive(
                    services,
                    request,
                    workdir,
                    before_model=lambda fields: _early_metric_check(token, fields, attempt),
                )
            attempt.fingerprint = _fingerprint(token_id, form)
            with attempt.step("check_metric"):
                if benchmark is None:
                    await _check_metric(services, token, form, attempt)
                else:
                    await _check_reported_metric(token, form, attempt)
            with attempt.step("check_upload"):
                unpacked = await _check_upload(services, form, attempt, workdir)
            _parse_request_options(token, form, attempt)
            with attempt.step("check_model_name"):
                await _check_model_name(services, attempt)
            if evaluations is not None and benchmark is not None:
                # The model is scored in the sandbox; the outcome commits when that is done.
                with attempt.step("queue_evaluation"):
                    return await evaluations.enqueue(
                        services, attempt, form, unpacked, token=token, benchmark=benchmark
                    )
            with attempt.step("claim_token"):
                await _claim(services.database, attempt)
        except UploadIncomplete as e:
            # The client went away or stalled mid-form: nothing was decided, nothing to announce.
            log.info("upload_abandoned", code=e.code, detail=e.detail)
            observability.REGISTRATIONS.labels("abandoned", e.code).inc()
            raise
        except AppError as e:
            await _record_rejection(services.database, attempt, e)
            raise
        try:
            await services.hooks.reached(Stage.AFTER_CLAIM, attempt.id)
            with attempt.step("log_to_mlflow"):
                await anyio.to_thread.run_sync(
                    _log_to_mlflow,
                    services,
                    attempt,
                    form,
                    unpacked,
                    limiter=services.mlflow_limiter,
                )
            await services.hooks.reached(Stage.AFTER_MLFLOW, attempt.id)
            with attempt.step("commit"):
                result = await commit_registration(
                    services.database, attempt.row(RegistrationStatus.IN_PROGRESS)
                )
        except BaseException as e:
            with anyio.CancelScope(shield=True):
                await _fail(services, attempt, e)
            if isinstance(e, Exception):
                raise _client_error(e) from e
            raise
        log.info(
            "registration_committed",
            model_name=attempt.model_name,
            model_version=attempt.model_version,
            mlflow_run_id=attempt.run_id,
            duration_ms=round((time.perf_counter() - attempt.started) * 1000, 2),
        )
        return result
    finally:
        await anyio.to_thread.run_sync(shutil.rmtree, workdir, True)
        services.running.discard(attempt.id)


def running_attempts(services: RegistrationServices) -> frozenset[str]:
    """The registration ids these services are working on right now."""
    return frozenset(services.running)


async def _receive(
    services: RegistrationServices,
    request: Request,
    workdir: Path,
    *,
    before_model: Callable[[Mapping[str, str]], None] | None,
) -> RegistrationForm:
    settings = services.settings
    return await receive_form(
        request,
        directory=workdir,
        limits=UploadLimits(
            max_upload_bytes=settings.max_upload_bytes,
            max_predictions_bytes=settings.max_predictions_bytes,
            idle_timeout_seconds=settings.upload_idle_timeout_seconds,
            min_bytes_per_second=settings.upload_min_bytes_per_second,
            deadline_seconds=settings.upload_deadline_seconds,
        ),
        before_model=before_model or (lambda _fields: None),
    )


async def _previous_attempt(
    services: RegistrationServices, principal: Principal, key: str
) -> Registration | None:
    """The finished attempt an Idempotency-Key refers to, if it has not expired."""
    async with services.database.transaction() as session:
        previous = await repository.get_by_idempotency_key(session, principal.key_id, key)
        if previous is None:
            return None
        age = (utcnow() - previous.created_at).total_seconds()
        if age > services.settings.idempotency_ttl_seconds:
            await repository.release_idempotency_key(session, previous.id)
            return None
    if previous.status == RegistrationStatus.IN_PROGRESS:
        raise RegistrationInProgress(
            "a registration with this Idempotency-Key is still running",
            extra={"registration_id": previous.id},
        )
    return previous


def _fingerprint(token_id: str, form: RegistrationForm) -> str:
    """What makes two requests "the same" for an Idempotency-Key: every field and file."""
    described = {
        "token_id": token_id,
        "fields": dict(sorted(form.fields.items())),
        "model": [form.model.filename, form.model.size, form.model.sha256],
        "predictions": form.predictions.sha256 if form.predictions else None,
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def _replay(previous: Registration, fingerprint: str) -> RegistrationPublic:
    """The first outcome again, or 422 when the key came with a different request."""
    if previous.request_fingerprint != fingerprint:
        raise IdempotencyKeyReused(
            "this Idempotency-Key was used for a different request; use a new key",
            extra={"registration_id": previous.id},
        )
    log.info("registration_replayed", previous_registration_id=previous.id)
    replayed_code = str((previous.error or {}).get("code", ""))
    observability.REGISTRATIONS.labels("replayed", replayed_code).inc()
    if previous.status in (RegistrationStatus.REGISTERED, RegistrationStatus.EVALUATING):
        return RegistrationPublic.of(previous)
    raise StoredProblem({**(previous.error or {}), "registration_id": previous.id})


def _require_registrable(token: Token) -> None:
    if token.status == TokenStatus.REGISTERING:
        raise RegistrationInProgress(f"token {token.token_id} is being registered right now")
    if token.status not in REGISTRABLE:
        raise TokenNotRegistrable(
            f"token {token.token_id} is {token.status.value}; only draft and failed tokens "
            "can be registered",
            extra={"token_status": token.status.value},
        )


def _resolve_fields(
    token: Token, fields: Mapping[str, str], attempt: Attempt
) -> tuple[MetricSpec, float]:
    """The metric and baseline of the request, checked against the token's benchmark.

    What parses is noted on the attempt as it goes, so a refusal's event says what was sent.
    """
    raw_metric = fields.get("metric")
    if not raw_metric:
        raise ValidationFailed("the field 'metric' is required")
    # PostgreSQL cannot store NUL in text or JSONB; the refusal must still be recorded.
    attempt.metric_name = raw_metric[:64].replace("\x00", "\ufffd")
    spec = resolve_metric(raw_metric)
    attempt.metric_name = spec.name
    if fields.get("metric_value"):
        with suppress(AppError):
            attempt.metric_value = parse_number(
                fields["metric_value"], field="metric_value", error=InvalidMetricValue
            )
    if "baseline" not in fields:
        raise InvalidBaseline("the field 'baseline' is required")
    baseline = parse_number(fields["baseline"], field="baseline", error=InvalidBaseline)
    attempt.baseline = baseline
    if token.metric is not None and token.metric != spec.name:
        raise BenchmarkMismatch(
            f"token {token.token_id} is benchmarked on {token.metric}, not {spec.name}",
            extra={"benchmark": {"metric": token.metric, "baseline": token.baseline}},
        )
    if token.baseline is not None and not math.isclose(
        baseline, token.baseline, rel_tol=0.0, abs_tol=1e-12
    ):
        raise BenchmarkMismatch(
            f"token {token.token_id} has the baseline {token.baseline}; got {baseline}",
            extra={"benchmark": {"metric": token.metric, "baseline": token.baseline}},
        )
    return spec, validate_baseline(spec, baseline)


def _early_metric_check(token: Token, fields: Mapping[str, str], attempt: Attempt) -> None:
    """When the metric fields precede the model file, refuse bad ones before the upload."""
    if "metric" in fields and "baseline" in fields:
        spec, _ = _resolve_fields(token, fields, attempt)
        if fields.get("metric_value"):
            value = parse_number(
                fields["metric_value"], field="metric_value", error=InvalidMetricValue
            )
            validate_metric_value(spec, value)


async def _check_metric(
    services: RegistrationServices, token: Token, form: RegistrationForm, attempt: Attempt
) -> None:
    fields = form.fields
    spec, baseline = _resolve_fields(token, fields, attempt)
    has_value = bool(fields.get("metric_value"))
    if has_value == (form.predictions is not None):
        raise ValidationFailed(
            "send exactly one of 'metric_value' (the score) and 'predictions' (a CSV the "
            "service scores)"
        )
    if form.predictions is not None:
        if not spec.computable:
            raise InvalidPredictions(
                f"{spec.name} cannot be computed from predictions; send metric_value"
            )
        value = await anyio.to_thread.run_sync(
            compute_from_predictions, spec, form.predictions.path
        )
        attempt.metric_source = "computed"
    else:
        value = parse_number(fields["metric_value"], field="metric_value", error=InvalidMetricValue)
        attempt.metric_source = "reported"
    attempt.metric_value = value
    value = validate_metric_value(spec, value)
    min_improvement = 0.0
    if fields.get("min_improvement"):
        min_improvement = validate_min_improvement(
            parse_number(fields["min_improvement"], field="min_improvement", error=ValidationFailed)
        )
    attempt.check = evaluate(spec, value=value, baseline=baseline, min_improvement=min_improvement)
    require_passed(attempt.check)


async def _check_reported_metric(token: Token, form: RegistrationForm, attempt: Attempt) -> None:
    """For a token with a benchmark: the service measures the metric, so `metric_value` and
    `predictions` are optional and only kept as what the registrant reported."""
    fields = form.fields
    spec, _ = _resolve_fields(token, fields, attempt)
    if fields.get("metric_value") and form.predictions is not None:
        raise ValidationFailed("send at most one of 'metric_value' and 'predictions'")
    reported: float | None = None
    if form.predictions is not None:
        reported = await anyio.to_thread.run_sync(
            compute_from_predictions, spec, form.predictions.path
        )
    elif fields.get("metric_value"):
        reported = parse_number(
            fields["metric_value"], field="metric_value", error=InvalidMetricValue
        )
    if reported is not None:
        attempt.reported_value = validate_metric_value(spec, reported)
    attempt.metric_value = None
    attempt.metric_source = "evaluated"
    attempt.min_improvement = 0.0
    if fields.get("min_improvement"):
        attempt.min_improvement = validate_min_improvement(
            parse_number(fields["min_improvement"], field="min_improvement", error=ValidationFailed)
        )


async def _check_upload(
    services: RegistrationServices, form: RegistrationForm, attempt: Attempt, workdir: Path
) -> Path | None:
    """Check the upload; an archive is also unpacked here, so every refusal comes before the
    claim. Returns the unpacked model folder for an archive, None for a single file."""
    model = form.model
    attempt.filename, attempt.size_bytes, attempt.sha256 = model.filename, model.size, model.sha256
    fmt = format_for_filename(model.filename)
    attempt.format = fmt
    expected = form.fields.get("sha256")
    if expected:
        if not SHA256_PATTERN.fullmatch(expected):
            raise ValidationFailed("sha256 must be 64 hexadecimal characters")
        if expected.lower() != model.sha256:
            raise ChecksumMismatch(
                f"the upload's sha256 is {model.sha256}, not {expected.lower()}",
                extra={"expected_sha256": expected.lower(), "actual_sha256": model.sha256},
            )
    # Off the event loop: a format check may read and parse a header of megabytes.
    await anyio.to_thread.run_sync(check_content, fmt, model.head, model.path, model.size)
    if fmt not in ARCHIVE_FORMATS:
        return None
    settings = services.settings

    def inspect_and_unpack() -> tuple[ArchiveInfo, Path]:
        info = inspect_archive(
            fmt,
            model.path,
            max_unpacked_bytes=settings.unpacked_limit,
            max_files=settings.max_archive_files,
        )
        free = shutil.disk_usage(workdir).free
        if info.unpacked_bytes > free:
            raise PayloadTooLarge(
                f"the archive unpacks to {info.unpacked_bytes} bytes; the service has "
                f"{free} bytes of disk free for it",
                extra={"unpacked_bytes": info.unpacked_bytes},
            )
        unpacked = workdir / "unpacked"
        unpacked.mkdir()
        root = extract_archive(
            fmt,
            model.path,
            unpacked,
            info,
            max_unpacked_bytes=settings.unpacked_limit,
            max_files=settings.max_archive_files,
        )
        return info, root

    info, root = await anyio.to_thread.run_sync(inspect_and_unpack)
    attempt.api_schema = info.api_schema
    attempt.api_json_schema = signature_json_schema(info.api_schema)
    return root


def _parse_request_options(token: Token, form: RegistrationForm, attempt: Attempt) -> None:
    """The optional model name, run tags and Hokusai SDK fields."""
    attempt.sdk_fields = parse_sdk_fields(form.fields).present()
    name = form.fields.get("model_name") or f"hokusai-{token.token_id}"
    if not MODEL_NAME_PATTERN.fullmatch(name):
        raise ValidationFailed(
            "model_name must be 1-200 characters of letters, digits, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    attempt.model_name = name
    raw_tags = form.fields.get("tags")
    if not raw_tags:
        return
    try:
        tags = json.loads(raw_tags)
    except ValueError as e:
        raise ValidationFailed("tags must be a JSON object of strings") from e
    if not isinstance(tags, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
    ):
        raise ValidationFailed("tags must be a JSON object whose keys and values are strings")
    if len(tags) > MAX_TAGS:
        raise ValidationFailed(f"at most {MAX_TAGS} tags")
    for key, value in tags.items():
        if not key or len(key) > MAX_TAG_KEY or len(value) > MAX_TAG_VALUE:
            raise ValidationFailed(
                f"tag keys need 1-{MAX_TAG_KEY} characters and values at most {MAX_TAG_VALUE}"
            )
        if key.lower().startswith(RESERVED_TAG_PREFIXES):
            raise ValidationFailed(f"tag {key!r} uses a reserved prefix")
        if not key.isprintable() or not value.isprintable():
            raise ValidationFailed(f"tag {key!r} holds control characters")
    attempt.tags = tags


def _foreign_owners(owners: frozenset[str], token_id: str) -> frozenset[str]:
    return owners - {token_id}


async def _check_model_name(services: RegistrationServices, attempt: Attempt) -> None:
    """A registration may name only its own token's model, or a name no other token holds.

    `hokusai-<TOKEN_ID>` names are reserved for their token; any other name is taken once a token
    records it as its model or MLflow holds a version of it from another token (or from outside
    the service). The MLflow step checks again after creating its version, for a race between two
    first registrations of one new name.
    """
    name, token_id = attempt.model_name, attempt.token_id
    assert name is not None
    default = f"hokusai-{token_id}"
    if name.lower().startswith(DEFAULT_MODEL_PREFIX) and name.lower() != default.lower():
        raise ModelNameTaken(
            f"model names starting with {DEFAULT_MODEL_PREFIX!r} are reserved for each token's "
            f"default name; this token's is {default}",
            extra={"model_name": name},
        )
    async with services.database.transaction(read_only=True) as session:
        holders = await tokens.holding_model_name(session, name)
    owners: frozenset[str] = frozenset()
    if _is_custom(attempt):
        try:
            owners = await anyio.to_thread.run_sync(
                services.mlflow.model_owners, name, limiter=services.mlflow_limiter
            )
        except (MlflowError, MlflowUnavailable) as e:
            # The MLflow step checks again before it creates a version; an outage shows there.
            log.warning("model_name_check_deferred", error=str(e)[:200])
    if set(holders) - {token_id} or _foreign_owners(owners, token_id):
        raise ModelNameTaken(
            f"the model {name} belongs to another token; choose another model_name",
            extra={"model_name": name},
        )


def _is_custom(attempt: Attempt) -> bool:
    """A name other than the token's default: the default is reserved to it, no one else's."""
    assert attempt.model_name is not None
    return attempt.model_name.lower() != f"{DEFAULT_MODEL_PREFIX}{attempt.token_id}".lower()


def _require_model_name_free(mlflow: MlflowRegistry, attempt: Attempt) -> None:
    """The MLflow step's own check of a custom model name (worker thread)."""
    assert attempt.model_name is not None
    if not _is_custom(attempt):
        return
    if _foreign_owners(mlflow.model_owners(attempt.model_name), attempt.token_id):
        raise ModelNameTaken(
            f"the model {attempt.model_name} belongs to another token; choose another model_name",
            extra={"model_name": attempt.model_name},
        )


async def _claim(database: Database, attempt: Attempt) -> None:
    """Move the token to `registering` if nobody else did first."""
    try:
        async with database.transaction() as session:
            claimed = await _claim_in(session, attempt)
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
    _require_registrable(token)
    # The token was registrable a moment ago and is again; someone else's attempt just ended.
    raise RegistrationInProgress(f"token {attempt.token_id} is being registered right now")


async def _claim_in(session: AsyncSession, attempt: Attempt) -> bool:
    claimed = await tokens.compare_and_set(
        session,
        attempt.token_id,
        expected=REGISTRABLE,
        values={
            "status": TokenStatus.REGISTERING,
            "current_registration_id": attempt.id,
            "claimed_at": utcnow(),
        },
    )
    if claimed:
        session.add(attempt.row(RegistrationStatus.IN_PROGRESS))
        await session.flush()
    return claimed


def _log_to_mlflow(
    services: RegistrationServices,
    attempt: Attempt,
    form: RegistrationForm,
    unpacked: Path | None,
) -> None:
    """The MLflow side of a registration (runs in a worker thread)."""
    assert attempt.check is not None and attempt.model_name is not None
    check = attempt.check
    mlflow = services.mlflow
    mlflow.ensure_experiment()
    attempt.run_id = mlflow.start_run(
        run_name=f"{attempt.token_id}-{attempt.id[:8]}",
        tags={
            **attempt.tags,
            "hokusai.token_id": attempt.token_id,
            "hokusai.metric": check.name,
            "hokusai.baseline": repr(check.baseline),
            "hokusai.metric_value": repr(check.value),
            "hokusai.registration_id": attempt.id,
            "hokusai.sha256": form.model.sha256,
            **{f"hokusai.{name}": value for name, value in attempt.sdk_fields.items()},
            **attempt.extra_run_tags,
        },
    )
    services.hooks.reached_in_thread(Stage.DURING_MLFLOW, attempt.id)
    mlflow.log_metric(attempt.run_id, check.name, check.value)
    for name, value in attempt.extra_run_metrics.items():
        mlflow.log_metric(attempt.run_id, name, value)
    for artifact_file, text in attempt.extra_artifacts.items():
        mlflow.log_text(attempt.run_id, text, artifact_file)
    if unpacked is not None:
        mlflow.log_model_dir(attempt.run_id, unpacked)
    else:
        mlflow.log_model_file(attempt.run_id, form.model.path)
    _require_model_name_free(mlflow, attempt)
    ref = mlflow.register_version(
        run_id=attempt.run_id,
        model_name=attempt.model_name,
        tags={
            "hokusai_token_id": attempt.token_id,
            "hokusai_registration_id": attempt.id,
            "benchmark_metric": check.name,
            "benchmark_value": repr(check.baseline),
            "metric_value": repr(check.value),
            "hokusai_status": "registered",
        },
    )
    attempt.model_version, attempt.model_uri = ref.version, ref.model_uri
    # Another token may have registered the same new name at the same moment; the undo removes
    # this attempt's version.
    _require_model_name_free(mlflow, attempt)
    mlflow.finish_run(attempt.run_id)


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
        events = [
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


def user_id_of(tags: Mapping[str, str]) -> str | None:
    """The registrant's site user, from the run tag `user_id` or `fulfilled_by_user_id`."""
    return tags.get("user_id") or tags.get("fulfilled_by_user_id") or None


async def _record_rejection(database: Database, attempt: Attempt, error: AppError) -> None:
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
            session.add(
                attempt.row(
                    RegistrationStatus.REJECTED,
                    error={k: v for k, v in problem.items() if k != "request_id"},
                    event_ids=[event.event_id for event in events],
                    response_status=error.status,
                )
            )
            await session.flush()
            await write_events(session, events)
    except (AppError, IntegrityError):
        # The refusal stands even if recording it failed (e.g. the database is down).
        log.warning("rejection_not_recorded", code=error.code)
    error.extra.setdefault("registration_id", attempt.id)
    observability.REGISTRATIONS.labels("rejected", error.code).inc()
    log.info("registration_rejected", code=error.code, detail=error.detail)


async def _fail(services: RegistrationServices, attempt: Attempt, error: BaseException) -> None:
    """After the claim: undo MLflow, mark the token failed, announce `registration_failed`."""
    if await _committed_anyway(services.database, attempt):
        # The commit went through but its acknowledgement was lost: nothing to undo.
        log.warning("registration_commit_unacknowledged", mlflow_run_id=attempt.run_id)
        observability.REGISTRATIONS.labels("registered", "").inc()
        return
    client_error = _client_error(error)
    problem = client_error.problem()
    if client_error.status >= 500:
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
        lambda: services.mlflow.fail_registration(
            run_id=attempt.run_id,
            model_name=attempt.model_name,
            version=attempt.model_version,
            reason=f"{problem['code']}: {problem['detail']}",
        ),
        limiter=services.mlflow_limiter,
    )
    try:
        await record_failure(
            services.database,
            attempt.token_id,
            attempt.id,
            attempt.row(RegistrationStatus.IN_PROGRESS),
            problem=problem,
            response_status=client_error.status,
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


def _client_error(error: BaseException) -> AppError:
    """What the caller is told about a failure after the claim."""
    if isinstance(error, AppError):
        return error
    if isinstance(error, MlflowError):
        return MlflowFailed(str(error)[:500] or "MLflow refused the registration")
    return InternalError("the registration failed unexpectedly; the token is now failed")


# The evaluation worker finishes an evaluated registration with the same MLflow step.
log_to_mlflow = _log_to_mlflow
