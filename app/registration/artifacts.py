"""What an uploaded model file is, and safe inspection and extraction of MLflow model archives.

The service never unpickles, imports or executes anything it receives: every check here reads bytes
(magic numbers, protobuf tags, pickle opcodes through `pickletools`, zip and tar headers, YAML and
JSON with safe loaders) and nothing more. Archives are judged from their headers before anything is
unpacked, and unpacked with the bytes actually written counted against the limit, because headers
can lie.
"""

from __future__ import annotations

import codecs
import contextlib
import copy
import gzip
import io
import json
import lzma
import os
import pickletools
import re
import stat
import struct
import tarfile
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO, Any, BinaryIO

import yaml

from app.errors import InvalidModelFile, PayloadTooLarge

__all__ = [
    "ALLOWED_EXTENSIONS",
    "ARCHIVE_FORMATS",
    "HEAD_BYTES",
    "MAX_FILES",
    "ArchiveInfo",
    "ModelFormat",
    "check_content",
    "extract_archive",
    "format_for_filename",
    "inspect_archive",
]


class ModelFormat(StrEnum):
    """The kind of model file, as returned in a registration's `artifact.format`."""

    PICKLE = "pickle"
    JOBLIB = "joblib"
    ONNX = "onnx"
    TORCH = "torch"
    SAFETENSORS = "safetensors"
    HDF5 = "hdf5"
    KERAS = "keras"
    JSON = "json"
    UBJSON = "ubjson"
    TEXT = "text"
    BINARY = "binary"
    MLFLOW_ZIP = "mlflow_zip"
    MLFLOW_TAR = "mlflow_tar_gz"


_EXTENSIONS: dict[str, ModelFormat] = {
    ".pkl": ModelFormat.PICKLE,
    ".joblib": ModelFormat.JOBLIB,
    ".onnx": ModelFormat.ONNX,
    ".pt": ModelFormat.TORCH,
    ".pth": ModelFormat.TORCH,
    ".safetensors": ModelFormat.SAFETENSORS,
    ".h5": ModelFormat.HDF5,
    ".keras": ModelFormat.KERAS,
    ".json": ModelFormat.JSON,
    ".ubj": ModelFormat.UBJSON,
    ".txt": ModelFormat.TEXT,
    ".bin": ModelFormat.BINARY,
    ".zip": ModelFormat.MLFLOW_ZIP,
    ".tar.gz": ModelFormat.MLFLOW_TAR,
    ".tgz": ModelFormat.MLFLOW_TAR,
}

ALLOWED_EXTENSIONS: tuple[str, ...] = tuple(_EXTENSIONS)
ARCHIVE_FORMATS = frozenset({ModelFormat.MLFLOW_ZIP, ModelFormat.MLFLOW_TAR})

HEAD_BYTES = 64 * 1024  # how much of the upload `check_content` expects in `head`
MAX_FILES = 10_000  # the contract's cap on entries in an archive

_CHUNK = 1024 * 1024
_MAX_NAME_BYTES = 255  # one path component, as most filesystems allow
_MAX_PATH_BYTES = 4096
_MAX_MLMODEL_BYTES = 1024 * 1024
# The format allows 100 MB; a real checkpoint's header is a few hundred KiB. 8 MiB leaves room and
# bounds the time and memory a header costs to check.
_MAX_SAFETENSORS_HEADER = 8 * 1024 * 1024
# pax and GNU long-name headers are read into memory whole by tarfile; nothing legitimate is big.
_MAX_TAR_READ = 2 * _CHUNK
# Only scanned to find one name in a torch or keras zip; a real checkpoint has far fewer.
_MAX_SCANNED_ZIP_ENTRIES = 1_000_000

_LABELS: dict[ModelFormat, str] = {
    ModelFormat.PICKLE: "pickle file",
    ModelFormat.JOBLIB: "joblib file",
    ModelFormat.ONNX: "ONNX model",
    ModelFormat.TORCH: "PyTorch file",
    ModelFormat.SAFETENSORS: "safetensors file",
    ModelFormat.HDF5: "HDF5 file",
    ModelFormat.KERAS: "Keras model",
    ModelFormat.JSON: "JSON model",
    ModelFormat.UBJSON: "UBJSON model",
    ModelFormat.TEXT: "text model",
    ModelFormat.BINARY: "binary model",
    ModelFormat.MLFLOW_ZIP: "zip archive",
    ModelFormat.MLFLOW_TAR: "gzip-compressed tar archive",
}

# Unicode categories that have no place in a file name: controls, invisible format characters
# (bidirectional overrides can disguise an extension), surrogates, line and paragraph separators.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_DRIVE = re.compile(r"^[A-Za-z]:")


def _shown(name: str) -> str:
    """A name fit for an error message: escaped, and cut if long."""
    text = repr(name)
    return text if len(text) <= 120 else text[:117] + "..."


