from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def write_csv(tmp_path: Path) -> Callable[..., Path]:
    """Write text (or bytes) to a fresh file under tmp_path and return its path."""
    counter = 0

    def write(content: str | bytes, *, name: str | None = None) -> Path:
        nonlocal counter
        counter += 1
        path = tmp_path / (name or f"predictions-{counter}.csv")
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_bytes(content.encode("utf-8"))
        return path

    return write
