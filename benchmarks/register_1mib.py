"""Median time of a 1 MiB registration over HTTP against the embedded defaults.

Starts `hokusai-registry serve` as its own process on a fresh data folder (SQLite and a local MLflow
store), registers N distinct 1 MiB models one after another, and prints the latency figures.

    .venv/bin/python benchmarks/register_1mib.py [--runs 30] [--warmup 3]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.harness import migrate_and_create_key, serve, service_env, stop, wait_ready


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="hokusai-bench-") as tmp:
        env = service_env(tmp)
        key = migrate_and_create_key(env)
        started = time.perf_counter()
        server, url = serve(env)
        try:
            wait_ready(url, server)
            ready_after = time.perf_counter() - started
            model = pickle.dumps({"weights": os.urandom(1024 * 1024 - 64)}, protocol=5)
            digest = hashlib.sha256(model).hexdigest()
            timings: list[float] = []
            with httpx.Client(
                base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120
            ) as client:
                for i in range(args.warmup + args.runs):
                    token_id = f"BENCH-{i}"
                    client.post("/tokens", json={"token_id": token_id}).raise_for_status()
                    began = time.perf_counter()
                    response = client.post(
                        f"/models/{token_id}/register",
                        data={
                            "metric": "auroc",
                            "baseline": "0.82",
                            "metric_value": "0.86",
                            "sha256": digest,
                        },
                        files={"model_file": ("model.pkl", model, "application/octet-stream")},
                    )
                    elapsed = time.perf_counter() - began
                    if response.status_code != 201:
                        raise SystemExit(f"registration failed: {response.text}")
                    if i >= args.warmup:
                        timings.append(elapsed)
        finally:
            stop(server)

    timings.sort()
    p90 = timings[int(0.9 * (len(timings) - 1))]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(f"service ready after start: {ready_after:.2f} s")
    print(f"1 MiB registrations: {len(timings)} (after {args.warmup} warm-up)")
    print(f"median: {statistics.median(timings) * 1000:.1f} ms")
    print(f"p90:    {p90 * 1000:.1f} ms")
    print(f"min:    {timings[0] * 1000:.1f} ms, max: {timings[-1] * 1000:.1f} ms")


if __name__ == "__main__":
    main()
