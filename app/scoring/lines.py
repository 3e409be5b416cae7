"""Reading an uploaded CSV's lines with a cap on each line's length.

Iterating a text file reads a whole line at a time, so without a cap a newline-free upload would
land in memory as one string. Reading fixed blocks and splitting them with a regex bounds that,
and is cheaper per line than a readline() loop. Predictions files (app.scoring.compute) and sealed
benchmarks (app.evaluation.benchmarks) are both read through it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import TextIO

MAX_LINE_CHARS = 1 << 20
_READ_CHARS = 1 << 16
_LINE = re.compile(r"[^\r\n]*(?:\r\n?|\n)")


class LineProgress:
    """How many characters of the file have been handed on so far."""

    chars = 0


def bounded_lines(
    handle: TextIO,
    *,
    too_long: Callable[[int], Exception],
    progress: LineProgress | None = None,
) -> Iterator[str]:
    """The file's lines, ends kept, split like a file opened with newline="" splits them.

    A line longer than `MAX_LINE_CHARS` raises `too_long(MAX_LINE_CHARS)`.
    """
    progress = progress or LineProgress()
    pending = ""
    while block := handle.read(_READ_CHARS):
        text = pending + block
        # A trailing "\r" may be the first half of a "\r\n" that the next block completes.
        end = len(text) - 1 if text.endswith("\r") else len(text)
        # Cut after the last line end so the regex only ever sees complete lines: on a tail with no
        # line end it would rescan to the end from every position, quadratic in the tail's length.
        cut = max(text.rfind("\n", 0, end), text.rfind("\r", 0, end)) + 1
        pending = text[cut:]
        if len(pending) > MAX_LINE_CHARS:
            raise too_long(MAX_LINE_CHARS)
        if cut:
            progress.chars += cut
            yield from _LINE.findall(text, 0, cut)
    if pending:
        yield pending
