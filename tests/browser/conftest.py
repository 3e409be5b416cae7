"""Fixtures of the browser tests: the system's Chromium driven by Playwright, and the service as a
real `hokusai-registry serve` process (as `make run` starts it) on a free loopback port.

Playwright's own browser builds are never downloaded: the tests use Debian's `chromium`
(`.ci/run` installs it). Without it they skip, except under CI (`CI=true`), where they fail.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright

from tests.cli.servers import LiveService, live_service

# Flags for a headless run that reaches nothing but the page under test: no background
# requests of the browser's own (updates, sync, safe browsing, first-run pages).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


SCREENSHOTS = pytest.StashKey[list[Path]]()


def record_screenshot(config: pytest.Config, path: Path) -> None:
    """List a screenshot in the run's closing summary."""
    config.stash.setdefault(SCREENSHOTS, []).append(path)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    shots = config.stash.get(SCREENSHOTS, [])
    if shots:
        terminalreporter.section("screenshots of /docs")
        for path in shots:
            terminalreporter.write_line(str(path))


def chromium_path() -> str | None:
    """The system's Chromium: `HOKUSAI_TEST_CHROMIUM`, else `chromium` on the PATH."""
    configured = os.environ.get("HOKUSAI_TEST_CHROMIUM")
    if configured:
        return configured if Path(configured).is_file() else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def chromium() -> str:
    path = chromium_path()
    if path is None:
        reason = "Chromium is not installed (apt-get install chromium; .ci/run does it)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; under CI the browser tests must run")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
async def browser(chromium: str) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=chromium, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveService]:
    """The service in development mode on SQLite and a local MLflow store, with its admin key."""
    with live_service(tmp_path_factory.mktemp("browser-service")) as running:
        yield running
