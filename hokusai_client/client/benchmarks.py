"""Sealed benchmarks: upload a token's held-out rows, read their metadata."""

from __future__ import annotations

import os
from pathlib import Path

from hokusai_client.client.base import ClientBase, UploadProgress, _multipart, _path
from hokusai_client.transport import ServiceJSON
from hokusai_client.uploads import Advance, HashingReader


class BenchmarksAPI(ClientBase):
    """`PUT` and `GET /tokens/{token_id}/benchmark`."""

    def upload_benchmark(
        self,
        token_id: str,
        dataset: str | os.PathLike[str],
        *,
        label_column: str | None = None,
        progress: UploadProgress | None = None,
    ) -> ServiceJSON:
        """PUT /tokens/{token_id}/benchmark: a CSV of held-out rows with their labels, sealed.

        Returns the benchmark's metadata (never its rows): 201 the first time, 200 after.
        """
        path = Path(dataset)

        def on_pass(number: int) -> Advance | None:
            if progress is None:
                return None
            label = f"upload {path.name}" + (f" (try {number})" if number > 1 else "")
            return progress.task(label, path.stat().st_size)

        with HashingReader(path, on_pass=on_pass) as reader:
            data = {"label_column": label_column} if label_column else {}
            return self._json(
                "PUT",
                _path("tokens", token_id, "benchmark"),
                data=data,
                files=[("dataset", (path.name, reader, "text/csv"))],
                headers={"Content-Type": _multipart()},
                expected=(200, 201),
                idempotent=False,
            )

    def get_benchmark(self, token_id: str) -> ServiceJSON:
        """GET /tokens/{token_id}/benchmark: the sealed benchmark's metadata."""
        return self._json("GET", _path("tokens", token_id, "benchmark"))
