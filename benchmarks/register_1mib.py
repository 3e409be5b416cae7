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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

BIN = Path(sys.executable).parent


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="hokusai-bench-") as tmp:
        env = {
            **os.environ,
            "HOKUSAI_DATA_DIR": tmp,
            "HOKUSAI_ENV": "test",
            "HOKUSAI_LOG_LEVEL": "WARNING",
        }
        for name in ("HOKUSAI_DATABASE_URL", "HOKUSAI_MLFLOW_TRACKING_URI"):
            env.pop(name, None)
        subprocess.run([BIN / "hokusai-registry", "migrate"], env=env, check=True)
        key = (
            subprocess.run(
                [
                    BIN / "hokusai-registry",
                    "create-api-key",
                    "--name",
                    "bench",
                    "--scopes",
                    "admin",
                ],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        port = free_port()
        started = time.perf_counter()
        server = subprocess.Popen(
            [BIN / "hokusai-registry", "serve", "--port", str(port), "--no-migrate"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the service did not become ready")
                time.sleep(0.05)
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
            server.terminate()
            server.wait(timeout=30)

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
