"""The CLI without the service: arguments, help, exit codes, retries, the streamed upload, packing,
the development key, output formats. HTTP goes to real loopback servers that answer from a script.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import stat
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer.main

import cli
from hokusai_client import config, uploads
from hokusai_client.commands import errors as cli_errors
from hokusai_client.commands import output
from hokusai_client.errors import error_for_status
from tests.cli.conftest import invoke
from tests.cli.servers import HOKUSAI, cli_env, run_cli, scripted_server
from tests.factories import MLMODEL_WITH_SIGNATURE, pickle_bytes
from tests.mlflow_server import free_port

REGISTERED: dict[str, Any] = {
    "registration_id": "r-1",
    "token_id": "XRAY",
    "status": "registered",
    "model_name": "hokusai-XRAY",
    "model_version": "1",
    "model_uri": "models:/hokusai-XRAY/1",
    "mlflow_run_id": "run-1",
    "metric": {
        "name": "auroc",
        "value": 0.86,
        "baseline": 0.82,
        "min_improvement": 0.0,
        "improvement": 0.04,
        "higher_is_better": True,
        "passed": True,
    },
    "artifact": {"filename": "model.pkl", "size_bytes": 1, "sha256": "ab", "format": "pickle"},
    "api_schema": None,
    "event_ids": [],
    "error": None,
}
PROBLEM = {"Content-Type": "application/problem+json"}
PEAK_RSS = """
import os, subprocess, sys
process = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(process.pid, 0)
print(usage.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def problem(status: int, code: str, title: str, detail: str, **extra: object) -> dict[str, object]:
    return {
        "type": f"https://hokusai.ai/problems/{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        "request_id": "req-123",
        **extra,
    }


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle_bytes(size=4096))
    return path


@pytest.fixture
def model_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "my model"
    (folder / "code").mkdir(parents=True)
    (folder / "MLmodel").write_text(MLMODEL_WITH_SIGNATURE)
    (folder / "model.pkl").write_bytes(pickle_bytes(size=2048))
    (folder / "code" / "predict.py").write_text("print('hi')\n")
    (folder / "code" / "predict.py").chmod(0o755)
    return folder


def register_args(model: Path, *extra: str) -> list[str]:
    return [
        "model",
        "register",
        "--token-id",
        "XRAY",
        "--model-path",
        str(model),
        "--metric",
        "auroc",
        "--baseline",
        "0.82",
        *extra,
    ]


def _walk(command: object, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [path]
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        paths.extend(_walk(sub, (*path, name)))
    return paths


COMMANDS = _walk(typer.main.get_command(cli.app))


class TestHelp:
    def test_the_command_set_is_complete(self) -> None:
        leaves = {" ".join(p) for p in COMMANDS if len(p) == 2}
        assert leaves == {
            "model register",
            "model status",
            "model list",
            "token create",
            "token show",
            "token list",
            "token deploy",
            "token archive",
            "events list",
            "events watch",
            "webhooks add",
            "webhooks create",
            "webhooks list",
            "webhooks remove",
            "webhooks deliveries",
            "webhooks retry",
            "webhooks test",
            "benchmark upload",
            "benchmark show",
            "receipt verify",
        }

    @pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "hokusai")
    def test_every_command_has_help_with_examples(self, path: tuple[str, ...]) -> None:
        result = invoke(*path, "--help", url="http://127.0.0.1:9")
        assert result.exit_code == 0, result.output
        if len(path) != 1:  # groups list their commands; the root and every command show examples
            assert "Examples:" in result.stdout
            assert "hokusai " in result.stdout.split("Examples:", 1)[1]


