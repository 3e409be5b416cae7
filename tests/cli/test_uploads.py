"""HashingReader: the digest of what was read, whichever thread does the hashing."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from hokusai_client.uploads import Advance, FileChanged, HashingReader


def model(tmp_path: Path, size: int) -> Path:
    path = tmp_path / "model.pkl"
    path.write_bytes(os.urandom(size))
    return path


def read_all(reader: HashingReader, size: int = 64 * 1024) -> bytes:
    chunks = []
    while chunk := reader.read(size):
        chunks.append(chunk)
    return b"".join(chunks)


class TestHashingReader:
    @pytest.mark.parametrize("read_bytes", [1, 4096, 1024 * 1024])
    def test_the_digest_is_of_the_bytes_handed_out(self, tmp_path: Path, read_bytes: int) -> None:
        path = model(tmp_path, 3 * 1024 * 1024 + 17)
        with HashingReader(path, read_bytes=read_bytes) as reader:
            sent = read_all(reader)
            assert sent == path.read_bytes()
            assert reader.hexdigest() == hashlib.sha256(sent).hexdigest()

    def test_a_rewind_starts_the_hash_and_the_progress_again(self, tmp_path: Path) -> None:
        path = model(tmp_path, 2 * 1024 * 1024 + 5)
        progress: dict[int, int] = {}

        def on_pass(number: int) -> Advance:
            progress[number] = 0

            def advance(n: int) -> None:
                progress[number] += n

            return advance

        with HashingReader(path, on_pass=on_pass) as reader:
            reader.seek(0)
            reader.read(1024 * 1024)  # an attempt that broke off after one chunk
            reader.seek(0)
            read_all(reader)
            assert reader.hexdigest() == hashlib.sha256(path.read_bytes()).hexdigest()
        assert progress == {1: 1024 * 1024, 2: path.stat().st_size}

    def test_no_digest_before_the_end(self, tmp_path: Path) -> None:
        path = model(tmp_path, 2 * 1024 * 1024)
        with HashingReader(path) as reader:
            reader.read(1024 * 1024)
            with pytest.raises(FileChanged):
                reader.hexdigest()
