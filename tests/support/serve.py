"""`hokusai-registry` whose registrations pause at a stage: the entry point of tests that stop or
kill a real server process part-way through a registration.

    python -m tests.support.serve --pause-at during_mlflow serve --port 8123 --no-migrate

Everything after `--pause-at STAGE` is `hokusai-registry`'s own command line; `serve` builds the
app with a `PauseAt` hook (tests/support/hooks.py) writing its marker in the data folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fastapi import FastAPI

from app.config import get_settings
from app.main import create_app
from app.manage import main as manage_main
from app.registration.hooks import Stage
from tests.support.hooks import PauseAt

ROOT = Path(__file__).resolve().parents[2]


def command(stage: Stage | str, *args: str) -> list[str]:
    """The command line that runs `hokusai-registry *args` pausing at `stage` (run it in ROOT)."""
    return [sys.executable, "-m", "tests.support.serve", "--pause-at", Stage(stage).value, *args]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.support.serve", description=__doc__)
    parser.add_argument("--pause-at", type=Stage, choices=list(Stage), required=True)
    args, rest = parser.parse_known_args(argv)

    def paused_app() -> FastAPI:
        settings = get_settings()
        return create_app(settings, registration_hooks=PauseAt(args.pause_at, settings.data_dir))

    manage_main(rest, app_factory=paused_app)


if __name__ == "__main__":
    main()
