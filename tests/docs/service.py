"""`hokusai-registry serve` as `make run` starts it (development mode, embedded defaults)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.docs.shell import clean_environment
from tests.support.process import serving

READY_SECONDS = 90.0


@contextmanager
def make_run(cwd: Path, **settings: str) -> Iterator[str]:
    """Serve from `cwd` with its data in `cwd/.hokusai`, as `make run` does; yield the URL."""
    env = clean_environment(HOKUSAI_DATA_DIR=str(cwd / ".hokusai"), **settings)
    with serving(
        env,
        cwd.parent / "service.log",
        ready_within=READY_SECONDS,
        bin_dir=cwd / ".venv" / "bin",
        cwd=cwd,
    ) as url:
        yield url