def _bad_char(name: str) -> str | None:
    for char in name:
        if unicodedata.category(char) in _FORBIDDEN_CATEGORIES:
            return char
    return None


# Upload file names -----------------------------------------------------------------------------


def format_for_filename(filename: str) -> ModelFormat:
    """The format an upload's file name claims, refusing unsafe names and unknown extensions."""
    if not filename:
        raise InvalidModelFile("The model file has no name.")
    if "/" in filename or "\\" in filename:
        raise InvalidModelFile(
            f"The model file name {_shown(filename)} contains a path separator; send the bare "
            "file name."
        )
    if (
        len(filename) > _MAX_NAME_BYTES
        or len(filename.encode("utf-8", "replace")) > _MAX_NAME_BYTES
    ):
        raise InvalidModelFile(f"The model file name is longer than {_MAX_NAME_BYTES} bytes.")
    if (char := _bad_char(filename)) is not None:
        raise InvalidModelFile(
            f"The model file name {_shown(filename)} contains the control or invisible character "
            f"U+{ord(char):04X}."
        )
    lowered = filename.lower()
    for extension, fmt in _EXTENSIONS.items():
        if lowered.endswith(extension):
            if lowered == extension:
                raise InvalidModelFile(
                    f"The model file name {_shown(filename)} has nothing before its extension."
                )
            return fmt
    raise InvalidModelFile(
        f"The model file {_shown(filename)} has an unsupported extension; allowed: "
        f"{', '.join(ALLOWED_EXTENSIONS)}."
    )


# Content checks --------------------------------------------------------------------------------


def check_content(fmt: ModelFormat, head: bytes, path: Path, size: int) -> None:
    """Refuse an upload whose bytes do not look like the format its extension claims."""
    if size <= 0 or not head:
        raise InvalidModelFile("The model file is empty.")
    problem = _CHECKS[fmt](head, path, size)
    if problem is not None:
        suffix = ""
        if fmt in (ModelFormat.MLFLOW_ZIP, ModelFormat.MLFLOW_TAR):
            suffix = " An MLflow model must be uploaded as a .zip or .tar.gz of its directory."
        raise InvalidModelFile(f"The file is not a valid {_LABELS[fmt]}: {problem}.{suffix}")


# Protocol 0 and 1 pickles have no header; these are the opcodes such a pickle of a model, a dict,
# a list or a tuple can start with (MARK, EMPTY_DICT/LIST/TUPLE, GLOBAL, and the scalar ones).
_PICKLE_PROTO01_STARTS = frozenset(b"(}])cILFSVNKJMGUTX")
_PICKLE_OPCODES_CHECKED = 64


def _pickle_problem(head: bytes, path: Path, size: int) -> str | None:
    first = head[0]
    if first == 0x80:  # PROTO, written first by every protocol 2+ pickle
        if len(head) < 2:
            return "it ends after the first byte"
        protocol = head[1]
        if not 2 <= protocol <= 5:
            return f"it declares pickle protocol {protocol}, which does not exist"
        return None
    if first not in _PICKLE_PROTO01_STARTS:
        return "it does not start with a pickle header or opcode"
    # pickletools only decodes opcodes; it never imports or calls anything the stream names.
    stream = io.BytesIO(head)
    whole_file = size <= len(head)
    try:
        for count, (opcode, _arg, _pos) in enumerate(pickletools.genops(stream)):
            if opcode.name == "STOP" or count >= _PICKLE_OPCODES_CHECKED:
                break
    except (ValueError, struct.error, OverflowError):
        # Running off the end of `head` only means the file goes on beyond what was read.
        if whole_file or stream.tell() < len(head):
            return "it is not a valid pickle opcode stream"
    return None


_ZLIB_FIRST_BYTE = 0x78  # deflate with a 32 KiB window, which is what zlib writes
_JOBLIB_CONTAINERS: tuple[bytes, ...] = (
    b"\x1f\x8b\x08",  # gzip
    b"\xfd7zXZ\x00",  # xz
    b"\x5d\x00",  # lzma "alone" with the default properties byte, as joblib detects it
    b"\x04\x22\x4d\x18",  # lz4 frame
)


def _joblib_problem(head: bytes, path: Path, size: int) -> str | None:
    if _pickle_problem(head, path, size) is None:
        return None
    if head.startswith(_JOBLIB_CONTAINERS):
        return None
    if len(head) >= 2 and head[0] == _ZLIB_FIRST_BYTE and (head[0] << 8 | head[1]) % 31 == 0:
        return None
    if len(head) >= 4 and head.startswith(b"BZh") and head[3:4] in b"123456789":
        return None
    # joblib < 0.10: b"ZF", then the compressed length in hex (with or without "0x").
    if head.startswith(b"ZF") and len(head) > 2 and head[2:3] in b"0123456789abcdefABCDEF":
        return None
    return "it is neither a pickle nor one of joblib's compressed containers"


