"""Hashing and writing a large upload on a thread of its own, beside the event loop.

A large model's bytes cost the service three things per chunk: parsing the multipart framing
around them, hashing them and writing them to disk. The last two are most of it and release the
GIL (hashlib for data of 2 KiB or more, the write system call), so they run on one thread per
upload while the event loop receives and parses the next chunks. The chunks stay in order: one
thread takes them from one queue.

uvicorn hands the body over in pieces of about 64 KiB; handing each to the thread would cost more
in locks and wake-ups than the thread saves, so they go over in batches of `BATCH_BYTES`. The queue
is bounded (`MAX_QUEUED` batches), so a disk slower than the network holds the sender back as it
did before, and memory stays flat: at most (MAX_QUEUED + 2) x BATCH_BYTES per upload.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from app.registration.multipart import Chunk

BATCH_BYTES = 1024 * 1024
MAX_QUEUED = 4
_DONE = None


class ChunkWriter:
    """Hands chunks to `absorb` on its own thread, in order, in batches; `finish` hands over the
    last batch and waits for it.

    An error raised by `absorb` (a full disk, say) is raised again to the caller by the next
    `put` or by `finish`; the chunks after it are dropped unread.
    """

    def __init__(self, absorb: Callable[[Chunk], None], *, name: str) -> None:
        self._absorb = absorb
        self._queue: queue.Queue[list[Chunk] | None] = queue.Queue(maxsize=MAX_QUEUED)
        self._batch: list[Chunk] = []
        self._batch_bytes = 0
        self._error: BaseException | None = None
        self._discard = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (batch := self._queue.get()) is not _DONE:
            if self._error is None and not self._discard:
                try:
                    for chunk in batch:
                        self._absorb(chunk)
                except BaseException as e:  # handed to the caller by put() or finish()
                    self._error = e

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, chunk: Chunk) -> None:
        """Add `chunk` to the batch, and queue the batch once it is full (waiting while the queue
        is). A view of a buffer its owner may reuse is copied; a read-only one is kept as is."""
        self._raise_error()
        if isinstance(chunk, memoryview) and not chunk.readonly:
            chunk = chunk.tobytes()
        self._batch.append(chunk)
        self._batch_bytes += len(chunk)
        if self._batch_bytes >= BATCH_BYTES:
            self._hand_over()

    def _hand_over(self) -> None:
        batch, self._batch, self._batch_bytes = self._batch, [], 0
        self._queue.put(batch)

    def finish(self) -> None:
        """Wait until every chunk is absorbed; raise the error that stopped it, if any."""
        if self._batch and self._thread.is_alive():
            self._hand_over()
        self.stop()
        self._raise_error()

    def stop(self, *, discard: bool = False) -> None:
        """End the thread once it has absorbed what is queued, or, with `discard`, dropped it
        (an upload given up). Idempotent."""
        self._discard = self._discard or discard
        if discard:
            self._batch, self._batch_bytes = [], 0
        if self._thread.is_alive():
            self._queue.put(_DONE)
            self._thread.join()