class TestUsageErrors:
    """Wrong arguments exit 2 before anything is sent."""

    def test_needs_exactly_one_of_metric_value_and_predictions(
        self, model_file: Path, tmp_path: Path
    ) -> None:
        preds = tmp_path / "p.csv"
        preds.write_text("y_true,y_pred\n1,1\n")
        no_benchmark = (
            404,
            PROBLEM,
            problem(404, "benchmark_not_found", "No benchmark", "token XRAY has no benchmark"),
        )
        with scripted_server(no_benchmark) as server:
            neither = invoke(*register_args(model_file), url=server.url)
        assert [r.path for r in server.requests] == ["/tokens/XRAY/benchmark"]
        assert "no sealed benchmark" in neither.stderr
        both = invoke(
            *register_args(model_file, "--metric-value", "0.9", "--predictions", str(preds)),
            url="http://127.0.0.1:9",
        )
        for result in (neither, both):
            assert result.exit_code == 2
            assert "exactly one of --metric-value and --predictions" in result.stderr

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["--tag", "novalue"], "--tag takes KEY=VALUE"),
            (["--tag", "a=1", "--tag", "a=2"], "--tag a is given twice"),
            (["--idempotency-key", "k" * 256], "1 to 255 characters"),
        ],
    )
    def test_refuses_bad_register_options(
        self, model_file: Path, args: list[str], message: str
    ) -> None:
        result = invoke(
            *register_args(model_file, "--metric-value", "0.9", *args), url="http://127.0.0.1:9"
        )
        assert result.exit_code == 2
        assert message in result.stderr

    def test_refuses_a_missing_model_path(self, tmp_path: Path) -> None:
        result = invoke(
            *register_args(tmp_path / "nope.pkl", "--metric-value", "0.9"),
            url="http://127.0.0.1:9",
        )
        assert result.exit_code == 2
        assert "does not exist" in result.output

    def test_refuses_a_folder_without_mlmodel(self, tmp_path: Path) -> None:
        (tmp_path / "model.pkl").write_bytes(b"x")
        result = invoke(*register_args(tmp_path, "--metric-value", "0.9"), url="http://127.0.0.1:9")
        assert result.exit_code == 2
        assert "without an MLmodel file" in result.stderr

    @pytest.mark.parametrize(
        "args",
        [
            ["model", "register", "--token-id", "X"],
            ["token", "list", "--status", "bogus"],
            ["token", "show"],
            ["token", "show", "A", "--token-id", "B"],
            ["token", "create", "A", "--metric", "auroc"],
            ["events", "watch", "--count", "0"],
            ["--api-url", "ftp://example.com", "token", "list"],
            ["nonsense"],
        ],
        ids=" ".join,
    )
    def test_exits_2(self, args: list[str]) -> None:
        result = invoke(*args, url="http://127.0.0.1:9")
        assert result.exit_code == 2, result.output


