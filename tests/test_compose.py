"""The container files, checked by what can run here (no Docker engine on this machine)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.config import Settings
from app.manage import main as manage_main

ROOT = Path(__file__).resolve().parent.parent


def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(loaded, dict)
    return loaded


class TestCompose:
    def test_has_the_production_like_stack(self) -> None:
        services = compose()["services"]
        assert set(services) >= {"api", "worker", "migrate", "postgres", "redis", "mlflow"}
        assert services["api"]["deploy"]["replicas"] == 2
        assert services["worker"]["command"] == ["hokusai-registry", "worker"]
        assert services["migrate"]["command"] == ["hokusai-registry", "migrate"]
        assert services["api"]["command"][:2] == ["hokusai-registry", "serve"]

    def test_api_leaves_delivery_to_the_worker(self) -> None:
        services = compose()["services"]
        assert services["api"]["environment"]["HOKUSAI_RUN_DISPATCHER"] == "false"
        assert services["api"]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )

    def test_every_setting_named_exists(self) -> None:
        names = set()
        for service in compose()["services"].values():
            names |= {k for k in service.get("environment", {}) if k.startswith("HOKUSAI_")}
        fields = {f"HOKUSAI_{name.upper()}" for name in Settings.model_fields}
        assert names, "the compose file names no settings"
        assert names <= fields, names - fields

    def test_api_containers_get_longer_to_stop_than_registrations_get_to_finish(self) -> None:
        api = compose()["services"]["api"]
        grace = float(
            api["environment"].get(
                "HOKUSAI_SHUTDOWN_GRACE_SECONDS",
                Settings.model_fields["shutdown_grace_seconds"].default,
            )
        )
        stop_after = api["stop_grace_period"]
        assert stop_after.endswith("s")
        assert float(stop_after.removesuffix("s")) > grace

    def test_blank_optional_settings_from_compose_are_unset(self) -> None:
        settings = Settings(
            _env_file=None,
            webhook_url="",
            webhook_secret="",
            site_webhook_url="",
            site_webhook_secret="",
        )
        assert settings.webhook_url is None
        assert settings.webhook_secret is None
        assert settings.site_webhook_url is None
        assert settings.site_webhook_secret is None


class TestDockerfile:
    def test_runs_as_non_root_with_a_health_check(self) -> None:
        text = (ROOT / "Dockerfile").read_text()
        assert re.search(r"^USER 10001", text, re.M)
        assert "HEALTHCHECK" in text
        assert "uv sync --frozen --no-dev" in text

    def test_its_command_is_a_real_subcommand(self) -> None:
        text = (ROOT / "Dockerfile").read_text()
        command = re.search(r'^CMD \["hokusai-registry", "(\w+)"', text, re.M)
        assert command is not None
        with pytest.raises(SystemExit) as exited:
            manage_main([command.group(1), "--help"])
        assert exited.value.code == 0
