"""Hashing and writing a large upload on a thread of its own, beside the event loop.

A large model's bytes cost the service three things per chunk: parsing the multipart framing
around them, hashing them and writing them to disk. The last two are most of it and release the
GIL (hashlib for data of 2 KiB or more, the write system call), so they run on one thread per
upload while the event loop receives and parses the next chunks. The chunks stay in order: one
thread takes them from one queue.

The queue is bounded (`MAX_QUEUED` chunks, each at most what one receive hands over), so a disk
slower than the network holds the sender back as it did before, and memory stays flat.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from app.registration.multipart import Chunk

MAX_QUEUED = 8
_DONE = None


class ChunkWriter:
    """Hands chunks to `absorb` on its own thread, in order; `finish` waits for the last one.

    An error raised by `absorb` (a full disk, say) is raised again to the caller by the next
    `put` or by `finish`; the chunks after it are dropped unread.
    """

    def __init__(self, absorb: Callable[[Chunk], None], *, name: str) -> None:
        self._absorb = absorb
        self._queue: queue.Queue[Chunk | None] = queue.Queue(maxsize=MAX_QUEUED)
        self._error: BaseException | None = None
        self._discard = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not _DONE:
            if self._error is None and not self._discard:
                try:
                    self._absorb(chunk)
                except BaseException as e:  # handed to the caller by put() or finish()
                    self._error = e

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, chunk: Chunk) -> None:
        """Queue `chunk` (waiting while the queue is full). The caller must not change it
        afterwards: a view of a buffer that will be reused is copied first."""
        self._raise_error()
        if isinstance(chunk, memoryview) and not chunk.readonly:
            chunk = chunk.tobytes()
        self._queue.put(chunk)

    def finish(self) -> None:
        """Wait until every queued chunk is absorbed; raise the error that stopped it, if any."""
        self.stop()
        self._raise_error()

    def stop(self, *, discard: bool = False) -> None:
        """End the thread once it has absorbed what is queued, or, with `discard`, dropped it
        (an upload given up). Idempotent."""
        self._discard = self._discard or discard
        if self._thread.is_alive():
            self._queue.put(_DONE)
            self._thread.join()