class TestExitCodes:
    @pytest.mark.parametrize(
        ("status", "code"),
        [
            (401, 3),
            (403, 3),
            (404, 8),
            (410, 8),
            (409, 4),
            (400, 5),
            (413, 5),
            (415, 5),
            (422, 5),
            (500, 6),
            (502, 6),
            (503, 6),
            (418, 1),
        ],
    )
    def test_maps_each_status_class(self, status: int, code: int) -> None:
        assert cli.exit_for_status(status) == code == cli_errors.exit_for_status(status)

    def test_unreachable_service_exits_6_after_bounded_retries(self) -> None:
        url = f"http://127.0.0.1:{free_port()}"
        result = invoke("--retries", "1", "token", "list", url=url)
        assert result.exit_code == 6
        assert result.stderr.count("retrying in") == 1
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert errors == [
            f"error: cannot reach the service at {url} (ConnectError: [Errno 111] Connection "
            "refused)"
        ]
        assert "hint: start it with `make run`" in result.stderr

    @pytest.mark.parametrize(
        ("status", "headers", "body", "code", "line"),
        [
            (
                404,
                PROBLEM,
                problem(404, "token_not_found", "Token not found", "no token XRAY"),
                8,
                "error: Token not found: no token XRAY (token_not_found)",
            ),
            (
                409,
                PROBLEM,
                problem(409, "token_not_registrable", "Wrong status", "token XRAY is registered"),
                4,
                "error: Wrong status: token XRAY is registered (token_not_registrable)",
            ),
            (
                422,
                PROBLEM,
                problem(422, "metric_below_baseline", "Too low", "auroc 0.8 is below 0.82"),
                5,
                "error: Too low: auroc 0.8 is below 0.82 (metric_below_baseline)",
            ),
            (
                401,
                {**PROBLEM, "WWW-Authenticate": "Bearer"},
                problem(401, "unauthorized", "Missing or unknown API key", "send a key"),
                3,
                "error: Missing or unknown API key: send a key (unauthorized)",
            ),
            (
                500,
                PROBLEM,
                problem(500, "internal_error", "Internal server error", "logged"),
                6,
                "error: Internal server error: logged (internal_error) [request_id req-123]",
            ),
            (
                502,
                {"Content-Type": "text/html"},
                b"<html>bad gateway</html>",
                6,
                "error: HTTP 502 Bad Gateway from {url}: <html>bad gateway</html>",
            ),
        ],
    )
    def test_problem_is_one_line_with_a_hint_and_its_exit_code(
        self,
        model_file: Path,
        status: int,
        headers: dict[str, str],
        body: object,
        code: int,
        line: str,
    ) -> None:
        with scripted_server((status, headers, body)) as server:
            result = invoke(*register_args(model_file, "--metric-value", "0.86"), url=server.url)
        assert result.exit_code == code
        errors = [x for x in result.stderr.splitlines() if x.startswith("error:")]
        assert errors == [line.format(url=server.url)]
        assert result.stdout == ""
        if status in (404, 409, 422, 401):
            assert "hint: " in result.stderr

    def test_json_prints_the_problem_unchanged_on_stdout(self, model_file: Path) -> None:
        body = problem(422, "metric_below_baseline", "Too low", "auroc 0.8 is below 0.82")
        with scripted_server((422, PROBLEM, body)) as server:
            result = invoke(
                *register_args(model_file, "--metric-value", "0.8", "--json"), url=server.url
            )
        assert result.exit_code == 5
        assert result.stdout == json.dumps(body) + "\n"

    def test_register_exits_0_only_on_201(self, model_file: Path) -> None:
        with scripted_server((200, {}, REGISTERED)) as server:
            result = invoke(*register_args(model_file, "--metric-value", "0.86"), url=server.url)
        assert result.exit_code == 1
        with scripted_server((201, {}, REGISTERED)) as server:
            result = invoke(*register_args(model_file, "--metric-value", "0.86"), url=server.url)
        assert result.exit_code == 0, result.output


class TestRetries:
    def test_retries_503_with_retry_after_under_one_idempotency_key(self, model_file: Path) -> None:
        busy = (
            503,
            {**PROBLEM, "Retry-After": "0"},
            problem(503, "mlflow_unavailable", "MLflow is unavailable", "down"),
        )
        with scripted_server(busy, busy, (201, {}, REGISTERED)) as server:
            result = invoke(*register_args(model_file, "--metric-value", "0.86"), url=server.url)
        assert result.exit_code == 0, result.output
        assert result.stderr.count("retrying in 0.0 s (HTTP 503") == 2
        keys = {request.headers["idempotency-key"] for request in server.requests}
        assert len(server.requests) == 3 and len(keys) == 1
        # Each attempt sent the whole body again, exactly as long as announced.
        assert all(r.size == int(r.headers["content-length"]) for r in server.requests)
        assert len({r.sha256 for r in server.requests}) == 1

    def test_gives_up_after_the_bounded_retries(self, model_file: Path) -> None:
        busy = (503, {**PROBLEM, "Retry-After": "0"}, problem(503, "x", "Busy", "later"))
        with scripted_server(busy) as server:
            result = invoke(
                "--retries",
                "2",
                *register_args(model_file, "--metric-value", "0.9"),
                url=server.url,
            )
        assert result.exit_code == 6
        assert len(server.requests) == 3
        assert "error: Busy: later (x)" in result.stderr

    def test_a_given_idempotency_key_is_sent(self, model_file: Path) -> None:
        with scripted_server((201, {}, REGISTERED)) as server:
            result = invoke(
                *register_args(model_file, "--metric-value", "0.86", "--idempotency-key", "k-1"),
                url=server.url,
            )
        assert result.exit_code == 0
        assert server.requests[0].headers["idempotency-key"] == "k-1"


