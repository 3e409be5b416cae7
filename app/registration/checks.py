"""The checks a registration passes before it claims its token: token, metric, upload, model name.

Each refuses with the contract's `AppError`. What parses is noted on the attempt as it goes, so
a refusal's row and event say what was sent.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path

import anyio
import structlog
from sqlmodel.ext.asyncio.session import AsyncSession

from app.clients.mlflow import MlflowError
from app.errors import (
    AppError,
    BenchmarkMismatch,
    ChecksumMismatch,
    InvalidBaseline,
    InvalidMetricValue,
    InvalidPredictions,
    MlflowUnavailable,
    ModelNameTaken,
    PayloadTooLarge,
    RegistrationInProgress,
    TokenNotRegistrable,
    ValidationFailed,
)
from app.registration.artifacts import (
    ARCHIVE_FORMATS,
    ArchiveInfo,
    ModelFormat,
    check_content,
    extract_archive,
    format_for_filename,
    inspect_archive,
)
from app.registration.attempt import Attempt, RegistrationServices
from app.registration.form import DEFAULT_MODEL_PREFIX, MetricFields, RegistrationFields
from app.registration.json_schema import signature_json_schema
from app.registration.upload import ReceivedFile
from app.scoring import (
    MetricSpec,
    compute_from_predictions,
    evaluate,
    parse_number,
    require_passed,
    resolve_metric,
    validate_baseline,
    validate_metric_value,
)
from app.tokens import repository as tokens
from app.tokens.models import REGISTRABLE, Token, TokenStatus

log = structlog.get_logger(__name__)


def require_registrable(token: Token) -> None:
    """Only a draft or failed token nobody is registering right now can be registered."""
    if token.status == TokenStatus.REGISTERING:
        raise RegistrationInProgress(f"token {token.token_id} is being registered right now")
    if token.status not in REGISTRABLE:
        raise TokenNotRegistrable(
            f"token {token.token_id} is {token.status.value}; only draft and failed tokens "
            "can be registered",
            extra={"token_status": token.status.value},
        )


# The metric ----------------------------------------------------------------------------------


def read_fields(fields: Mapping[str, str], attempt: Attempt) -> RegistrationFields:
    """The form's text fields as the typed model; what was sent is noted on the attempt first."""
    _note_sent(fields, attempt)
    return RegistrationFields.from_form(fields)


def early_metric_check(token: Token, fields: Mapping[str, str], attempt: Attempt) -> None:
    """When the metric fields precede the model file, refuse bad ones before the upload."""
    if "metric" in fields and "baseline" in fields:
        _note_sent(fields, attempt)
        sent = MetricFields.from_form(fields)
        spec, _ = _resolve(token, sent)
        if sent.metric_value is not None:
            validate_metric_value(spec, sent.metric_value)


async def check_metric(
    token: Token, fields: RegistrationFields, predictions: ReceivedFile | None, attempt: Attempt
) -> None:
    """The reported or computed score against the baseline; refused unless it beats it."""
    spec, baseline = _resolve(token, fields)
    if (fields.metric_value is not None) == (predictions is not None):
        raise ValidationFailed(
            "send exactly one of 'metric_value' (the score) and 'predictions' (a CSV the "
            "service scores)"
        )
    if predictions is not None:
        if not spec.computable:
            raise InvalidPredictions(
                f"{spec.name} cannot be computed from predictions; send metric_value"
            )
        value = await anyio.to_thread.run_sync(compute_from_predictions, spec, predictions.path)
        attempt.metric_source = "computed"
    else:
        assert fields.metric_value is not None
        value = fields.metric_value
        attempt.metric_source = "reported"
    attempt.metric_value = value
    value = validate_metric_value(spec, value)
    attempt.check = evaluate(
        spec, value=value, baseline=baseline, min_improvement=float(fields.min_improvement)
    )
    require_passed(attempt.check)


async def check_reported_metric(
    token: Token, fields: RegistrationFields, predictions: ReceivedFile | None, attempt: Attempt
) -> None:
    """For a token with a benchmark: the service measures the metric, so `metric_value` and
    `predictions` are optional and only kept as what the registrant reported."""
    spec, _ = _resolve(token, fields)
    if fields.metric_value is not None and predictions is not None:
        raise ValidationFailed("send at most one of 'metric_value' and 'predictions'")
    reported = fields.metric_value
    if predictions is not None:
        reported = await anyio.to_thread.run_sync(compute_from_predictions, spec, predictions.path)
    if reported is not None:
        attempt.reported_value = validate_metric_value(spec, reported)
    attempt.metric_value = None
    attempt.metric_source = "evaluated"
    attempt.min_improvement = float(fields.min_improvement)


def _note_sent(fields: Mapping[str, str], attempt: Attempt) -> None:
    """The metric, score and baseline as sent, as far as they parse."""
    raw_metric = fields.get("metric")
    if not raw_metric:
        return
    # PostgreSQL cannot store NUL in text or JSONB; the refusal must still be recorded.
    attempt.metric_name = raw_metric[:64].replace("\x00", "\ufffd")
    try:
        attempt.metric_name = resolve_metric(raw_metric).name
    except AppError:
        return
    if fields.get("metric_value"):
        with suppress(AppError):
            attempt.metric_value = parse_number(
                fields["metric_value"], field="metric_value", error=InvalidMetricValue
            )
    if "baseline" in fields:
        with suppress(AppError):
            attempt.baseline = parse_number(
                fields["baseline"], field="baseline", error=InvalidBaseline
            )


