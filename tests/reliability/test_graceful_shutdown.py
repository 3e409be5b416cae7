"""Graceful shutdown: SIGTERM lets the work in flight finish, then the process exits 0.

`hokusai-registry serve` runs as a real process (SQLite and a local MLflow store), started through
tests/support/serve.py so that a hook stalls a registration inside its MLflow work (`--pause-at
during_mlflow`); the test sends
SIGTERM, checks that the server is draining (new connections refused, the process still alive),
then deletes the pause marker: the registration must complete with 201 and its events, and the
process must exit with status 0 soon after.

`hokusai-registry worker` gets the same treatment with a webhook delivery held open by a slow
receiver: it must record the delivery as delivered before exiting 0.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from app.auth.service import create_api_key
from app.db import Database
from app.events.models import WebhookEndpoint
from app.events.outbox import NewEvent, write_events
from app.manage import migrate
from app.registration.hooks import Stage
from tests.factories import pickle_bytes
from tests.mlflow_server import free_port
from tests.support import serve
from tests.support.hooks import marker_path
from tests.webhook_receiver import Reply, WebhookReceiver

BIN = Path(sys.executable).parent
STARTUP_SECONDS = 60.0
# From the release of the stalled registration to the process's exit.
EXIT_SECONDS = 30.0
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("HOKUSAI_", "MLFLOW_"))
    }
    return env | {
        "HOKUSAI_ENV": "test",
        "HOKUSAI_DATA_DIR": str(data_dir),
        "HOKUSAI_LOG_JSON": "true",
        "HOKUSAI_MLFLOW_RETRY_SECONDS": "5",
        **extra,
    }


def _wait_for(condition: Callable[[], bool], what: str, *, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    migrate(f"sqlite:///{tmp_path / 'hokusai.db'}")
    return tmp_path


@pytest.fixture
def admin_key(data_dir: Path) -> str:
    async def create() -> str:
        database = Database(f"sqlite:///{data_dir / 'hokusai.db'}")
        try:
            async with database.transaction() as session:
                return (await create_api_key(session, name="drain", scopes=["admin"]))[1]
        finally:
            await database.dispose()

    return asyncio.run(create())


@pytest.fixture
def server(data_dir: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """`serve`, stalling registrations inside MLflow until the marker is deleted."""
    port = free_port()
    log_path = data_dir / "serve.log"
    env = _env(data_dir, HOKUSAI_SHUTDOWN_GRACE_SECONDS="60")
    command = serve.command(Stage.DURING_MLFLOW, "serve", "--port", str(port), "--no-migrate")
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command, cwd=serve.ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            assert process.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"not ready:\n{log_path.read_text()}"
            time.sleep(0.1)
        yield process, port, log_path
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


class TestServe:
    def test_sigterm_lets_a_registration_in_mlflow_finish_then_exits_0(
        self,
        data_dir: Path,
        admin_key: str,
        server: tuple[subprocess.Popen[bytes], int, Path],
    ) -> None:
        process, port, log_path = server
        url = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {admin_key}"}
        created = httpx.post(f"{url}/tokens", json={"token_id": "DRAIN"}, headers=headers)
        assert created.status_code == 201, created.text

        outcome: dict[str, httpx.Response | BaseException] = {}

        def post() -> None:
            try:
                outcome["response"] = httpx.post(
                    f"{url}/models/DRAIN/register",
                    headers=headers,
                    data={"metric": "auroc", "baseline": "0.82", "metric_value": "0.86"},
                    files={"model_file": ("model.pkl", pickle_bytes(size=64 * 1024))},
                    timeout=120,
                )
            except BaseException as e:
                outcome["response"] = e

        thread = threading.Thread(target=post, daemon=True)
        thread.start()
        marker = marker_path(data_dir, Stage.DURING_MLFLOW)
        _wait_for(marker.exists, "the registration to stall inside MLflow")

        process.send_signal(signal.SIGTERM)
        # Draining: the listening socket is closed, the process and the registration live on.
        _wait_for(lambda: _refuses_connections(port), "new connections to be refused")
        time.sleep(0.5)
        assert process.poll() is None, log_path.read_text()
        assert "response" not in outcome

        released = time.monotonic()
        marker.unlink()
        thread.join(timeout=EXIT_SECONDS)
        response = outcome.get("response")
        assert isinstance(response, httpx.Response), f"{response!r}\n{log_path.read_text()}"
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["status"] == "registered"
        assert len(body["event_ids"]) == 2

        assert process.wait(timeout=EXIT_SECONDS) == 0, log_path.read_text()
        assert time.monotonic() - released < EXIT_SECONDS
        with sqlite3.connect(data_dir / "hokusai.db") as db:
            status, run_id = db.execute(
                "SELECT status, mlflow_run_id FROM tokens WHERE token_id = 'DRAIN'"
            ).fetchone()
            events = db.execute(
                "SELECT event_id, event_type FROM events WHERE token_id = 'DRAIN'"
            ).fetchall()
        assert status == "registered"
        assert run_id == body["mlflow_run_id"]
        assert sorted(event_type for _, event_type in events) == [
            "model_registered",
            "token_ready_for_deploy",
        ]
        assert sorted(event_id for event_id, _ in events) == sorted(body["event_ids"])
        log = log_path.read_text()
        assert "registration_committed" in log
        assert "service_stopped" in log


class TestWorker:
    async def test_sigterm_lets_a_delivery_in_flight_finish_then_exits_0(
        self, data_dir: Path
    ) -> None:
        database_url = f"sqlite:///{data_dir / 'hokusai.db'}"
        with WebhookReceiver(secret=SECRET, default=Reply.slow(2.0)) as receiver:
            database = Database(database_url)
            try:
                async with database.transaction() as session:
                    session.add(WebhookEndpoint(id="ep-drain", url=receiver.url, secret=SECRET))
                async with database.transaction() as session:
                    (event,) = await write_events(
                        session, [NewEvent("model_registered", "DRAIN", {"n": 1})]
                    )
            finally:
                await database.dispose()
            log_path = data_dir / "worker.log"
            with log_path.open("wb") as log_file:
                worker = subprocess.Popen(
                    [BIN / "hokusai-registry", "worker"],
                    env=_env(data_dir, HOKUSAI_DATABASE_URL=database_url),
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                )
            try:
                await receiver.wait_for(1, timeout=STARTUP_SECONDS)
                # The receiver holds its answer for 2 s: the delivery is in flight.
                worker.send_signal(signal.SIGTERM)
                code = await asyncio.to_thread(worker.wait, EXIT_SECONDS)
            finally:
                if worker.poll() is None:
                    worker.kill()
                    worker.wait(timeout=10)
        assert code == 0, log_path.read_text()
        assert receiver.requests[0].headers["webhook-id"] == event.event_id
        with sqlite3.connect(data_dir / "hokusai.db") as db:
            status, attempts = db.execute(
                "SELECT status, attempts FROM deliveries WHERE event_id = ?", (event.event_id,)
            ).fetchone()
        assert (status, attempts) == ("delivered", 1), log_path.read_text()
