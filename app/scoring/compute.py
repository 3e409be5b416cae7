"""Computing a metric from a predictions CSV, with the same numbers scikit-learn gives.

The file is streamed through the csv module and converted to numpy a chunk of rows at a time, so
memory holds the parsed float columns, never the file's text. Every complaint about the data names
the data row at fault and the file line it is on. The formulas themselves are in formulas.py.
"""

from __future__ import annotations

import csv
import enum
import math
import operator
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np
import numpy.typing as npt

from app.errors import InvalidPredictions
from app.scoring.formulas import FORMULAS, FloatArray
from app.scoring.lines import LineProgress, bounded_lines
from app.scoring.registry import METRICS, MetricSpec
from app.scoring.validation import NUMBER_PATTERN

if TYPE_CHECKING:
    from _csv import Reader as _csv_reader


Y_TRUE = "y_true"
Y_PRED = "y_pred"
Y_SCORE = "y_score"

# Rows converted to numpy at a time: large enough that per-chunk overhead vanishes, small enough
# that the chunk's Python strings stay a few megabytes. A chunk also ends once it has read
# _CHUNK_CHARS of the file, so rows of many fields cannot multiply that (each field is a Python
# object of 50 bytes or more): memory follows the bytes read, not the row count.
_CHUNK_ROWS = 65_536
_CHUNK_CHARS = 1 << 20
_MAX_ECHO = 40
# Class labels must be whole numbers a float holds exactly; scikit-learn treats larger "integers"
# as continuous targets and refuses them.
_MAX_LABEL = 2.0**53

# Characters a plain decimal number can contain (plus the "," used to join cells and the whitespace
# float() strips). One regex search over a joined chunk rejects "nan", "inf", "1_000" and non-ASCII
# digits far faster than matching each cell; cells that pass still go through float parsing.
_FOREIGN_CHAR = re.compile(r"[^0-9eE+\-., \t]")


class Kind(enum.Enum):
    """What a column's cells must be, beyond finite numbers."""

    REAL = "a finite number"
    LABEL = "a class label (a whole number)"
    BINARY = "0 or 1"
    PROBABILITY = "a probability in [0, 1]"


@dataclass(frozen=True, slots=True)
class Column:
    """A column a metric needs, and what its cells must hold."""

    name: str
    kind: Kind


_LABELS = (Column(Y_TRUE, Kind.BINARY), Column(Y_PRED, Kind.BINARY))
_REGRESSION = (Column(Y_TRUE, Kind.REAL), Column(Y_PRED, Kind.REAL))

COLUMNS: dict[str, tuple[Column, Column]] = {
    "accuracy": (Column(Y_TRUE, Kind.LABEL), Column(Y_PRED, Kind.LABEL)),
    "auroc": (Column(Y_TRUE, Kind.BINARY), Column(Y_SCORE, Kind.REAL)),
    "f1": _LABELS,
    "precision": _LABELS,
    "recall": _LABELS,
    "log_loss": (Column(Y_TRUE, Kind.BINARY), Column(Y_SCORE, Kind.PROBABILITY)),
    "mse": _REGRESSION,
    "rmse": _REGRESSION,
    "mae": _REGRESSION,
    "r2": _REGRESSION,
}


def required_columns(spec: MetricSpec) -> tuple[str, ...]:
    """The CSV columns a computable metric reads, e.g. ("y_true", "y_score") for auroc."""
    return tuple(column.name for column in COLUMNS.get(spec.name, ()))


def compute_from_predictions(spec: MetricSpec, path: Path, *, max_rows: int = 10_000_000) -> float:
    """Compute the metric from a predictions CSV; `InvalidPredictions` for any unusable file."""
    compute = FORMULAS.get(spec.name)
    if not spec.computable or compute is None:
        computable = [name for name, s in METRICS.items() if s.computable]
        raise InvalidPredictions(
            f"{spec.name} cannot be computed from predictions; send metric_value instead",
            extra={"metric_name": spec.name, "computable_metrics": computable},
        )
    columns = COLUMNS[spec.name]
    y_true, y_other = _read_columns(path, spec, columns, max_rows=max_rows)
    with np.errstate(over="ignore", invalid="ignore"):
        value = compute(y_true, y_other)
    if not math.isfinite(value):
        raise InvalidPredictions(
            f"{spec.name} is not a finite number for these predictions (the values are too large)",
            extra={"metric_name": spec.name},
        )
    return value


# Reading -----------------------------------------------------------------------------------------


def _bounded_lines(handle: TextIO, progress: LineProgress | None = None) -> Iterator[str]:
    return bounded_lines(handle, too_long=_predictions_line_too_long, progress=progress)


