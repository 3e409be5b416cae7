"""Service settings, read from `HOKUSAI_*` environment variables (and an optional `.env`)."""

from __future__ import annotations

import base64
import binascii
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MiB = 1024 * 1024
GiB = 1024 * MiB

# Secrets that must never be accepted in production: the examples in our own docs.
PLACEHOLDER_SECRETS = frozenset({"", "changeme", "change-me", "secret", "whsec_changeme"})


class Environment(StrEnum):
    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


class Settings(BaseSettings):
    """Everything the service can be configured with; each field is `HOKUSAI_<NAME>`."""

    model_config = SettingsConfigDict(
        env_prefix="HOKUSAI_", env_file=".env", extra="ignore", validate_default=True
    )

    env: Environment = Environment.DEVELOPMENT
    data_dir: Path = Path(".hokusai")
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default: SQLite at DATA_DIR/hokusai.db. "
        "postgresql:// URLs use the psycopg driver.",
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI; default: sqlite:///DATA_DIR/mlflow.db with artifacts "
        "in DATA_DIR/mlartifacts.",
    )
    mlflow_registry_uri: str | None = None
    mlflow_artifact_root: str | None = Field(
        default=None,
        description="where a local MLflow store keeps artifacts; default DATA_DIR/mlartifacts. "
        "A remote tracking server chooses its own.",
    )
    mlflow_retry_seconds: float = Field(default=20.0, gt=0, le=300)
    mlflow_request_timeout: float = Field(default=30.0, gt=0, le=600)
    mlflow_threads: int = Field(default=8, ge=1, le=64)

    max_upload_bytes: int = Field(default=2 * GiB, gt=0)
    max_unpacked_bytes: int | None = Field(
        default=None,
        gt=0,
        description="default: 4 x MAX_UPLOAD_BYTES; an archive is also refused "
        "when the upload folder's disk has less free space than it would unpack to",
    )
    max_archive_files: int = Field(default=10_000, gt=0)
    max_predictions_bytes: int = Field(default=256 * MiB, gt=0)
    upload_idle_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="a registration upload that sends nothing for this long is dropped (408); "
        "after this long it must also keep up UPLOAD_MIN_BYTES_PER_SECOND on average",
    )
    upload_min_bytes_per_second: float = Field(
        default=1024.0,
        ge=0,
        description="the slowest average rate a registration upload may arrive at, counted "
        "from the start of the body once UPLOAD_IDLE_TIMEOUT_SECONDS have passed (408 below)",
    )
    upload_deadline_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="the longest a registration upload may take from its first byte to its "
        "last (408 after)",
    )
    registration_lease_seconds: int = Field(default=900, gt=0)
    shutdown_grace_seconds: int = Field(
        default=90,
        gt=0,
        description="on SIGTERM, `serve` stops accepting connections and waits this long for "
        "requests in flight (uploads, registrations in MLflow) to finish before cancelling "
        "them; give the orchestrator's stop timeout (Docker stop_grace_period, Kubernetes "
        "terminationGracePeriodSeconds) a few seconds more",
    )
    idempotency_ttl_seconds: int = Field(
        default=24 * 3600, gt=0, description="how long an Idempotency-Key replays its outcome"
    )

    max_json_bytes: int = Field(
        default=1 * MiB,
        gt=0,
        description="largest request body accepted outside multipart uploads (413 above)",
    )
    max_request_headers: int = Field(
        default=100, gt=0, description="most header fields a request may carry (431 above)"
    )
    auth_failure_limit: int = Field(
        default=20,
        gt=0,
        description="failed authentications one client address may make per window before "
        "its requests are refused with 429 (counted in Redis across processes when REDIS_URL "
        "is set, else per process)",
    )
    auth_failure_window_seconds: float = Field(default=60.0, gt=0)
    forwarded_allow_ips: str | None = Field(
        default=None,
        description="comma-separated addresses or networks of reverse proxies whose "
        "X-Forwarded-For and X-Forwarded-Proto `serve` trusts (uvicorn's forwarded_allow_ips); "
        "unset: trust none, so the client address is the connection's peer",
    )

    redis_url: str | None = None
    webhook_url: str | None = None
    webhook_secret: SecretStr | None = None
    site_webhook_url: str | None = Field(
        default=None,
        description="the Hokusai site's webhook (e.g. https://hokus.ai/api/webhooks/"
        "model-registration): receives model_registered in the site's format",
    )
    site_webhook_secret: SecretStr | None = Field(
        default=None,
        description="the site's shared secret for X-Hokusai-Signature: 16-256 printable "
        "characters, as the site has it",
    )
    webhook_retry_schedule: Annotated[list[float], NoDecode] = Field(
        default=[5, 300, 1800, 7200, 18000, 36000, 36000]
    )
    webhook_allow_private_targets: bool | None = Field(
        default=None,
        description="let webhooks reach loopback and private addresses; default: yes in "
        "development and test, no in production",
    )
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=120)

    run_dispatcher: bool = Field(
        default=True,
        description="deliver events from inside the API process; turn off when running "
        "`hokusai-registry worker` processes instead",
    )
    dispatcher_concurrency: int = Field(default=16, ge=1, le=256)
    dispatcher_batch_size: int = Field(default=100, ge=1, le=1000)
    dispatcher_lease_seconds: float = Field(default=60.0, gt=0)
    dispatcher_poll_seconds: float = Field(default=1.0, gt=0, le=60)
    delivery_retention_days: float = Field(
        default=14, gt=0, description="delivered and dead deliveries are deleted after this"
    )
    event_retention_days: float = Field(
        default=30, gt=0, description="outbox events fully delivered are deleted after this"
    )
    redis_stream_maxlen: int = Field(default=100_000, gt=0)

    worker_metrics_port: int | None = Field(
        default=None,
        ge=1,
        le=65535,
        description="serve the Prometheus metrics of a `hokusai-registry worker` (deliveries, "
        "backlog) on this port, on the HOST address; off by default. API processes serve "
        "theirs at /metrics",
    )
    metrics_refresh_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="how often each process recounts the delivery backlog for /metrics",
    )

    evaluation_timeout_seconds: float = Field(
        default=300.0,
        gt=0,
        le=86_400,
        description="wall-clock limit of one sandboxed evaluation; the model's whole process "
        "tree is killed at the deadline",
    )
    evaluation_memory_mb: int = Field(
        default=2048, ge=64, description="memory limit of one sandboxed evaluation, in MiB"
    )
    evaluation_concurrency: int = Field(
        default=2, ge=1, le=64, description="sandboxed evaluations one process runs at once"
    )
    evaluation_sandbox: str = Field(
        default="auto",
        pattern="^(auto|bubblewrap|unshare|process|none)$",
        description="how models are isolated: auto (bubblewrap, else unshare), bubblewrap, "
        "unshare, process (no isolation: development only) or none (no evaluations)",
    )
    evaluation_signing_key: SecretStr | None = Field(
        default=None,
        description="PEM Ed25519 private key that signs evaluation receipts; when unset one is "
        "generated once into DATA_DIR/evaluation-keys (mode 0600)",
    )
    evaluation_lease_seconds: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="how long a process may hold an evaluation job without renewing its lease "
        "(it renews every third of it); a job whose process died is taken again after this",
    )
    evaluation_max_attempts: int = Field(
        default=3,
        ge=1,
        le=20,
        description="times an evaluation job may be started; a model whose evaluation keeps "
        "killing the process running it is refused after this many",
    )
    max_benchmark_bytes: int = Field(
        default=256 * MiB, gt=0, description="largest benchmark CSV accepted (413 above)"
    )
    run_evaluations: bool = Field(
        default=True,
        description="run evaluation jobs from inside the API process; turn off when running "
        "`hokusai-registry worker` processes instead",
    )

    log_level: str = "INFO"
    log_json: bool | None = Field(
        default=None, description="default: JSON logs except in development"
    )

    @field_validator("webhook_retry_schedule", mode="before")
    @classmethod
    def _parse_schedule(cls, value: object) -> object:
        if isinstance(value, str):
            return [float(part) for part in value.split(",") if part.strip()]
        return value

    @field_validator(
        "webhook_secret", "site_webhook_secret", "evaluation_signing_key", mode="before"
    )
    @classmethod
    def _blank_secret_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator(
        "database_url",
        "mlflow_tracking_uri",
        "redis_url",
        "webhook_url",
        "site_webhook_url",
        "forwarded_allow_ips",
    )
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @model_validator(mode="after")
    def _check_production(self) -> Self:
        secret = self.webhook_secret
        if (
            self.env is Environment.PRODUCTION
            and secret is not None
            and secret.get_secret_value().strip().lower() in PLACEHOLDER_SECRETS
        ):
            raise ValueError("HOKUSAI_WEBHOOK_SECRET is a placeholder; set a real secret")
        if self.webhook_url is not None and self.webhook_secret is None:
            raise ValueError("HOKUSAI_WEBHOOK_URL needs HOKUSAI_WEBHOOK_SECRET (whsec_...)")
        if secret is not None and not _is_whsec(secret.get_secret_value()):
            raise ValueError("HOKUSAI_WEBHOOK_SECRET must be whsec_ followed by base64")
        self._check_site_webhook()
        if any(delay < 0 for delay in self.webhook_retry_schedule):
            raise ValueError("HOKUSAI_WEBHOOK_RETRY_SCHEDULE must list non-negative seconds")
        return self

    def _check_site_webhook(self) -> None:
        secret = self.site_webhook_secret
        if self.site_webhook_url is not None and secret is None:
            raise ValueError("HOKUSAI_SITE_WEBHOOK_URL needs HOKUSAI_SITE_WEBHOOK_SECRET")
        if secret is None:
            return
        value = secret.get_secret_value()
        if self.env is Environment.PRODUCTION and value.strip().lower() in PLACEHOLDER_SECRETS:
            raise ValueError("HOKUSAI_SITE_WEBHOOK_SECRET is a placeholder; set a real secret")
        if not 16 <= len(value) <= 256 or not value.isprintable():
            raise ValueError(
                "HOKUSAI_SITE_WEBHOOK_SECRET must be 16-256 printable characters (the site's "
                "shared secret)"
            )

    # Derived values ------------------------------------------------------------------------------

    @property
    def resolved_database_url(self) -> str:
        """The database URL the service uses, before driver selection."""
        return self.database_url or f"sqlite:///{self.data_dir.resolve() / 'hokusai.db'}"

    @property
    def resolved_tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.data_dir.resolve() / 'mlflow.db'}"

    @property
    def uses_local_mlflow(self) -> bool:
        """A store this process opens itself (SQLite or files), not a tracking server."""
        return not self.resolved_tracking_uri.startswith(("http://", "https://", "databricks"))

    @property
    def mlflow_artifact_location(self) -> str | None:
        """Where the experiment keeps artifacts; only chosen by us for a local store."""
        if self.mlflow_artifact_root:
            return self.mlflow_artifact_root
        if not self.uses_local_mlflow:
            return None
        return (self.data_dir.resolve() / "mlartifacts").as_uri()

    @property
    def unpacked_limit(self) -> int:
        return self.max_unpacked_bytes or 4 * self.max_upload_bytes

    @property
    def upload_dir(self) -> Path:
        return self.data_dir.resolve() / "uploads"

    @property
    def benchmark_dir(self) -> Path:
        return self.data_dir.resolve() / "benchmarks"

    @property
    def evaluation_dir(self) -> Path:
        """Models waiting for (or in) their evaluation, one folder per registration."""
        return self.data_dir.resolve() / "evaluations"

    @property
    def evaluation_key_dir(self) -> Path:
        return self.data_dir.resolve() / "evaluation-keys"

    @property
    def allow_private_webhook_targets(self) -> bool:
        if self.webhook_allow_private_targets is not None:
            return self.webhook_allow_private_targets
        return self.env is not Environment.PRODUCTION

    @property
    def json_logs(self) -> bool:
        if self.log_json is not None:
            return self.log_json
        return self.env is not Environment.DEVELOPMENT


def _is_whsec(value: str) -> bool:
    """A Standard Webhooks secret: `whsec_` and the base64 of at least 16 bytes."""
    if not value.startswith("whsec_"):
        return False
    try:
        return len(base64.b64decode(value.removeprefix("whsec_"), validate=True)) >= 16
    except (binascii.Error, ValueError):
        return False


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once; tests override this dependency."""
    return Settings()