class _Truncated(Exception):
    """Parsing ran off the end of the bytes available."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for shift in range(0, 70, 7):
        if pos >= len(data):
            raise _Truncated
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
    raise ValueError("varint longer than 10 bytes")


# ModelProto's fields and their wire types (0 varint, 2 length-delimited), from onnx.proto.
_ONNX_FIELDS: dict[int, int] = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2}
_ONNX_FIELDS_CHECKED = 64
_ONNX_MAX_IR_VERSION = 1000  # 10 in 2024; the bound only catches garbage


def _onnx_problem(head: bytes, path: Path, size: int) -> str | None:
    whole_file = size <= len(head)
    pos = 0
    seen: set[int] = set()
    for index in range(_ONNX_FIELDS_CHECKED):
        if pos >= len(head):
            break
        try:
            tag, pos = _varint(head, pos)
            field, wire = tag >> 3, tag & 7
            expected = _ONNX_FIELDS.get(field)
            if field == 0 or wire not in (0, 1, 2, 5):
                return f"byte {pos - 1} is not a valid protobuf field tag"
            if expected is None and index == 0:
                return "it does not start with a field of an ONNX ModelProto"
            if expected is not None and wire != expected:
                return f"ModelProto field {field} has the wrong protobuf wire type"
            if wire == 0:
                value, pos = _varint(head, pos)
                if field == 1 and not 1 <= value <= _ONNX_MAX_IR_VERSION:
                    return f"its ir_version {value} is not plausible"
            elif wire == 2:
                length, pos = _varint(head, pos)
                if pos + length > size:
                    return f"ModelProto field {field} runs past the end of the file"
                pos += length
            else:
                pos += 8 if wire == 1 else 4
                if pos > size:
                    return "a fixed-size field runs past the end of the file"
        except _Truncated:
            if whole_file:
                return "it ends in the middle of a protobuf field"
            break
        except ValueError:
            return "it contains a malformed protobuf varint"
        seen.add(field)
        if pos > len(head):
            # A field (usually the graph) reaches beyond the bytes read; all before it was valid.
            return None
    if 1 not in seen:
        return "it has no ir_version (ONNX models start with it)"
    return None


def _torch_problem(head: bytes, path: Path, size: int) -> str | None:
    if head.startswith(b"PK\x03\x04"):
        # torch.save (and torch.jit.save) write a zip whose pickled object is "<name>/data.pkl".
        with path.open("rb") as f:
            for name in _scanned_names(f):
                if name == b"data.pkl" or name.endswith(b"/data.pkl"):
                    return None
        return "it is a zip archive without the data.pkl entry torch.save writes"
    if _pickle_problem(head, path, size) is None:
        return None  # the legacy (pre-1.6) torch.save format is a plain pickle stream
    return "it is neither a torch.save zip archive nor a legacy pickle"


def _safetensors_problem(head: bytes, path: Path, size: int) -> str | None:
    if size < 8 or len(head) < 8:
        return "it is shorter than the 8-byte header length"
    header_len = int.from_bytes(head[:8], "little")
    if header_len < 2:
        return "its header length is too small for a JSON object"
    if header_len > _MAX_SAFETENSORS_HEADER:
        return f"its header length {header_len:,} is over {_MAX_SAFETENSORS_HEADER:,} bytes"
    if 8 + header_len > size:
        return f"its header length {header_len:,} runs past the end of the file"
    if 8 + header_len <= len(head):
        raw = head[8 : 8 + header_len]
    else:
        with path.open("rb") as f:
            f.seek(8)
            raw = f.read(header_len)
    if not raw.startswith(b"{"):
        return "its header is not a JSON object"
    try:
        return _safetensors_entries_problem(raw.decode("utf-8"), size - 8 - header_len)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return "its header is not valid UTF-8 JSON"


_JSON_SPACE = re.compile(r"[ \t\n\r]*")
_JSON_DECODER = json.JSONDecoder()


def _safetensors_entries_problem(text: str, data_len: int) -> str | None:
    """Check the header object one entry at a time, keeping none of them.

    `json.loads` on the whole header would build every entry at once and hold the GIL for the
    whole parse (seconds, and a gigabyte, for millions of entries); parsing entry by entry keeps
    memory to the names and lets other threads run between entries.
    """
    seen: set[str] = set()
    pos = _JSON_SPACE.match(text, 1).end()  # type: ignore[union-attr]
    if text.startswith("}", pos):
        pos += 1
    else:
        while True:
            name, pos = _JSON_DECODER.raw_decode(text, pos)
            if not isinstance(name, str):
                return "its header is not a JSON object"
            pos = _JSON_SPACE.match(text, pos).end()  # type: ignore[union-attr]
            if not text.startswith(":", pos):
                raise ValueError("expected ':'")
            pos = _JSON_SPACE.match(text, pos + 1).end()  # type: ignore[union-attr]
            entry, pos = _JSON_DECODER.raw_decode(text, pos)
            if name in seen:
                return f"its header names {_shown(name)} twice"
            seen.add(name)
            if name == "__metadata__":
                if not isinstance(entry, dict):
                    return "its __metadata__ is not an object"
            elif (problem := _tensor_entry_problem(entry, data_len)) is not None:
                return f"tensor {_shown(name)} {problem}"
            pos = _JSON_SPACE.match(text, pos).end()  # type: ignore[union-attr]
            if text.startswith(",", pos):
                pos = _JSON_SPACE.match(text, pos + 1).end()  # type: ignore[union-attr]
                continue
            if text.startswith("}", pos):
                pos += 1
                break
            raise ValueError("expected ',' or '}'")
    if text[pos:].strip(" \t\n\r"):
        return "its header has data after the JSON object"
    return None


def _tensor_entry_problem(entry: Any, data_len: int) -> str | None:
    if not isinstance(entry, dict):
        return "is not described by an object"
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str):
        return "has no dtype"
    if not isinstance(shape, list) or not all(
        isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0 for dim in shape
    ):
        return "has no valid shape"
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1] <= data_len
    ):
        return "has data_offsets outside the file"
    return None


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _hdf5_problem(head: bytes, path: Path, size: int) -> str | None:
    # The superblock sits at 0 or, after a user block, at 512, 1024, 2048... (powers of two).
    offset = 0
    while offset + len(_HDF5_SIGNATURE) <= len(head):
        if head[offset : offset + len(_HDF5_SIGNATURE)] == _HDF5_SIGNATURE:
            return None
        offset = 512 if offset == 0 else offset * 2
    return "it has no HDF5 signature"


def _keras_problem(head: bytes, path: Path, size: int) -> str | None:
    if head.startswith(b"PK\x03\x04"):
        with path.open("rb") as f:
            for name in _scanned_names(f):
                if name in (b"config.json", b"metadata.json"):
                    return None
        return "it is a zip archive without the config.json a Keras 3 model holds"
    if _hdf5_problem(head, path, size) is None:
        return None  # legacy Keras models are HDF5 files
    return "it is neither a Keras 3 zip archive nor an HDF5 file"


def _utf8_problem(head: bytes, size: int) -> tuple[str | None, str]:
    """Decode `head` as UTF-8, allowing a character cut in two at its end when the file goes on."""
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=size <= len(head))
    except UnicodeDecodeError as e:
        return f"it is not UTF-8 text (byte {e.start})", ""
    if "\x00" in text:
        return "it contains NUL bytes", ""
    return None, text


def _json_problem(head: bytes, path: Path, size: int) -> str | None:
    problem, text = _utf8_problem(head, size)
    if problem is not None:
        return problem
    # Only the start is looked at: XGBoost models can be a gigabyte of JSON.
    stripped = text.removeprefix("\ufeff").lstrip(" \t\r\n")
    if not stripped:
        return "it holds only whitespace where the JSON object should start"
    if not stripped.startswith("{"):
        return "it does not start with a JSON object"
    return None


# After "{", a UBJSON object holds a key length's integer type marker (keys carry no "S"), an
# optimised container's "$" or "#", a no-op "N", or the closing "}".
_UBJSON_AFTER_BRACE = frozenset(b"iUIlL$#N}")


def _ubjson_problem(head: bytes, path: Path, size: int) -> str | None:
    if not head.startswith(b"{"):
        return "it does not start with a UBJSON object marker"
    if len(head) < 2 or head[1] not in _UBJSON_AFTER_BRACE:
        return "its object does not continue as UBJSON does"
    return None


def _text_problem(head: bytes, path: Path, size: int) -> str | None:
    return _utf8_problem(head, size)[0]


def _binary_problem(head: bytes, path: Path, size: int) -> str | None:
    return None


def _zip_problem(head: bytes, path: Path, size: int) -> str | None:
    return None if head.startswith(b"PK\x03\x04") else "it does not start with a zip header"


def _tar_gz_problem(head: bytes, path: Path, size: int) -> str | None:
    return None if head.startswith(b"\x1f\x8b\x08") else "it does not start with a gzip header"


_CHECKS: dict[ModelFormat, Callable[[bytes, Path, int], str | None]] = {
    ModelFormat.PICKLE: _pickle_problem,
    ModelFormat.JOBLIB: _joblib_problem,
    ModelFormat.ONNX: _onnx_problem,
    ModelFormat.TORCH: _torch_problem,
    ModelFormat.SAFETENSORS: _safetensors_problem,
    ModelFormat.HDF5: _hdf5_problem,
    ModelFormat.KERAS: _keras_problem,
    ModelFormat.JSON: _json_problem,
    ModelFormat.UBJSON: _ubjson_problem,
    ModelFormat.TEXT: _text_problem,
    ModelFormat.BINARY: _binary_problem,
    ModelFormat.MLFLOW_ZIP: _zip_problem,
    ModelFormat.MLFLOW_TAR: _tar_gz_problem,
}


# Zip central directory -------------------------------------------------------------------------

_EOCD = struct.Struct("<4s4H2LH")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_CD_ENTRY = struct.Struct("<4s4B4HL2L5H2L")
_MAX_ZIP_COMMENT = 0xFFFF


def _corrupt_zip(why: str) -> InvalidModelFile:
    return InvalidModelFile(f"The zip archive is corrupt: {why}.")


def _central_directory(f: BinaryIO) -> Iterator[bytes]:
    """The raw entry names of a zip, one central directory record at a time.

    zipfile builds an object per entry before anyone can count them, so a small upload holding a
    million empty entries would cost gigabytes; this walks the same records (found the way zipfile
    finds them) in constant memory so that callers can stop early.
    """
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
    f.seek(cd_end - cd_size)
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


def _scanned_names(f: BinaryIO) -> Iterator[bytes]:
    """A zip's entry names for a content check, up to a bound no real checkpoint reaches."""
    for count, name in enumerate(_central_directory(f), start=1):
        if count > _MAX_SCANNED_ZIP_ENTRIES:
            raise InvalidModelFile(
                f"The zip archive has more than {_MAX_SCANNED_ZIP_ENTRIES:,} entries."
            )
        yield name


