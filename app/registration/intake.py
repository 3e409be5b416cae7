"""Taking a registration request in: the upload's limits, and the Idempotency-Key's replay.

A request whose key names a finished attempt is read whole and compared with that attempt's
(every field and file, as a fingerprint): the same request replays the first outcome, another one
is refused. Upload folders live under the attempt's id, a name the service chose.
"""

from __future__ import annotations

import hashlib
import json

import structlog

from app import observability
from app.auth.service import Principal
from app.config import Settings
from app.db import utcnow
from app.errors import IdempotencyKeyReused, RegistrationInProgress, StoredProblem
from app.registration import repository
from app.registration.attempt import RegistrationServices
from app.registration.models import Registration, RegistrationStatus
from app.registration.schemas import RegistrationPublic
from app.registration.upload import RegistrationForm, UploadLimits

log = structlog.get_logger(__name__)


def upload_limits(settings: Settings) -> UploadLimits:
    """How much and how slowly a client may send a registration, from the settings."""
    return UploadLimits(
        max_upload_bytes=settings.max_upload_bytes,
        max_predictions_bytes=settings.max_predictions_bytes,
        idle_timeout_seconds=settings.upload_idle_timeout_seconds,
        min_bytes_per_second=settings.upload_min_bytes_per_second,
        deadline_seconds=settings.upload_deadline_seconds,
    )


async def previous_attempt(
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


def fingerprint(token_id: str, form: RegistrationForm) -> str:
    """What makes two requests "the same" for an Idempotency-Key: every field and file."""
    described = {
        "token_id": token_id,
        "fields": dict(sorted(form.fields.items())),
        "model": [form.model.filename, form.model.size, form.model.sha256],
        "predictions": form.predictions.sha256 if form.predictions else None,
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def replay(previous: Registration, request_fingerprint: str) -> RegistrationPublic:
    """The first outcome again, or 422 when the key came with a different request."""
    if previous.request_fingerprint != request_fingerprint:
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
