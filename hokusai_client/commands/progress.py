"""Progress on stderr: bars for uploads (bytes, speed, time left), a line for an evaluation."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID


def show_progress(choice: bool | None) -> bool:
    """On by default only when both output streams are a terminal: quiet when piped."""
    if choice is not None:
        return choice
    return sys.stderr.isatty() and sys.stdout.isatty() and os.environ.get("TERM") != "dumb"


class Bars:
    """Progress bars on stderr, or nothing at all; an `UploadProgress` for the client."""

    def __init__(self, enabled: bool) -> None:
        self._progress: Progress | None = None
        self._evaluation: TaskID | None = None
        self._started = time.monotonic()
        if enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True, force_terminal=True),
            )

    def __enter__(self) -> Bars:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def task(self, description: str, total: int) -> Callable[[int], None] | None:
        progress = self._progress
        if progress is None:
            return None
        task_id = progress.add_task(description, total=total)

        def advance(count: int) -> None:
            progress.advance(task_id, count)

        return advance

    def note(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(text, style="dim", highlight=False, markup=False)

    def evaluation(self, registration: Mapping[str, Any]) -> None:
        """Show where an evaluating registration stands (status, time so far)."""
        progress = self._progress
        if progress is None or registration.get("status") != "evaluating":
            return
        evaluation = registration.get("evaluation") or {}
        stage = evaluation.get("status") if isinstance(evaluation, dict) else None
        rows = evaluation.get("rows") if isinstance(evaluation, dict) else None
        description = f"evaluating: {stage or 'queued'}" + (f", {rows} rows" if rows else "")
        description += f" ({time.monotonic() - self._started:.0f} s)"
        if self._evaluation is None:
            self._started = time.monotonic()
            self._evaluation = progress.add_task(description, total=None)
        else:
            progress.update(self._evaluation, description=description)
