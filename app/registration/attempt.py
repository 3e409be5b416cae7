"""One registration attempt as it goes, and the running service's parts a registration uses."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog
from anyio import CapacityLimiter
from pydantic import BaseModel, ConfigDict, Field, field_serializer
from sqlmodel.ext.asyncio.session import AsyncSession

from app.clients.mlflow import MlflowRegistry
from app.config import Settings
from app.db import Database, utcnow
from app.registration.artifacts import ModelFormat
from app.registration.hooks import NO_HOOKS, RegistrationHooks
from app.registration.models import Registration, RegistrationStatus
from app.registration.schemas import RegistrationPublic
from app.registration.sdk_fields import SDK_FIELDS
from app.registration.upload import RegistrationForm
from app.scoring import MetricCheck
from app.tokens.models import Token

log = structlog.get_logger(__name__)


class Evaluations(Protocol):
    """Verified evaluation, as a registration sees it (app.evaluation.service implements it)."""

    async def benchmark_for(self, session: AsyncSession, token: Token) -> object | None:
        """The token's sealed benchmark, if it has one: then the model is evaluated.

        Read in the caller's transaction, the one that reads the token.
        """

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
    running: set[str] = dataclasses.field(default_factory=set)


# Attempt fields that are not columns of its registration row (the check and the SDK fields are
# spread into theirs).
_NOT_COLUMNS = {
    "started",
    "check",
    "sdk_fields",
    "extra_run_tags",
    "extra_run_metrics",
    "extra_artifacts",
}


class Attempt(BaseModel):
    """What is known about one registration attempt as it goes; becomes its row.

    Each field is a column of `Registration`, under its column's name when dumped by alias.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    id: str
    token_id: str
    principal_id: str
    idempotency_key: str | None
    fingerprint: str | None = Field(default=None, serialization_alias="request_fingerprint")
    started: float = Field(default_factory=time.perf_counter)
    created_at: dt.datetime = Field(default_factory=utcnow)
    check: MetricCheck | None = None
    metric_name: str | None = None
    metric_value: float | None = None
    baseline: float | None = None
    metric_source: str | None = None
    min_improvement: float | None = None
    reported_value: float | None = Field(default=None, serialization_alias="metric_reported_value")
    model_name: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    filename: str | None = Field(default=None, serialization_alias="artifact_filename")
    size_bytes: int | None = Field(default=None, serialization_alias="artifact_size_bytes")
    sha256: str | None = Field(default=None, serialization_alias="artifact_sha256")
    format: ModelFormat | None = Field(default=None, serialization_alias="artifact_format")
    api_schema: dict[str, Any] | None = None
    api_json_schema: dict[str, Any] | None = None
    sdk_fields: dict[str, str] = Field(default_factory=dict)
    # An evaluated registration's extra MLflow run tags, metrics and text artifacts.
    extra_run_tags: dict[str, str] = Field(default_factory=dict)
    extra_run_metrics: dict[str, float] = Field(default_factory=dict)
    extra_artifacts: dict[str, str] = Field(default_factory=dict)
    # Filled in from the MLflow worker thread, read by the compensation on failure.
    run_id: str | None = Field(default=None, serialization_alias="mlflow_run_id")
    model_version: str | None = None
    model_uri: str | None = None

    @field_serializer("format")
    def _format_value(self, fmt: ModelFormat | None) -> str | None:
        return fmt.value if fmt else None

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
        """The attempt's registration row with `status` (and any other columns in `values`)."""
        columns = self.model_dump(by_alias=True, exclude=_NOT_COLUMNS)
        # A key is bound only to an outcome it can replay: one whose request was read whole.
        if not self.fingerprint:
            columns["idempotency_key"] = None
        columns |= self._check_columns()
        columns |= {name: self.sdk_fields.get(name) for name in SDK_FIELDS}
        return Registration(**columns, status=status, **values)

    def _check_columns(self) -> dict[str, Any]:
        if self.check is None:
            return {"improvement": None, "higher_is_better": None, "passed": None}
        columns = dataclasses.asdict(self.check)
        columns["metric_name"] = columns.pop("name")
        columns["metric_value"] = columns.pop("value")
        return columns