class TestUploadBody:
    def test_text_fields_come_before_the_file_and_its_sha256_after_it(
        self, model_file: Path, tmp_path: Path
    ) -> None:
        preds = tmp_path / "scores.csv"
        preds.write_text("y_true,y_score\n1,0.9\n0,0.2\n")
        digest = hashlib.sha256(model_file.read_bytes()).hexdigest()
        with scripted_server((201, {}, REGISTERED)) as server:
            result = invoke(
                *register_args(
                    model_file,
                    "--predictions",
                    str(preds),
                    "--min-improvement",
                    "0.01",
                    "--model-name",
                    "xray-v2",
                    "--tag",
                    "framework=sklearn",
                    "--tag",
                    "team=radiology",
                ),
                url=server.url,
            )
        assert result.exit_code == 0, result.output
        request = server.requests[0]
        assert request.method == "POST" and request.path == "/models/XRAY/register"
        boundary = request.headers["content-type"].split("boundary=", 1)[1]
        body = request.head
        assert request.size == int(request.headers["content-length"]) == len(body)
        parts = body.split(f"--{boundary}".encode())
        assert parts[0] == b"" and parts[-1] == b"--\r\n"
        names = [part.split(b'name="', 1)[1].split(b'"', 1)[0].decode() for part in parts[1:-1]]
        assert names == [
            "metric",
            "baseline",
            "min_improvement",
            "model_name",
            "tags",
            "predictions",
            "model_file",
            "sha256",
        ]
        fields = {
            name: part.split(b"\r\n\r\n", 1)[1][:-2]
            for name, part in zip(names, parts[1:-1], strict=True)
        }
        assert fields["metric"] == b"auroc" and fields["baseline"] == b"0.82"
        assert json.loads(fields["tags"]) == {"framework": "sklearn", "team": "radiology"}
        assert fields["sha256"].decode() == digest
        assert fields["model_file"] == model_file.read_bytes()
        assert fields["predictions"] == preds.read_bytes()
        assert b'filename="model.pkl"' in parts[-3]
        assert b"filename=" not in parts[-2]  # the digest is a plain field, after the file

    def test_streams_200_mib_with_flat_memory(self, tmp_path: Path) -> None:
        big = tmp_path / "big.bin"
        with big.open("wb") as f:
            f.truncate(200 * 1024 * 1024)  # sparse: costs no disk
        with scripted_server((201, {}, REGISTERED)) as server:
            # A small parent measures the CLI's peak RSS: Linux carries a parent's peak over
            # fork and exec, so measuring it straight from this (large) process would not work.
            measured = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    PEAK_RSS,
                    HOKUSAI,
                    *register_args(big, "--metric-value", "0.86"),
                ],
                env=cli_env(server.url, None),
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
        assert measured.returncode == 0, measured.stderr
        assert server.requests[0].size > 200 * 1024 * 1024
        peak_mib = int(measured.stdout.splitlines()[-1]) / 1024  # ru_maxrss is KiB on Linux
        assert peak_mib < 100, f"peak RSS {peak_mib:.0f} MiB for a 200 MiB upload"