def _count_zip_entries(path: Path, max_files: int) -> None:
    with path.open("rb") as f:
        for count, _name in enumerate(_central_directory(f), start=1):
            if count > max_files:
                raise _too_many(max_files)


# Archive entries -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchiveInfo:
    """What an MLflow model archive holds, judged from its headers before anything is unpacked."""

    file_count: int
    unpacked_bytes: int
    root: str
    mlmodel: dict[str, Any]
    api_schema: dict[str, Any] | None
    # Files and folders together; lets extraction allow what inspection allowed.
    entry_count: int = 0


@dataclass(frozen=True)
class _Entry:
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


def _safe_parts(name: str) -> tuple[str, ...]:
    """The path components of an archive entry name, refusing any name that could escape."""
    shown = _shown(name)
    if not name:
        raise InvalidModelFile("The archive has an entry with an empty name.")
    if "\x00" in name:
        raise InvalidModelFile(f"The archive entry {shown} has a NUL byte in its name.")
    if "\\" in name:
        raise InvalidModelFile(
            f"The archive entry {shown} has a backslash in its name; archive paths use '/'."
        )
    if name.startswith("/"):
        raise InvalidModelFile(f"The archive entry {shown} has an absolute path.")
    if _DRIVE.match(name):
        raise InvalidModelFile(f"The archive entry {shown} starts with a drive letter.")
    if (char := _bad_char(name)) is not None:
        raise InvalidModelFile(
            f"The archive entry {shown} has the control or invisible character "
            f"U+{ord(char):04X} in its name."
        )
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    if ".." in parts:
        raise InvalidModelFile(f"The archive entry {shown} reaches outside the archive with '..'.")
    if len(name.encode()) > _MAX_PATH_BYTES or any(
        len(part.encode()) > _MAX_NAME_BYTES for part in parts
    ):
        raise InvalidModelFile(f"The archive entry {shown} has a name too long for a filesystem.")
    return parts


