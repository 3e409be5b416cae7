"""`hokusai model register` against `curl -F` of the same file to the same service.

Starts `hokusai-registry serve` on a fresh data folder (embedded defaults) and, for each size,
registers the same model file alternately with curl (the service's own cost, sent by a client that
costs the machine little) and with the `hokusai` CLI as a data scientist runs it (a new process,
progress off, output to a pipe), each to a fresh token. Prints the median of each, their ratio, and
the CLI's peak resident memory.

    .venv/bin/python benchmarks/cli_upload.py [--sizes 512,1024] [--repeat 3]   (MiB)

Target (issue 15): the CLI takes at most 1.15 x curl's time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.harness import (
    BIN,
    Report,
    Target,
    markdown_table,
    migrate_and_create_key,
    print_machine,
    serve,
    service_env,
    stop,
    wait_ready,
)

MIB = 1024 * 1024
PICKLE_HEAD = b"\x80\x05\x95"
TARGET = 1.15
FIELDS = {"metric": "auroc", "baseline": "0.82", "metric_value": "0.86"}


@dataclass
class Figures:
    size_mib: int
    curl: list[float]
    cli: list[float]
    cli_peak_mib: float

    @property
    def ratio(self) -> float:
        return statistics.median(self.cli) / statistics.median(self.curl)


def _write_model(path: Path, size: int) -> None:
    chunk = 16 * MIB
    with path.open("wb") as file:
        file.write(PICKLE_HEAD)
        left = size - len(PICKLE_HEAD)
        while left > 0:
            file.write(os.urandom(min(chunk, left)))
            left -= chunk


def _token(client: httpx.Client) -> str:
    token_id = f"CLI-{uuid.uuid4().hex[:8].upper()}"
    client.post("/tokens", json={"token_id": token_id}).raise_for_status()
    return token_id


def _curl(client: httpx.Client, url: str, key: str, path: Path) -> float:
    token_id = _token(client)
    began = time.perf_counter()
    sent = subprocess.run(
        [
            "curl",
            "-sS",
            "-w",
            "\n%{http_code}",
            "-H",
            f"Authorization: Bearer {key}",
            *(arg for name, value in FIELDS.items() for arg in ("-F", f"{name}={value}")),
            "-F",
            f"model_file=@{path};filename=model.pkl",
            f"{url}/models/{token_id}/register",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    elapsed = time.perf_counter() - began
    body, _, status = sent.stdout.rpartition("\n")
    if status != "201":
        raise SystemExit(f"curl registration failed: {status} {body[:300]}")
    return elapsed


def _cli(client: httpx.Client, url: str, key: str, path: Path) -> tuple[float, float]:
    """Seconds of `hokusai model register`, and its peak RSS in MiB."""
    token_id = _token(client)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOKUSAI_")}
    env.update({"HOKUSAI_API_URL": url, "HOKUSAI_API_KEY": key})
    command = [
        str(BIN / "hokusai"),
        "model",
        "register",
        "--token-id",
        token_id,
        "--model-path",
        str(path),
        *(arg for name, value in FIELDS.items() for arg in (f"--{name.replace('_', '-')}", value)),
        "--no-progress",
        "--json",
    ]
    with tempfile.TemporaryFile() as errors:
        began = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=errors)
        # wait4: this process's own peak resident memory, not the largest of every child's.
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - began
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            errors.seek(0)
            raise SystemExit(f"hokusai model register failed: {errors.read().decode()[-500:]}")
    return elapsed, usage.ru_maxrss / 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="512,1024", help="model sizes in MiB")
    parser.add_argument("--repeat", type=int, default=3, help="registrations per client and size")
    parser.add_argument("--report", help="write the figures as JSON here (for run_all.py)")
    args = parser.parse_args()
    if shutil.which("curl") is None:
        raise SystemExit("curl is needed for the comparison")
    sizes = [int(size) for size in args.sizes.split(",")]

    results: list[Figures] = []
    with tempfile.TemporaryDirectory(prefix="hokusai-bench-") as tmp:
        root = Path(tmp)
        env = service_env(str(root / "service"), HOKUSAI_MAX_UPLOAD_BYTES=str(2 * max(sizes) * MIB))
        key = migrate_and_create_key(env)
        server, url = serve(env)
        try:
            wait_ready(url, server)
            with httpx.Client(
                base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=600
            ) as client:
                warmup = root / "warmup.pkl"
                _write_model(warmup, MIB)
                _curl(client, url, key, warmup)
                _cli(client, url, key, warmup)
                for size in sizes:
                    path = root / f"model-{size}.pkl"
                    _write_model(path, size * MIB)
                    os.sync()
                    figures = Figures(size, [], [], 0.0)
                    for _ in range(args.repeat):
                        figures.curl.append(_curl(client, url, key, path))
                        seconds, peak = _cli(client, url, key, path)
                        figures.cli.append(seconds)
                        figures.cli_peak_mib = max(figures.cli_peak_mib, peak)
                    results.append(figures)
                    path.unlink()
        finally:
            stop(server)

    header = [
        "model",
        "curl -F (median)",
        "hokusai model register (median)",
        "ratio",
        "CLI peak RSS",
    ]
    rows = [
        [
            f"{r.size_mib} MiB",
            f"{statistics.median(r.curl):.2f} s",
            f"{statistics.median(r.cli):.2f} s",
            f"{r.ratio:.2f}",
            f"{r.cli_peak_mib:.0f} MiB",
        ]
        for r in results
    ]
    print_machine()
    for r in results:
        print(
            f"{r.size_mib} MiB: curl {', '.join(f'{s:.2f}' for s in r.curl)} s; "
            f"hokusai {', '.join(f'{s:.2f}' for s in r.cli)} s"
        )
    print(markdown_table(header, rows))
    print(f"target: hokusai model register <= {TARGET} x curl")
    Report(
        title="The CLI's upload against curl",
        command="python benchmarks/cli_upload.py",
        section=markdown_table(header, rows),
        targets=[
            Target(
                name=f"CLI end to end, {r.size_mib} MiB",
                measured=f"{r.ratio:.2f} x curl",
                goal=f"<= {TARGET} x curl",
                met=r.ratio <= TARGET,
            )
            for r in results
        ],
    ).save(args.report)


if __name__ == "__main__":
    main()
