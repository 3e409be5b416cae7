"""Streaming the multipart registration request to disk.

The body is parsed as it arrives by the service's one multipart parser (`multipart.py`): the model
file goes straight to a file under the registration's working folder while it is hashed, counted
and capped, so no upload is ever held in memory or read twice. Text fields are small and capped too.
A hook runs when the model part starts, so cheap checks on fields sent before it (the metric, the
baseline) can refuse the request before a large upload is received.

Uploads are stored under names the service chooses (`model<extension>`, `predictions.csv`); the
client's file name is decoded once, checked, and kept as metadata only. The whole body is capped
(chunked bodies included), and so is the time: a request that stays silent for the idle timeout,
sends slower than the minimum rate, or outlives the deadline is dropped. A client that goes away or
stalls before its form is complete raises `UploadIncomplete`, which is not recorded as an attempt.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import anyio
from starlette.requests import ClientDisconnect, Request

from app import observability
from app.errors import (
    AppError,
    InvalidModelFile,
    InvalidPredictions,
    PayloadTooLarge,
    UnsupportedMediaType,
    UploadIncomplete,
    UploadTimedOut,
    ValidationFailed,
)
from app.registration.artifacts.names import (
    ALLOWED_EXTENSIONS,
    MAX_NAME_BYTES,
    forbidden_char,
    format_for_filename,
    shown,
)
from app.registration.artifacts.sniffing import HEAD_BYTES
from app.registration.form import MODEL_FIELD, PREDICTIONS_FIELD, TEXT_FIELDS
from app.registration.multipart import (
    Chunk,
    MultipartError,
    MultipartParser,
    PartHeaders,
    PartSink,
    boundary_of,
)

MAX_FIELD_BYTES = 64 * 1024
# Every field and file once, plus room for fields this version does not know (they are ignored).
MAX_PARTS = 64
MAX_PART_NAME_CHARS = 100
# Room for the multipart framing and the text fields around the files.
_ENVELOPE_BYTES = MAX_PARTS * MAX_FIELD_BYTES // 4 + 64 * 1024
_WRITE_BUFFER = 1024 * 1024
_PREDICTIONS_NAME = "predictions.csv"


@dataclass(frozen=True, slots=True)
class UploadLimits:
    """How much and how slowly a client may send one registration request."""

    max_upload_bytes: int
    max_predictions_bytes: int
    idle_timeout_seconds: float = 30.0
    min_bytes_per_second: float = 1024.0
    deadline_seconds: float = 3600.0

    @property
    def max_body_bytes(self) -> int:
        return self.max_upload_bytes + self.max_predictions_bytes + _ENVELOPE_BYTES


@dataclass(slots=True)
class ReceivedFile:
    """A file part, as written to disk."""

    path: Path
    filename: str
    size: int
    sha256: str
    head: bytes


@dataclass(slots=True)
class RegistrationForm:
    fields: dict[str, str]
    model: ReceivedFile
    predictions: ReceivedFile | None


class FieldTarget:
    """A text part: at most `limit` bytes of UTF-8, sent once, stored into `received`."""

    def __init__(
        self, name: str, received: dict[str, str], *, limit: int = MAX_FIELD_BYTES
    ) -> None:
        self._name = name
        self._received = received
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        if name in received:
            raise ValidationFailed(f"the field {name!r} was sent more than once")

    def write(self, chunk: Chunk) -> None:
        self._size += len(chunk)
        if self._size > self._limit:
            raise ValidationFailed(f"the field {self._name!r} is longer than {self._limit} bytes")
        self._chunks.append(bytes(chunk))

    def finish(self) -> None:
        try:
            self._received[self._name] = b"".join(self._chunks).decode("utf-8").strip()
        except UnicodeDecodeError as e:
            raise ValidationFailed(f"the field {self._name!r} is not UTF-8 text") from e


class IgnoredPart:
    """A part this version does not read; its bytes still count against the body's cap."""

    def write(self, chunk: Chunk) -> None:
        pass

    def finish(self) -> None:
        pass


