"""Start-up: how soon `hokusai-registry serve` answers /ready, and how fast `hokusai --help` is.

The server is started on the embedded defaults, on a fresh data folder (MLflow creates its tables)
and again on the existing one, several times each; the clock runs from the process start to the
first 200 from /ready. `hokusai --help` and `python -c pass` are timed the same way.

    .venv/bin/python benchmarks/startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.harness import (
    BIN,
    Report,
    Target,
    migrate_and_create_key,
    print_machine,
    serve,
    service_env,
    stop,
    wait_ready,
)


def _ready_seconds(env: dict[str, str]) -> float:
    started = time.perf_counter()
    server, url = serve(env)
    try:
        wait_ready(url, server)
        return time.perf_counter() - started
    finally:
        stop(server)


def _command_seconds(command: list[str], runs: int) -> float:
    timings = []
    for _ in range(runs):
        began = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        timings.append(time.perf_counter() - began)
    return statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--report", help="write the figures as JSON here (for run_all.py)")
    args = parser.parse_args()

    fresh: list[float] = []
    existing: list[float] = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="hokusai-bench-") as tmp:
            env = service_env(tmp)
            migrate_and_create_key(env)
            fresh.append(_ready_seconds(env))
            existing.append(_ready_seconds(env))
    cli_help = _command_seconds([str(BIN / "hokusai"), "--help"], runs=10)
    python_pass = _command_seconds([sys.executable, "-c", "pass"], runs=10)

    print_machine()
    print(
        f"server ready, fresh data folder:    median {statistics.median(fresh):.2f} s "
        f"(min {min(fresh):.2f}, max {max(fresh):.2f}; {args.runs} starts)"
    )
    print(
        f"server ready, existing data folder: median {statistics.median(existing):.2f} s "
        f"(min {min(existing):.2f}, max {max(existing):.2f}; {args.runs} starts)"
    )
    print(
        f"hokusai --help: median {cli_help * 1000:.0f} ms "
        f"(python -c pass: {python_pass * 1000:.0f} ms)"
    )
    print("targets: ready < 3 s; hokusai --help < 0.5 s")
    ready = statistics.median(existing)
    Report(
        title="Start-up",
        command=f"benchmarks/startup.py --runs {args.runs}",
        section=(
            f"From the process start to the first 200 from `/ready`, median of {args.runs} "
            f"starts: {statistics.median(fresh):.2f} s on a fresh data folder (MLflow creates "
            f"its tables; min {min(fresh):.2f}, max {max(fresh):.2f}) and {ready:.2f} s on an "
            f"existing one (min {min(existing):.2f}, max {max(existing):.2f}). "
            f"`hokusai --help`: {cli_help * 1000:.0f} ms, against {python_pass * 1000:.0f} ms "
            "for `python -c pass`."
        ),
        targets=[
            Target(
                "5. start-up: server ready (existing data folder; fresh: "
                f"{statistics.median(fresh):.2f} s)",
                f"{ready:.2f} s",
                "< 3 s",
                ready < 3,
            ),
            Target(
                "5. start-up: `hokusai --help`",
                f"{cli_help * 1000:.0f} ms",
                "< 0.5 s",
                cli_help < 0.5,
            ),
        ],
    ).save(args.report)


if __name__ == "__main__":
    main()
