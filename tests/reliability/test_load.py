"""A load test on loopback: two API processes and one worker share PostgreSQL and one MLflow server.

20 clients register 20 distinct tokens at once, alternating between the two API processes, while
4 pairs of racers each register one token from both processes at the same moment. Afterwards:

- every race ended with exactly one 201 and one 409;
- every accepted registration committed exactly once (the token points at the 201's run, the
  token has exactly one `registered` registration, MLflow has exactly one version for it);
- every event (2 per accepted registration) reached the static webhook exactly once, signed;
- nothing was lost: the outbox, the feed and the receiver agree on the same events.

Everything stops by itself: every wait is bounded and every process is stopped in `finally`.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from mlflow import MlflowClient

from app.manage import migrate
from tests.factories import pickle_bytes, sha256
from tests.mlflow_server import MlflowServer, free_port
from tests.support.service import POSTGRES_ADMIN_URL, postgres_available
from tests.webhook_receiver import WebhookReceiver

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

BIN = Path(sys.executable).parent
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
CONCURRENT = 20
RACES = 4
REQUEST_TIMEOUT = 90.0
READY_SECONDS = 90.0
DELIVERY_SECONDS = 60.0
METRIC = {"metric": "auroc", "baseline": "0.82", "metric_value": "0.86"}


def _require_postgres() -> None:
    if not postgres_available():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL} under CI")
        pytest.skip("PostgreSQL is not reachable")


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "<no log>"


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


class _Processes:
    """The service's processes, each logging to its own file; stopped on exit."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, args: list[str], env: dict[str, str]) -> None:
        with (self.log_dir / f"{name}.log").open("wb") as log_file:
            self.running[name] = subprocess.Popen(
                [str(BIN / "hokusai-registry"), *args],
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )

    def assert_alive(self) -> None:
        for name, process in self.running.items():
            assert process.poll() is None, (
                f"{name} exited with {process.returncode}:\n{self.logs(name)}"
            )

    def logs(self, name: str) -> str:
        return _tail(self.log_dir / f"{name}.log")

    def all_logs(self) -> str:
        return "\n".join(f"--- {name} ---\n{self.logs(name)}" for name in self.running)

    def stop(self) -> None:
        for process in self.running.values():
            if process.poll() is None:
                process.terminate()
        for process in self.running.values():
            _stop(process)