class FileTarget:
    """Writes a file part to `directory/<a name the service chose>`, hashing and capping it.

    `on_start` checks the client's file name and answers the stored name; `file_mode` is the new
    file's permissions (before the umask).
    """

    def __init__(
        self,
        *,
        directory: Path,
        limit: int,
        too_large: Callable[[int], AppError],
        on_start: Callable[[str], str],
        file_mode: int = 0o666,
    ) -> None:
        self._directory = directory
        self._limit = limit
        self._too_large = too_large
        self._on_start = on_start
        self._file_mode = file_mode
        self._hash = hashlib.sha256()
        self._head = bytearray()
        self._file: BinaryIO | None = None
        self.size = 0
        self.path: Path | None = None
        self.filename: str | None = None
        self.done = False

    def start(self, filename: str) -> FileTarget:
        if self.filename is not None:
            raise ValidationFailed("a file field was sent more than once")
        self.filename = filename
        stored = self._on_start(filename)
        self._directory.mkdir(parents=True, exist_ok=True)
        self.path = self._directory / stored
        # O_EXCL: the folder is the upload's own and new; nothing there may be replaced.
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, self._file_mode)
        self._file = os.fdopen(fd, "wb", buffering=_WRITE_BUFFER)
        return self

    def write(self, chunk: Chunk) -> None:
        self.size += len(chunk)
        if self.size > self._limit:
            raise self._too_large(self._limit)
        self._hash.update(chunk)
        if len(self._head) < HEAD_BYTES:
            self._head += chunk[: HEAD_BYTES - len(self._head)]
        assert self._file is not None
        self._file.write(chunk)

    def finish(self) -> None:
        self.close()
        self.done = True

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def received(self) -> ReceivedFile:
        assert self.path is not None and self.filename is not None
        return ReceivedFile(
            path=self.path,
            filename=self.filename,
            size=self.size,
            sha256=self._hash.hexdigest(),
            head=bytes(self._head),
        )


def _model_too_large(limit: int) -> AppError:
    return PayloadTooLarge(
        f"the model file is larger than the limit of {limit} bytes", extra={"limit_bytes": limit}
    )


def _predictions_too_large(limit: int) -> AppError:
    return PayloadTooLarge(
        f"the predictions file is larger than the limit of {limit} bytes",
        extra={"limit_bytes": limit},
    )


