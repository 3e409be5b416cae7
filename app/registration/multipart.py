"""The service's one multipart/form-data parser: a push parser with hard caps on every dimension.

The body is fed in as it arrives. Boundaries are found with `bytes.find` (C speed, linear), part
headers are collected up to `max_header_bytes` and parsed by a linear tokenizer, and the number of
parts is capped, so no input makes the parser slower than linear or hold more than one header block
and one boundary's worth of body in memory.

Part headers must be UTF-8 (what browsers and HTTP clients send). A client's file name is decoded
exactly once: `filename*` (RFC 2231/5987, UTF-8 or ISO-8859-1) wins over `filename`; a `filename`
that is wholly RFC 2047 encoded words is decoded from them; percent signs in a plain `filename` are
literal. The result is only ever data: callers store uploads under names they choose.
"""

from __future__ import annotations

import base64
import binascii
import quopri
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import unquote_to_bytes

from app.errors import PayloadTooLarge, ValidationFailed

MAX_HEADER_BYTES = 8 * 1024
MAX_HEADER_LINES = 8
MAX_PARAMETERS = 8
MAX_BOUNDARY_CHARS = 70  # RFC 2046
# Bytes tolerated before the first boundary and after the last (RFC 2046 preamble and epilogue).
MAX_PREAMBLE_BYTES = 1024

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_PARAMETER = re.compile(
    rf'[ \t]*;[ \t]*({_TOKEN})[ \t]*=[ \t]*(?:"([^"\\]*(?:\\.[^"\\]*)*)"|({_TOKEN}))[ \t]*',
    re.DOTALL,
)
_DISPOSITION = re.compile(rf"[ \t]*({_TOKEN})[ \t]*")
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)
_EXT_VALUE = re.compile(r"^([A-Za-z0-9!#$%&+^_`{}~-]+)'([A-Za-z0-9-]*)'(.+)$", re.DOTALL)
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([BbQq])\?([^?\s]*)\?=")
_ENCODED_WORDS = re.compile(rf"^(?:{_ENCODED_WORD.pattern}[ \t]*)+$")
_BOUNDARY = re.compile(r"^[0-9A-Za-z'()+_,./:=? -]{0,69}[0-9A-Za-z'()+_,./:=?-]$")
_CHARSETS = {"utf-8": "utf-8", "utf8": "utf-8", "iso-8859-1": "latin-1", "us-ascii": "ascii"}


class MultipartError(ValidationFailed):
    """The body is not well-formed multipart/form-data."""

    example = "the part header names 'filename' twice"


@dataclass(frozen=True, slots=True)
class PartHeaders:
    """What a part says about itself, decoded and checked for well-formedness (not for policy)."""

    name: str
    filename: str | None
    content_type: str | None


# A part's bytes as the parser hands them on: a view into the arriving chunk when it passes
# through whole (no copy), bytes otherwise. A sink that keeps one past its `write` copies it.
Chunk = bytes | memoryview


class PartSink(Protocol):
    def write(self, data: Chunk) -> None: ...

    def finish(self) -> None: ...


def boundary_of(content_type: str) -> bytes:
    """The boundary parameter of a multipart/form-data Content-Type."""
    kind, _, rest = content_type.partition(";")
    if kind.strip().lower() != "multipart/form-data":
        raise MultipartError("the body must be multipart/form-data")
    params = _parameters(";" + rest, what="Content-Type")
    boundary = params.get("boundary")
    if not boundary or not _BOUNDARY.fullmatch(boundary):
        raise MultipartError("the multipart body has no valid boundary")
    return boundary.encode("ascii")


def _parameters(text: str, *, what: str) -> dict[str, str]:
    params: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        match = _PARAMETER.match(text, pos)
        if match is None:
            if text[pos:].strip(" \t;") == "":
                break
            raise MultipartError(f"the {what} header is malformed near character {pos}")
        key = match.group(1).lower()
        if key in params:
            raise MultipartError(f"the {what} header names {key!r} twice")
        if len(params) >= MAX_PARAMETERS:
            raise MultipartError(f"the {what} header has more than {MAX_PARAMETERS} parameters")
        quoted, token = match.group(2), match.group(3)
        params[key] = _QUOTED_PAIR.sub(r"\1", quoted) if quoted is not None else token
        pos = match.end()
    return params