def _wait(
    condition: Callable[[], bool], seconds: float, what: str, check: Callable[[], None]
) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        check()
        assert time.monotonic() < deadline, f"timed out after {seconds} s waiting for {what}"
        time.sleep(0.1)


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_two_api_processes_and_a_worker_under_concurrent_and_racing_registrations(
    tmp_path: Path,
) -> None:
    _require_postgres()
    started = time.monotonic()
    with ExitStack() as stack:
        # The MLflow server is the slowest to start: start it first, set everything else up
        # meanwhile, and wait for it only when the API processes need it.
        mlflow_server = MlflowServer(tmp_path / "mlflow")
        stack.callback(mlflow_server.stop)

        name = f"hokusai_load_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')

        def drop_database() -> None:
            with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

        stack.callback(drop_database)
        database_url = f"{POSTGRES_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
        migrate(database_url)

        receiver = stack.enter_context(WebhookReceiver(secret=SECRET))
        base_env = {
            **os.environ,
            "HOKUSAI_ENV": "test",
            "HOKUSAI_DATABASE_URL": database_url,
            "HOKUSAI_MLFLOW_TRACKING_URI": mlflow_server.url,
            "HOKUSAI_WEBHOOK_URL": receiver.url,
            "HOKUSAI_WEBHOOK_SECRET": SECRET,
            "HOKUSAI_WEBHOOK_RETRY_SCHEDULE": "0.5,0.5,1,1,2",
            "HOKUSAI_LOG_JSON": "true",
        }
        for variable in ("HOKUSAI_REDIS_URL", "HOKUSAI_MLFLOW_REGISTRY_URI"):
            base_env.pop(variable, None)

        created = subprocess.run(
            [
                str(BIN / "hokusai-registry"),
                "create-api-key",
                "--name",
                "load",
                "--scopes",
                "admin",
            ],
            env={**base_env, "HOKUSAI_DATA_DIR": str(tmp_path / "cli")},
            check=True,
            timeout=120,
            capture_output=True,
            text=True,
        )
        key = created.stdout.strip().splitlines()[-1]

        processes = _Processes(tmp_path)
        stack.callback(processes.stop)
        urls: list[str] = []
        for index in range(2):
            port = free_port()
            urls.append(f"http://127.0.0.1:{port}")
            processes.start(
                f"api-{index}",
                ["serve", "--port", str(port), "--no-migrate"],
                {
                    **base_env,
                    "HOKUSAI_DATA_DIR": str(tmp_path / f"api-{index}"),
                    "HOKUSAI_RUN_DISPATCHER": "false",
                },
            )
        processes.start(
            "worker", ["worker"], {**base_env, "HOKUSAI_DATA_DIR": str(tmp_path / "worker")}
        )

        mlflow_uri = mlflow_server.wait_healthy()
        for url in urls:
            _wait(
                functools.partial(_ready, url),
                READY_SECONDS,
                f"{url}/ready",
                processes.assert_alive,
            )
        setup_seconds = time.monotonic() - started

        headers = {"Authorization": f"Bearer {key}"}
        distinct = [f"LOAD-{n:02d}" for n in range(CONCURRENT)]
        raced = [f"RACE-{n}" for n in range(RACES)]
        with httpx.Client(base_url=urls[0], headers=headers, timeout=30) as client:
            for token_id in distinct + raced:
                response = client.post(
                    "/tokens", json={"token_id": token_id, "metric": "auroc", "baseline": 0.82}
                )
                assert response.status_code == 201, response.text

        model = pickle_bytes(size=2048)
        digest = sha256(model)
        # One job per client: (token, API url, the race's barrier or None).
        jobs: list[tuple[str, str, threading.Barrier | None]] = [
            (token_id, urls[n % 2], None) for n, token_id in enumerate(distinct)
        ]
        for token_id in raced:
            pair = threading.Barrier(2, timeout=60)
            jobs += [(token_id, urls[0], pair), (token_id, urls[1], pair)]
        start_line = threading.Barrier(len(jobs), timeout=60)
        results: list[dict[str, Any] | None] = [None] * len(jobs)

        def run(index: int, token_id: str, url: str, pair: threading.Barrier | None) -> None:
            try:
                with httpx.Client(base_url=url, headers=headers, timeout=REQUEST_TIMEOUT) as client:
                    start_line.wait()
                    if pair is not None:
                        pair.wait()
                    t0 = time.monotonic()
                    response = client.post(
                        f"/models/{token_id}/register",
                        data={**METRIC, "sha256": digest},
                        files={"model_file": ("model.pkl", model, "application/octet-stream")},
                    )
                    results[index] = {
                        "token_id": token_id,
                        "url": url,
                        "status": response.status_code,
                        "body": response.json(),
                        "seconds": time.monotonic() - t0,
                    }
            except Exception as e:  # recorded, asserted below
                results[index] = {"token_id": token_id, "url": url, "error": repr(e)}

        threads = [
            threading.Thread(target=run, args=(index, *job), daemon=True)
            for index, job in enumerate(jobs)
        ]
        load_started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=REQUEST_TIMEOUT + 60 - (time.monotonic() - load_started))
        load_seconds = time.monotonic() - load_started
        assert not any(thread.is_alive() for thread in threads), "a client never finished"
        processes.assert_alive()

        errors = [r for r in results if r is None or "error" in r]
        assert not errors, f"clients failed: {errors}\n{processes.all_logs()}"
        done: list[dict[str, Any]] = [r for r in results if r is not None]

        # The distinct tokens: every one accepted.
        concurrent = [r for r in done if r["token_id"] in distinct]
        refused = [r for r in concurrent if r["status"] != 201]
        assert not refused, f"distinct registrations refused: {refused}\n{processes.all_logs()}"

        # The races: exactly one 201 and one 409 each.
        for token_id in raced:
            pair_results = sorted(
                (r for r in done if r["token_id"] == token_id), key=lambda r: r["status"]
            )
            statuses = [r["status"] for r in pair_results]
            assert statuses == [201, 409], f"race on {token_id}: {pair_results}"
            assert pair_results[1]["body"]["code"] in {
                "registration_in_progress",
                "token_not_registrable",
            }, pair_results[1]
        accepted = {r["token_id"]: r["body"] for r in done if r["status"] == 201}
        assert sorted(accepted) == sorted(distinct + raced)

        # Every accepted registration committed exactly once.
        expected_events: dict[str, str] = {}  # event_id -> token_id
        with httpx.Client(base_url=urls[1], headers=headers, timeout=30) as client:
            for token_id, body in accepted.items():
                assert body["status"] == "registered", body
                token = client.get(f"/tokens/{token_id}").json()
                assert token["status"] == "registered", token
                assert token["mlflow_run_id"] == body["mlflow_run_id"], (token, body)
                assert token["model_version"] == body["model_version"], (token, body)
                history = client.get(f"/tokens/{token_id}/registrations").json()["items"]
                registered = [item for item in history if item["status"] == "registered"]
                assert len(registered) == 1, (token_id, history)
                assert registered[0]["registration_id"] == body["registration_id"]
                assert len(body["event_ids"]) == 2, body
                for event_id in body["event_ids"]:
                    expected_events[event_id] = token_id

            # MLflow: exactly one version per registered token, from the 201's run.
            mlflow = MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)
            for token_id, body in accepted.items():
                versions = mlflow.search_model_versions(f"name='hokusai-{token_id}'")
                assert len(versions) == 1, (token_id, [v.version for v in versions])
                assert versions[0].run_id == body["mlflow_run_id"], (token_id, versions[0])

            # Every event delivered exactly once, signed; nothing lost.
            _wait(
                lambda: (
                    set(expected_events) <= {r.headers.get("webhook-id") for r in receiver.requests}
                ),
                DELIVERY_SECONDS,
                "every event at the webhook",
                processes.assert_alive,
            )
            time.sleep(1.0)  # room for a duplicate to show up
            received = receiver.requests
            per_event = Counter(r.headers.get("webhook-id") for r in received)
            lost = set(expected_events) - set(per_event)
            duplicated = {event_id: n for event_id, n in per_event.items() if n > 1}
            unexpected = set(per_event) - set(expected_events)
            assert not lost, f"lost events: {lost}"
            assert not duplicated, f"events delivered more than once: {duplicated}"
            assert not unexpected, f"events nobody announced: {unexpected}"
            bad = [
                (r.headers.get("webhook-id"), r.verify_error)
                for r in received
                if not r.signature_ok
            ]
            assert not bad, f"signatures that do not verify: {bad}"
            by_token: dict[str, set[str]] = {}
            for request in received:
                envelope = request.json()
                assert envelope["event_id"] == request.headers["webhook-id"]
                assert envelope["token_id"] == expected_events[envelope["event_id"]]
                by_token.setdefault(envelope["token_id"], set()).add(envelope["event_type"])
            assert all(
                types == {"model_registered", "token_ready_for_deploy"}
                for types in by_token.values()
            ), by_token

            # The feed and the outbox hold exactly the same events.
            feed: list[dict[str, Any]] = []
            after = 0
            for _ in range(100):
                page = client.get("/events", params={"after": after, "limit": 1000}).json()
                feed += page["events"]
                if not page["events"]:
                    break
                after = page["next_after"]
            assert sorted(e["event_id"] for e in feed) == sorted(expected_events)
            sequences = [e["sequence"] for e in feed]
            assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)

        with psycopg.connect(database_url) as conn:
            deliveries: dict[str, int] = dict(
                conn.execute("SELECT status, count(*) FROM deliveries GROUP BY status").fetchall()
            )
        assert deliveries == {"delivered": len(expected_events)}, deliveries

        races_won = sum(1 for token_id in raced if token_id in accepted)
        race_codes = Counter(r["body"].get("code") for r in done if r["status"] == 409)
        print(
            f"\nload: concurrent registrations={len(concurrent)} (201: {len(concurrent)}), "
            f"races={RACES} (one 201 + one 409 each: {races_won}; 409 codes {dict(race_codes)}), "
            f"events expected={len(expected_events)} delivered={len(per_event)} "
            f"lost={len(lost)} duplicated={len(duplicated)}, "
            f"registration burst {load_seconds:.1f} s "
            f"(slowest request {max(r['seconds'] for r in done):.1f} s), "
            f"setup {setup_seconds:.1f} s, wall {time.monotonic() - started:.1f} s"
        )
        with suppress(Exception):
            processes.stop()
