"""Sealed benchmarks: receiving the CSV, checking it, and storing features and labels apart.

The upload is streamed to a file under a name the service chooses, hashed and capped as it
arrives. Parsing runs in a worker thread and reads the file a block of rows at a time: the
feature columns are written straight to `features.csv` (what a model is shown), the label column
is converted to numbers as the metric needs them and saved as `labels.npy`, which only the service
reads. Memory holds one block of rows and the labels as float64 (8 bytes a row, at most
`MAX_ROWS` rows).
"""

from __future__ import annotations

import csv
import operator
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from starlette.requests import ClientDisconnect, Request

from app.errors import (
    InvalidBenchmark,
    InvalidPredictions,
    PayloadTooLarge,
    UnsupportedMediaType,
    UnsupportedMetric,
    UploadIncomplete,
)
from app.registration.multipart import MultipartParser, PartHeaders, PartSink, boundary_of
from app.registration.upload import (
    FieldTarget,
    FileTarget,
    IgnoredPart,
    UploadLimits,
    feed_body,
)
from app.scoring.compute import (
    COLUMNS,
    CellError,
    Kind,
    compute_from_columns,
    parse_column,
)
from app.scoring.lines import bounded_lines
from app.scoring.registry import METRICS, MetricSpec

FloatArray = npt.NDArray[np.float64]

DATASET_FIELD = "dataset"
LABEL_FIELD = "label_column"
DEFAULT_LABEL_COLUMN = "y_true"
FEATURES_FILE = "features.csv"
LABELS_FILE = "labels.npy"

MAX_ROWS = 10_000_000
MAX_COLUMNS = 2_000
MAX_COLUMN_NAME = 200
MAX_CLASSES = 1_000
MAX_FIELD_BYTES = 1024
MAX_PARTS = 8
_CHUNK_ROWS = 32_768
_MAX_ECHO = 40
_WRITE_BUFFER = 1024 * 1024
# What pandas reads as a boolean column.
_BOOL_WORDS = frozenset({"True", "False", "true", "false", "TRUE", "FALSE"})
_INTEGER = re.compile(r"^[+-]?\d{1,18}$")
_FLOAT_CHARS = re.compile(r"[^0-9eE+\-.,]")
# The dtypes a model's DataFrame gets, from the narrowest a column can be read as.
DTYPES = ("bool", "int64", "float64", "object")
CLASSIFICATION = frozenset({"accuracy", "auroc", "f1", "precision", "recall", "log_loss"})


@dataclass(frozen=True, slots=True)
class ReceivedDataset:
    path: Path
    size: int
    sha256: str
    label_column: str


@dataclass(frozen=True, slots=True)
class ParsedBenchmark:
    """What the stored benchmark's metadata says; the rows are in its folder."""

    rows: int
    label_column: str
    features: list[dict[str, str]]
    classes: list[Any] | None


def metric_for_benchmark(metric: str | None) -> MetricSpec:
    """The token's metric, if a benchmark can score it; `UnsupportedMetric` otherwise."""
    computable = [name for name, s in METRICS.items() if s.computable]
    if metric is None:
        raise UnsupportedMetric(
            "the token has no metric; set one on the token before uploading a benchmark",
            extra={"computable_metrics": computable},
        )
    spec = METRICS[metric]
    if not spec.computable:
        raise UnsupportedMetric(
            f"{spec.name} cannot be computed from a model's predictions, so a benchmark cannot "
            f"score it; benchmarks support {', '.join(computable)}",
            extra={"metric_name": spec.name, "computable_metrics": computable},
        )
    return spec


# Receiving ---------------------------------------------------------------------------------------


def _dataset_too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the benchmark file is larger than the limit of {limit} bytes",
        extra={"limit_bytes": limit},
    )


