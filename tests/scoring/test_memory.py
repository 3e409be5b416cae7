"""Scoring predictions costs memory in proportion to the bytes read, not the rows or fields."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from app.errors import InvalidPredictions
from app.scoring import resolve_metric
from app.scoring.compute import compute_from_predictions

MiB = 1024 * 1024


def peak_of(path: Path) -> tuple[int, str]:
    """The peak of Python allocations while scoring `path` for auroc, and the outcome."""
    tracemalloc.start()
    try:
        try:
            outcome = f"{compute_from_predictions(resolve_metric('auroc'), path):.6f}"
        except InvalidPredictions as e:
            outcome = e.detail
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, outcome


class TestBoundedMemory:
    @pytest.mark.parametrize("fields_per_row", [3, 1000, 60_000])
    def test_rows_wider_than_the_header_are_refused_within_a_few_mebibytes(
        self, tmp_path: Path, fields_per_row: int
    ) -> None:
        # 8 MiB of rows holding far more (empty) fields than the header's two. Before the chunks
        # were bounded by bytes, 65,536 such rows were held as Python lists first: +1.5 GiB
        # for a 64 MiB file, 67-71 MiB for this one.
        row = b"1,0.5" + b"," * (fields_per_row - 2) + b"\n"
        path = tmp_path / "wide.csv"
        path.write_bytes(b"y_true,y_score\n" + row * (8 * MiB // len(row)))
        peak, outcome = peak_of(path)
        assert "fields; the header has 2" in outcome
        assert peak < 24 * MiB, f"peak {peak / MiB:.0f} MiB"

    def test_a_long_valid_file_stays_within_its_columns(self, tmp_path: Path) -> None:
        path = tmp_path / "long.csv"
        rows = b"".join(b"%d,0.%d\n" % (i % 2, i % 1000) for i in range(300_000))
        path.write_bytes(b"y_true,y_score\n" + rows)
        peak, outcome = peak_of(path)
        assert float(outcome) > 0
        # Two float64 columns and their chunks: a fraction of the 2.5 MB file's text x 24.
        assert peak < 32 * MiB, f"peak {peak / MiB:.0f} MiB"
