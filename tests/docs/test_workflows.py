"""docs/workflows.md and the quick start of docs/cli.md, run block by block against a live service.

The service is what `make run` starts (development mode, SQLite, a local MLflow store), plus Redis
for the Redis recipe. The only substitution is the service's URL, through `HOKUSAI_API_URL`.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.docs.service import make_run
from tests.docs.shell import Session, clean_environment, reader_dir, run_scenario
from tests.mlflow_server import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

REDIS_URL = "redis://127.0.0.1:6379/11"


def _redis_answers() -> bool:
    try:
        done = subprocess.run(
            ["redis-cli", "-u", REDIS_URL, "PING"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.stdout.strip() == "PONG"


def test_cli_quick_start(tmp_path: Path) -> None:
    cwd = reader_dir(tmp_path)
    with make_run(cwd) as url:
        session = Session(cwd=cwd, env=clean_environment(HOKUSAI_API_URL=url))
        outputs = run_scenario("cli", session)
    transcript = "\n".join(outputs)
    assert "hokusai-XRAY" in transcript
    assert "model_registered" in transcript
    assert "token_ready_for_deploy" in transcript
    # `events watch --json | jq .payload` (cli.md): the payload of the registration above.
    assert '"model_name": "hokusai-XRAY"' in transcript


def test_workflows(tmp_path: Path) -> None:
    if not _redis_answers():
        pytest.skip(f"Redis does not answer at {REDIS_URL}")
    cwd = reader_dir(tmp_path)
    with make_run(cwd, HOKUSAI_REDIS_URL=REDIS_URL) as url:
        session = Session(
            cwd=cwd,
            env=clean_environment(
                HOKUSAI_API_URL=url, HOKUSAI_REDIS_URL=REDIS_URL, RECEIVER_PORT=str(free_port())
            ),
        )
        outputs = run_scenario("workflows", session)
        receiver_log = session.log("receiver")
    transcript = "\n".join(outputs)
    # What the recipes say their commands show.
    assert '"status": "registered"' in transcript  # the predictions file, scored
    assert '"value": 0.857142857142857' in transcript or "0.8571428571" in transcript
    assert '"inputs"' in transcript  # the folder's MLflow signature became api_schema
    assert "one registration:" in transcript
    assert "refused: exit 5" in transcript and "metric_below_baseline" in transcript
    assert "\ndraft\n" in transcript
    assert "the receiver on the old secret still verifies deliveries" in transcript
    assert (
        "hokusai-CHURN" in transcript.split("model_deployed")[-1]
        or "hokusai-CHURN" in (outputs[-1])
    )
    # The documented receiver verified both pings, the second one signed during the rotation.
    assert receiver_log.count("verified ping") == 2, receiver_log