_ZIP_METHODS = frozenset(
    {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
)
_ZIP_ENCRYPTED_FLAGS = 0x1 | 0x40  # traditional PKWARE and strong encryption
_SPECIAL_FILE_TYPES = frozenset({stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK})


def _zip_entry(info: zipfile.ZipInfo) -> _Entry:
    # zipfile cuts `filename` at a NUL byte; `orig_filename` keeps what the archive says.
    name = info.orig_filename
    parts = _safe_parts(name)
    shown = _shown(name)
    # Unix zip tools keep the file's mode in the high half of external_attr.
    kind = stat.S_IFMT(info.external_attr >> 16)
    if kind == stat.S_IFLNK:
        raise InvalidModelFile(f"The archive entry {shown} is a symbolic link; links are refused.")
    if kind in _SPECIAL_FILE_TYPES:
        raise InvalidModelFile(
            f"The archive entry {shown} is a device, FIFO or socket; only files and folders "
            "are accepted."
        )
    if info.flag_bits & _ZIP_ENCRYPTED_FLAGS:
        raise InvalidModelFile(f"The archive entry {shown} is encrypted.")
    if info.compress_type not in _ZIP_METHODS:
        raise InvalidModelFile(
            f"The archive entry {shown} uses zip compression method {info.compress_type}, which "
            "is not supported (use deflate)."
        )
    is_dir = name.endswith("/")
    return _Entry(name, parts, is_dir, 0 if is_dir else info.file_size)


def _tar_entry(member: tarfile.TarInfo) -> _Entry:
    shown = _shown(member.name)
    if member.issym() or member.islnk():
        kind = "symbolic" if member.issym() else "hard"
        raise InvalidModelFile(f"The archive entry {shown} is a {kind} link; links are refused.")
    if member.isdev():
        raise InvalidModelFile(
            f"The archive entry {shown} is a device or FIFO; only files and folders are accepted."
        )
    if member.type == tarfile.GNUTYPE_SPARSE or member.sparse is not None:
        raise InvalidModelFile(f"The archive entry {shown} is a sparse file, which is refused.")
    if not (member.isreg() or member.isdir()):
        raise InvalidModelFile(
            f"The archive entry {shown} has the unsupported tar type {member.type!r}."
        )
    parts = _safe_parts(member.name)
    return _Entry(member.name, parts, member.isdir(), 0 if member.isdir() else member.size)


class _Tree:
    """The entries seen so far: refuses duplicates, file/folder clashes and passing the limits."""

    def __init__(self, *, max_unpacked_bytes: int, max_files: int) -> None:
        self.max_unpacked_bytes = max_unpacked_bytes
        self.max_files = max_files
        self.entries = 0
        self.declared_bytes = 0
        self.files: set[tuple[str, ...]] = set()
        self.dirs: set[tuple[str, ...]] = set()  # named by an entry or implied by a deeper one
        self._named_dirs: set[tuple[str, ...]] = set()

    def add(self, entry: _Entry) -> None:
        self.entries += 1
        if self.entries > self.max_files:
            raise _too_many(self.max_files)
        parts, shown = entry.parts, _shown(entry.name)
        if not parts:
            if entry.is_dir:
                return  # "./", as `tar -C model_dir -czf m.tgz .` writes
            raise InvalidModelFile(f"The archive entry {shown} has no file name.")
        if parts in self.files or (entry.is_dir and parts in self._named_dirs):
            raise InvalidModelFile(f"The archive holds {shown} more than once.")
        for depth in range(1, len(parts)):
            if parts[:depth] in self.files:
                raise InvalidModelFile(
                    f"The archive entry {shown} sits inside {'/'.join(parts[:depth])!r}, which "
                    "is a file."
                )
        if entry.is_dir:
            self._named_dirs.add(parts)
            self.dirs.update(parts[:depth] for depth in range(1, len(parts) + 1))
            return
        if parts in self.dirs:
            raise InvalidModelFile(f"The archive entry {shown} is both a file and a folder.")
        self.files.add(parts)
        self.dirs.update(parts[:depth] for depth in range(1, len(parts)))
        self.declared_bytes += entry.size
        if self.declared_bytes > self.max_unpacked_bytes:
            raise _too_large(self.max_unpacked_bytes)


# Finder's "Compress" puts these beside the folder; they are not part of the model.
_IGNORED_TOP_LEVEL = frozenset({"__MACOSX", ".DS_Store"})


def _model_root(tree: _Tree) -> str:
    if ("MLmodel",) in tree.files:
        return ""
    tops = {parts[0] for parts in tree.files | tree.dirs} - _IGNORED_TOP_LEVEL
    if len(tops) == 1:
        (top,) = tops
        if (top, "MLmodel") in tree.files:
            return top
    raise InvalidModelFile(
        "The archive has no MLmodel file at its root or inside a single top-level folder; pack "
        "the MLflow model directory (the one holding MLmodel)."
    )


def _is_mlmodel_candidate(parts: tuple[str, ...]) -> bool:
    return parts == ("MLmodel",) or (
        len(parts) == 2 and parts[1] == "MLmodel" and parts[0] not in _IGNORED_TOP_LEVEL
    )


@contextlib.contextmanager
def _reading(kind: str) -> Iterator[None]:
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


def _read_mlmodel(source: IO[bytes] | None, declared: int) -> bytes:
    if declared > _MAX_MLMODEL_BYTES:
        raise InvalidModelFile(
            f"The MLmodel file is larger than {_MAX_MLMODEL_BYTES:,} bytes; it should be a short "
            "YAML document."
        )
    if source is None:
        raise InvalidModelFile("The MLmodel entry is not a regular file.")
    with source:
        data = source.read(_MAX_MLMODEL_BYTES + 1)
    if len(data) > _MAX_MLMODEL_BYTES:
        raise InvalidModelFile(f"The MLmodel file is larger than {_MAX_MLMODEL_BYTES:,} bytes.")
    return data


# MLmodel ---------------------------------------------------------------------------------------

# libyaml's loader refuses deep nesting instead of recursing into it; the pure one would raise
# RecursionError, which is handled too.
_BaseSafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _MLmodelLoader(_BaseSafeLoader):
    """The safe YAML loader, keeping timestamps as the strings they are written as."""


# An unquoted date would otherwise become a datetime, which no JSON response can carry.
_MLmodelLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}

