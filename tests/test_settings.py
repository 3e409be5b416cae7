"""`app.config.Settings` read from `HOKUSAI_*` variables, and the database URL driver mapping."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import Environment, Settings
from app.db import async_url, sync_url

MiB = 1024 * 1024
GiB = 1024 * MiB


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No `HOKUSAI_*` variable from the outer environment, and a cwd whose `.env` would lose."""
    for name in list(os.environ):
        if name.upper().startswith("HOKUSAI_"):
            monkeypatch.delenv(name)
    # A stray `.env` in the working directory must not leak in when `_env_file=None` is passed.
    (tmp_path / ".env").write_text("HOKUSAI_ENV=production\nHOKUSAI_MAX_UPLOAD_BYTES=7\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def settings() -> Settings:
    return Settings(_env_file=None)


class TestReadsPrefixedEnvironment:
    def test_reads_hokusai_prefixed_variables(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("HOKUSAI_ENV", "test")
        monkeypatch.setenv("HOKUSAI_DATA_DIR", "/srv/hokusai")
        monkeypatch.setenv("HOKUSAI_DATABASE_URL", "postgresql://db.example/hokusai")
        monkeypatch.setenv("HOKUSAI_MAX_UPLOAD_BYTES", "1048576")
        monkeypatch.setenv("HOKUSAI_REGISTRATION_LEASE_SECONDS", "60")
        monkeypatch.setenv("HOKUSAI_REDIS_URL", "redis://127.0.0.1:6379/0")
        current = settings()
        assert current.env is Environment.TEST
        assert current.data_dir == Path("/srv/hokusai")
        assert current.database_url == "postgresql://db.example/hokusai"
        assert current.resolved_database_url == "postgresql://db.example/hokusai"
        assert current.max_upload_bytes == MiB
        assert current.registration_lease_seconds == 60
        assert current.redis_url == "redis://127.0.0.1:6379/0"

    def test_ignores_unprefixed_variables(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("DATABASE_URL", "postgresql://elsewhere/other")
        monkeypatch.setenv("MAX_UPLOAD_BYTES", "1")
        current = settings()
        assert current.database_url is None
        assert current.max_upload_bytes == 2 * GiB

    def test_dotenv_in_cwd_is_read_only_when_asked(self, clean_env: Path) -> None:
        assert settings().env is Environment.DEVELOPMENT
        from_file = Settings(_env_file=clean_env / ".env")
        assert from_file.env is Environment.PRODUCTION
        assert from_file.max_upload_bytes == 7

    def test_webhook_secret_is_kept_secret(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("HOKUSAI_WEBHOOK_SECRET", "whsec_c2VjcmV0LXZhbHVlLW9mLTI0LWJ5dGVz")
        current = settings()
        assert current.webhook_secret is not None
        assert current.webhook_secret.get_secret_value() == "whsec_c2VjcmV0LXZhbHVlLW9mLTI0LWJ5dGVz"
        assert "c2VjcmV0LXZhbHVlLW9mLTI0LWJ5dGVz" not in repr(current)
        assert "c2VjcmV0LXZhbHVlLW9mLTI0LWJ5dGVz" not in str(current.webhook_secret)


class TestDefaults:
    def test_embedded_defaults_live_under_data_dir(self, clean_env: Path) -> None:
        current = settings()
        data_dir = (clean_env / ".hokusai").resolve()
        assert current.env is Environment.DEVELOPMENT
        assert current.data_dir == Path(".hokusai")
        assert current.database_url is None
        assert current.resolved_database_url == f"sqlite:///{data_dir / 'hokusai.db'}"
        assert current.resolved_tracking_uri == f"sqlite:///{data_dir / 'mlflow.db'}"
        assert current.uses_local_mlflow is True
        assert current.mlflow_artifact_location == (data_dir / "mlartifacts").as_uri()
        assert current.upload_dir == data_dir / "uploads"

    def test_paths_follow_a_configured_data_dir(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        monkeypatch.setenv("HOKUSAI_DATA_DIR", str(tmp_path / "state"))
        current = settings()
        assert current.resolved_database_url == f"sqlite:///{tmp_path / 'state' / 'hokusai.db'}"
        assert current.resolved_tracking_uri == f"sqlite:///{tmp_path / 'state' / 'mlflow.db'}"
        assert current.mlflow_artifact_location == (tmp_path / "state" / "mlartifacts").as_uri()

    def test_limits_and_lease(self) -> None:
        current = settings()
        assert current.max_upload_bytes == 2 * GiB
        assert current.max_unpacked_bytes is None
        # 4 x MAX_UPLOAD_BYTES unless set (the contract's default).
        assert current.unpacked_limit == 8 * GiB
        assert current.max_archive_files == 10_000
        assert current.registration_lease_seconds == 900

    def test_unpacked_limit_follows_the_upload_limit(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("HOKUSAI_MAX_UPLOAD_BYTES", "1000")
        assert settings().unpacked_limit == 4000

    def test_explicit_unpacked_limit_wins(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("HOKUSAI_MAX_UPLOAD_BYTES", "1000")
        monkeypatch.setenv("HOKUSAI_MAX_UNPACKED_BYTES", "1500")
        assert settings().unpacked_limit == 1500

    def test_default_retry_schedule_is_the_contracts(self) -> None:
        assert settings().webhook_retry_schedule == [5, 300, 1800, 7200, 18000, 36000, 36000]

    def test_json_logs_except_in_development(self, monkeypatch: pytest.MonkeyPatch) -> None:
        assert settings().json_logs is False
        monkeypatch.setenv("HOKUSAI_ENV", "production")
        assert settings().json_logs is True


class TestRetrySchedule:
    def test_parses_comma_separated_seconds(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("HOKUSAI_WEBHOOK_RETRY_SCHEDULE", "5,300,1800")
        assert settings().webhook_retry_schedule == [5.0, 300.0, 1800.0]

    def test_tolerates_spaces_and_fractions(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("HOKUSAI_WEBHOOK_RETRY_SCHEDULE", " 0.5, 10 ,60")
        assert settings().webhook_retry_schedule == [0.5, 10.0, 60.0]

    def test_rejects_negative_delays(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("HOKUSAI_WEBHOOK_RETRY_SCHEDULE", "5,-1,60")
        with pytest.raises(ValidationError, match="RETRY_SCHEDULE"):
            settings()

    def test_rejects_non_numbers(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("HOKUSAI_WEBHOOK_RETRY_SCHEDULE", "5,soon")
        with pytest.raises(ValidationError):
            settings()


class TestPlaceholderSecret:
    @pytest.mark.parametrize("secret", ["changeme", "CHANGEME", "secret", "whsec_changeme"])
    def test_refused_in_production(self, monkeypatch: pytest.MonkeyPatch, secret: str) -> None:
        monkeypatch.setenv("HOKUSAI_ENV", "production")
        monkeypatch.setenv("HOKUSAI_WEBHOOK_SECRET", secret)
        with pytest.raises(ValidationError, match="placeholder"):
            settings()

    def test_malformed_secret_refused_in_any_environment(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("HOKUSAI_ENV", "development")
        monkeypatch.setenv("HOKUSAI_WEBHOOK_SECRET", "changeme")
        with pytest.raises(ValidationError, match="whsec_"):
            settings()

    def test_real_secret_accepted_in_production(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("HOKUSAI_ENV", "production")
        monkeypatch.setenv("HOKUSAI_WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        assert settings().env is Environment.PRODUCTION


class TestSiteWebhook:
    SITE_URL = "https://hokus.ai/api/webhooks/model-registration"

    def test_url_and_shared_secret(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("HOKUSAI_ENV", "production")
        monkeypatch.setenv("HOKUSAI_SITE_WEBHOOK_URL", f"  {self.SITE_URL} ")
        monkeypatch.setenv("HOKUSAI_SITE_WEBHOOK_SECRET", "the-site's shared secret, as is")
        current = settings()
        assert current.site_webhook_url == self.SITE_URL
        assert current.site_webhook_secret is not None
        assert current.site_webhook_secret.get_secret_value() == "the-site's shared secret, as is"
        assert "shared secret" not in repr(current)

    def test_url_needs_a_secret(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("HOKUSAI_SITE_WEBHOOK_URL", self.SITE_URL)
        monkeypatch.setenv("HOKUSAI_SITE_WEBHOOK_SECRET", "  ")
        with pytest.raises(ValidationError, match="needs HOKUSAI_SITE_WEBHOOK_SECRET"):
            settings()

    @pytest.mark.parametrize("secret", ["short-secret", "x" * 257, "line\nbreak-in-a-secret"])
    def test_malformed_secret_refused(self, monkeypatch: pytest.MonkeyPatch, secret: str) -> None:
        monkeypatch.setenv("HOKUSAI_SITE_WEBHOOK_URL", self.SITE_URL)
        monkeypatch.setenv("HOKUSAI_SITE_WEBHOOK_SECRET", secret)
        with pytest.raises(ValidationError, match="16-256 printable"):
            settings()

    def test_unset_by_default(self) -> None:
        current = settings()
        assert current.site_webhook_url is None and current.site_webhook_secret is None


class TestBlankUrls:
    @pytest.mark.parametrize(
        "name",
        ["DATABASE_URL", "MLFLOW_TRACKING_URI", "REDIS_URL", "WEBHOOK_URL", "SITE_WEBHOOK_URL"],
    )
    def test_blank_url_is_unset(self, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
        monkeypatch.setenv(f"HOKUSAI_{name}", "   ")
        assert getattr(settings(), name.lower()) is None

    def test_blank_database_url_falls_back_to_sqlite(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("HOKUSAI_DATABASE_URL", "")
        monkeypatch.setenv("HOKUSAI_MLFLOW_TRACKING_URI", "")
        current = settings()
        assert current.resolved_database_url.startswith("sqlite:///")
        assert current.resolved_database_url.endswith("/hokusai.db")
        assert current.resolved_tracking_uri.endswith("/mlflow.db")

    def test_urls_are_trimmed(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("HOKUSAI_WEBHOOK_URL", "  https://site.example/hook  ")
        monkeypatch.setenv("HOKUSAI_WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        assert settings().webhook_url == "https://site.example/hook"


class TestRemoteTracking:
    @pytest.mark.parametrize("uri", ["http://mlflow:5000", "https://mlflow.example.com"])
    def test_remote_server_chooses_its_own_artifacts(
        self, monkeypatch: pytest.MonkeyPatch, uri: str
    ) -> None:
        monkeypatch.setenv("HOKUSAI_MLFLOW_TRACKING_URI", uri)
        current = settings()
        assert current.resolved_tracking_uri == uri
        assert current.uses_local_mlflow is False
        assert current.mlflow_artifact_location is None

    def test_explicit_artifact_root_is_used(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("HOKUSAI_MLFLOW_TRACKING_URI", "http://mlflow:5000")
        monkeypatch.setenv("HOKUSAI_MLFLOW_ARTIFACT_ROOT", "s3://bucket/artifacts")
        assert settings().mlflow_artifact_location == "s3://bucket/artifacts"


class TestInvalidValues:
    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("MAX_UPLOAD_BYTES", "0"),
            ("MAX_UPLOAD_BYTES", "-5"),
            ("MAX_UPLOAD_BYTES", "lots"),
            ("MAX_UNPACKED_BYTES", "0"),
            ("REGISTRATION_LEASE_SECONDS", "0"),
            ("ENV", "staging"),
            ("MLFLOW_THREADS", "0"),
        ],
    )
    def test_raises_validation_error(
        self, monkeypatch: pytest.MonkeyPatch, name: str, value: str
    ) -> None:
        monkeypatch.setenv(f"HOKUSAI_{name}", value)
        with pytest.raises(ValidationError) as caught:
            settings()
        assert name.lower() in str(caught.value)


class TestDriverMapping:
    @pytest.mark.parametrize(
        "raw", ["postgresql://u:p@db:5432/hokusai", "postgres://u:p@db:5432/hokusai"]
    )
    def test_postgres_goes_through_psycopg(self, raw: str) -> None:
        for url in (sync_url(raw), async_url(raw)):
            assert url.drivername == "postgresql+psycopg"
            assert (url.host, url.port, url.database) == ("db", 5432, "hokusai")
            assert url.username == "u"
            assert url.password == "p"

    def test_explicit_postgres_driver_is_kept(self) -> None:
        assert sync_url("postgresql+psycopg://db/x").drivername == "postgresql+psycopg"

    def test_sqlite_is_sync_for_alembic_and_aiosqlite_for_the_service(self) -> None:
        raw = "sqlite:////tmp/hokusai/hokusai.db"
        assert sync_url(raw).drivername == "sqlite"
        assert async_url(raw).drivername == "sqlite+aiosqlite"
        assert async_url(raw).database == "/tmp/hokusai/hokusai.db"
        assert async_url("sqlite+pysqlite:///x.db").drivername == "sqlite+aiosqlite"

    def test_async_driver_already_given_is_kept(self) -> None:
        assert async_url("sqlite+aiosqlite:///x.db").drivername == "sqlite+aiosqlite"