async def receive_dataset(
    request: Request, *, directory: Path, limits: UploadLimits
) -> ReceivedDataset:
    """Stream the multipart body's `dataset` into `directory/dataset.csv` (`directory` exists).

    `limits.max_upload_bytes` caps the dataset; the body is read with the registration's idle,
    rate and deadline limits, by the service's own multipart parser.
    """
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise UnsupportedMediaType(
            "send the benchmark as multipart/form-data with the CSV in the field 'dataset'",
            extra={"content_type": content_type[:100].encode("ascii", "replace").decode()},
        )
    limit = limits.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise _dataset_too_large(limit)
    fields: dict[str, str] = {}
    dataset = FileTarget(
        directory=directory,
        limit=limit,
        too_large=_dataset_too_large,
        on_start=lambda _client_name: "dataset.csv",
        file_mode=0o600,
    )

    def on_part(part: PartHeaders) -> PartSink:
        if part.name == DATASET_FIELD:
            return dataset.start(part.filename or "")
        if part.name == LABEL_FIELD:
            return FieldTarget(LABEL_FIELD, fields, limit=MAX_FIELD_BYTES)
        return IgnoredPart()

    parser = MultipartParser(boundary_of(content_type), on_part, max_parts=MAX_PARTS)
    try:
        await feed_body(request, limits, parser.feed)
    except ClientDisconnect as e:
        raise UploadIncomplete("the client disconnected before the upload finished") from e
    finally:
        dataset.close()
    if not dataset.done:
        raise InvalidBenchmark(
            "send the benchmark CSV as the multipart file field 'dataset'"
            if dataset.filename is None
            else "the dataset file part is incomplete"
        )
    parser.close()
    label = fields.get(LABEL_FIELD) or DEFAULT_LABEL_COLUMN
    received = dataset.received()
    return ReceivedDataset(
        path=received.path, size=received.size, sha256=received.sha256, label_column=label
    )


# Parsing -----------------------------------------------------------------------------------------


def _shown(text: str) -> str:
    return repr(text[:_MAX_ECHO] + ("…" if len(text) > _MAX_ECHO else ""))


def _line_too_long(limit: int) -> InvalidBenchmark:
    return InvalidBenchmark(
        f"the benchmark has a line longer than {limit} characters; is it a CSV file?"
    )


class _ColumnType:
    """The narrowest dtype every cell seen so far fits: bool, int64, float64, else object."""

    def __init__(self) -> None:
        self.index = 0  # into DTYPES

    def update(self, cells: list[str]) -> None:
        if self.index == 0 and not _BOOL_WORDS.issuperset(cells):
            self.index = 1
        if self.index == 1 and not all(map(_INTEGER.match, cells)):
            self.index = 2
        if self.index == 2 and not _all_floats(cells):
            self.index = 3

    @property
    def dtype(self) -> str:
        return DTYPES[self.index]


def _all_floats(cells: list[str]) -> bool:
    """Whether every cell is a number or empty (read as NaN), as pandas reads a float column."""
    present = [cell for cell in cells if cell.strip()]
    if _FLOAT_CHARS.search("".join(present).replace(" ", "")) is not None:
        return False
    try:
        np.array(present, dtype=np.float64)
    except ValueError:
        return False
    return True


