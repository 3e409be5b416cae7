"""Whether an upload's bytes are what its extension claims, one check per model format.

The service never unpickles, imports or executes anything it receives: every check here reads bytes
(magic numbers, protobuf tags, pickle opcodes through `pickletools`, zip headers, JSON) and nothing
more, mostly from the first `HEAD_BYTES` of the upload, which the upload keeps as it streams.
"""

from __future__ import annotations

import codecs
import io
import json
import pickletools
import re
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from app.errors import InvalidModelFile
from app.registration.artifacts.names import ARCHIVE_FORMATS, ModelFormat, shown
from app.registration.artifacts.zipdir import central_directory

__all__ = ["HEAD_BYTES", "check_content"]

HEAD_BYTES = 64 * 1024  # how much of the upload `check_content` expects in `head`

# The format allows 100 MB; a real checkpoint's header is a few hundred KiB. 8 MiB leaves room and
# bounds the time and memory a header costs to check.
_MAX_SAFETENSORS_HEADER = 8 * 1024 * 1024
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


def check_content(fmt: ModelFormat, head: bytes, path: Path, size: int) -> None:
    """Refuse an upload whose bytes do not look like the format its extension claims."""
    if size <= 0 or not head:
        raise InvalidModelFile("The model file is empty.")
    problem = _CHECKS[fmt](head, path, size)
    if problem is not None:
        suffix = ""
        if fmt in ARCHIVE_FORMATS:
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
                return f"its header names {shown(name)} twice"
            seen.add(name)
            if name == "__metadata__":
                if not isinstance(entry, dict):
                    return "its __metadata__ is not an object"
            elif (problem := _tensor_entry_problem(entry, data_len)) is not None:
                return f"tensor {shown(name)} {problem}"
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


def _scanned_names(f: BinaryIO) -> Iterator[bytes]:
    """A zip's entry names for a content check, up to a bound no real checkpoint reaches."""
    for count, name in enumerate(central_directory(f), start=1):
        if count > _MAX_SCANNED_ZIP_ENTRIES:
            raise InvalidModelFile(
                f"The zip archive has more than {_MAX_SCANNED_ZIP_ENTRIES:,} entries."
            )
        yield name
