"""Files on their way to the service: read once while they are sent, hashed on the way.

httpx builds and streams the multipart body. What this module adds:

- `HashingReader`, the model file as httpx reads it: 1 MiB at a time, hashed and counted on the way
  (progress comes from the same pass), so the file is read from disk exactly once per attempt. The
  hashing runs on a thread of its own, one chunk behind: hashlib releases the GIL, so a chunk is
  hashed while the one before it is being sent rather than between the sends.
- `DigestField`, the `sha256` form field sent after the file, whose value is the digest of what was
  just sent. The service parses the whole body before it compares the two, so the check means what
  it always meant: the bytes that arrived are the bytes that were read.
- `pack_folder`, an MLflow model folder packed reproducibly into one archive.
"""

from __future__ import annotations

import enum
import hashlib
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from hokusai_client.errors import HokusaiError, UsageError

READ_BYTES = 1024 * 1024
# A fixed timestamp for packed entries (the earliest a zip can hold), so the same folder always
# packs to the same bytes: a rerun with the same Idempotency-Key sends the same request.
_PACK_MTIME = 315532800  # 1980-01-01T00:00:00Z

Advance = Callable[[int], None]


class FileChanged(HokusaiError):
    """A file changed size while it was being sent."""


class HashingReader:
    """A file opened for one upload, read by httpx and hashed as it goes.

    httpx asks a file for 64 KiB at a time; this reader hands it `read_bytes` (1 MiB) instead, which
    httpx passes on unchanged: fewer, larger reads and socket writes. httpx learns the length from
    `fileno()` (for Content-Length) and rewinds with `seek(0)` before each attempt, which starts
    the hash and the count again and asks `on_pass(n)` for the progress callback of pass n. A file
    that grows or shrinks meanwhile raises `FileChanged` rather than sending a body whose length
    disagrees with its header.
    """

    def __init__(
        self,
        path: Path,
        *,
        on_pass: Callable[[int], Advance | None] | None = None,
        read_bytes: int = READ_BYTES,
    ) -> None:
        self.path = path
        self.name = path.name
        self._file: BinaryIO = path.open("rb")
        self.size = os.fstat(self._file.fileno()).st_size
        self._on_pass = on_pass
        self._advance: Advance | None = None
        self._read_bytes = read_bytes
        self._hash = hashlib.sha256()
        # One thread, one chunk in flight: the chunks are hashed in order, and no more than two
        # are held at a time (the one being sent and the one being hashed).
        self._hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hokusai-sha256")
        self._hashing: Future[None] | None = None
        self._sent = 0
        self.passes = 0

    def fileno(self) -> int:
        return self._file.fileno()

    def _hashed(self) -> None:
        """Wait until every chunk read so far is in the hash."""
        if self._hashing is not None:
            self._hashing.result()
            self._hashing = None

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if (offset, whence) != (0, os.SEEK_SET):
            raise OSError("a HashingReader only rewinds to its start")
        self._hashed()
        self._file.seek(0)
        self._hash = hashlib.sha256()
        self._sent = 0
        self.passes += 1
        self._advance = self._on_pass(self.passes) if self._on_pass is not None else None
        return 0

    def tell(self) -> int:
        return self._sent

    def read(self, size: int = -1) -> bytes:
        chunk = self._file.read(max(size, self._read_bytes) if size >= 0 else -1)
        self._sent += len(chunk)
        if self._sent > self.size or (not chunk and self._sent != self.size):
            raise FileChanged(
                f"{self.path} changed size while it was being sent "
                f"({self.size} bytes announced, {self._sent} read)"
            )
        self._hashed()
        if chunk:
            self._hashing = self._hasher.submit(self._hash.update, chunk)
            if self._advance is not None:
                self._advance(len(chunk))
        return chunk

    @property
    def done(self) -> bool:
        return self._sent == self.size

    def hexdigest(self) -> str:
        """The sha256 of the whole file, once it has all been read."""
        if not self.done:
            raise FileChanged(f"{self.path} was not read to its end")
        self._hashed()
        return self._hash.hexdigest()

    def close(self) -> None:
        self._hasher.shutdown(wait=True)
        self._hashing = None
        self._file.close()

    def __enter__(self) -> HashingReader:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class DigestField:
    """The `sha256` form field: 64 hex characters, read only after the file they describe.

    To httpx it is a file part without a file name (sent as a plain form field) whose length, 64,
    it learns with `seek`/`tell` before the body starts.
    """

    LENGTH = 64

    def __init__(self, source: HashingReader) -> None:
        self._source = source
        self._position = 0

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._position = self.LENGTH if whence == os.SEEK_END else offset
        return self._position

    def read(self, _size: int = -1) -> bytes:
        if self._position:
            return b""
        self._position = self.LENGTH
        return self._source.hexdigest().encode("ascii")


def sha256_file(path: Path, advance: Advance | None = None) -> str:
    """The sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(READ_BYTES):
            digest.update(chunk)
            if advance is not None:
                advance(len(chunk))
    return digest.hexdigest()


class PackFormat(enum.StrEnum):
    TAR_GZ = "tar.gz"
    ZIP = "zip"


def _pack_entries(folder: Path) -> list[tuple[str, Path]]:
    """The folder's files as (archive name, path), sorted; MLmodel must be at the top."""
    if not (folder / "MLmodel").is_file():
        raise UsageError(
            f"{folder} is a folder without an MLmodel file at its top; give a model file or an "
            "MLflow model folder"
        )
    entries: list[tuple[str, Path]] = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        base = Path(root)
        for name in dirs:
            if (base / name).is_symlink():
                raise UsageError(f"cannot pack {base / name}: a link to a folder")
        for name in sorted(files):
            path = base / name
            if not path.is_file():
                raise UsageError(f"cannot pack {path}: not a regular file")
            entries.append((path.relative_to(folder).as_posix(), path))
    return entries


def pack_folder(folder: Path, destination: Path, fmt: PackFormat) -> Path:
    """Pack an MLflow model folder into `destination` (streamed to disk, reproducibly)."""
    entries = _pack_entries(folder)
    name = (folder.resolve().name or "model").replace(" ", "_")
    archive = destination / f"{name}.{fmt.value}"
    if fmt is PackFormat.TAR_GZ:
        import gzip
        import tarfile

        with (
            archive.open("wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as compressed,
            tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as tar,
        ):
            for arcname, path in entries:
                stat = path.stat()
                info = tarfile.TarInfo(arcname)
                info.size = stat.st_size
                info.mode = 0o755 if stat.st_mode & 0o111 else 0o644
                info.mtime = _PACK_MTIME
                with path.open("rb") as source:
                    tar.addfile(info, source)
    else:
        import shutil
        import zipfile

        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for arcname, path in entries:
                stat = path.stat()
                zinfo = zipfile.ZipInfo(arcname, date_time=(1980, 1, 1, 0, 0, 0))
                zinfo.compress_type = zipfile.ZIP_DEFLATED
                zinfo.external_attr = (0o100755 if stat.st_mode & 0o111 else 0o100644) << 16
                zinfo.file_size = stat.st_size
                with path.open("rb") as source, zf.open(zinfo, "w") as target:
                    shutil.copyfileobj(source, target, READ_BYTES)
    return archive
