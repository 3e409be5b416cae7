"""A file part past the offload size: hashed and written on its own thread, in order, whole."""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from pathlib import Path

import pytest

from app.errors import AppError, PayloadTooLarge
from app.registration import upload
from app.registration.file_writer import BATCH_BYTES, MAX_QUEUED, ChunkWriter
from app.registration.upload import FileTarget

MiB = 1024 * 1024


def _too_large(limit: int) -> AppError:
    return PayloadTooLarge(f"over {limit}")


def _target(directory: Path, *, limit: int = 64 * MiB) -> FileTarget:
    return FileTarget(
        directory=directory, limit=limit, too_large=_too_large, on_start=lambda _: "model.pkl"
    )


def _writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "hokusai-upload-writer"]


def test_chunks_arrive_whole_and_in_order_even_from_a_reused_buffer(tmp_path: Path) -> None:
    target = _target(tmp_path).start("model.pkl")
    buffer = bytearray(256 * 1024)
    expected = hashlib.sha256()
    for number in range(80):  # 20 MiB: most of it past the offload size
        buffer[:] = os.urandom(len(buffer))
        expected.update(buffer)
        # A writable view of a buffer the caller reuses at once, as the parser's are.
        target.write(memoryview(buffer))
        if number == 40:
            assert _writer_threads(), "past 8 MiB the writer thread takes over"
    target.finish()
    received = target.received()
    assert received.size == 20 * MiB
    assert received.sha256 == expected.hexdigest()
    assert hashlib.sha256(received.path.read_bytes()).hexdigest() == expected.hexdigest()
    assert not _writer_threads()


def test_small_files_never_start_a_thread(tmp_path: Path) -> None:
    target = _target(tmp_path).start("model.pkl")
    target.write(b"\x80\x05" + b"x" * MiB)
    assert not _writer_threads()
    target.finish()
    assert target.received().size == MiB + 2


def _write_until_refused(target: FileTarget, chunk: bytes, times: int) -> None:
    for _ in range(times):
        target.write(chunk)
    target.finish()


def test_a_disk_error_on_the_thread_reaches_the_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full")
    monkeypatch.setattr(upload, "_OFFLOAD_AFTER", 0)
    target = _target(tmp_path).start("model.pkl")
    with open("/dev/full", "wb", buffering=0) as full:  # every write: ENOSPC
        target._file = full
        with pytest.raises(OSError, match="No space left") as raised:
            _write_until_refused(target, b"y" * 64 * 1024, 64)
        assert raised.value.errno == errno.ENOSPC
        target.close()
    assert not _writer_threads()


def test_a_given_up_upload_drops_its_queue_and_ends_its_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upload, "_OFFLOAD_AFTER", 0)
    target = _target(tmp_path, limit=3 * MiB).start("model.pkl")
    with pytest.raises(PayloadTooLarge):
        _write_until_refused(target, b"z" * MiB, 64)
    target.close()  # what receive_form's `finally` does
    assert not _writer_threads()
    assert not target.done


def test_the_queue_is_bounded() -> None:
    release = threading.Event()
    absorbed: list[int] = []

    def slow(chunk: bytes | memoryview) -> None:
        release.wait(10)
        absorbed.append(len(chunk))

    writer = ChunkWriter(slow, name="hokusai-upload-writer")
    batches = MAX_QUEUED + 3
    chunk = b"c" * BATCH_BYTES

    def produce() -> None:
        for _ in range(batches):
            writer.put(chunk)

    putter = threading.Thread(target=produce)
    putter.start()
    putter.join(0.5)
    assert putter.is_alive(), "the producer waits once the queue is full"
    release.set()
    putter.join(10)
    writer.put(b"tail")
    writer.finish()
    assert absorbed == [BATCH_BYTES] * batches + [4]
