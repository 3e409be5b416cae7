"""The CLI's parts of verified evaluation and of the Hokusai site's format, against scripted
loopback servers: waiting for an evaluation, benchmarks, receipts, the SDK's fields and endpoint
variable, site webhooks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from joserfc import jws
from joserfc.jwk import OKPKey

from tests.cli.conftest import invoke
from tests.cli.payloads import EVALUATING, REGISTERED, REJECTED, RUNNING, form_fields
from tests.cli.servers import Step, scripted_server
from tests.factories import pickle_bytes

PROBLEM = {"Content-Type": "application/problem+json"}
BENCHMARK = {
    "token_id": "XRAY",
    "version": 2,
    "sha256": "ab" * 32,
    "rows": 3,
    "label_column": "label",
    "features": [{"name": "age", "dtype": "int64"}, {"name": "score", "dtype": "float64"}],
    "classes": [0, 1],
    "created_at": "2026-12-01T10:00:00Z",
}
HAS_BENCHMARK: Step = (200, {}, BENCHMARK)


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle_bytes(size=2048))
    return path


def register(model: Path, *extra: str) -> list[str]:
    return [
        "model",
        "register",
        "-t",
        "XRAY",
        "-m",
        str(model),
        "--metric",
        "auroc",
        "--baseline",
        "0.82",
        *extra,
    ]


class TestWaitingForAnEvaluation:
    def test_waits_until_registered_and_exits_0(self, model_file: Path) -> None:
        script: tuple[Step, ...] = (
            HAS_BENCHMARK,
            (202, {}, EVALUATING),
            (200, {}, RUNNING),
            (200, {}, REGISTERED),
        )
        with scripted_server(*script) as server:
            result = invoke(*register(model_file), url=server.url)
        assert result.exit_code == 0, result.output
        assert [(r.method, r.path) for r in server.requests] == [
            ("GET", "/tokens/XRAY/benchmark"),
            ("POST", "/models/XRAY/register"),
            ("GET", "/registrations/r-9"),
            ("GET", "/registrations/r-9"),
        ]
        assert "metric_value" not in form_fields(server.requests[1])
        lines = result.stdout.splitlines()
        assert lines[0] == "Registered a model for XRAY"
        assert (
            "  metric        auroc 0.9 against baseline 0.82 (improvement +0.08), "
            "95% CI [0.88, 0.92]" in lines
        )
        assert "  source        evaluated" in lines

    def test_a_refused_evaluation_exits_5_with_the_registration_on_json(
        self, model_file: Path
    ) -> None:
        script: tuple[Step, ...] = (HAS_BENCHMARK, (202, {}, EVALUATING), (200, {}, REJECTED))
        with scripted_server(*script) as server:
            result = invoke(*register(model_file, "--json"), url=server.url)
        assert result.exit_code == 5
        assert json.loads(result.stdout) == REJECTED
        assert (
            "error: The model could not be evaluated: predict raised ValueError: bad input "
            "(evaluation_failed) [registration r-9]"
        ) in result.stderr
        assert "hint: the service ran the model" in result.stderr

    def test_no_wait_returns_once_accepted(self, model_file: Path) -> None:
        with scripted_server(HAS_BENCHMARK, (202, {}, EVALUATING)) as server:
            result = invoke(*register(model_file, "--no-wait"), url=server.url)
        assert result.exit_code == 0, result.output
        assert len(server.requests) == 2
        assert result.stdout.splitlines()[0] == "Evaluating a model for XRAY"
        assert "  registration  r-9" in result.stdout.splitlines()

    def test_a_wait_that_runs_out_exits_7(self, model_file: Path) -> None:
        with scripted_server(HAS_BENCHMARK, (202, {}, EVALUATING), (200, {}, RUNNING)) as server:
            result = invoke(*register(model_file, "--wait-timeout", "1"), url=server.url)
        assert result.exit_code == 7
        assert "registration r-9 is still evaluating after 1 s" in result.stderr
        assert "hokusai model status --token-id XRAY" in result.stderr

    def test_a_reported_value_skips_the_benchmark_lookup(self, model_file: Path) -> None:
        with scripted_server((201, {}, REGISTERED)) as server:
            result = invoke(*register(model_file, "--metric-value", "0.9"), url=server.url)
        assert result.exit_code == 0, result.output
        assert [r.path for r in server.requests] == ["/models/XRAY/register"]


class TestSdkCompatibility:
    def test_sdk_fields_are_sent_as_form_fields(self, model_file: Path) -> None:
        flags = {
            "--proposal-identifier": "prop-7",
            "--eval-spec": "specs/xray.yaml",
            "--scorer-ref": "scorers/auroc@1",
            "--primary-metric": "auroc",
            "--benchmark-spec-id": "bench-3",
        }
        args = [item for pair in flags.items() for item in pair]
        with scripted_server((201, {}, REGISTERED)) as server:
            result = invoke(*register(model_file, "--metric-value", "0.9", *args), url=server.url)
        assert result.exit_code == 0, result.output
        fields = form_fields(server.requests[0])
        for flag, value in flags.items():
            assert fields[flag[2:].replace("-", "_")] == value.encode()

    @pytest.mark.parametrize("how", ["HOKUSAI_API_ENDPOINT", "--api-endpoint"])
    def test_reads_the_sdks_endpoint_setting(self, how: str) -> None:
        from typer.testing import CliRunner

        from hokusai_client.commands import app

        page: dict[str, Any] = {"items": [], "next_cursor": None}
        with scripted_server((200, {}, page)) as server:
            env = {"HOKUSAI_API_URL": None, "HOKUSAI_API_ENDPOINT": None, "HOKUSAI_API_KEY": "k"}
            if how == "HOKUSAI_API_ENDPOINT":
                env[how] = server.url
                args = ["token", "list"]
            else:
                args = ["--api-endpoint", server.url, "token", "list"]
            result = CliRunner().invoke(app, args, env=env)
        assert result.exit_code == 0, result.output
        assert server.requests[0].path == "/tokens"

    def test_hokusai_api_url_wins_over_the_endpoint(self) -> None:
        from hokusai_client.config import resolve_api_url

        env = {"HOKUSAI_API_URL": "http://a:1/", "HOKUSAI_API_ENDPOINT": "http://b:2"}
        assert resolve_api_url(None, env) == "http://a:1"
        assert resolve_api_url(None, {"HOKUSAI_API_ENDPOINT": "http://b:2/api"}) == "http://b:2/api"
        assert resolve_api_url("http://c:3", env) == "http://c:3"


class TestSiteWebhook:
    def test_format_and_secret_from_stdin(self) -> None:
        from typer.testing import CliRunner

        from hokusai_client.commands import app

        answer = {"id": "w-1", "url": "http://127.0.0.1:9/site", "payload_format": "hokusai_site"}
        secret = "shared-secret-of-the-site-1234"
        with scripted_server((201, {}, answer)) as server:
            result = CliRunner().invoke(
                app,
                [
                    "webhook",
                    "create",
                    "http://127.0.0.1:9/site",
                    "--format",
                    "hokusai-site",
                    "--secret-stdin",
                ],
                input=secret + "\n",
                env={"HOKUSAI_API_URL": server.url, "HOKUSAI_API_KEY": "k"},
            )
        assert result.exit_code == 0, result.output
        sent = json.loads(server.requests[0].head)
        assert sent == {
            "url": "http://127.0.0.1:9/site",
            "event_types": ["model_registered"],
            "payload_format": "hokusai_site",
            "secret": secret,
        }
        assert secret not in result.output

    @pytest.mark.parametrize("secret", ["short", "x" * 257, "tab\there-long-enough"])
    def test_refuses_a_bad_secret_before_sending(self, secret: str) -> None:
        from typer.testing import CliRunner

        from hokusai_client.commands import app

        result = CliRunner().invoke(
            app,
            ["webhooks", "create", "http://127.0.0.1:9/x", "--secret-stdin"],
            input=secret + "\n",
            env={"HOKUSAI_API_URL": "http://127.0.0.1:9"},
        )
        assert result.exit_code == 2
        assert "16 to 256 printable characters" in result.stderr

    def test_standard_format_sends_no_payload_format(self) -> None:
        with scripted_server((201, {}, {"id": "w-2", "secret": "whsec_x"})) as server:
            result = invoke("webhooks", "create", "http://127.0.0.1:9/h", url=server.url)
        assert result.exit_code == 0, result.output
        assert json.loads(server.requests[0].head) == {
            "url": "http://127.0.0.1:9/h",
            "event_types": ["*"],
        }
        assert "whsec_x" in result.stdout


class TestBenchmark:
    def test_upload_sends_the_csv_and_the_label_column(self, tmp_path: Path) -> None:
        csv = tmp_path / "holdout.csv"
        csv.write_text("age,score,label\n30,0.5,1\n40,0.1,0\n50,0.9,1\n")
        with scripted_server((201, {}, BENCHMARK)) as server:
            result = invoke(
                "benchmark",
                "upload",
                "--token-id",
                "xray",
                "--dataset",
                str(csv),
                "--label-column",
                "label",
                url=server.url,
            )
        assert result.exit_code == 0, result.output
        request = server.requests[0]
        assert (request.method, request.path) == ("PUT", "/tokens/xray/benchmark")
        fields = form_fields(request)
        assert fields == {"label_column": b"label", "dataset": csv.read_bytes()}
        assert b'filename="holdout.csv"' in request.head
        lines = result.stdout.splitlines()
        assert lines[0] == "Sealed benchmark version 2 of XRAY"
        assert "  features      age (int64), score (float64)" in lines

    def test_show_and_a_missing_benchmark(self) -> None:
        missing = (
            404,
            PROBLEM,
            {"status": 404, "code": "benchmark_not_found", "title": "No benchmark", "detail": "x"},
        )
        with scripted_server(HAS_BENCHMARK, missing) as server:
            shown = invoke("benchmark", "show", "-t", "XRAY", "--json", url=server.url)
            gone = invoke("benchmark", "show", "-t", "OTHER", url=server.url)
        assert shown.exit_code == 0 and json.loads(shown.stdout) == BENCHMARK
        assert gone.exit_code == 8
        assert "hokusai benchmark upload --token-id OTHER" in gone.stderr


def signed_receipt(key: OKPKey, payload: dict[str, Any], kid: str = "k1") -> dict[str, Any]:
    compact = jws.serialize_compact(
        {"alg": "EdDSA", "kid": kid}, json.dumps(payload), key, algorithms=["EdDSA"]
    )
    return {"payload": payload, "jws": compact}


PAYLOAD = {
    "registration_id": "r-9",
    "token_id": "XRAY",
    "metric": "auroc",
    "value": 0.9,
    "ci95": [0.88, 0.92],
    "passed": True,
}


@pytest.fixture
def key() -> OKPKey:
    return OKPKey.generate_key("Ed25519", parameters={"kid": "k1"})


def jwks_of(*keys: OKPKey) -> dict[str, Any]:
    return {"keys": [k.as_dict(private=False) for k in keys]}


@pytest.mark.filterwarnings("ignore::Warning")
class TestReceipt:
    def test_a_valid_receipt_from_the_service(self, key: OKPKey) -> None:
        old = OKPKey.generate_key("Ed25519", parameters={"kid": "k0"})
        receipt = signed_receipt(key, PAYLOAD)
        with scripted_server((200, {}, receipt), (200, {}, jwks_of(old, key))) as server:
            result = invoke("receipt", "verify", "--registration-id", "r-9", url=server.url)
        assert result.exit_code == 0, result.output
        assert [r.path for r in server.requests] == [
            "/registrations/r-9/receipt",
            "/.well-known/jwks.json",
        ]
        assert result.stdout.splitlines()[0] == "Valid receipt, signed by key k1"
        assert "  metric        auroc 0.9 (95% CI [0.88, 0.92])" in result.stdout.splitlines()

    def test_a_tampered_payload_or_a_foreign_key_exits_9(self, key: OKPKey, tmp_path: Path) -> None:
        receipt = signed_receipt(key, PAYLOAD)
        tampered = {**receipt, "payload": {**PAYLOAD, "value": 0.99}}
        forged = signed_receipt(OKPKey.generate_key("Ed25519", parameters={"kid": "k1"}), PAYLOAD)
        header, body, signature = receipt["jws"].split(".")
        flipped = {**receipt, "jws": f"{header}.{body}.{signature[:-4]}AAAA"}
        jwks = tmp_path / "jwks.json"
        jwks.write_text(json.dumps(jwks_of(key)))
        for bad, reason in (
            (tampered, "differs from the one that was signed"),
            (forged, "signature does not verify"),
            (flipped, "signature does not verify"),
        ):
            path = tmp_path / "receipt.json"
            path.write_text(json.dumps(bad))
            result = invoke(
                "receipt",
                "verify",
                "--file",
                str(path),
                "--jwks",
                str(jwks),
                "--json",
                url="http://127.0.0.1:9",
            )
            assert result.exit_code == 9, result.output
            assert reason in result.stderr
            assert json.loads(result.stdout)["valid"] is False

    def test_a_saved_receipt_checked_against_the_services_keys(
        self, key: OKPKey, tmp_path: Path
    ) -> None:
        path = tmp_path / "receipt.json"
        path.write_text(json.dumps(signed_receipt(key, PAYLOAD)))
        with scripted_server((200, {}, jwks_of(key))) as server:
            result = invoke("receipt", "verify", "--file", str(path), "--json", url=server.url)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == {"valid": True, "kid": "k1", "payload": PAYLOAD}
        assert [r.path for r in server.requests] == ["/.well-known/jwks.json"]

    def test_needs_exactly_one_source(self) -> None:
        result = invoke("receipt", "verify", url="http://127.0.0.1:9")
        assert result.exit_code == 2
        assert "exactly one of --registration-id and --file" in result.stderr
