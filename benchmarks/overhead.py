"""The service's overhead over MLflow: a 1 MiB registration over HTTP against the same MLflow work
done directly with the MLflow client in one process.

Both sides use the embedded defaults (MLflow's SQLite store with local artifacts, on the same disk)
and run alternately in one benchmark, so machine noise hits both alike. The direct side does what
the service does in MLflow for one registration: a run with the same tags, the metric, the model
file logged as an artifact, a registered model, a model version, the `registered` alias and the
run finished. The service side is the whole request as a client sees it: the multipart upload over
HTTP, every check, the MLflow work, and the transaction that commits the token and its events.

    .venv/bin/python benchmarks/overhead.py [--runs 30] [--warmup 3]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.harness import (
    Report,
    Target,
    cpu_ns,
    markdown_table,
    migrate_and_create_key,
    percentile,
    print_machine,
    serve,
    service_env,
    stop,
    wait_ready,
)

MIB = 1024 * 1024


def _model(seed: int) -> bytes:
    # Distinct bytes per registration, so nothing can be deduplicated or cached.
    return pickle.dumps({"seed": seed, "weights": os.urandom(MIB - 64)}, protocol=5)


class DirectMlflow:
    """The service's MLflow work for one registration, done with the MLflow client directly."""

    def __init__(self, root: Path, tracking_uri: str | None = None) -> None:
        """MLflow's SQLite store with artifacts under `root`, or the tracking server at
        `tracking_uri`, whose own artifact store then takes the files (over HTTP)."""
        from mlflow import MlflowClient

        self.root = root
        self.client = MlflowClient(tracking_uri=tracking_uri or f"sqlite:///{root / 'mlflow.db'}")
        self.experiment_id = self.client.create_experiment(
            "direct", artifact_location=None if tracking_uri else (root / "artifacts").as_uri()
        )

    def register(self, token_id: str, model: bytes) -> tuple[float, float]:
        """Wall and CPU seconds of one registration's MLflow work."""
        # The file is on disk before the clock starts: the service receives it before MLflow.
        folder = self.root / "uploads" / token_id
        folder.mkdir(parents=True)
        path = folder / "model.pkl"
        path.write_bytes(model)
        return self.register_file(token_id, path)

    def register_file(self, token_id: str, path: Path) -> tuple[float, float]:
        """The same for a model file already on disk."""
        client = self.client
        name = f"hokusai-{token_id}"
        began = time.perf_counter()
        cpu_began = time.process_time()
        run = client.create_run(
            self.experiment_id,
            run_name=token_id,
            tags={
                "hokusai.token_id": token_id,
                "hokusai.metric": "auroc",
                "hokusai.baseline": "0.82",
                "hokusai.metric_value": "0.86",
            },
        )
        run_id = run.info.run_id
        client.log_metric(run_id, "auroc", 0.86, step=0)
        client.log_artifact(run_id, str(path), artifact_path="model")
        client.create_registered_model(name)
        version = client.create_model_version(
            name,
            f"runs:/{run_id}/model",
            run_id=run_id,
            tags={"hokusai_token_id": token_id, "benchmark_metric": "auroc"},
            await_creation_for=0,
        )
        client.set_registered_model_alias(name, "registered", version.version)
        client.set_terminated(run_id, status="FINISHED")
        return time.perf_counter() - began, time.process_time() - cpu_began


def _register_over_http(
    client: httpx.Client, server_pid: int, token_id: str, model: bytes
) -> tuple[float, float]:
    """Wall seconds of one registration as the client sees it, and the server's CPU seconds."""
    client.post("/tokens", json={"token_id": token_id}).raise_for_status()
    cpu_began = cpu_ns(server_pid)
    began = time.perf_counter()
    response = client.post(
        f"/models/{token_id}/register",
        data={"metric": "auroc", "baseline": "0.82", "metric_value": "0.86"},
        files={"model_file": ("model.pkl", model, "application/octet-stream")},
    )
    elapsed = time.perf_counter() - began
    cpu = (cpu_ns(server_pid) - cpu_began) / 1e9
    if response.status_code != 201:
        raise SystemExit(f"registration failed: {response.status_code} {response.text}")
    return elapsed, cpu


