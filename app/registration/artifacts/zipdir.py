"""A zip's entry names, read from its central directory one record at a time.

zipfile builds an object per entry before anyone can count them, so a small upload holding a
million empty entries would cost gigabytes; this walks the same records (found the way zipfile
finds them) in constant memory, so that callers can stop early.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from typing import BinaryIO

from app.errors import InvalidModelFile

__all__ = ["central_directory"]

_EOCD = struct.Struct("<4s4H2LH")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_CD_ENTRY = struct.Struct("<4s4B4HL2L5H2L")
_MAX_ZIP_COMMENT = 0xFFFF


def _corrupt_zip(why: str) -> InvalidModelFile:
    return InvalidModelFile(f"The zip archive is corrupt: {why}.")


def central_directory(f: BinaryIO) -> Iterator[bytes]:
    """The raw entry names of the zip `f`, in central directory order."""
    cd_start, cd_size = _central_directory_span(f)
    f.seek(cd_start)
    consumed = 0
    while consumed < cd_size:
        entry = f.read(_CD_ENTRY.size)
        if len(entry) != _CD_ENTRY.size or not entry.startswith(b"PK\x01\x02"):
            raise _corrupt_zip("its central directory is damaged")
        name_len, extra_len, comment_len = struct.unpack_from("<3H", entry, 28)
        name = f.read(name_len)
        f.seek(extra_len + comment_len, os.SEEK_CUR)
        consumed += _CD_ENTRY.size + name_len + extra_len + comment_len
        yield name


def _central_directory_span(f: BinaryIO) -> tuple[int, int]:
    """Where the central directory starts and how long it is, from the end records."""
    f.seek(0, os.SEEK_END)
    file_size = f.tell()
    if file_size < _EOCD.size:
        raise _corrupt_zip("it is too short to hold a central directory")
    f.seek(file_size - _EOCD.size)
    record = f.read(_EOCD.size)
    if record.startswith(b"PK\x05\x06") and record.endswith(b"\x00\x00"):
        eocd_pos = file_size - _EOCD.size
    else:  # an archive comment follows the end record
        start = max(file_size - _EOCD.size - _MAX_ZIP_COMMENT - 1, 0)
        f.seek(start)
        tail = f.read()
        found = tail.rfind(b"PK\x05\x06")
        if found < 0 or len(tail) - found < _EOCD.size:
            raise _corrupt_zip("it has no end of central directory record")
        eocd_pos = start + found
        record = tail[found : found + _EOCD.size]
    cd_size: int = _EOCD.unpack(record)[5]
    cd_end = eocd_pos
    zip64_pos = eocd_pos - _ZIP64_LOCATOR.size - _ZIP64_EOCD.size
    if zip64_pos >= 0:
        f.seek(eocd_pos - _ZIP64_LOCATOR.size)
        if f.read(4) == b"PK\x06\x07":
            f.seek(zip64_pos)
            record64 = f.read(_ZIP64_EOCD.size)
            if record64.startswith(b"PK\x06\x06"):
                cd_size = _ZIP64_EOCD.unpack(record64)[8]
                cd_end = zip64_pos
    if cd_size > cd_end:
        raise _corrupt_zip("its central directory size points before the start of the file")
    return cd_end - cd_size, cd_size