def check_client_filename(filename: str, *, what: str, error: type[AppError]) -> str:
    """A client's file name, fit to keep as metadata: short, one component, no hidden characters."""
    if not filename:
        raise error(f"the {what} has no file name")
    if len(filename.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise error(f"the {what}'s file name is longer than {MAX_NAME_BYTES} bytes")
    if "/" in filename or "\\" in filename or filename in (".", ".."):
        raise error(
            f"the {what}'s file name {shown(filename)} contains a path; send the bare file name"
        )
    if (char := forbidden_char(filename)) is not None:
        raise error(
            f"the {what}'s file name {shown(filename)} contains the control or invisible "
            f"character U+{ord(char):04X}"
        )
    return filename


def stored_model_name(filename: str) -> str:
    """The name the model is stored under: `model` and the allowed extension it ends with."""
    lowered = filename.lower()
    extension = max((e for e in ALLOWED_EXTENSIONS if lowered.endswith(e)), key=len)
    return "model" + extension


def _idle(limits: UploadLimits) -> UploadTimedOut:
    return UploadTimedOut(
        f"no data arrived for {limits.idle_timeout_seconds:g} s",
        extra={"idle_timeout_seconds": limits.idle_timeout_seconds},
    )


def _check_pace(limits: UploadLimits, *, received: int, elapsed: float) -> None:
    """Refuse a body that, `elapsed` seconds in, arrives too slowly or has grown too large."""
    if elapsed > limits.idle_timeout_seconds and received < limits.min_bytes_per_second * elapsed:
        raise UploadTimedOut(
            f"the upload arrives slower than {limits.min_bytes_per_second:g} bytes/s",
            extra={"min_bytes_per_second": limits.min_bytes_per_second},
        )
    if received > limits.max_body_bytes:
        raise PayloadTooLarge(
            f"the request body is larger than {limits.max_body_bytes} bytes",
            extra={"limit_bytes": limits.max_body_bytes},
        )


def _past_deadline(limits: UploadLimits) -> UploadTimedOut:
    return UploadTimedOut(
        f"the upload took longer than {limits.deadline_seconds:g} s",
        extra={"deadline_seconds": limits.deadline_seconds},
    )


async def feed_body(request: Request, limits: UploadLimits, feed: Callable[[bytes], None]) -> None:
    """The request body handed to `feed` chunk by chunk: idle timeout, minimum rate, deadline.

    One cancel scope covers the whole body rather than one per chunk (a few microseconds each,
    thousands of chunks per GiB). Its deadline moves on at most once every `slack` seconds, so
    an upload is dropped after between `idle` and `idle + slack` seconds of silence, never
    sooner. `feed` is synchronous: nothing else waits inside the scope.
    """
    idle = limits.idle_timeout_seconds
    slack = min(1.0, idle / 20)
    started = time.monotonic()
    end = started + limits.deadline_seconds
    received = 0
    with anyio.CancelScope(deadline=min(started + idle + slack, end)) as scope:
        async for chunk in request.stream():
            now = time.monotonic()
            received += len(chunk)
            _check_pace(limits, received=received, elapsed=now - started)
            feed(chunk)
            if now >= end:
                raise _past_deadline(limits)
            if scope.deadline < now + idle:
                scope.deadline = min(now + idle + slack, end)
    if scope.cancelled_caught:
        raise _past_deadline(limits) if time.monotonic() >= end else _idle(limits)


async def receive_form(
    request: Request,
    *,
    directory: Path,
    limits: UploadLimits,
    before_model: Callable[[Mapping[str, str]], None],
) -> RegistrationForm:
    """Stream the request's multipart body into `directory`; the files land on disk."""
    content_type = _multipart_type(request, limits)
    parts = _FormParts(directory, limits, before_model)
    model, predictions = parts.model, parts.predictions
    parser = MultipartParser(boundary_of(content_type), parts.on_part, max_parts=MAX_PARTS)
    try:
        await feed_body(request, limits, parser.feed)
    except ClientDisconnect as e:
        raise UploadIncomplete("the client disconnected before the upload finished") from e
    finally:
        model.close()
        predictions.close()
        # Counted once per part, whatever stopped the body: not a lock per chunk.
        observability.UPLOAD_BYTES.labels("model").inc(model.size)
        if predictions.size:
            observability.UPLOAD_BYTES.labels("predictions").inc(predictions.size)

    if not model.done:
        raise InvalidModelFile(
            "send the model as the multipart file field 'model_file'"
            if model.filename is None
            else "the model file part is incomplete"
        )
    parser.close()
    observability.MODEL_UPLOAD_SIZE.observe(model.size)
    return RegistrationForm(
        fields=parts.fields,
        model=model.received(),
        predictions=_sent_predictions(predictions),
    )


def _multipart_type(request: Request, limits: UploadLimits) -> str:
    """The request's multipart/form-data content type; refused early if it is not or too big."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise UnsupportedMediaType(
            "send the registration as multipart/form-data",
            extra={"content_type": content_type[:100].encode("ascii", "replace").decode()},
        )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise _model_too_large(limits.max_upload_bytes)
    return content_type


class _FormParts:
    """Where each part of the registration form goes: text fields, the model, the predictions."""

    def __init__(
        self,
        directory: Path,
        limits: UploadLimits,
        before_model: Callable[[Mapping[str, str]], None],
    ) -> None:
        self.fields: dict[str, str] = {}
        self._before_model = before_model
        self.model = FileTarget(
            directory=directory / "model",
            limit=limits.max_upload_bytes,
            too_large=_model_too_large,
            on_start=self._model_started,
        )
        self.predictions = FileTarget(
            directory=directory / "predictions",
            limit=limits.max_predictions_bytes,
            too_large=_predictions_too_large,
            on_start=self._predictions_started,
        )

    def on_part(self, part: PartHeaders) -> PartSink:
        name = part.name
        if not name or len(name) > MAX_PART_NAME_CHARS or not name.isprintable():
            raise MultipartError(f"the part name {shown(name[:MAX_PART_NAME_CHARS])} is not valid")
        if name == MODEL_FIELD:
            return self.model.start(part.filename or "")
        if name == PREDICTIONS_FIELD:
            return self.predictions.start(part.filename or "")
        if name in TEXT_FIELDS:
            return FieldTarget(name, self.fields)
        return IgnoredPart()

    def _model_started(self, filename: str) -> str:
        check_client_filename(filename, what="model file", error=InvalidModelFile)
        format_for_filename(filename)
        self._before_model(self.fields)
        return stored_model_name(filename)

    def _predictions_started(self, filename: str) -> str:
        # A part without a file name is what a form sends for a file field left empty (an HTML
        # form, Swagger UI's "Try it out"); it is judged by its size when it ends.
        if not filename:
            return _PREDICTIONS_NAME
        check_client_filename(filename, what="predictions file", error=InvalidPredictions)
        if not filename.lower().endswith(".csv"):
            raise InvalidPredictions("predictions must be a .csv file")
        return _PREDICTIONS_NAME


def _sent_predictions(target: FileTarget) -> ReceivedFile | None:
    """The predictions file, or None when none was sent (no part, or an empty file field)."""
    if not target.done:
        return None
    if not target.filename:
        if target.size == 0:
            return None
        raise InvalidPredictions("predictions must be a .csv file")
    return target.received()