def _step_medians(log_path: Path, skip: int) -> dict[str, float]:
    """Median duration of each `registration_step` the server logged, after `skip` warm-ups."""
    steps: dict[str, list[float]] = defaultdict(list)
    for line in log_path.read_text().splitlines():
        if '"registration_step"' not in line:
            continue
        event = json.loads(line)
        steps[event["step"]].append(event["duration_ms"])
    return {name: statistics.median(values[skip:]) for name, values in steps.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--report", help="write the figures as JSON here (for run_all.py)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="hokusai-bench-") as tmp:
        root = Path(tmp)
        env = service_env(str(root / "service"), HOKUSAI_LOG_LEVEL="INFO", HOKUSAI_LOG_JSON="true")
        key = migrate_and_create_key(env)
        log_path = root / "server.log"
        server, url = serve(env, log=log_path)
        direct = DirectMlflow(root / "direct")
        served: list[float] = []
        done_directly: list[float] = []
        served_cpu: list[float] = []
        direct_cpu: list[float] = []
        try:
            wait_ready(url, server)
            with httpx.Client(
                base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=120
            ) as client:
                for i in range(args.warmup + args.runs):
                    token_id = f"OVH-{uuid.uuid4().hex[:8].upper()}"
                    model = _model(i)
                    http_s, http_cpu = _register_over_http(client, server.pid, token_id, model)
                    direct_s, direct_cpu_s = direct.register(token_id, model)
                    if i >= args.warmup:
                        served.append(http_s)
                        done_directly.append(direct_s)
                        served_cpu.append(http_cpu)
                        direct_cpu.append(direct_cpu_s)
        finally:
            stop(server)
        steps = _step_medians(log_path, args.warmup)

    service_ms = statistics.median(served) * 1000
    direct_ms = statistics.median(done_directly) * 1000
    ratio = service_ms / direct_ms
    # CPU does not wait for other processes, so it holds steadier than wall time on a busy machine.
    service_cpu_ms = statistics.median(served_cpu) * 1000
    direct_cpu_ms = statistics.median(direct_cpu) * 1000
    cpu_ratio = service_cpu_ms / direct_cpu_ms
    rows = [
        [
            "service over HTTP",
            f"{service_ms:.1f} ms",
            f"{percentile(served, 0.9) * 1000:.1f} ms",
            f"{min(served) * 1000:.1f} ms",
        ],
        [
            "MLflow client only, same work",
            f"{direct_ms:.1f} ms",
            f"{percentile(done_directly, 0.9) * 1000:.1f} ms",
            f"{min(done_directly) * 1000:.1f} ms",
        ],
    ]
    step_text = ", ".join(f"{name} {ms:.1f} ms" for name, ms in steps.items())
    print_machine()
    print(f"1 MiB registrations: {args.runs} each side, alternating (after {args.warmup} warm-up)")
    for row in rows:
        print(f"{row[0]:<32} median {row[1]:>9}, p90 {row[2]:>9}, min {row[3]:>9}")
    print(f"overhead ratio: {ratio:.2f} (target <= 1.3)")
    print(
        f"CPU per registration (median): server {service_cpu_ms:.1f} ms, MLflow client "
        f"{direct_cpu_ms:.1f} ms; ratio {cpu_ratio:.2f}"
    )
    print(f"service steps (median): {step_text}")
    Report(
        title="Overhead over MLflow (1 MiB)",
        command=f"benchmarks/overhead.py --runs {args.runs}",
        section="\n\n".join(
            [
                f"{args.runs} registrations on each side, alternating, after {args.warmup} "
                "warm-up. The direct side does the service's MLflow work with `MlflowClient` in "
                "one process on its own SQLite store: a run with the same tags, the metric, the "
                "model file logged, a registered model, a version, the alias, the run finished.",
                markdown_table(["", "median", "p90", "min"], rows),
                f"Overhead ratio: **{ratio:.2f}**. Median time of each step inside the service: "
                f"{step_text}.",
                f"CPU per registration (median; CPU holds steadier than wall time on a busy "
                f"machine): the server process {service_cpu_ms:.1f} ms for the whole request, "
                f"the direct MLflow client {direct_cpu_ms:.1f} ms; ratio {cpu_ratio:.2f}.",
            ]
        ),
        targets=[
            Target(
                "1. overhead: 1 MiB registration over HTTP / the same MLflow work directly",
                f"{service_ms:.1f} ms / {direct_ms:.1f} ms = {ratio:.2f}",
                "<= 1.3",
                ratio <= 1.3,
            )
        ],
    ).save(args.report)


if __name__ == "__main__":
    main()
