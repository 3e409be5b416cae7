"""Streaming the multipart registration request to disk.

The body is parsed as it arrives (streaming-form-data): the model file goes straight to a file under
the registration's working folder while it is hashed, counted and capped, so no upload is ever held
in memory or read twice. Text fields are small and capped too. A hook runs when the model part
starts, so cheap checks on fields sent before it (the metric, the baseline) can refuse the request
before a large upload is received.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from starlette.requests import ClientDisconnect, Request
from streaming_form_data import StreamingFormDataParser
from streaming_form_data.parser import ParseFailedException
from streaming_form_data.targets import BaseTarget

from app import observability
from app.errors import (
    AppError,
    InvalidModelFile,
    InvalidPredictions,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
)
from app.registration.artifacts import format_for_filename

MODEL_FIELD = "model_file"
PREDICTIONS_FIELD = "predictions"
TEXT_FIELDS = (
    "metric",
    "baseline",
    "metric_value",
    "min_improvement",
    "model_name",
    "sha256",
    "tags",
    # The Hokusai SDK's optional fields (app.registration.sdk_fields).
    "proposal_identifier",
    "eval_spec",
    "scorer_ref",
    "primary_metric",
    "benchmark_spec_id",
)
MAX_FIELD_BYTES = 64 * 1024
HEAD_BYTES = 64 * 1024
# Room for the multipart framing and the text fields around the files.
_ENVELOPE_BYTES = len(TEXT_FIELDS) * MAX_FIELD_BYTES + 64 * 1024
_WRITE_BUFFER = 1024 * 1024


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


class _FieldTarget(BaseTarget):
    def __init__(self, name: str, received: dict[str, str]) -> None:
        super().__init__()
        self._name = name
        self._received = received
        self._chunks: list[bytes] = []
        self._size = 0

    def on_start(self) -> None:
        if self._name in self._received or self._chunks:
            raise ValidationFailed(f"the field {self._name!r} was sent more than once")

    def on_data_received(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > MAX_FIELD_BYTES:
            raise ValidationFailed(
                f"the field {self._name!r} is longer than {MAX_FIELD_BYTES} bytes"
            )
        self._chunks.append(chunk)

    def on_finish(self) -> None:
        try:
            self._received[self._name] = b"".join(self._chunks).decode("utf-8").strip()
        except UnicodeDecodeError as e:
            raise ValidationFailed(f"the field {self._name!r} is not UTF-8 text") from e


class _FileTarget(BaseTarget):
    """Writes a file part to `directory/<stored_as>` (else its file name, which `on_start` must
    have checked), hashing and capping it on the way."""

    def __init__(
        self,
        *,
        directory: Path,
        limit: int,
        too_large: Callable[[int], AppError],
        on_start: Callable[[str], None],
        stored_as: str | None = None,
    ) -> None:
        super().__init__()
        self._directory = directory
        self._stored_as = stored_as
        self._limit = limit
        self._too_large = too_large
        self._on_start = on_start
        self._hash = hashlib.sha256()
        self._head = bytearray()
        self._file: BinaryIO | None = None
        self.size = 0
        self.path: Path | None = None
        self.filename: str | None = None
        self.done = False

    def on_start(self) -> None:
        if self.filename is not None:
            raise ValidationFailed("a file field was sent more than once")
        self.filename = (self.multipart_filename or "").strip()
        self._on_start(self.filename)
        self._directory.mkdir(parents=True, exist_ok=True)
        self.path = self._directory / (self._stored_as or self.filename)
        self._file = self.path.open("wb", buffering=_WRITE_BUFFER)

    def on_data_received(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self._limit:
            raise self._too_large(self._limit)
        self._hash.update(chunk)
        if len(self._head) < HEAD_BYTES:
            self._head += chunk[: HEAD_BYTES - len(self._head)]
        assert self._file is not None
        self._file.write(chunk)

    def on_finish(self) -> None:
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


async def receive_form(
    request: Request,
    *,
    directory: Path,
    max_upload_bytes: int,
    max_predictions_bytes: int,
    before_model: Callable[[Mapping[str, str]], None],
) -> RegistrationForm:
    """Stream the request's multipart body into `directory`; the files land on disk."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise UnsupportedMediaType(
            "send the registration as multipart/form-data",
            extra={"content_type": content_type[:100]},
        )
    declared = request.headers.get("content-length")
    limit = max_upload_bytes + max_predictions_bytes + _ENVELOPE_BYTES
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _model_too_large(max_upload_bytes)

    fields: dict[str, str] = {}

    def model_started(filename: str) -> None:
        format_for_filename(filename)
        before_model(fields)

    def predictions_started(filename: str) -> None:
        # A part without a file name is what a form sends for a file field left empty (an HTML
        # form, Swagger UI's "Try it out"); it is judged by its size when it ends.
        if filename and not filename.lower().endswith(".csv"):
            raise InvalidPredictions("predictions must be a .csv file")

    model = _FileTarget(
        directory=directory / "model",
        limit=max_upload_bytes,
        too_large=_model_too_large,
        on_start=model_started,
    )
    predictions = _FileTarget(
        directory=directory / "predictions",
        limit=max_predictions_bytes,
        too_large=_predictions_too_large,
        on_start=predictions_started,
        # The client's file name is only checked for its extension: it never becomes a path.
        stored_as="predictions.csv",
    )
    try:
        parser = StreamingFormDataParser(headers=request.headers)
    except (ParseFailedException, ValueError, KeyError) as e:
        raise ValidationFailed("the multipart body has no valid boundary") from e
    parser.register(MODEL_FIELD, model)
    parser.register(PREDICTIONS_FIELD, predictions)
    for name in TEXT_FIELDS:
        parser.register(name, _FieldTarget(name, fields))
    try:
        async for chunk in request.stream():
            parser.data_received(chunk)
    except ParseFailedException as e:
        raise ValidationFailed("the multipart body is malformed") from e
    except ClientDisconnect as e:
        raise ValidationFailed("the client disconnected before the upload finished") from e
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
    observability.MODEL_UPLOAD_SIZE.observe(model.size)
    return RegistrationForm(
        fields=fields,
        model=model.received(),
        predictions=_sent_predictions(predictions),
    )


def _sent_predictions(target: _FileTarget) -> ReceivedFile | None:
    """The predictions file, or None when none was sent (no part, or an empty file field)."""
    if not target.done:
        return None
    if not target.filename:
        if target.size == 0:
            return None
        raise InvalidPredictions("predictions must be a .csv file")
    return target.received()
