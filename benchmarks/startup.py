"""Start-up: how soon `hokusai-registry serve` answers /ready, and how fast `hokusai --help` is.

The server is started on the embedded defaults, on a fresh data folder (MLflow creates its tables)
and again on the existing one, several times each; the clock runs from the process start to the
first 200 from /ready. `hokusai --help` and `python -c pass` are timed the same way.

    .venv/bin/python benchmarks/startup.py [--runs 5]
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.harness import (
    BIN,
    ROOT,
    Report,
    Target,
    compile_project,
    migrate_and_create_key,
    print_machine,
    serve,
    service_env,
    stop,
    wait_ready,
)


def _ready_seconds(env: dict[str, str], bin_dir: Path = BIN) -> float:
    started = time.perf_counter()
    server, url = serve(env, bin_dir)
    try:
        wait_ready(url, server)
        return time.perf_counter() - started
    finally:
        stop(server)


def _production_ready(runs: int) -> list[float] | None:
    """Start-up in a production install, built with uv in a temporary folder."""
    uv = shutil.which("uv") or str(ROOT / ".tools" / "bin" / "uv")
    with tempfile.TemporaryDirectory(prefix="hokusai-bench-venv-") as venv:
        built = subprocess.run(
            [uv, "sync", "--frozen", "--no-dev", "--no-editable", "--compile-bytecode", "-q"],
            env={**os.environ, "UV_PROJECT_ENVIRONMENT": venv},
            cwd=ROOT,
            check=False,
        )
        if built.returncode != 0:
            print("no production environment (uv sync failed); skipped")
            return None
        bin_dir = Path(venv) / "bin"
        timings = []
        for _ in range(runs):
            with tempfile.TemporaryDirectory(prefix="hokusai-bench-") as tmp:
                env = service_env(tmp)
                migrate_and_create_key(env, bin_dir)
                _ready_seconds(env, bin_dir)  # the first start creates MLflow's tables
                timings.append(_ready_seconds(env, bin_dir))
        return timings


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
    parser.add_argument(
        "--production",
        action="store_true",
        help="also time the server as the image installs it (`uv sync --no-dev`, no CLI or "
        "test tools), in a temporary environment built with uv",
    )
    parser.add_argument("--report", help="write the figures as JSON here (for run_all.py)")
    args = parser.parse_args()

    compile_project()
    fresh: list[float] = []
    existing: list[float] = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="hokusai-bench-") as tmp:
            env = service_env(tmp)
            migrate_and_create_key(env)
            fresh.append(_ready_seconds(env))
            existing.append(_ready_seconds(env))
    production = _production_ready(args.runs) if args.production else None
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
    if production:
        print(
            f"server ready, production install:   median {statistics.median(production):.2f} s "
            f"(min {min(production):.2f}, max {max(production):.2f}; existing data folder)"
        )
    print("targets: ready < 3 s; hokusai --help < 0.3 s")
    ready = statistics.median(existing)
    Report(
        title="Start-up",
        command=f"benchmarks/startup.py --runs {args.runs}"
        + (" --production" if args.production else ""),
        section=(
            "From the process start to the first 200 from `/ready`, in the environment "
            f"`make run` uses (`.venv`, test tools included), median of {args.runs} "
            f"starts: {statistics.median(fresh):.2f} s on a fresh data folder (MLflow creates "
            f"its tables; min {min(fresh):.2f}, max {max(fresh):.2f}) and {ready:.2f} s on an "
            f"existing one (min {min(existing):.2f}, max {max(existing):.2f}). "
            + (
                f"In the environment the image installs (`uv sync --frozen --no-dev`: no CLI, "
                f"no test tools such as pandas, which MLflow imports when it finds it): "
                f"{statistics.median(production):.2f} s (min {min(production):.2f}, max "
                f"{max(production):.2f}). "
                if production
                else ""
            )
            + f"`hokusai --help`: {cli_help * 1000:.0f} ms, against {python_pass * 1000:.0f} ms "
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
                "< 0.3 s",
                cli_help < 0.3,
            ),
        ],
    ).save(args.report)


if __name__ == "__main__":
    main()