def _resolve(token: Token, fields: MetricFields) -> tuple[MetricSpec, float]:
    """The metric and baseline of the request, checked against the token's benchmark."""
    spec = resolve_metric(fields.metric)
    baseline = fields.baseline
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


# The upload ----------------------------------------------------------------------------------


async def check_upload(
    services: RegistrationServices,
    model: ReceivedFile,
    expected_sha256: str | None,
    attempt: Attempt,
    workdir: Path,
) -> Path | None:
    """Check the upload; an archive is also unpacked here, so every refusal comes before the
    claim. Returns the unpacked model folder for an archive, None for a single file."""
    attempt.filename, attempt.size_bytes, attempt.sha256 = model.filename, model.size, model.sha256
    fmt = format_for_filename(model.filename)
    attempt.format = fmt
    if expected_sha256 is not None and expected_sha256 != model.sha256:
        raise ChecksumMismatch(
            f"the upload's sha256 is {model.sha256}, not {expected_sha256}",
            extra={"expected_sha256": expected_sha256, "actual_sha256": model.sha256},
        )
    # Off the event loop: a format check may read and parse a header of megabytes.
    await anyio.to_thread.run_sync(check_content, fmt, model.head, model.path, model.size)
    if fmt not in ARCHIVE_FORMATS:
        return None
    info, root = await anyio.to_thread.run_sync(_unpack, services, fmt, model.path, workdir)
    attempt.api_schema = info.api_schema
    attempt.api_json_schema = signature_json_schema(info.api_schema)
    return root


def _unpack(
    services: RegistrationServices, fmt: ModelFormat, path: Path, workdir: Path
) -> tuple[ArchiveInfo, Path]:
    """Inspect the archive, then unpack it under `workdir` (worker thread)."""
    settings = services.settings
    limits = {
        "max_unpacked_bytes": settings.unpacked_limit,
        "max_files": settings.max_archive_files,
    }
    info = inspect_archive(fmt, path, **limits)
    free = shutil.disk_usage(workdir).free
    if info.unpacked_bytes > free:
        raise PayloadTooLarge(
            f"the archive unpacks to {info.unpacked_bytes} bytes; the service has "
            f"{free} bytes of disk free for it",
            extra={"unpacked_bytes": info.unpacked_bytes},
        )
    unpacked = workdir / "unpacked"
    unpacked.mkdir()
    return info, extract_archive(fmt, path, unpacked, info, **limits)


# The model name ------------------------------------------------------------------------------


def apply_options(token: Token, fields: RegistrationFields, attempt: Attempt) -> None:
    """The model name (the token's default when none was sent), run tags and SDK fields."""
    attempt.sdk_fields = fields.sdk_fields()
    attempt.model_name = fields.model_name or f"{DEFAULT_MODEL_PREFIX}{token.token_id}"
    attempt.tags = fields.tags


def foreign_owners(owners: frozenset[str], token_id: str) -> frozenset[str]:
    """The tokens other than `token_id` among a model name's owners."""
    return owners - {token_id}


def is_custom(attempt: Attempt) -> bool:
    """A name other than the token's default: the default is reserved to it, no one else's."""
    assert attempt.model_name is not None
    return attempt.model_name.lower() != f"{DEFAULT_MODEL_PREFIX}{attempt.token_id}".lower()


async def check_model_name(services: RegistrationServices, attempt: Attempt) -> None:
    """A registration may name only its own token's model, or a name no other token holds.

    `hokusai-<TOKEN_ID>` names are reserved for their token; any other name is taken once a token
    records it as its model (checked in the claim's transaction: `require_name_unheld`) or MLflow
    holds a version of it from another token (or from outside the service). The MLflow step
    checks again after creating its version, for a race between two first registrations of one
    new name.
    """
    name, token_id = attempt.model_name, attempt.token_id
    assert name is not None
    default = f"{DEFAULT_MODEL_PREFIX}{token_id}"
    if name.lower().startswith(DEFAULT_MODEL_PREFIX) and name.lower() != default.lower():
        raise ModelNameTaken(
            f"model names starting with {DEFAULT_MODEL_PREFIX!r} are reserved for each token's "
            f"default name; this token's is {default}",
            extra={"model_name": name},
        )
    if not is_custom(attempt):
        return
    try:
        owners = await anyio.to_thread.run_sync(
            services.mlflow.model_owners, name, limiter=services.mlflow_limiter
        )
    except (MlflowError, MlflowUnavailable) as e:
        # The MLflow step checks again before it creates a version; an outage shows there.
        log.warning("model_name_check_deferred", error=str(e)[:200])
        return
    if foreign_owners(owners, token_id):
        raise _name_taken(name)


async def require_name_unheld(session: AsyncSession, attempt: Attempt) -> None:
    """No other token records the attempt's model name; read in the transaction that claims."""
    name = attempt.model_name
    assert name is not None
    holders = await tokens.holding_model_name(session, name)
    if set(holders) - {attempt.token_id}:
        raise _name_taken(name)


def _name_taken(name: str) -> ModelNameTaken:
    return ModelNameTaken(
        f"the model {name} belongs to another token; choose another model_name",
        extra={"model_name": name},
    )
