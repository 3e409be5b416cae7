"""The whole command set against a live `hokusai-registry serve` process (development mode, SQLite
and a local MLflow store), with the key `serve` leaves in the data folder.

Commands run in this process through typer's runner, or as their own process where the process
matters: exit statuses, a pseudo terminal, an upload killed half-way, a feed followed while
a model is registered. The events and webhooks tests skip themselves while the live service's
/openapi.json does not list those paths yet.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pty
import re
import select
import signal
import stat
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

import cli
from hokusai_client import uploads
from tests.cli.conftest import invoke
from tests.cli.servers import HOKUSAI, LiveService, SlowProxy, cli_env, run_cli, webhook_receiver
from tests.factories import MLMODEL_WITH_SIGNATURE, pickle_bytes

pytestmark = pytest.mark.e2e

MiB = 1024 * 1024


def hokusai(live: LiveService, *args: str) -> Result:
    return invoke(*args, url=live.url, data_dir=live.data_dir)


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.stdout


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def create_token(live: LiveService, token_id: str, *benchmark: str) -> None:
    ok(hokusai(live, "token", "create", token_id, *benchmark))


def register_args(token_id: str, model: Path, *extra: str) -> list[str]:
    return [
        "model",
        "register",
        "--token-id",
        token_id,
        "--model-path",
        str(model),
        "--metric",
        "auroc",
        "--baseline",
        "0.82",
        *extra,
    ]


def registrations(live: LiveService, token_id: str) -> list[dict[str, Any]]:
    with live.client() as client:
        response = client.get(f"/tokens/{token_id}/registrations")
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.pkl"
    path.write_bytes(pickle_bytes(size=64 * 1024))
    return path


@pytest.fixture
def model_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "xray-model"
    folder.mkdir()
    (folder / "MLmodel").write_text(MLMODEL_WITH_SIGNATURE)
    (folder / "model.pkl").write_bytes(pickle_bytes(size=8192))
    (folder / "requirements.txt").write_text("scikit-learn==1.5.2\n")
    return folder


class TestDevKey:
    def test_serve_leaves_an_admin_key_only_its_owner_can_read(self, live: LiveService) -> None:
        path = live.data_dir / "dev-api-key"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert live.key.startswith("hok_")
        log = live.log_path.read_text()
        assert f"written to {path}" in log
        assert live.key not in log

    def test_cli_finds_it_in_the_data_folder_or_in_dot_hokusai(
        self, live: LiveService, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        by_env = run_cli("token", "list", "--json", env=live.env)
        assert by_env.returncode == 0, by_env.stderr
        (tmp_path / ".hokusai").mkdir()
        (tmp_path / ".hokusai" / "dev-api-key").write_text(live.key + "\n")
        monkeypatch.chdir(tmp_path)
        for name in ("HOKUSAI_DATA_DIR", "HOKUSAI_API_KEY"):
            monkeypatch.delenv(name, raising=False)
        here = CliRunner().invoke(cli.app, ["--api-url", live.url, "token", "list", "--json"])
        assert here.exit_code == 0, here.output
        assert json.loads(here.stdout) == json.loads(by_env.stdout)


class TestTokens:
    def test_create_show_list_and_archive(self, live: LiveService) -> None:
        out = ok(
            hokusai(
                live,
                "token",
                "create",
                "cli-tok",
                "--name",
                "CLI token",
                "--metric",
                "AUC",
                "--baseline",
                "0.7",
                "--metadata",
                "team=ml",
            )
        )
        assert out.splitlines()[0] == "Created token CLI-TOK"
        assert "  status     draft" in out.splitlines()
        shown = ok(hokusai(live, "token", "show", "--token-id", "cli-tok", "--json"))
        with live.client() as client:
            assert shown == client.get("/tokens/CLI-TOK").text + "\n"  # the service's JSON as is
        token = json.loads(shown)
        assert (token["metric"], token["baseline"], token["metadata"]) == (
            "auroc",
            0.7,
            {"team": "ml"},
        )
        drafts = ok(hokusai(live, "token", "list", "--status", "draft", "--all"))
        assert "CLI-TOK" in drafts.split()
        archived = ok(hokusai(live, "token", "archive", "CLI-TOK"))
        assert archived.splitlines()[0] == "Token CLI-TOK is now archived"
        assert "CLI-TOK" not in ok(hokusai(live, "token", "list", "--status", "draft", "--all"))

    def test_conflicts_exit_4_and_unknown_tokens_exit_8(self, live: LiveService) -> None:
        create_token(live, "dup-tok")
        duplicate = hokusai(live, "token", "create", "DUP-TOK")
        assert duplicate.exit_code == 4
        assert errors(duplicate.stderr)[0].endswith("(token_already_exists)")
        deploy_draft = hokusai(live, "token", "deploy", "DUP-TOK")
        assert deploy_draft.exit_code == 4
        unknown = hokusai(live, "token", "show", "NO-SUCH-TOKEN")
        assert unknown.exit_code == 8
        assert errors(unknown.stderr) == [
            "error: Token not found: no token NO-SUCH-TOKEN (token_not_found)"
        ]
        assert "hokusai token create NO-SUCH-TOKEN" in unknown.stderr

    def test_keys_the_service_does_not_know_exit_3(self, live: LiveService) -> None:
        wrong = invoke("token", "list", url=live.url, key="hok_nope_nope")
        assert wrong.exit_code == 3
        assert "the service does not know the key given by HOKUSAI_API_KEY" in wrong.stderr
        missing = invoke("token", "list", url=live.url)
        assert missing.exit_code == 3
        assert "no API key was sent" in missing.stderr


class TestRegister:
    def test_registers_a_file_and_the_token_shows_registered(
        self, live: LiveService, model_file: Path
    ) -> None:
        create_token(live, "file-m", "--metric", "auroc", "--baseline", "0.82")
        result = run_cli(
            *register_args("file-m", model_file, "--metric-value", "0.86", "--tag", "team=cv"),
            env=live.env,
        )
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0] == "Registered a model for FILE-M"
        assert "  model         hokusai-FILE-M version 1" in lines
        digest = hashlib.sha256(model_file.read_bytes()).hexdigest()
        assert any(line.endswith(f"sha256 {digest}") for line in lines)

        status = json.loads(ok(hokusai(live, "model", "status", "--token-id", "file-m", "--json")))
        assert status["token"]["status"] == "registered"
        assert status["token"]["model_version"] == "1"
        (attempt,) = status["registrations"]
        assert attempt["status"] == "registered" and attempt["tags"] == {"team": "cv"}
        assert attempt["artifact"]["sha256"] == digest

        human = ok(hokusai(live, "model", "status", "FILE-M"))
        assert "  status      registered" in human.splitlines()
        assert re.search(r"registered\s+auroc 0\.86\s+1\s+", human)
        listed = ok(hokusai(live, "model", "list", "--status", "registered"))
        assert re.search(
            r"FILE-M\s+registered\s+auroc\s+0\.82\s+0\.86\s+hokusai-FILE-M\s+1", listed
        )

    def test_a_registered_token_refuses_another_model(
        self, live: LiveService, model_file: Path
    ) -> None:
        create_token(live, "twice")
        ok(hokusai(live, *register_args("twice", model_file, "--metric-value", "0.9")))
        again = hokusai(live, *register_args("twice", model_file, "--metric-value", "0.9"))
        assert again.exit_code == 4
        assert errors(again.stderr)[0].endswith("(token_not_registrable)")
        assert "hokusai model status --token-id twice" in again.stderr

    @pytest.mark.parametrize("fmt", ["tar.gz", "zip"])
    def test_registers_an_mlflow_folder_packed_on_the_fly(
        self, live: LiveService, model_folder: Path, tmp_path: Path, fmt: str
    ) -> None:
        token_id = f"folder-{fmt.replace('.', '')}"
        create_token(live, token_id)
        out = ok(
            hokusai(
                live,
                *register_args(token_id, model_folder, "--metric-value", "0.9", "--json"),
                "--pack-format",
                fmt,
            )
        )
        registration = json.loads(out)
        assert registration["status"] == "registered"
        assert registration["artifact"]["filename"] == f"xray-model.{fmt}"
        assert registration["api_schema"] is not None  # the service read MLmodel's signature
        packed = uploads.pack_folder(model_folder, tmp_path, uploads.PackFormat(fmt))
        assert registration["artifact"]["sha256"] == uploads.sha256_file(packed)

    def test_scores_predictions(self, live: LiveService, model_file: Path, tmp_path: Path) -> None:
        create_token(live, "preds")
        csv = tmp_path / "scores.csv"
        csv.write_text("y_true,y_score\n0,0.1\n1,0.9\n0,0.35\n1,0.8\n1,0.3\n0,0.2\n")
        out = ok(
            hokusai(live, *register_args("preds", model_file, "--predictions", str(csv), "--json"))
        )
        metric = json.loads(out)["metric"]
        assert metric["value"] == pytest.approx(8 / 9) and metric["source"] == "computed"

    def test_below_the_baseline_exits_5_and_changes_nothing(
        self, live: LiveService, model_file: Path
    ) -> None:
        create_token(live, "low", "--metric", "auroc", "--baseline", "0.82")
        result = run_cli(*register_args("low", model_file, "--metric-value", "0.80"), env=live.env)
        assert result.returncode == 5
        assert errors(result.stderr) == [
            "error: The model does not beat the baseline: auroc 0.8 is below the baseline 0.82 "
            "(higher is better) (metric_below_baseline)"
        ]
        assert "hint: the score must be at least as good as the baseline" in result.stderr
        assert result.stdout == ""
        token = json.loads(ok(hokusai(live, "token", "show", "LOW", "--json")))
        assert token["status"] == "draft" and token["model_version"] is None

    def test_other_refusals_have_their_exit_codes(
        self, live: LiveService, model_file: Path
    ) -> None:
        create_token(live, "bench", "--metric", "accuracy", "--baseline", "0.5")
        mismatch = hokusai(live, *register_args("bench", model_file, "--metric-value", "0.9"))
        assert mismatch.exit_code == 5
        assert errors(mismatch.stderr)[0].endswith("(benchmark_mismatch)")
        assert "hokusai token show bench" in mismatch.stderr
        unknown = hokusai(
            live, *register_args("ghost", model_file, "--metric-value", "0.9", "--json")
        )
        assert unknown.exit_code == 8
        assert json.loads(unknown.stdout)["code"] == "token_not_found"  # --json: the problem


def read_pty(args: list[str], env: dict[str, str], timeout: float = 60) -> tuple[int, str]:
    """Run the CLI on a pseudo terminal (120 columns); its exit code and everything it printed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    process = subprocess.Popen(
        [HOKUSAI, *args], stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True
    )
    os.close(slave)
    output = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the terminal's other side is closed
                    break
                if not chunk:
                    break
                output += chunk
        return process.wait(timeout=10), output.decode("utf-8", "replace")
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()