# Without aliases a 1 MiB document cannot hold more values than this; with them it can hold
# billions ("billion laughs"), which a later json.dumps would expand.
_MAX_MLMODEL_VALUES = _MAX_MLMODEL_BYTES
_PLAIN_SCALARS = (str, int, float, bool)


def _parse_mlmodel(data: bytes) -> dict[str, Any]:
    try:
        loader = _MLmodelLoader(data.decode("utf-8"))
        try:
            document = loader.get_single_data()
        finally:
            loader.dispose()
    except UnicodeDecodeError as e:
        raise InvalidModelFile("The MLmodel file is not UTF-8 text.") from e
    except (yaml.YAMLError, RecursionError) as e:
        why = " ".join(str(e).split())[:300] or type(e).__name__
        raise InvalidModelFile(f"The MLmodel file is not valid YAML: {why}.") from e
    if not isinstance(document, dict) or not all(isinstance(key, str) for key in document):
        raise InvalidModelFile("The MLmodel file is not a YAML mapping of names to values.")
    _check_plain_data(document)
    return document


def _check_plain_data(document: dict[str, Any]) -> None:
    budget = _MAX_MLMODEL_VALUES
    stack: list[Any] = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            children: list[Any] = list(value.values())
            if not all(key is None or isinstance(key, _PLAIN_SCALARS) for key in value):
                raise InvalidModelFile("The MLmodel file has a mapping key that is not a scalar.")
        elif isinstance(value, list):
            children = value
        elif value is None or isinstance(value, _PLAIN_SCALARS):
            continue
        else:
            raise InvalidModelFile(
                f"The MLmodel file holds a YAML {type(value).__name__}; only plain data "
                "(mappings, lists, strings, numbers, booleans, null) is accepted."
            )
        budget -= len(children)
        if budget < 0:
            raise InvalidModelFile(
                "The MLmodel file expands to too many values (YAML aliases are not for MLmodel)."
            )
        stack.extend(children)


