"""Webhook delivery: throughput and commit-to-receipt latency to a local receiver.

Starts `hokusai-registry serve` on a fresh data folder (SQLite by default, or the PostgreSQL at
--postgres-url), subscribes a local receiver that verifies every signature with the
`standardwebhooks` package, and produces events by registering small models (each registration
commits two events). The receiver can refuse the first N attempts of every event (--refuse), with a
short retry schedule, to show that nothing is lost.

    .venv/bin/python benchmarks/webhook_delivery.py [--events N] [--refuse 3] [--postgres-url URL]

Two scenarios run: live delivery (commit-to-receipt latency, no refusals) and a backlog drained by
a worker while the receiver refuses the first N attempts of every event (throughput).
"""

from __future__ import annotations

import argparse
import datetime as dt
import pickle
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.harness import (
    Report,
    migrate_and_create_key,
    serve,
    service_env,
    start,
    stop,
    wait_ready,
)
from tests.webhook_receiver import Reply, WebhookReceiver


def scenario(
    *, events: int, refuse: int, clients: int, backlog: bool, postgres_url: str | None
) -> list[str]:
    """Live: the API process delivers while registrations commit. Backlog: the events are all
    committed first with delivery off, then one `hokusai-registry worker` drains them."""
    registrations = events // 2
    attempts: Counter[str] = Counter()
    lock = threading.Lock()

    def respond(request: object) -> Reply | None:
        event_id = request.headers["webhook-id"]  # type: ignore[attr-defined]
        with lock:
            attempts[event_id] += 1
            refused = attempts[event_id] <= refuse
        return Reply.with_status(503) if refused else Reply.ok()

    with (
        tempfile.TemporaryDirectory(prefix="hokusai-bench-") as tmp,
        WebhookReceiver(responder=respond) as receiver,
    ):
        env = service_env(
            tmp,
            HOKUSAI_WEBHOOK_RETRY_SCHEDULE=",".join(["0.05"] * max(refuse, 1)),
            HOKUSAI_RUN_DISPATCHER="false" if backlog else "true",
        )
        if postgres_url:
            env["HOKUSAI_DATABASE_URL"] = postgres_url
        key = migrate_and_create_key(env)
        server, url = serve(env)
        processes = [server]
        headers = {"Authorization": f"Bearer {key}"}
        try:
            wait_ready(url, server)
            created = httpx.post(
                f"{url}/webhooks", json={"url": receiver.url}, headers=headers, timeout=10
            )
            created.raise_for_status()
            receiver.secret = created.json()["secret"]
            model = pickle.dumps({"weights": [0.1] * 100})

            def register(i: int) -> None:
                with httpx.Client(base_url=url, headers=headers, timeout=60) as client:
                    token_id = f"WH-{i}"
                    client.post("/tokens", json={"token_id": token_id}).raise_for_status()
                    response = client.post(
                        f"/models/{token_id}/register",
                        data={"metric": "auroc", "baseline": "0.8", "metric_value": "0.9"},
                        files={"model_file": ("model.pkl", model)},
                    )
                    if response.status_code != 201:
                        raise SystemExit(response.text)

            began = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                list(pool.map(register, range(registrations)))
            produced = time.perf_counter() - began
            if backlog:
                began = time.perf_counter()
                processes.append(start(["hokusai-registry", "worker"], env))
            wanted = registrations * 2
            deadline = time.monotonic() + 600
            while True:
                delivered = [r for r in receiver.requests if r.reply.status == 200]
                if len({r.headers["webhook-id"] for r in delivered}) >= wanted:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"only {len(delivered)} of {wanted} events arrived")
                time.sleep(0.02)
            finished = time.perf_counter() - began
        finally:
            stop(*processes)

    requests = receiver.requests
    delivered = [r for r in requests if r.reply.status == 200]
    unique = {r.headers["webhook-id"] for r in delivered}
    verified = sum(1 for r in delivered if r.signature_ok)
    backend = "PostgreSQL" if postgres_url else "SQLite"
    mode = "backlog drained by a worker" if backlog else "live, delivered by the API process"
    lines = [
        f"{mode}; {backend}; {wanted} events; {refuse} refused attempts per event",
        f"requests {len(requests)} ({len(requests) - len(delivered)} refused); delivered "
        f"{len(unique)} unique, {len(delivered) - len(unique)} duplicates, {verified} verified, "
        f"{wanted - len(unique)} missing",
    ]
    if backlog:
        lines.append(f"drained in {finished:.2f} s: {len(unique) / finished:.1f} events/s")
    else:
        # Commit to receipt: the envelope's timestamp is taken in the committing transaction.
        latencies = sorted(
            r.received_wall
            - dt.datetime.fromisoformat(r.json()["timestamp"].replace("Z", "+00:00")).timestamp()
            for r in delivered
        )
        p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        lines.append(
            f"produced in {produced:.2f} s; the last arrived {finished - produced:.2f} s later"
        )
        lines.append(
            f"commit to receipt: median {statistics.median(latencies) * 1000:.1f} ms, "
            f"p99 {p99 * 1000:.1f} ms"
        )
    print("== " + lines[0])
    for line in lines[1:]:
        print("   " + line)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1000, help="events per scenario (even)")
    parser.add_argument("--refuse", type=int, default=3, help="refused attempts per event")
    parser.add_argument("--clients", type=int, default=4, help="concurrent registering clients")
    parser.add_argument("--postgres-url", default=None)
    parser.add_argument("--scenario", choices=["both", "live", "backlog"], default="both")
    parser.add_argument("--report", help="write the figures as JSON here (for run_all.py)")
    args = parser.parse_args()
    common = {"events": args.events, "clients": args.clients, "postgres_url": args.postgres_url}
    results: list[list[str]] = []
    if args.scenario in ("both", "live"):
        results.append(scenario(refuse=0, backlog=False, **common))
    if args.scenario in ("both", "backlog"):
        results.append(scenario(refuse=args.refuse, backlog=True, **common))
    Report(
        title="Event delivery",
        command=f"benchmarks/webhook_delivery.py --events {args.events} --refuse {args.refuse}",
        section=(
            "A local receiver verifies every request with the `standardwebhooks` package; events "
            f"come from real registrations by {args.clients} concurrent clients.\n\n"
            + "\n".join(f"- {lines[0]}: " + "; ".join(lines[1:]) + "." for lines in results)
        ),
    ).save(args.report)


if __name__ == "__main__":
    main()