def parse_benchmark(
    spec: MetricSpec, source: Path, destination: Path, *, label_column: str
) -> ParsedBenchmark:
    """Check the CSV and write `features.csv` and `labels.npy` into `destination`.

    `InvalidBenchmark` names the row (and file line) at fault for any unusable file.
    """
    label_kind = COLUMNS[spec.name][0].kind
    try:
        with (
            source.open("r", encoding="utf-8-sig", newline="") as handle,
            (destination / FEATURES_FILE).open("w", encoding="utf-8", newline="") as out,
        ):
            reader = csv.reader(bounded_lines(handle, too_long=_line_too_long), strict=True)
            writer = csv.writer(out, lineterminator="\n")
            try:
                label_name, features, labels = _parse_rows(
                    reader, writer, spec, label_kind, label_column=label_column
                )
            except csv.Error as e:
                raise InvalidBenchmark(
                    f"the benchmark is not valid CSV at line {reader.line_num}: {e}"
                ) from None
    except UnicodeDecodeError:
        raise InvalidBenchmark("the benchmark is not UTF-8 text") from None
    _check_labels_usable(spec, labels)
    classes: list[Any] | None = None
    if spec.name in CLASSIFICATION:
        distinct = np.unique(labels)
        if distinct.size > MAX_CLASSES:
            raise InvalidBenchmark(
                f"the label column has {distinct.size} distinct values; {spec.name} takes at "
                f"most {MAX_CLASSES} classes"
            )
        classes = [int(value) for value in distinct]
    fd = os.open(destination / LABELS_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        np.save(file, labels, allow_pickle=False)
    os.chmod(destination / FEATURES_FILE, 0o600)
    return ParsedBenchmark(
        rows=int(labels.size),
        label_column=label_name,
        features=[{"name": name, "dtype": dtype} for name, dtype in features],
        classes=classes,
    )


def _check_header(header: list[str], label_column: str) -> tuple[list[str], int]:
    names = [cell.strip() for cell in header]
    if not any(names):
        raise InvalidBenchmark("the first line of the benchmark must be a header row")
    if len(names) > MAX_COLUMNS:
        raise InvalidBenchmark(f"the benchmark has more than {MAX_COLUMNS} columns")
    for name in names:
        if not name:
            raise InvalidBenchmark("every column of the header row needs a name")
        if len(name) > MAX_COLUMN_NAME or not name.isprintable():
            raise InvalidBenchmark(
                f"column names must be at most {MAX_COLUMN_NAME} printable characters; got "
                f"{_shown(name)}"
            )
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise InvalidBenchmark(
            f"the header row names {', '.join(_shown(n) for n in duplicated[:5])} more than once"
        )
    if label_column not in names:
        found = ", ".join(_shown(name) for name in names[:20])
        raise InvalidBenchmark(
            f"the label column {_shown(label_column)} is not in the header row (found {found}); "
            "name it with the field 'label_column'",
            extra={"label_column": label_column[:MAX_COLUMN_NAME]},
        )
    if len(names) < 2:
        raise InvalidBenchmark("the benchmark needs at least one feature column besides the label")
    return names, names.index(label_column)


def _parse_rows(
    reader: Any,
    writer: Any,
    spec: MetricSpec,
    label_kind: Kind,
    *,
    label_column: str,
) -> tuple[str, list[tuple[str, str]], FloatArray]:
    header = next(reader, None)
    if header is None:
        raise InvalidBenchmark("the benchmark file is empty")
    names, label_index = _check_header(header, label_column)
    width = len(names)
    feature_indices = [i for i in range(width) if i != label_index]
    feature_names = [names[i] for i in feature_indices]
    writer.writerow(feature_names)
    types = [_ColumnType() for _ in feature_indices]
    take_features = operator.itemgetter(*feature_indices)
    label_parts: list[FloatArray] = []
    total = 0
    while True:
        limit = max(1, min(_CHUNK_ROWS, MAX_ROWS - total + 1))
        chunk = list(islice(reader, limit))
        if not chunk:
            break
        at_end = len(chunk) < limit
        if [] in chunk:
            chunk = [row for row in chunk if row]
        _check_chunk(chunk, width, total)
        labels = [row[label_index] for row in chunk]
        label_parts.append(
            _parse_labels(labels, spec, label_kind, name=names[label_index], total=total)
        )
        if len(feature_indices) == 1:
            rows = [(row[feature_indices[0]],) for row in chunk]
        else:
            rows = list(map(take_features, chunk))
        for position, column_type in enumerate(types):
            column_type.update([row[position] for row in rows])
        writer.writerows(rows)
        total += len(chunk)
        if at_end:
            break
    if total == 0:
        raise InvalidBenchmark("the benchmark has a header row but no data rows")
    features = [(name, t.dtype) for name, t in zip(feature_names, types, strict=True)]
    return names[label_index], features, np.concatenate(label_parts)


def _check_chunk(chunk: list[list[str]], width: int, total: int) -> None:
    """Every row of a block has the header's width, and the file stays within `MAX_ROWS`."""
    if set(map(len, chunk)) - {width}:
        index = next(i for i, row in enumerate(chunk) if len(row) != width)
        raise InvalidBenchmark(
            f"row {total + index + 1} has {len(chunk[index])} fields; the header has {width}",
            extra={"row": total + index + 1},
        )
    if total + len(chunk) > MAX_ROWS:
        raise InvalidBenchmark(
            f"the benchmark has more than {MAX_ROWS} rows", extra={"max_rows": MAX_ROWS}
        )


def _parse_labels(
    labels: list[str], spec: MetricSpec, label_kind: Kind, *, name: str, total: int
) -> FloatArray:
    """A block's label cells as numbers; `total` rows came before it."""
    try:
        return parse_column(labels, label_kind, name=name)
    except CellError as bad:
        # The cell itself is not echoed: labels are never repeated back, not even to the
        # owner uploading them.
        raise InvalidBenchmark(
            f"row {total + bad.index + 1}: the label is not {label_kind.value}, as "
            f"{spec.name} needs",
            extra={"row": total + bad.index + 1},
        ) from None


def _check_labels_usable(spec: MetricSpec, labels: FloatArray) -> None:
    """The metric must be defined on these labels: a perfect model must get a score."""
    try:
        compute_from_columns(spec, labels, labels)
    except InvalidPredictions as e:
        raise InvalidBenchmark(
            f"{spec.name} cannot be computed on this benchmark's labels: "
            + e.detail.replace("y_true", "the label"),
        ) from None


# Storage -----------------------------------------------------------------------------------------


def new_storage(root: Path) -> tuple[str, Path]:
    """A fresh private folder for one benchmark version, named by its id."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    benchmark_id = str(uuid.uuid4())
    folder = root / benchmark_id
    folder.mkdir(mode=0o700)
    return benchmark_id, folder


def load_labels(folder: Path) -> FloatArray:
    labels: FloatArray = np.load(folder / LABELS_FILE, allow_pickle=False)
    return labels


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