def _predictions_line_too_long(limit: int) -> InvalidPredictions:
    return InvalidPredictions(
        f"the predictions file has a line longer than {limit} characters; is it a CSV file?"
    )


def _shown(cell: str) -> str:
    if len(cell) > _MAX_ECHO:
        cell = cell[:_MAX_ECHO] + "…"
    return repr(cell)


class _BadRow(Exception):
    """A data row is unusable; raised while reading, turned into `InvalidPredictions` after."""

    def __init__(self, row: int, problem: str, *, column: str | None = None) -> None:
        super().__init__(problem)
        self.row = row
        self.problem = problem
        self.column = column


def _read_columns(
    path: Path, spec: MetricSpec, columns: Sequence[Column], *, max_rows: int
) -> tuple[FloatArray, FloatArray]:
    try:
        with path.open("r", encoding="utf-8-sig", newline="") as handle:
            progress = LineProgress()
            reader = csv.reader(_bounded_lines(handle, progress), strict=True)
            try:
                return _parse_rows(reader, spec, columns, max_rows=max_rows, progress=progress)
            except csv.Error as e:
                raise InvalidPredictions(
                    f"the predictions file is not valid CSV at line {reader.line_num}: {e}"
                ) from None
    except UnicodeDecodeError:
        raise InvalidPredictions("the predictions file is not UTF-8 text") from None
    except _BadRow as bad:
        extra: dict[str, object] = {"row": bad.row}
        if bad.column is not None:
            extra["column"] = bad.column
        where = f"row {bad.row}"
        line = _line_of_row(path, bad.row)
        if line is not None:
            extra["line"] = line
            where += f" (line {line})"
        raise InvalidPredictions(f"{where}: {bad.problem}", extra=extra) from None


def _line_of_row(path: Path, row: int) -> int | None:
    """The file line where data row `row` ends, found by reading the file again.

    Tracking line numbers for every row would slow the common case for the sake of error messages;
    re-reading up to the bad row costs time only when the file is being rejected anyway.
    """
    try:
        with path.open("r", encoding="utf-8-sig", newline="") as handle:
            reader = csv.reader(_bounded_lines(handle), strict=True)
            next(reader, None)
            seen = 0
            for record in reader:
                if record:
                    seen += 1
                    if seen == row:
                        return reader.line_num
    except (csv.Error, UnicodeDecodeError, InvalidPredictions):  # pragma: no cover
        pass
    return None


def _header_indices(header: list[str], spec: MetricSpec, columns: Sequence[Column]) -> list[int]:
    names = [cell.strip().lower() for cell in header]
    wanted = [column.name for column in columns]
    missing = [name for name in wanted if name not in names]
    if missing:
        found = ", ".join(_shown(name) for name in names[:20]) or "nothing"
        if len(names) > 20:
            found += f", … ({len(names)} columns)"
        raise InvalidPredictions(
            f"{spec.name} needs the columns {' and '.join(wanted)} in the header row; missing "
            f"{', '.join(missing)} (found {found})",
            extra={"required_columns": wanted, "missing_columns": missing},
        )
    duplicated = [name for name in wanted if names.count(name) > 1]
    if duplicated:
        raise InvalidPredictions(
            f"the header row names {', '.join(duplicated)} more than once; "
            "which column to use is ambiguous"
        )
    return [names.index(name) for name in wanted]


def _parse_rows(
    reader: _csv_reader,
    spec: MetricSpec,
    columns: Sequence[Column],
    *,
    max_rows: int,
    progress: LineProgress,
) -> tuple[FloatArray, FloatArray]:
    header = next(reader, None)
    if header is None:
        raise InvalidPredictions("the predictions file is empty")
    if not any(cell.strip() for cell in header):
        raise InvalidPredictions(
            "the first line of the predictions file must be a header row naming the columns"
        )
    width = len(header)
    indices = _header_indices(header, spec, columns)
    parts: list[list[FloatArray]] = [[] for _ in columns]
    total = 0
    while True:
        # Reading one row past max_rows is how "too many" is noticed without reading the rest.
        limit = max(1, min(_CHUNK_ROWS, max_rows - total + 1))
        # The loop body is kept to an append and two comparisons; map and set below keep the
        # per-cell work in C.
        chunk: list[list[str]] = []
        append = chunk.append
        stop_at = progress.chars + _CHUNK_CHARS
        at_end = True
        for row in reader:
            append(row)
            if len(chunk) >= limit or progress.chars >= stop_at:
                at_end = False
                break
        if not chunk:
            break
        if [] in chunk:  # blank lines, e.g. a trailing one, are not rows
            chunk = [row for row in chunk if row]
        if set(map(len, chunk)) - {width}:
            index = next(i for i, row in enumerate(chunk) if len(row) != width)
            raise _BadRow(
                total + index + 1, f"has {len(chunk[index])} fields; the header has {width}"
            )
        if total + len(chunk) > max_rows:
            raise InvalidPredictions(
                f"the predictions file has more than {max_rows} data rows",
                extra={"max_rows": max_rows},
            )
        for part, column, index in zip(parts, columns, indices, strict=True):
            cells = list(map(operator.itemgetter(index), chunk))
            part.append(_convert(cells, column, spec, first_row=total + 1))
        total += len(chunk)
        if at_end:
            break
    if total == 0:
        raise InvalidPredictions("the predictions file has a header row but no data rows")
    y_true, y_other = (np.concatenate(chunks) for chunks in parts)
    return y_true, y_other


