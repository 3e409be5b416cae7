"""Zip and gzip-compressed tar archives from an untrusted source: vetted entries, safe unpacking.

Nothing here knows what the archive is for. Every entry is vetted as it is read (its name cannot
escape, it is a plain file or folder, it is not there twice) and counted against the caps on
entries and unpacked bytes, from the headers before anything is unpacked and again from the bytes
actually written while unpacking, because headers can lie.
"""

from __future__ import annotations

import contextlib
import copy
import gzip
import io
import lzma
import os
import re
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO

from app.errors import InvalidModelFile, PayloadTooLarge
from app.registration.artifacts.names import MAX_NAME_BYTES, forbidden_char, shown
from app.registration.artifacts.zipdir import central_directory

__all__ = [
    "ArchiveKind",
    "Entry",
    "Member",
    "Tree",
    "extract",
    "members",
    "safe_parts",
]

_CHUNK = 1024 * 1024
_MAX_PATH_BYTES = 4096
# pax and GNU long-name headers are read into memory whole by tarfile; nothing legitimate is big.
_MAX_TAR_READ = 2 * _CHUNK
_DRIVE = re.compile(r"^[A-Za-z]:")


class ArchiveKind(StrEnum):
    """An archive format, named as messages about it name it."""

    ZIP = "zip archive"
    TAR_GZ = "tar.gz archive"


@dataclass(frozen=True)
class Entry:
    """One entry of an archive, as its header describes it."""

    name: str  # as the archive spells it, for messages
    parts: tuple[str, ...]  # normalised path components; () is the archive's root folder itself
    is_dir: bool
    size: int


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The archive would unpack to more than {limit:,} bytes, the most the service accepts."
    )


def _too_many(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The archive has more than {limit:,} entries, the most the service unpacks."
    )


# Entry names and types -------------------------------------------------------------------------


def safe_parts(name: str) -> tuple[str, ...]:
    """The path components of an archive entry name, refusing any name that could escape."""
    quoted = shown(name)
    if not name:
        raise InvalidModelFile("The archive has an entry with an empty name.")
    if "\x00" in name:
        raise InvalidModelFile(f"The archive entry {quoted} has a NUL byte in its name.")
    if "\\" in name:
        raise InvalidModelFile(
            f"The archive entry {quoted} has a backslash in its name; archive paths use '/'."
        )
    if name.startswith("/"):
        raise InvalidModelFile(f"The archive entry {quoted} has an absolute path.")
    if _DRIVE.match(name):
        raise InvalidModelFile(f"The archive entry {quoted} starts with a drive letter.")
    if (char := forbidden_char(name)) is not None:
        raise InvalidModelFile(
            f"The archive entry {quoted} has the control or invisible character "
            f"U+{ord(char):04X} in its name."
        )
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    if ".." in parts:
        raise InvalidModelFile(f"The archive entry {quoted} reaches outside the archive with '..'.")
    if len(name.encode()) > _MAX_PATH_BYTES or any(
        len(part.encode()) > MAX_NAME_BYTES for part in parts
    ):
        raise InvalidModelFile(f"The archive entry {quoted} has a name too long for a filesystem.")
    return parts


