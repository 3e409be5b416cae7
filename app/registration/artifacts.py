"""What an uploaded model file is, and safe inspection and extraction of MLflow model archives.

The service never unpickles, imports or executes anything it receives: every check here reads bytes
(magic numbers, protobuf tags, pickle opcodes through `pickletools`, zip and tar headers, YAML and
JSON with safe loaders) and nothing more. Archives are judged from their headers before anything is
unpacked, and unpacked with the bytes actually written counted against the limit, because headers
can lie.
"""

from __future__ import annotations

import codecs
import io
import json
import pickletools
import re
import unicodedata
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any

from app.errors import InvalidModelFile

__all__ = [
    "ALLOWED_EXTENSIONS",
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
_MAX_SAFETENSORS_HEADER = 100_000_000
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


# Upload file names ---------------------------------------------------------------------------------


def format_for_filename(filename: str) -> ModelFormat:
    """The model format an upload's file name claims, refusing unsafe names and unknown extensions."""
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
    except ValueError:
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
            for name in _central_directory(f, limit=_MAX_SCANNED_ZIP_ENTRIES):
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
        return f"its header length {header_len} is over {_MAX_SAFETENSORS_HEADER} bytes"
    if 8 + header_len > size:
        return f"its header length {header_len} runs past the end of the file"
    if 8 + header_len <= len(head):
        raw = head[8 : 8 + header_len]
    else:
        with path.open("rb") as f:
            f.seek(8)
            raw = f.read(header_len)
    if not raw.startswith(b"{"):
        return "its header is not a JSON object"
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return "its header is not valid UTF-8 JSON"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    data_len = size - 8 - header_len
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict):
                return "its __metadata__ is not an object"
            continue
        problem = _tensor_entry_problem(entry, data_len)
        if problem is not None:
            return f"tensor {_shown(name)} {problem}"
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
            for name in _central_directory(f, limit=_MAX_SCANNED_ZIP_ENTRIES):
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