def _charset(name: str) -> str:
    codec = _CHARSETS.get(name.lower())
    if codec is None:
        raise MultipartError(f"the file name uses the unsupported charset {name[:40]!r}")
    return codec


def _ext_value(value: str) -> str:
    """RFC 5987/2231 `charset'language'percent-encoded` (the `filename*` parameter)."""
    match = _EXT_VALUE.fullmatch(value)
    if match is None:
        raise MultipartError("the filename* parameter is not charset'language'value")
    try:
        return unquote_to_bytes(match.group(3)).decode(_charset(match.group(1)))
    except UnicodeDecodeError as e:
        raise MultipartError("the filename* parameter does not decode in its charset") from e


def _encoded_words(value: str) -> str:
    """A value made wholly of RFC 2047 encoded words, decoded; anything else as it is."""
    if not _ENCODED_WORDS.fullmatch(value):
        return value
    decoded: list[str] = []
    for charset, encoding, text in _ENCODED_WORD.findall(value):
        try:
            if encoding in "Bb":
                raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
            else:
                raw = quopri.decodestring(text.replace("_", " ").encode("ascii"), header=True)
            decoded.append(raw.decode(_charset(charset.split("*")[0])))
        except (binascii.Error, UnicodeError, ValueError) as e:
            raise MultipartError("the file name's RFC 2047 encoding does not decode") from e
    return "".join(decoded)


def parse_part_headers(block: bytes) -> PartHeaders:
    """The name, file name and content type of one part, from its raw header block."""
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MultipartError(
            "a part header is not UTF-8; send file names and field names as UTF-8 (or encode "
            "the file name as filename*=UTF-8''...)"
        ) from e
    lines = text.split("\r\n")
    if len(lines) > MAX_HEADER_LINES:
        raise MultipartError(f"a part has more than {MAX_HEADER_LINES} header lines")
    disposition: str | None = None
    content_type: str | None = None
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or line[:1] in (" ", "\t"):
            raise MultipartError("a part header line is malformed")
        key = name.lower()
        if key == "content-disposition":
            if disposition is not None:
                raise MultipartError("a part has two Content-Disposition headers")
            disposition = value
        elif key == "content-type":  # other headers (Content-Transfer-Encoding...) are ignored
            if content_type is not None:
                raise MultipartError("a part has two Content-Type headers")
            content_type = value.strip()
            if not content_type.isprintable() or len(content_type) > 200:
                raise MultipartError("a part's Content-Type is not a plain media type")
    if disposition is None:
        raise MultipartError("a part has no Content-Disposition header")
    kind = _DISPOSITION.match(disposition)
    if kind is None or kind.group(1).lower() != "form-data":
        raise MultipartError("a part's Content-Disposition is not form-data")
    params = _parameters(disposition[kind.end() :], what="Content-Disposition")
    if "name" not in params:
        raise MultipartError("a part's Content-Disposition has no name")
    name = params["name"]
    if "filename*" in params:
        filename: str | None = _ext_value(params["filename*"])
    elif "filename" in params:
        filename = _encoded_words(params["filename"])
    else:
        filename = None
    return PartHeaders(name=name, filename=filename, content_type=content_type)