def _api_schema(mlmodel: dict[str, Any]) -> dict[str, Any] | None:
    signature = mlmodel.get("signature")
    if signature is None:
        return None
    if not isinstance(signature, dict):
        raise InvalidModelFile("The MLmodel signature is not a mapping.")
    schema: dict[str, Any] = {
        "inputs": _signature_part(signature, "inputs"),
        "outputs": _signature_part(signature, "outputs"),
    }
    if signature.get("params") is not None:
        schema["params"] = _signature_part(signature, "params")
    return schema


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _signature_part(signature: dict[str, Any], key: str) -> list[Any] | None:
    value = signature.get(key)
    if value is None:
        return None
    if isinstance(value, str):  # MLflow writes each part as a JSON string inside the YAML
        try:
            value = json.loads(value, parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as e:
            raise InvalidModelFile(f"The MLmodel signature's {key} is not valid JSON: {e}.") from e
    if not isinstance(value, list):
        raise InvalidModelFile(f"The MLmodel signature's {key} is not a list of specs.")
    return value


# Inspection ------------------------------------------------------------------------------------


def inspect_archive(
    fmt: ModelFormat, path: Path, *, max_unpacked_bytes: int, max_files: int = MAX_FILES
) -> ArchiveInfo:
    """Judge an MLflow model archive from its headers alone, and read its MLmodel."""
    tree = _Tree(max_unpacked_bytes=max_unpacked_bytes, max_files=max_files)
    if fmt is ModelFormat.MLFLOW_ZIP:
        root, mlmodel_bytes = _inspect_zip(path, tree)
    elif fmt is ModelFormat.MLFLOW_TAR:
        root, mlmodel_bytes = _inspect_tar(path, tree)
    else:
        raise ValueError(f"{fmt} is not an archive format")
    mlmodel = _parse_mlmodel(mlmodel_bytes)
    return ArchiveInfo(
        file_count=len(tree.files),
        unpacked_bytes=tree.declared_bytes,
        root=root,
        mlmodel=mlmodel,
        api_schema=_api_schema(mlmodel),
        entry_count=tree.entries,
    )


def _inspect_zip(path: Path, tree: _Tree) -> tuple[str, bytes]:
    with _reading("zip archive"):
        _count_zip_entries(path, tree.max_files)
        with zipfile.ZipFile(path) as zf:
            candidates: dict[tuple[str, ...], zipfile.ZipInfo] = {}
            for info in zf.infolist():
                entry = _zip_entry(info)
                tree.add(entry)
                if not entry.is_dir and _is_mlmodel_candidate(entry.parts):
                    candidates[entry.parts] = info
            root = _model_root(tree)
            info = candidates[(root, "MLmodel") if root else ("MLmodel",)]
            if info.file_size > _MAX_MLMODEL_BYTES:
                return root, _read_mlmodel(None, info.file_size)
            return root, _read_mlmodel(zf.open(info), info.file_size)


def _inspect_tar(path: Path, tree: _Tree) -> tuple[str, bytes]:
    # One pass through the gzip stream: the MLmodel candidates are read as they go by.
    candidates: dict[tuple[str, ...], bytes] = {}
    with _reading("tar.gz archive"), _open_tar(path) as tf:
        for member in tf:
            entry = _tar_entry(member)
            tree.add(entry)
            # Two candidates in different top-level folders can never both be the root's MLmodel.
            if (
                not entry.is_dir
                and _is_mlmodel_candidate(entry.parts)
                and not (len(entry.parts) == 2 and any(len(key) == 2 for key in candidates))
            ):
                candidates[entry.parts] = _read_mlmodel(tf.extractfile(member), entry.size)
    root = _model_root(tree)
    key = (root, "MLmodel") if root else ("MLmodel",)
    if key not in candidates:
        raise InvalidModelFile("The archive's MLmodel could not be read.")
    return root, candidates[key]


# Extraction ------------------------------------------------------------------------------------


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

    def write(self, entry: _Entry, source: IO[bytes]) -> None:
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
                f"The archive entry {_shown(entry.name)} unpacked to {written:,} bytes, not the "
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


def extract_archive(
    fmt: ModelFormat,
    path: Path,
    dest: Path,
    info: ArchiveInfo,
    *,
    max_unpacked_bytes: int,
    max_files: int = MAX_FILES,
) -> Path:
    """Unpack an inspected archive into the empty folder `dest`; return the MLmodel folder."""
    root_parts = _safe_parts(info.root) if info.root else ()
    if len(root_parts) > 1:
        raise ValueError(f"the archive root {info.root!r} is not a single folder")
    # Inspection may have been allowed more entries than the default; the same archive must pass.
    tree = _Tree(max_unpacked_bytes=max_unpacked_bytes, max_files=max(max_files, info.entry_count))
    writer = _Writer(dest, max_unpacked_bytes)
    if fmt is ModelFormat.MLFLOW_ZIP:
        _extract_zip(path, tree, writer)
    elif fmt is ModelFormat.MLFLOW_TAR:
        _extract_tar(path, dest, tree, writer)
    else:
        raise ValueError(f"{fmt} is not an archive format")
    if len(tree.files) != info.file_count:
        raise InvalidModelFile("The archive changed between its inspection and its extraction.")
    model_dir = dest.joinpath(*root_parts)
    if not (model_dir / "MLmodel").is_file():
        raise InvalidModelFile("The unpacked archive has no MLmodel where inspection found it.")
    return model_dir


def _without_size_cap(info: zipfile.ZipInfo) -> zipfile.ZipInfo:
    # zipfile stops a member at the size the central directory declares (then fails its CRC);
    # lifting that stop lets the real size show, so a header that lies meets the byte limit.
    unbounded = copy.copy(info)
    unbounded.file_size = _UNBOUNDED
    return unbounded


_UNBOUNDED = 1 << 62


def _extract_zip(path: Path, tree: _Tree, writer: _Writer) -> None:
    with _reading("zip archive"):
        _count_zip_entries(path, tree.max_files)
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                entry = _zip_entry(info)
                tree.add(entry)
                if entry.is_dir:
                    writer.mkdir(entry.parts)
                    continue
                with zf.open(_without_size_cap(info)) as source:
                    writer.write(entry, source)


def _extract_tar(path: Path, dest: Path, tree: _Tree, writer: _Writer) -> None:
    with _reading("tar.gz archive"), _open_tar(path) as tf:
        for member in tf:
            entry = _tar_entry(member)
            tree.add(entry)
            # Defence in depth: the standard library's rules for untrusted tars must agree too.
            try:
                tarfile.data_filter(member, str(dest))
            except tarfile.FilterError as e:
                raise InvalidModelFile(
                    f"The archive entry {_shown(member.name)} is refused by tarfile's data "
                    f"filter: {e}."
                ) from e
            if entry.is_dir:
                writer.mkdir(entry.parts)
                continue
            source = tf.extractfile(member)
            if source is None:
                raise InvalidModelFile(f"The archive entry {_shown(member.name)} has no data.")
            with source:
                writer.write(entry, source)