class TestPacking:
    @pytest.mark.parametrize("fmt", list(uploads.PackFormat))
    def test_packs_reproducibly_with_mlmodel_at_the_root(
        self, model_folder: Path, tmp_path: Path, fmt: uploads.PackFormat
    ) -> None:
        first, second = tmp_path / "a", tmp_path / "b"
        first.mkdir()
        second.mkdir()
        a = uploads.pack_folder(model_folder, first, fmt)
        os.utime(model_folder / "model.pkl", (1, 1))  # touching a file changes nothing
        b = uploads.pack_folder(model_folder, second, fmt)
        assert a.name == b.name == f"my_model.{fmt.value}"
        assert uploads.sha256_file(a) == uploads.sha256_file(b)
        if fmt is uploads.PackFormat.TAR_GZ:
            with tarfile.open(a) as tar:
                members = {m.name: m for m in tar.getmembers()}
                mlmodel = tar.extractfile("MLmodel")
                assert mlmodel is not None
                assert mlmodel.read().decode() == MLMODEL_WITH_SIGNATURE
            assert sorted(members) == ["MLmodel", "code/predict.py", "model.pkl"]
            assert stat.S_IMODE(members["code/predict.py"].mode) == 0o755
            assert stat.S_IMODE(members["model.pkl"].mode) == 0o644
            with gzip.open(a) as stream:
                assert stream.read(1)  # a valid gzip stream
        else:
            with zipfile.ZipFile(a) as zf:
                assert sorted(zf.namelist()) == ["MLmodel", "code/predict.py", "model.pkl"]
                assert zf.read("MLmodel").decode() == MLMODEL_WITH_SIGNATURE
                assert zf.read("model.pkl") == (model_folder / "model.pkl").read_bytes()

    def test_a_folder_model_is_sent_as_an_archive(self, model_folder: Path) -> None:
        with scripted_server((201, {}, REGISTERED)) as server:
            result = invoke(*register_args(model_folder, "--metric-value", "0.86"), url=server.url)
        assert result.exit_code == 0, result.output
        assert b'filename="my_model.tar.gz"' in server.requests[0].head


