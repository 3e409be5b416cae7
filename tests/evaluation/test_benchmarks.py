"""Sealed benchmarks over HTTP on both databases: upload, versions, validation, hostile CSVs."""

from __future__ import annotations

import hashlib
import os
import stat

import numpy as np
import pytest

from app.evaluation.benchmarks import FEATURES_FILE, LABELS_FILE
from tests.evaluation.data import FEATURES, benchmark_csv, classification, put_benchmark, regression
from tests.factories import create_token
from tests.support.service import Api


class TestUpload:
    async def test_first_upload_is_201_then_versions_are_200(self, api: Api) -> None:
        await create_token(api.client, api.auth(), token_id="BENCH", metric="auroc", baseline=0.7)
        content = benchmark_csv(classification())
        first = await put_benchmark(api.client, api.auth(), "bench", content)
        assert first.status_code == 201, first.text
        body = first.json()
        assert body == {
            "token_id": "BENCH",
            "version": 1,
            "sha256": hashlib.sha256(content).hexdigest(),
            "rows": 400,
            "label_column": "y_true",
            "features": [{"name": name, "dtype": "float64"} for name in FEATURES],
            "classes": [0, 1],
            "created_at": body["created_at"],
        }
        second = await put_benchmark(api.client, api.auth(), "BENCH", content)
        assert second.status_code == 200
        assert second.json()["version"] == 2
        shown = await api.client.get("/tokens/bench/benchmark", headers=api.auth())
        assert shown.status_code == 200
        assert shown.json()["version"] == 2

    async def test_files_are_private_and_features_hold_no_labels(self, api: Api) -> None:
        await create_token(api.client, api.auth(), token_id="PRIV", metric="mse", baseline=5)
        data = regression()
        response = await put_benchmark(
            api.client,
            api.auth(),
            "PRIV",
            benchmark_csv(data, label="target", label_first=True),
            label_column="target",
        )
        assert response.status_code == 201, response.text
        assert response.json()["classes"] is None
        assert response.json()["label_column"] == "target"
        folders = [p for p in api.settings.benchmark_dir.iterdir() if not p.name.startswith(".")]
        folder = max(
            (p for p in folders if (p / LABELS_FILE).exists()), key=lambda p: p.stat().st_mtime
        )
        features = (folder / FEATURES_FILE).read_text()
        assert features.splitlines()[0] == ",".join(FEATURES)
        assert "target" not in features
        labels = np.load(folder / LABELS_FILE)
        assert np.array_equal(labels, data.y_test)
        for path in (folder, folder / FEATURES_FILE, folder / LABELS_FILE):
            assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0, path
        # Nothing of the upload is left behind under its own or the client's name.
        assert not any((api.settings.benchmark_dir / ".incoming").iterdir())

    async def test_dtypes_are_inferred_per_column(self, api: Api) -> None:
        await create_token(
            api.client, api.auth(), token_id="TYPES", metric="accuracy", baseline=0.5
        )
        content = (
            b"n,x,flag,name,gap,y_true\n1,0.5,True,a,1,0\n2,1e3,False,b,,1\n-3,-2,true,c,3.5,2\n"
        )
        response = await put_benchmark(api.client, api.auth(), "TYPES", content)
        assert response.status_code == 201, response.text
        assert response.json()["features"] == [
            {"name": "n", "dtype": "int64"},
            {"name": "x", "dtype": "float64"},
            {"name": "flag", "dtype": "bool"},
            {"name": "name", "dtype": "object"},
            {"name": "gap", "dtype": "float64"},
        ]
        assert response.json()["classes"] == [0, 1, 2]

    async def test_get_without_benchmark_is_404(self, api: Api) -> None:
        await create_token(api.client, api.auth(), token_id="NONE", metric="auroc", baseline=0.5)
        response = await api.client.get("/tokens/NONE/benchmark", headers=api.auth())
        assert response.status_code == 404
        assert response.json()["code"] == "benchmark_not_found"
        missing = await api.client.get("/tokens/NOPE/benchmark", headers=api.auth())
        assert missing.json()["code"] == "token_not_found"

    async def test_needs_benchmarks_manage_scope(self, api: Api) -> None:
        await create_token(api.client, api.auth(), token_id="SCOPE", metric="auroc", baseline=0.5)
        content = benchmark_csv(classification())
        writer = await api.key_with("tokens:write", "models:register")
        refused = await put_benchmark(api.client, api.auth(writer), "SCOPE", content)
        assert refused.status_code == 403
        manager = await api.key_with("benchmarks:manage")
        accepted = await put_benchmark(api.client, api.auth(manager), "SCOPE", content)
        assert accepted.status_code == 201