class MultipartParser:
    """Feed it the body in pieces; it calls `on_part` for each part and streams the part's bytes
    to the sink that returns. Refuses anything malformed or over a cap with an `AppError`."""

    def __init__(
        self,
        boundary: bytes,
        on_part: Callable[[PartHeaders], PartSink],
        *,
        max_parts: int,
        max_header_bytes: int = MAX_HEADER_BYTES,
    ) -> None:
        self._delimiter = b"\r\n--" + boundary
        self._on_part = on_part
        self._max_parts = max_parts
        self._max_header_bytes = max_header_bytes
        # The first boundary has no CRLF before it; pretending it does makes one search find all.
        self._buffer = bytearray(b"\r\n")
        self._state = "preamble"
        self._searched = 0
        self._sink: PartSink | None = None
        self.parts = 0

    @property
    def done(self) -> bool:
        return self._state == "epilogue"

    def feed(self, data: bytes) -> None:
        if self._state == "epilogue":
            self._epilogue(len(data))
            return
        if self._state == "body" and self._passes_through(data):
            return
        self._buffer += data
        while self._step():
            pass

    def _passes_through(self, data: bytes) -> bool:
        """The common case of a large upload: no boundary in `data`, so it goes to the sink
        without being copied (the buffer holds at most a boundary's length here)."""
        assert self._sink is not None
        keep = len(self._delimiter) - 1
        if len(data) <= keep:
            return False
        if self._delimiter in bytes(self._buffer) + data[:keep] or self._delimiter in data:
            return False
        if self._buffer:
            self._sink.write(bytes(self._buffer))
        view = memoryview(data)
        self._sink.write(view[:-keep])
        self._buffer = bytearray(view[-keep:])
        return True

    def close(self) -> None:
        """The body ended: it must have ended at the closing boundary."""
        if self._state != "epilogue":
            raise MultipartError("the multipart body ends before its closing boundary")

    def _epilogue(self, size: int) -> None:
        self._epilogue_bytes = getattr(self, "_epilogue_bytes", 0) + size
        if self._epilogue_bytes > MAX_PREAMBLE_BYTES:
            raise MultipartError("the multipart body goes on after its closing boundary")

    def _step(self) -> bool:
        buffer = self._buffer
        if self._state == "preamble":
            index = buffer.find(self._delimiter)
            if index < 0:
                if len(buffer) > MAX_PREAMBLE_BYTES + len(self._delimiter):
                    raise MultipartError("the multipart body does not start with its boundary")
                return False
            del buffer[: index + len(self._delimiter)]
            self._state = "after_boundary"
            return True
        if self._state == "after_boundary":
            if len(buffer) < 2:
                return False
            if buffer[:2] == b"--":
                self._state = "epilogue"
                self._epilogue(len(buffer) - 2)
                buffer.clear()
                return False
            # RFC 2046 allows spaces and tabs between the boundary and its line break.
            end = buffer.find(b"\r\n", 0, 66)
            if end < 0:
                if len(buffer) >= 66:
                    raise MultipartError("a multipart boundary is not followed by a line break")
                return False
            if buffer[:end].strip(b" \t"):
                raise MultipartError("a multipart boundary is followed by other text")
            del buffer[: end + 2]
            self.parts += 1
            if self.parts > self._max_parts:
                raise MultipartError(f"the multipart body has more than {self._max_parts} parts")
            self._state = "headers"
            self._searched = 0
            return True
        if self._state == "headers":
            if buffer[:2] == b"\r\n":
                raise MultipartError("a part has no headers")
            end = buffer.find(b"\r\n\r\n", self._searched)
            if end < 0:
                self._searched = max(0, len(buffer) - 3)
                if len(buffer) > self._max_header_bytes:
                    raise _header_too_large(self._max_header_bytes)
                return False
            if end > self._max_header_bytes:
                raise _header_too_large(self._max_header_bytes)
            headers = parse_part_headers(bytes(buffer[:end]))
            del buffer[: end + 4]
            self._sink = self._on_part(headers)
            self._state = "body"
            return True
        # body
        assert self._sink is not None
        index = buffer.find(self._delimiter)
        if index >= 0:
            if index:
                self._sink.write(bytes(buffer[:index]))
            del buffer[: index + len(self._delimiter)]
            sink, self._sink = self._sink, None
            sink.finish()
            self._state = "after_boundary"
            return True
        keep = len(self._delimiter) - 1
        if len(buffer) > keep:
            cut = len(buffer) - keep
            self._sink.write(bytes(buffer[:cut]))
            del buffer[:cut]
        return False


def _header_too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"a part's headers are longer than {limit} bytes", extra={"limit_bytes": limit}
    )