class TestProgress:
    def test_shows_bytes_and_speed_on_a_terminal_and_nothing_when_piped(
        self, live: LiveService, tmp_path: Path
    ) -> None:
        model = tmp_path / "big.pkl"
        model.write_bytes(pickle_bytes(size=6 * MiB))
        create_token(live, "tty")
        create_token(live, "piped")
        env = {**live.env, "TERM": "xterm"}
        code, screen = read_pty(register_args("tty", model, "--metric-value", "0.9"), env)
        assert code == 0, screen
        assert "\x1b[" in screen  # drawn in place on the terminal
        assert "upload big.pkl" in screen
        assert re.search(r"6\.3/6\.3 MB", screen)  # bytes sent of bytes to send
        assert re.search(r"\d+(\.\d+)? [kMG]?B/s", screen)  # speed
        assert "Registered a model for TTY" in screen

        piped = run_cli(*register_args("piped", model, "--metric-value", "0.9"), env=env)
        assert piped.returncode == 0, piped.stderr
        assert piped.stderr == ""
        assert "\x1b[" not in piped.stdout
        assert piped.stdout.startswith("Registered a model for PIPED\n")


class TestInterruptedUpload:
    @pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "killed"])
    def test_rerun_with_the_same_key_registers_exactly_once(
        self, live: LiveService, tmp_path: Path, sig: signal.Signals
    ) -> None:
        token_id = f"cut-{sig.name.lower()}"
        create_token(live, token_id, "--metric", "auroc", "--baseline", "0.82")
        model = tmp_path / "big.pkl"
        model.write_bytes(pickle_bytes(size=16 * MiB))
        key = f"test-{token_id}"
        args = register_args(token_id, model, "--metric-value", "0.9", "--idempotency-key", key)
        port = int(live.url.rsplit(":", 1)[1])
        with SlowProxy(port, rate=8 * MiB) as proxy:
            process = subprocess.Popen(
                [HOKUSAI, *args, "--json"],
                env=cli_env(proxy.url, live.data_dir),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            proxy.wait_forwarded(4 * MiB)
            process.send_signal(sig)
            out, err = process.communicate(timeout=30)
        assert proxy.forwarded < model.stat().st_size  # it really stopped half-way
        if sig is signal.SIGINT:
            assert process.returncode == 130
            assert f"--idempotency-key {key}" in err
        else:
            assert process.returncode == -signal.SIGKILL
        assert out == ""

        first = run_cli(*args, "--json", env=live.env)
        assert first.returncode == 0, first.stderr
        registered = json.loads(first.stdout)
        replay = run_cli(*args, "--json", env=live.env)
        assert replay.returncode == 0, replay.stderr
        assert json.loads(replay.stdout)["registration_id"] == registered["registration_id"]

        done = [r for r in registrations(live, token_id) if r["status"] == "registered"]
        assert [r["registration_id"] for r in done] == [registered["registration_id"]]
        assert live.mlflow_versions(f"hokusai-{token_id.upper()}") == ["1"]

    def test_a_connection_cut_mid_upload_is_retried_by_itself(
        self, live: LiveService, tmp_path: Path
    ) -> None:
        create_token(live, "reset")
        model = tmp_path / "model.pkl"
        model.write_bytes(pickle_bytes(size=8 * MiB))
        port = int(live.url.rsplit(":", 1)[1])
        with SlowProxy(port, rate=1e9, cut_after=2 * MiB, cuts=1) as proxy:
            result = run_cli(
                *register_args("reset", model, "--metric-value", "0.9"),
                env=cli_env(proxy.url, live.data_dir),
            )
        assert result.returncode == 0, result.stderr
        assert "retrying in" in result.stderr
        assert proxy.connections == 2
        done = [r for r in registrations(live, "RESET") if r["status"] == "registered"]
        assert len(done) == 1
        assert live.mlflow_versions("hokusai-RESET") == ["1"]


@pytest.fixture
def events_feed(live: LiveService) -> None:
    if "/events" not in live.paths:
        pytest.skip("the live service does not serve GET /events yet (not in /openapi.json)")


@pytest.fixture
def webhooks_api(live: LiveService) -> None:
    if "/webhooks" not in live.paths:
        pytest.skip("the live service does not serve /webhooks yet (not in /openapi.json)")


class Lines:
    """The lines a process prints, collected by a thread as they come."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert process.stdout is not None
        stream = process.stdout
        self._thread = threading.Thread(target=lambda: self.lines.extend(stream), daemon=True)
        self._thread.start()

    def wait_for(self, count: int, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.lines) < count:
            assert time.monotonic() < deadline, f"got only {self.lines}"
            time.sleep(0.02)
        return self.lines


@pytest.mark.usefixtures("events_feed")
class TestEvents:
    def test_watch_prints_each_event_as_it_arrives(
        self, live: LiveService, model_file: Path
    ) -> None:
        create_token(live, "watched", "--metric", "auroc", "--baseline", "0.82")
        watch = subprocess.Popen(
            [
                HOKUSAI,
                "events",
                "watch",
                "--token-id",
                "watched",
                "--count",
                "2",
                "--timeout",
                "60",
                "--json",
            ],
            env=live.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            lines = Lines(watch)
            time.sleep(1.0)  # long enough to be waiting on the feed
            assert watch.poll() is None and lines.lines == []
            registered = json.loads(
                ok(
                    hokusai(
                        live,
                        *register_args("watched", model_file, "--metric-value", "0.9", "--json"),
                    )
                )
            )
            committed = time.monotonic()
            first, second = (json.loads(line) for line in lines.wait_for(2, timeout=15))
            latency = time.monotonic() - committed
            assert watch.wait(timeout=10) == 0
        finally:
            if watch.poll() is None:
                watch.kill()
            watch.communicate(timeout=10)
        assert first["event_type"] == "model_registered"
        assert first["payload"]["registration_id"] == registered["registration_id"]
        assert first["event_id"] in registered["event_ids"]
        assert second["event_type"] == "token_ready_for_deploy"
        assert first["sequence"] < second["sequence"]
        assert latency < 5, f"the event came {latency:.1f} s after the commit"

    def test_list_shows_a_table_and_json(self, live: LiveService, model_file: Path) -> None:
        create_token(live, "listed")
        ok(hokusai(live, *register_args("listed", model_file, "--metric-value", "0.9")))
        table = hokusai(
            live, "events", "list", "--token-id", "listed", "--event-type", "model_registered"
        )
        rows = ok(table).splitlines()[2:]
        assert len(rows) == 1 and "model_registered" in rows[0] and "LISTED" in rows[0]
        assert "hokusai-LISTED version 1: auroc 0.9 (baseline 0.82)" in rows[0]
        assert re.fullmatch(r"next page: --after \d+\n", table.stderr)
        page = json.loads(ok(hokusai(live, "events", "list", "--token-id", "LISTED", "--json")))
        assert [e["event_type"] for e in page["events"]] == [
            "model_registered",
            "token_ready_for_deploy",
        ]

    def test_watch_human_lines_and_timeout(self, live: LiveService, model_file: Path) -> None:
        create_token(live, "human")
        ok(hokusai(live, *register_args("human", model_file, "--metric-value", "0.9")))
        watched = ok(
            hokusai(
                live, "events", "watch", "--token-id", "human", "--count", "2", "--timeout", "10"
            )
        )
        first, second = watched.splitlines()
        assert re.fullmatch(
            r" *\d+  \d{4}-\d\d-\d\d \d\d:\d\d:\d\d  model_registered +HUMAN +"
            r"hokusai-HUMAN version 1: auroc 0\.9 \(baseline 0\.82\)",
            first,
        )
        assert "token_ready_for_deploy" in second and "ready to deploy" in second

        create_token(live, "quiet")
        timed_out = hokusai(
            live, "events", "watch", "--token-id", "quiet", "--count", "1", "--timeout", "1"
        )
        assert timed_out.exit_code == 7
        assert errors(timed_out.stderr) == ["error: 0 of 1 events arrived within 1 s"]


@pytest.mark.usefixtures("webhooks_api")
class TestWebhooks:
    def test_add_list_test_deliveries_retry_remove(self, live: LiveService) -> None:
        with webhook_receiver() as receiver:
            human = ok(
                hokusai(live, "webhooks", "add", receiver.url, "-e", "ping", "--description", "cli")
            )
            assert re.search(r"^  secret\s+whsec_\S+$", human, re.M)
            assert "shown only now" in human
            hook_id = human.splitlines()[0].rsplit(" ", 1)[1]

            listed = ok(hokusai(live, "webhooks", "list"))
            assert hook_id in listed and receiver.url in listed
            assert hook_id in {
                h["id"]
                for h in json.loads(ok(hokusai(live, "webhooks", "list", "--json")))["items"]
            }

            assert "ping queued" in ok(hokusai(live, "webhooks", "test", hook_id))
            delivery = self._wait_delivered(live, hook_id, count=1)
            assert delivery["event_type"] == "ping"
            assert receiver.received[0]["headers"]["webhook-id"] == delivery["event_id"]

            ok(hokusai(live, "webhooks", "retry", hook_id, delivery["id"]))
            deadline = time.monotonic() + 20
            while len(receiver.received) < 2:
                assert time.monotonic() < deadline, "the retried delivery never came"
                time.sleep(0.1)
            assert receiver.received[1]["headers"]["webhook-id"] == delivery["event_id"]

            table = ok(hokusai(live, "webhooks", "deliveries", hook_id))
            assert delivery["id"] in table and "delivered" in table

            assert (
                ok(hokusai(live, "webhooks", "remove", hook_id)) == f"removed webhook {hook_id}\n"
            )
            gone = hokusai(live, "webhooks", "remove", hook_id)
            assert gone.exit_code == 8

    @staticmethod
    def _wait_delivered(live: LiveService, hook_id: str, *, count: int) -> dict[str, Any]:
        deadline = time.monotonic() + 20
        while True:
            page = json.loads(
                ok(
                    hokusai(
                        live, "webhooks", "deliveries", hook_id, "--status", "delivered", "--json"
                    )
                )
            )
            if len(page["items"]) >= count:
                item: dict[str, Any] = page["items"][0]
                return item
            assert time.monotonic() < deadline, f"no delivered ping: {page}"
            time.sleep(0.2)


ROOT = Path(__file__).resolve().parents[2]


class TestPythonClient:
    def test_the_documented_example_registers_a_model(self, live: LiveService) -> None:
        env = {**live.env, "PYTHONPATH": str(ROOT)}
        result = subprocess.run(
            [sys.executable, str(ROOT / "docs" / "examples" / "python_client.py"), "py-doc"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0] == "token PY-DOC is draft"
        assert lines[1] == "registered hokusai-PY-DOC version 1"
        assert re.fullmatch(r"sha256 [0-9a-f]{64}", lines[2])
        if "/events" in live.paths:
            assert re.fullmatch(r"event \d+ model_registered [0-9a-f-]{36}", lines[3])

    def test_one_pass_upload_matches_what_the_service_stored(
        self, live: LiveService, tmp_path: Path
    ) -> None:
        from hokusai_client import HokusaiClient, InvalidRequest

        model = tmp_path / "model.pkl"
        model.write_bytes(pickle_bytes(size=3 * MiB))
        with HokusaiClient(live.url, live.key) as client:
            client.create_token("py-pass")
            registration = client.register_model(
                "py-pass", model, metric="auroc", baseline=0.82, metric_value=0.9
            )
            assert registration.status_code == 201
            stored = registration["artifact"]
            assert stored["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
            assert stored["size_bytes"] == model.stat().st_size
            assert client.get_registration(registration["registration_id"]) == registration
            # The same key and the same file: the first outcome again, not a second version.
            key = "py-pass-key"
            client.create_token("py-again")
            first = client.register_model(
                "py-again",
                model,
                metric="auroc",
                baseline=0.82,
                metric_value=0.9,
                idempotency_key=key,
            )
            again = client.register_model(
                "py-again",
                model,
                metric="auroc",
                baseline=0.82,
                metric_value=0.9,
                idempotency_key=key,
            )
            assert again["registration_id"] == first["registration_id"]
            # A changed request under the same key is refused.
            with pytest.raises(InvalidRequest) as refused:
                client.register_model(
                    "py-again",
                    model,
                    metric="auroc",
                    baseline=0.82,
                    metric_value=0.95,
                    idempotency_key=key,
                )
            assert refused.value.code == "idempotency_key_reused"
        assert live.mlflow_versions("hokusai-PY-AGAIN") == ["1"]


@pytest.fixture
def benchmarks_api(live: LiveService) -> None:
    if "/tokens/{token_id}/benchmark" not in live.paths:
        pytest.skip("the live service does not serve sealed benchmarks yet (not in /openapi.json)")


@pytest.mark.usefixtures("benchmarks_api")
class TestSealedBenchmark:
    def test_upload_show_and_an_evaluated_registration_with_its_receipt(
        self, live: LiveService, tmp_path: Path
    ) -> None:
        create_token(live, "sealed", "--metric", "accuracy", "--baseline", "0.5")
        rows = "\n".join(f"{i},{i % 2}" for i in range(200))
        dataset = tmp_path / "holdout.csv"
        dataset.write_text("x,label\n" + rows + "\n")
        uploaded = json.loads(
            ok(
                hokusai(
                    live,
                    "benchmark",
                    "upload",
                    "-t",
                    "sealed",
                    "--dataset",
                    str(dataset),
                    "--label-column",
                    "label",
                    "--json",
                )
            )
        )
        assert uploaded["rows"] == 200 and uploaded["label_column"] == "label"
        assert "label" not in json.dumps(uploaded["features"])
        shown = json.loads(ok(hokusai(live, "benchmark", "show", "-t", "SEALED", "--json")))
        assert shown["sha256"] == hashlib.sha256(dataset.read_bytes()).hexdigest()

        import pickle

        from sklearn.tree import DecisionTreeClassifier  # the service evaluates a real model

        model = tmp_path / "model.pkl"
        fitted = DecisionTreeClassifier().fit(
            [[i] for i in range(200)], [i % 2 for i in range(200)]
        )
        model.write_bytes(pickle.dumps(fitted))
        result = run_cli(
            "model",
            "register",
            "-t",
            "sealed",
            "-m",
            str(model),
            "--metric",
            "accuracy",
            "--baseline",
            "0.5",
            "--json",
            env=live.env,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr
        registration = json.loads(result.stdout)
        assert registration["status"] == "registered"
        assert registration["metric"]["source"] == "evaluated"
        verified = run_cli(
            "receipt",
            "verify",
            "--registration-id",
            registration["registration_id"],
            "--json",
            env=live.env,
        )
        assert verified.returncode == 0, verified.stderr
        assert json.loads(verified.stdout)["valid"] is True