class TestRefusals:
    @pytest.mark.parametrize(
        ("content", "fragment"),
        [
            (b"", "empty"),
            (b"age,y_true\n", "no data rows"),
            (b"age,bmi\n1,2\n", "label column 'y_true' is not in the header"),
            (b"age,y_true\n1,0\n2,1,3\n", "row 2 has 3 fields"),
            (b"y_true\n1\n0\n", "at least one feature column"),
            (b"age,age,y_true\n1,2,0\n3,4,1\n", "more than once"),
            (b"age,y_true\n1,0\n2,0.5\n", "row 2: the label is not 0 or 1"),
            (b"age,y_true\n1,0\n2,nan\n", "row 2: the label is not 0 or 1"),
            (b"age,y_true\n1,1\n2,1\n", "auroc cannot be computed"),
            (b"age,y_true\n\xff\xfe,1\n", "not UTF-8"),
            (b'age,y_true\n"unterminated,1\n', "not valid CSV"),
            (b"age," + b"x" * 300 + b",y_true\n1,2,0\n", "column names must be"),
        ],
    )
    async def test_malformed_benchmark_is_422_and_stores_nothing(
        self, api: Api, content: bytes, fragment: str
    ) -> None:
        await create_token(api.client, api.auth(), token_id="BAD", metric="auroc", baseline=0.5)
        before = (
            set(api.settings.benchmark_dir.iterdir())
            if api.settings.benchmark_dir.exists()
            else set()
        )
        response = await put_benchmark(api.client, api.auth(), "BAD", content)
        assert response.status_code == 422, response.text
        body = response.json()
        assert body["code"] == "invalid_benchmark"
        assert fragment in body["detail"]
        assert "0.5" not in body["detail"] and "nan" not in body["detail"]
        assert response.headers["content-type"].startswith("application/problem+json")
        after = set(api.settings.benchmark_dir.iterdir())
        assert after == before | ({api.settings.benchmark_dir / ".incoming"} & after)
        shown = await api.client.get("/tokens/BAD/benchmark", headers=api.auth())
        assert shown.status_code == 404

    async def test_a_line_without_end_is_refused_without_reading_it_whole(self, api: Api) -> None:
        await create_token(api.client, api.auth(), token_id="LONG", metric="auroc", baseline=0.5)
        response = await put_benchmark(api.client, api.auth(), "LONG", b"a" * (3 << 20))
        assert response.status_code == 422
        assert "longer than" in response.json()["detail"]

    async def test_metric_not_computable_is_unsupported_metric(self, api: Api) -> None:
        await create_token(
            api.client, api.auth(), token_id="RATE", metric="reply_rate", baseline=0.1
        )
        await create_token(api.client, api.auth(), token_id="BARE")
        content = benchmark_csv(classification())
        for token_id in ("RATE", "BARE"):
            response = await put_benchmark(api.client, api.auth(), token_id, content)
            assert response.status_code == 422
            assert response.json()["code"] == "unsupported_metric"

    async def test_too_large_is_413(self, api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
        await create_token(api.client, api.auth(), token_id="BIG", metric="auroc", baseline=0.5)
        monkeypatch.setattr(api.settings, "max_benchmark_bytes", 1000)
        response = await put_benchmark(
            api.client, api.auth(), "BIG", benchmark_csv(classification())
        )
        assert response.status_code == 413
        assert response.json()["code"] == "payload_too_large"

    async def test_not_multipart_is_415(self, api: Api) -> None:
        await create_token(api.client, api.auth(), token_id="JSON", metric="auroc", baseline=0.5)
        response = await api.client.put(
            "/tokens/JSON/benchmark", json={"rows": []}, headers=api.auth()
        )
        assert response.status_code == 415

    async def test_client_file_name_is_never_a_path(self, api: Api) -> None:
        await create_token(api.client, api.auth(), token_id="NAME", metric="auroc", baseline=0.5)
        response = await put_benchmark(
            api.client,
            api.auth(),
            "NAME",
            benchmark_csv(classification()),
            filename="../../../../etc/evil.csv",
        )
        assert response.status_code == 201
        assert not (api.settings.data_dir.parent / "evil.csv").exists()
        names = {p.name for p in api.settings.data_dir.rglob("*")}
        assert "evil.csv" not in names
