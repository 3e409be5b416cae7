"""Fixtures of the CLI tests: the CLI in process (typer's runner) or as its own process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

import cli
from tests.cli.servers import LiveService, live_service


def invoke(*args: str, url: str, data_dir: Path | None = None, key: str | None = None) -> Result:
    """Run the CLI in this process against `url`; no key unless given or in `data_dir`."""
    env: dict[str, str | None] = {
        "HOKUSAI_API_URL": url,
        "HOKUSAI_API_KEY": key,
        "HOKUSAI_DATA_DIR": str(data_dir) if data_dir is not None else "/nonexistent",
    }
    return CliRunner().invoke(cli.app, list(args), env=env)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    """One development service process for the whole module."""
    with live_service(tmp_path_factory.mktemp("cli-live")) as service:
        yield service