class TestApiKey:
    def test_flag_or_environment_wins(self, tmp_path: Path) -> None:
        (tmp_path / "dev-api-key").write_text("hok_file\n")
        env = {"HOKUSAI_DATA_DIR": str(tmp_path)}
        assert config.resolve_api_key(
            " hok_given ", "HOKUSAI_API_KEY", "http://127.0.0.1:8000", env
        ) == (
            "hok_given",
            "HOKUSAI_API_KEY",
        )

    def test_reads_the_dev_key_of_hokusai_data_dir(self, tmp_path: Path) -> None:
        (tmp_path / "dev-api-key").write_text("hok_file\n")
        env = {"HOKUSAI_DATA_DIR": str(tmp_path)}
        key = config.resolve_api_key(None, None, "http://localhost:8000", env)
        assert key == ("hok_file", str(tmp_path / "dev-api-key"))

    def test_falls_back_to_the_hokusai_folder_here(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        (tmp_path / ".hokusai").mkdir()
        (tmp_path / ".hokusai" / "dev-api-key").write_text("hok_here")
        monkeypatch.chdir(tmp_path)
        assert config.resolve_api_key(None, None, "http://127.0.0.1:8000", {}) == (
            "hok_here",
            ".hokusai/dev-api-key",
        )

    def test_never_sends_the_dev_key_off_this_machine(self, tmp_path: Path) -> None:
        (tmp_path / "dev-api-key").write_text("hok_file")
        env = {"HOKUSAI_DATA_DIR": str(tmp_path)}
        assert config.resolve_api_key(None, None, "https://hokusai.example.com", env) == (
            None,
            None,
        )

    def test_sends_the_key_as_a_bearer_token(self, tmp_path: Path) -> None:
        (tmp_path / "dev-api-key").write_text("hok_dev_key\n")
        with scripted_server((200, {}, {"items": [], "next_cursor": None})) as server:
            result = invoke("token", "list", url=server.url, data_dir=tmp_path)
            flagged = invoke("--api-key", "hok_flag", "token", "list", url=server.url)
        assert result.exit_code == 0 and flagged.exit_code == 0
        assert server.requests[0].headers["authorization"] == "Bearer hok_dev_key"
        assert server.requests[1].headers["authorization"] == "Bearer hok_flag"

    def test_missing_key_hint_points_at_the_dev_key(self) -> None:
        body = problem(401, "unauthorized", "Missing or unknown API key", "send a key")
        with scripted_server((401, PROBLEM, body)) as server:
            result = invoke("token", "list", url=server.url)
        assert result.exit_code == 3
        assert "authorization" not in server.requests[0].headers
        assert "no API key was sent" in result.stderr
        assert ".hokusai/dev-api-key" in result.stderr


class TestOutput:
    TOKEN = {
        "token_id": "XRAY",
        "name": "Chest X-ray",
        "status": "registered",
        "metric": "auroc",
        "baseline": 0.82,
        "metric_value": 0.86,
        "mlflow_run_id": "run-1",
        "model_name": "hokusai-XRAY",
        "model_version": "3",
        "model_uri": "models:/hokusai-XRAY/3",
        "created_at": "2026-11-27T10:00:00Z",
        "updated_at": "2026-11-27T10:05:00Z",
        "registered_at": "2026-11-27T10:05:00Z",
        "metadata": {},
    }

    def test_json_is_the_service_body_unchanged(self) -> None:
        raw = b'{"token_id":"XRAY",  "status":"draft","extra":[1, 2]}'
        with scripted_server((200, {}, raw)) as server:
            result = invoke("token", "show", "XRAY", "--json", url=server.url)
        assert result.exit_code == 0
        assert result.stdout == raw.decode() + "\n"

    def test_summary_is_readable(self) -> None:
        with scripted_server((200, {}, self.TOKEN)) as server:
            result = invoke("token", "show", "xray", url=server.url)
        assert result.exit_code == 0
        assert server.requests[0].path == "/tokens/xray"
        lines = result.stdout.splitlines()
        assert lines[0] == "Token XRAY"
        assert "  status      registered" in lines
        assert "  benchmark   auroc (baseline 0.82)" in lines
        assert "  model       hokusai-XRAY version 3" in lines

    def test_list_is_a_table_and_all_follows_the_cursor(self) -> None:
        page1 = {"items": [self.TOKEN], "next_cursor": "c2"}
        page2 = {"items": [{**self.TOKEN, "token_id": "CHURN"}], "next_cursor": None}
        with scripted_server((200, {}, page1), (200, {}, page2)) as server:
            result = invoke("model", "list", "--status", "registered", "--all", url=server.url)
        assert result.exit_code == 0, result.output
        assert [r.path for r in server.requests] == [
            "/tokens?status=registered",
            "/tokens?status=registered&cursor=c2",
        ]
        header, _rule, *rows = result.stdout.splitlines()
        assert header.split()[:3] == ["TOKEN", "STATUS", "NAME"]
        assert [row.split()[0] for row in rows] == ["XRAY", "CHURN"]

    def test_event_line(self) -> None:
        event = {
            "event_id": "e1",
            "event_type": "model_registered",
            "sequence": 7,
            "timestamp": "2026-11-27T10:05:00.123Z",
            "token_id": "XRAY",
            "payload": {
                "model_name": "hokusai-XRAY",
                "model_version": "1",
                "metric_name": "auroc",
                "metric_value": 0.86,
                "baseline_value": 0.82,
            },
        }
        assert output.event_line(event).split() == [
            "7",
            "2026-11-27",
            "10:05:00",
            "model_registered",
            "XRAY",
            "hokusai-XRAY",
            "version",
            "1:",
            "auroc",
            "0.86",
            "(baseline",
            "0.82)",
        ]

    def test_problem_error_from_a_response(self) -> None:
        response = httpx.Response(
            409,
            json=problem(409, "token_not_registrable", "Wrong status", "XRAY is deployed"),
            headers=PROBLEM,
        )
        raised = error_for_status(
            409, response.json(), text=response.text, reason="Conflict", api_url="http://x"
        )
        error = cli_errors.cli_error(raised, api_url="http://x", token_id="XRAY")
        assert error.exit_code == cli.Exit.CONFLICT
        assert error.message == "Wrong status: XRAY is deployed (token_not_registrable)"
        assert error.hint is not None and "hokusai model status --token-id XRAY" in error.hint


def test_the_installed_command_runs(tmp_path: Path) -> None:
    result = run_cli("--version", env=cli_env("http://127.0.0.1:9", tmp_path))
    assert result.returncode == 0
    assert result.stdout.strip() == f"hokusai {cli.VERSION}"