def _convert(cells: list[str], column: Column, spec: MetricSpec, *, first_row: int) -> FloatArray:
    """Cells as floats, or `_BadRow` naming the first bad one."""
    values: FloatArray | None = None
    if _FOREIGN_CHAR.search(",".join(cells)) is None:
        try:
            values = np.array(cells, dtype=np.float64)
        except ValueError:
            values = None
    bad = _first_bad(values, cells, column)
    if bad is None:
        assert values is not None
        return values
    index, problem = bad
    raise _BadRow(
        first_row + index,
        f"{column.name} {problem}; {spec.name} needs {column.name} to be {column.kind.value}",
        column=column.name,
    )


def _first_bad(
    values: FloatArray | None, cells: list[str], column: Column
) -> tuple[int, str] | None:
    if values is None:
        # Something did not parse; find it cell by cell, which is slow but only happens once.
        # The same rules as the fast path, so some cell here is always found at fault.
        for index, cell in enumerate(cells):
            text = cell.strip(" \t")
            if not text:
                return index, "is empty"
            if _FOREIGN_CHAR.search(text) or NUMBER_PATTERN.fullmatch(text) is None:
                return index, f"is not a number: {_shown(cell)}"
            if not math.isfinite(float(text)):
                return index, f"is not a finite number: {_shown(cell)}"
        raise AssertionError("a chunk failed to parse but every cell parses")  # pragma: no cover
    ok = _usable(values, column.kind)
    if bool(ok.all()):
        return None
    index = int(np.argmin(ok))
    cell = cells[index]
    if not math.isfinite(values[index]):
        return index, f"is not a finite number: {_shown(cell)}"
    return index, f"is {_shown(cell.strip())}"


def _usable(values: FloatArray, kind: Kind) -> npt.NDArray[np.bool_]:
    """Which values are finite numbers of `kind`."""
    ok: npt.NDArray[np.bool_]
    with np.errstate(invalid="ignore"):
        if kind is Kind.BINARY:
            ok = (values == 0) | (values == 1)
        elif kind is Kind.PROBABILITY:
            ok = (values >= 0) & (values <= 1)
        elif kind is Kind.LABEL:
            ok = (values == np.floor(values)) & (np.abs(values) <= _MAX_LABEL)
        else:
            ok = np.isfinite(values)
    return ok


# Columns already in memory (a benchmark's labels, a sandboxed model's output) --------------------


class CellError(ValueError):
    """A cell of a column is not what the metric needs: its index and what is wrong."""

    def __init__(self, index: int, problem: str) -> None:
        super().__init__(problem)
        self.index = index
        self.problem = problem


def parse_column(cells: list[str], kind: Kind, *, name: str) -> FloatArray:
    """Text cells as floats of `kind`, by the rules a predictions file's cells follow."""
    values: FloatArray | None = None
    if _FOREIGN_CHAR.search(",".join(cells)) is None:
        try:
            values = np.array(cells, dtype=np.float64)
        except ValueError:
            values = None
    bad = _first_bad(values, cells, Column(name, kind))
    if bad is not None:
        raise CellError(*bad)
    assert values is not None
    return values


def first_unusable(values: FloatArray, kind: Kind) -> int | None:
    """The index of the first value that is not a finite number of `kind`, if any."""
    ok = _usable(values, kind)
    return None if bool(ok.all()) else int(np.argmin(ok))


def compute_from_columns(spec: MetricSpec, y_true: FloatArray, y_other: FloatArray) -> float:
    """The metric of two aligned columns whose cells are already checked (`first_unusable`).

    The same computation as `compute_from_predictions`; `InvalidPredictions` when the metric is
    undefined for these values (one class only for auroc, a constant y_true for r2).
    """
    compute = FORMULAS[spec.name]
    with np.errstate(over="ignore", invalid="ignore"):
        value = compute(y_true, y_other)
    if not math.isfinite(value):
        raise InvalidPredictions(
            f"{spec.name} is not a finite number for these predictions (the values are too large)",
            extra={"metric_name": spec.name},
        )
    return value