_ZIP_METHODS = frozenset(
    {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
)
_ZIP_ENCRYPTED_FLAGS = 0x1 | 0x40  # traditional PKWARE and strong encryption
_SPECIAL_FILE_TYPES = frozenset({stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK})


def _zip_entry(info: zipfile.ZipInfo) -> Entry:
    # zipfile cuts `filename` at a NUL byte; `orig_filename` keeps what the archive says.
    name = info.orig_filename
    parts = safe_parts(name)
    quoted = shown(name)
    # Unix zip tools keep the file's mode in the high half of external_attr.
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        raise InvalidModelFile(f"The archive entry {quoted} is a symbolic link; links are refused.")
    if kind in _SPECIAL_FILE_TYPES:
        raise InvalidModelFile(
            f"The archive entry {quoted} is a device, FIFO or socket; only files and folders "
            "are accepted."
        )
    if info.flag_bits & _ZIP_ENCRYPTED_FLAGS:
        raise InvalidModelFile(f"The archive entry {quoted} is encrypted.")
    if info.compress_type not in _ZIP_METHODS:
        raise InvalidModelFile(
            f"The archive entry {quoted} uses zip compression method {info.compress_type}, which "
            "is not supported (use deflate)."
        )
    is_dir = name.endswith("/")
    return Entry(name, parts, is_dir, 0 if is_dir else info.file_size)


def _tar_entry(member: tarfile.TarInfo) -> Entry:
    quoted = shown(member.name)
    if member.issym() or member.islnk():
        kind = "symbolic" if member.issym() else "hard"
        raise InvalidModelFile(f"The archive entry {quoted} is a {kind} link; links are refused.")
    if member.isdev():
        raise InvalidModelFile(
            f"The archive entry {quoted} is a device or FIFO; only files and folders are accepted."
        )
    if member.type == tarfile.GNUTYPE_SPARSE or member.sparse is not None:
        raise InvalidModelFile(f"The archive entry {quoted} is a sparse file, which is refused.")
    if not (member.isreg() or member.isdir()):
        raise InvalidModelFile(
            f"The archive entry {quoted} has the unsupported tar type {member.type!r}."
        )
    parts = safe_parts(member.name)
    return Entry(member.name, parts, member.isdir(), 0 if member.isdir() else member.size)


class Tree:
    """The entries seen so far: refuses duplicates, file/folder clashes and passing the limits."""

    def __init__(self, *, max_unpacked_bytes: int, max_files: int) -> None:
        self.max_unpacked_bytes = max_unpacked_bytes
        self.max_files = max_files
        self.entries = 0
        self.declared_bytes = 0
        self.files: set[tuple[str, ...]] = set()
        self.dirs: set[tuple[str, ...]] = set()  # named by an entry or implied by a deeper one
        self._named_dirs: set[tuple[str, ...]] = set()

    def add(self, entry: Entry) -> None:
        self.entries += 1
        if self.entries > self.max_files:
            raise _too_many(self.max_files)
        parts, quoted = entry.parts, shown(entry.name)
        if not parts:
            if entry.is_dir:
                return  # "./", as `tar -C model_dir -czf m.tgz .` writes
            raise InvalidModelFile(f"The archive entry {quoted} has no file name.")
        if parts in self.files or (entry.is_dir and parts in self._named_dirs):
            raise InvalidModelFile(f"The archive holds {quoted} more than once.")
        for depth in range(1, len(parts)):
            if parts[:depth] in self.files:
                raise InvalidModelFile(
                    f"The archive entry {quoted} sits inside {'/'.join(parts[:depth])!r}, which "
                    "is a file."
                )
        if entry.is_dir:
            self._named_dirs.add(parts)
            self.dirs.update(parts[:depth] for depth in range(1, len(parts) + 1))
            return
        if parts in self.dirs:
            raise InvalidModelFile(f"The archive entry {quoted} is both a file and a folder.")
        self.files.add(parts)
        self.dirs.update(parts[:depth] for depth in range(1, len(parts)))
        self.declared_bytes += entry.size
        if self.declared_bytes > self.max_unpacked_bytes:
            raise _too_large(self.max_unpacked_bytes)


# Reading ---------------------------------------------------------------------------------------


class Member:
    """An entry of an open archive, vetted and counted, with its data to read."""

    def __init__(self, entry: Entry) -> None:
        self.entry = entry

    def open(self) -> IO[bytes] | None:
        """The entry's data, as long as its header says (None: not a regular file)."""
        raise NotImplementedError

    def open_to_end(self) -> IO[bytes] | None:
        """Every byte stored for the entry, however many its header declares."""
        return self.open()

    def refuse_unsafe(self, dest: Path) -> None:
        """Any further refusal of the format's own before the entry is unpacked under `dest`."""


class _ZipMember(Member):
    def __init__(self, entry: Entry, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
        super().__init__(entry)
        self._archive = archive
        self._info = info

    def open(self) -> IO[bytes]:
        return self._archive.open(self._info)

    def open_to_end(self) -> IO[bytes]:
        # zipfile stops a member at the size the central directory declares (then fails its
        # CRC); lifting that stop lets the real size show, so a header that lies meets the cap.
        unbounded = copy.copy(self._info)
        unbounded.file_size = _UNBOUNDED
        return self._archive.open(unbounded)


_UNBOUNDED = 1 << 62


class _TarMember(Member):
    def __init__(self, entry: Entry, archive: tarfile.TarFile, info: tarfile.TarInfo) -> None:
        super().__init__(entry)
        self._archive = archive
        self._info = info

    def open(self) -> IO[bytes] | None:
        return self._archive.extractfile(self._info)

    def refuse_unsafe(self, dest: Path) -> None:
        # Defence in depth: the standard library's rules for untrusted tars must agree too.
        try:
            tarfile.data_filter(self._info, str(dest))
        except tarfile.FilterError as e:
            raise InvalidModelFile(
                f"The archive entry {shown(self.entry.name)} is refused by tarfile's data "
                f"filter: {e}."
            ) from e


@contextlib.contextmanager
def members(kind: ArchiveKind, path: Path, tree: Tree) -> Iterator[Iterator[Member]]:
    """The archive's entries in order, each vetted and added to `tree` before it is given out.

    The archive stays open inside the block, and a damaged archive failing to read anywhere in it
    is reported as one InvalidModelFile.
    """
    with _reading(kind):
        if kind is ArchiveKind.ZIP:
            _count_zip_entries(path, tree.max_files)
            with zipfile.ZipFile(path) as zf:
                yield _zip_members(zf, tree)
        else:
            with _open_tar(path) as tf:
                yield _tar_members(tf, tree)


def _zip_members(zf: zipfile.ZipFile, tree: Tree) -> Iterator[Member]:
    for info in zf.infolist():
        entry = _zip_entry(info)
        tree.add(entry)
        yield _ZipMember(entry, zf, info)


def _tar_members(tf: tarfile.TarFile, tree: Tree) -> Iterator[Member]:
    for info in tf:
        entry = _tar_entry(info)
        tree.add(entry)
        yield _TarMember(entry, tf, info)


def _count_zip_entries(path: Path, max_files: int) -> None:
    with path.open("rb") as f:
        for count, _name in enumerate(central_directory(f), start=1):
            if count > max_files:
                raise _too_many(max_files)


@contextlib.contextmanager
def _reading(kind: ArchiveKind) -> Iterator[None]:
    """Report the many ways a damaged archive fails to read as one clear InvalidModelFile."""
    try:
        yield
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        tarfile.TarError,
        EOFError,
        zlib.error,
        lzma.LZMAError,
        NotImplementedError,
        RecursionError,  # a chain of pax headers is parsed recursively
        ValueError,
    ) as e:
        raise InvalidModelFile(f"The {kind} is corrupt or unreadable: {e}.") from e
    except OSError as e:
        # Decoders (gzip, bz2) raise OSError without an errno for bad data; an errno means the
        # disk or the system failed, which is no fault of the upload.
        if e.errno is not None:
            raise
        raise InvalidModelFile(f"The {kind} is corrupt or unreadable: {e}.") from e


class _CappedReads:
    """The decompressed tar stream, refusing any single read tarfile makes beyond a sane size.

    tarfile reads a pax or GNU long-name header whole, at the size its header claims; from a gzip
    stream that could be gigabytes of zeros.
    """

    def __init__(self, inner: gzip.GzipFile) -> None:
        self._inner = inner

    def read(self, size: int = -1, /) -> bytes:
        if size < 0 or size > _MAX_TAR_READ:
            raise InvalidModelFile(
                "The tar archive has an extended header (long name or pax header) larger than "
                f"{_MAX_TAR_READ:,} bytes."
            )
        return self._inner.read(size)

    def seek(self, pos: int, whence: int = os.SEEK_SET, /) -> int:
        return self._inner.seek(pos, whence)

    def tell(self) -> int:
        return self._inner.tell()

    def write(self, data: bytes, /) -> int:
        raise io.UnsupportedOperation("the archive is opened for reading")

    def close(self) -> None:
        """The gzip stream is closed by whoever opened it."""


@contextlib.contextmanager
def _open_tar(path: Path) -> Iterator[tarfile.TarFile]:
    # A seekable gzip stream (not tarfile's "r|gz") so that tarfile's reads go through the cap.
    with gzip.open(path, "rb") as gz, tarfile.open(fileobj=_CappedReads(gz), mode="r:") as tf:
        yield tf


# Unpacking -------------------------------------------------------------------------------------


class _Writer:
    """Writes entries under `dest`: never through a link, never over a file, every byte counted."""

    def __init__(self, dest: Path, max_unpacked_bytes: int) -> None:
        self.dest = dest
        self._real_dest = dest.resolve()
        self.max_unpacked_bytes = max_unpacked_bytes
        self.written = 0

    def mkdir(self, parts: tuple[str, ...]) -> None:
        for depth in range(1, len(parts) + 1):
            target = self._inside(parts[:depth])
            try:
                os.mkdir(target, 0o755)
            except FileExistsError:
                if not stat.S_ISDIR(os.lstat(target).st_mode):
                    raise InvalidModelFile(
                        f"The archive entry {'/'.join(parts)!r} needs a folder where a file is."
                    ) from None

    def write(self, entry: Entry, source: IO[bytes]) -> None:
        self.mkdir(entry.parts[:-1])
        target = self._inside(entry.parts)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        written = 0
        with os.fdopen(os.open(target, flags, 0o644), "wb") as out:
            while chunk := source.read(_CHUNK):
                written += len(chunk)
                self.written += len(chunk)
                if self.written > self.max_unpacked_bytes:
                    raise _too_large(self.max_unpacked_bytes)
                out.write(chunk)
        if written != entry.size:
            raise InvalidModelFile(
                f"The archive entry {shown(entry.name)} unpacked to {written:,} bytes, not the "
                f"{entry.size:,} its header declares."
            )

    def _inside(self, parts: tuple[str, ...]) -> Path:
        target = self.dest.joinpath(*parts)
        # The names were vetted already; this only guards against anything that still resolves
        # somewhere else.
        real = target.resolve()
        if real == self._real_dest or not real.is_relative_to(self._real_dest):
            raise InvalidModelFile(f"The archive entry {'/'.join(parts)!r} resolves outside.")
        return target


def extract(kind: ArchiveKind, path: Path, dest: Path, tree: Tree) -> None:
    """Unpack the archive into the empty folder `dest`, counting its entries into `tree`.

    The caps are `tree`'s, enforced on the headers and again on the bytes written.
    """
    writer = _Writer(dest, tree.max_unpacked_bytes)
    with members(kind, path, tree) as entries:
        for member in entries:
            entry = member.entry
            member.refuse_unsafe(dest)
            if entry.is_dir:
                writer.mkdir(entry.parts)
                continue
            source = member.open_to_end()
            if source is None:
                raise InvalidModelFile(f"The archive entry {shown(entry.name)} has no data.")
            with source:
                writer.write(entry, source)
