"""Registration hooks for tests: pause a registration at a stage, or record and break it there.

The service calls its hooks as a registration passes each stage (app.registration.hooks); these
replace the ones that do nothing. In process they go on the app's `RegistrationServices`
(`installed`); in a real server process the test's entry point installs them
(tests/support/serve.py).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio

from app.registration.attempt import RegistrationServices
from app.registration.hooks import Stage
from tests.support.service import Api

# How long a paused registration waits at most before it goes on by itself.
MAX_PAUSE_SECONDS = 300.0
_POLL_SECONDS = 0.05


def marker_path(data_dir: Path, stage: Stage | str) -> Path:
    """The file a paused registration writes while it waits at `stage`; deleting it releases it."""
    return data_dir.resolve() / f"paused-{Stage(stage).value}"


class PauseAt:
    """Stalls every registration that reaches `stage` until its marker file is deleted.

    The marker (`marker_path(data_dir, stage)`) is written when the stage is reached, so a test
    can wait for it and then kill the process there, or delete it to let the registration go on.
    """

    def __init__(self, stage: Stage, data_dir: Path) -> None:
        self.stage = stage
        self.marker = marker_path(data_dir, stage)

    async def reached(self, stage: Stage, registration_id: str) -> None:
        if stage is not self.stage:
            return
        deadline = self._mark()
        while self.marker.exists() and time.monotonic() < deadline:
            await anyio.sleep(_POLL_SECONDS)

    def reached_in_thread(self, stage: Stage, registration_id: str) -> None:
        if stage is not self.stage:
            return
        deadline = self._mark()
        while self.marker.exists() and time.monotonic() < deadline:
            time.sleep(_POLL_SECONDS)

    def _mark(self) -> float:
        self.marker.write_text(f"{time.time()}\n", encoding="utf-8")
        return time.monotonic() + MAX_PAUSE_SECONDS


class BrokenAt(Exception):
    """What `Recorder` raises at the stage it was told to break a registration at."""


class Recorder:
    """Notes each stage a registration reaches, in order, and raises `BrokenAt` at `break_at`."""

    def __init__(self, *, break_at: Stage | None = None) -> None:
        self.break_at = break_at
        self.seen: list[tuple[Stage, str]] = []
        self.threads: dict[Stage, bool] = {}  # whether the stage was reached off the event loop
        self._lock = threading.Lock()

    async def reached(self, stage: Stage, registration_id: str) -> None:
        self._note(stage, registration_id, in_thread=False)

    def reached_in_thread(self, stage: Stage, registration_id: str) -> None:
        self._note(stage, registration_id, in_thread=True)

    def _note(self, stage: Stage, registration_id: str, *, in_thread: bool) -> None:
        with self._lock:
            self.seen.append((stage, registration_id))
            self.threads[stage] = in_thread
        if stage is self.break_at:
            raise BrokenAt(f"broken at {stage.value}")


@contextmanager
def installed(api: Api, hooks: PauseAt | Recorder) -> Iterator[RegistrationServices]:
    """The in-process app's registration services with `hooks`, for the block's duration.

    (Not `monkeypatch.setattr`: Starlette's `State` keeps attributes outside the instance
    `__dict__`, so monkeypatch would delete the services on undo instead of restoring them.)
    """
    previous: RegistrationServices = api.app.state.registration
    services = dataclasses.replace(previous, hooks=hooks)
    api.app.state.registration = services
    try:
        yield services
    finally:
        api.app.state.registration = previous
