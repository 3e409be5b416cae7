"""docs/getting-started-production.md, run as a newcomer would: every block, in order.

PostgreSQL (a fresh, uniquely named database), a real `mlflow server`, `hokusai-registry serve`
without a dispatcher, a separate `hokusai-registry worker`, the documented webhook receiver
(docs/examples/webhook_receiver.py), and a registration through the `hokusai` CLI. The test only
chooses the values of the walkthrough's own variables (ports, folder, database name).
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.docs.blocks import scenario
from tests.docs.shell import Session, clean_environment, reader_dir, wait_for_port
from tests.mlflow_server import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

POSTGRES = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1"]


def _postgres_answers() -> bool:
    try:
        done = subprocess.run([*POSTGRES, "-c", "SELECT 1"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _wait_for_line(session: Session, name: str, needle: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        for line in session.log(name).splitlines():
            if needle in line:
                return line
        assert time.monotonic() < deadline, f"{needle!r} not in {name}'s output:\n{session.logs()}"
        time.sleep(0.2)


def test_walkthrough_registers_a_model_and_the_receiver_verifies_the_webhook(
    tmp_path: Path,
) -> None:
    if not _postgres_answers():
        pytest.skip("PostgreSQL does not answer on 127.0.0.1:5432")
    blocks = scenario("walkthrough")
    database = f"hokusai_docs_{uuid.uuid4().hex[:12]}"
    home = tmp_path / "home"
    ports = {"MLFLOW_PORT": free_port(), "HOKUSAI_PORT": free_port(), "RECEIVER_PORT": free_port()}
    session = Session(
        cwd=reader_dir(tmp_path),
        env=clean_environment(
            HOKUSAI_HOME=str(home),
            HOKUSAI_DB_NAME=database,
            **{name: str(port) for name, port in ports.items()},
        ),
    )
    outputs: dict[int, str] = {}
    try:
        for block in blocks:
            if "cleanup" in block.flags:
                continue
            name = block.flags.get("background")
            if name:
                session.start(block, name)
            else:
                outputs[block.line] = session.run(block, timeout=90)
        # The documented receiver accepted both events, each with both signatures checked.
        line = _wait_for_line(session, "receiver", "verified token_ready_for_deploy XRAY", 30)
        event = json.loads(line.split(" ", 3)[3])
        assert event["payload"]["model_name"] == "hokusai-XRAY"
        assert event["payload"]["model_version"] == "1"
        assert event["payload"]["metric_name"] == "auroc"
        _wait_for_line(session, "receiver", "verified model_registered XRAY", 5)
        # The worker delivered them: the API has no dispatcher in this setup.
        status_output = next(out for out in outputs.values() if "registered" in out)
        assert "hokusai-XRAY" in status_output
        # The receiver refuses a delivery whose signature does not match.
        receiver_port = ports["RECEIVER_PORT"]
        wait_for_port(receiver_port)
        forged = subprocess.run(
            [
                "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                "-H", "webhook-id: msg_1", "-H", f"webhook-timestamp: {int(time.time())}",
                "-H", "webhook-signature: v1,AAAA", "-H", "X-Hokusai-Signature: sha256=00",
                "--data-binary", "{}", f"http://127.0.0.1:{receiver_port}/hook",
            ],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
        assert forged.stdout == "401"
        # The worker delivered them: the API runs no dispatcher with HOKUSAI_RUN_DISPATCHER=false.
        assert "dispatcher_started" in session.log("worker")
        assert "dispatcher_started" not in session.log("api")
    finally:
        session.stop_all()
        for block in blocks:
            if "cleanup" in block.flags:
                session.run(block, timeout=60)
    assert not home.exists()
    listed = subprocess.run(
        [*POSTGRES, "-tAc", f"SELECT count(*) FROM pg_database WHERE datname = '{database}'"],
        capture_output=True, text=True, timeout=10, check=True,
    )  # fmt: skip
    assert listed.stdout.strip() == "0"
