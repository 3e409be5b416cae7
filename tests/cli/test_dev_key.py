"""`hokusai-registry serve` in development leaves an admin key for the CLI in the data folder."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from app import manage
from app.auth.service import authenticate
from app.config import get_settings
from app.db import Database


def known(database_url: str, key: str) -> bool:
    async def check() -> bool:
        database = Database(database_url)
        try:
            async with database.transaction() as session:
                principal = await authenticate(session, key)
            return "admin" in principal.scopes
        except Exception:
            return False
        finally:
            await database.dispose()

    return asyncio.run(check())


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    for name in ("HOKUSAI_DATABASE_URL", "HOKUSAI_MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOKUSAI_ENV", "development")
    monkeypatch.setenv("HOKUSAI_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    manage.migrate(f"sqlite:///{tmp_path / 'hokusai.db'}")
    yield tmp_path
    get_settings.cache_clear()


def test_writes_keeps_and_replaces_the_key(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{data_dir / 'hokusai.db'}"
    path = data_dir / "dev-api-key"
    manage._ensure_dev_api_key()
    key = path.read_text().strip()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert known(url, key)
    printed = capsys.readouterr().err
    assert str(path) in printed and key not in printed

    manage._ensure_dev_api_key()  # a known key stays
    assert path.read_text().strip() == key
    assert capsys.readouterr().err == ""

    path.write_text("hok_0000_stale\n")  # e.g. the database was deleted and made again
    manage._ensure_dev_api_key()
    fresh = path.read_text().strip()
    assert fresh != key and known(url, fresh)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
