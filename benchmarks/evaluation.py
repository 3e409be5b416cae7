"""The evaluation sandbox's cost: a scikit-learn model run on 10k and 100k rows through `run_model`
against the same model called in this process.

For each model and size, alternately (so machine noise hits both alike):

- **in process**: `predict_proba` on a DataFrame already in memory; and the same work the sandbox
  does, reading the features CSV and unpickling the model first;
- **sandbox, warm**: `run_model` with a spare sandbox started ahead (the service's steady state);
- **sandbox, cold**: `run_model` with no spare, so the interpreter starts and imports numpy, pandas
  and scikit-learn while the caller waits (the first evaluation after start-up without `prewarm`).

The sandbox's own cost is its wall time minus what the model needs in process: start-up (waiting
for the sandbox), the model's load and the hand-over (job description in, values out, checks).

    .venv/bin/python benchmarks/evaluation.py [--runs 5] [--sizes 10000,100000] [--sandbox auto]
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from app.evaluation import sandbox
from app.evaluation.sandbox import (
    ModelKind,
    OutputKind,
    SandboxInfo,
    SandboxLimits,
    detect_sandbox,
    run_model,
)
from benchmarks.harness import Report, Target, markdown_table, print_machine

FEATURES = 10
LIMITS = SandboxLimits()


def make_data(rows: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        rng.normal(size=(rows, FEATURES)), columns=[f"f{i}" for i in range(FEATURES)]
    )
    labels = (frame["f0"] + 0.5 * frame["f1"] - frame["f2"] + rng.normal(size=rows) > 0).astype(int)
    return frame, labels.to_numpy()


def in_process(
    model_path: Path, csv: Path, dtypes: dict[str, str], frame: pd.DataFrame
) -> tuple[float, float]:
    """(predict only, read + unpickle + predict) in seconds."""
    model = pickle.loads(model_path.read_bytes())
    started = time.perf_counter()
    model.predict_proba(frame)[:, 1]
    predict = time.perf_counter() - started
    started = time.perf_counter()
    features = pd.read_csv(csv, dtype=dtypes)
    loaded = pickle.loads(model_path.read_bytes())
    loaded.predict_proba(features)[:, 1]
    whole = time.perf_counter() - started
    return predict, whole


def in_sandbox(
    model_path: Path, csv: Path, dtypes: dict[str, str], rows: int, info: SandboxInfo, *, warm: bool
) -> dict[str, float]:
    if warm:
        sandbox.keep_warm(True)
        sandbox.prewarm(info, LIMITS)
        time.sleep(WARM_WAIT)  # let the spare finish its imports, as between two registrations
    else:
        sandbox.keep_warm(False)
    started = time.perf_counter()
    result = run_model(
        model_path=model_path,
        model_kind=ModelKind.PICKLE,
        features_path=csv,
        dtypes=dtypes,
        output=OutputKind.SCORE,
        expected_rows=rows,
        limits=LIMITS,
        sandbox=info,
    )
    total = time.perf_counter() - started
    stages = dict(result.stages)
    inside = stages.get("features", 0.0) + stages.get("load", 0.0) + stages.get("predict", 0.0)
    return {
        "total": total,
        "startup": stages.get("startup", 0.0),
        "features": stages.get("features", 0.0),
        "load": stages.get("load", 0.0),
        "predict": stages.get("predict", 0.0),
        # Copying the inputs in, the job hand-over, the values' way back and their checks.
        "handover": total - stages.get("startup", 0.0) - inside,
    }


WARM_WAIT = 6.0


def main() -> None:
    global WARM_WAIT
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--sandbox", default="auto", help="auto|bubblewrap|unshare|process")
    parser.add_argument(
        "--warm-wait", type=float, default=WARM_WAIT, help="seconds a spare gets to warm up"
    )
    parser.add_argument("--report", help="write the figures as JSON here (for run_all.py)")
    args = parser.parse_args()
    WARM_WAIT = args.warm_wait
    sizes = [int(size) for size in args.sizes.split(",")]

    print_machine()
    info = detect_sandbox(args.sandbox)
    print(f"sandbox: {info.mode} ({info.detail})")
    if info.mode == "none":
        sys.exit("no sandbox works here")

    models = {
        "LogisticRegression": LogisticRegression(max_iter=500),
        "RandomForest(100 trees)": RandomForestClassifier(
            n_estimators=100, max_depth=12, random_state=0
        ),
    }
    rows_out: list[list[str]] = []
    targets: list[Target] = []
    with tempfile.TemporaryDirectory(prefix="hokusai-bench-eval-") as folder:
        work = Path(folder)
        train, labels = make_data(20_000, seed=1)
        for name, model in models.items():
            model.fit(train, labels)
            model_path = work / f"{name[:6]}.pkl"
            model_path.write_bytes(pickle.dumps(model))
            for rows in sizes:
                frame, _ = make_data(rows, seed=rows)
                csv = work / f"features-{rows}.csv"
                if not csv.exists():
                    frame.to_csv(csv, index=False)
                dtypes = dict.fromkeys(frame.columns, "float64")
                frame = pd.read_csv(csv, dtype=dtypes)
                figures: dict[str, list[float]] = {}
                for _ in range(args.runs):
                    predict, whole = in_process(model_path, csv, dtypes, frame)
                    figures.setdefault("predict", []).append(predict)
                    figures.setdefault("whole", []).append(whole)
                    for warm in (True, False):
                        run = in_sandbox(model_path, csv, dtypes, rows, info, warm=warm)
                        for key, value in run.items():
                            figures.setdefault(f"{'warm' if warm else 'cold'}_{key}", []).append(
                                value
                            )
                med = {key: statistics.median(values) for key, values in figures.items()}
                for kind in ("warm", "cold"):
                    total = med[f"{kind}_total"]
                    rows_out.append(
                        [
                            name,
                            f"{rows:,}",
                            kind,
                            f"{med['predict'] * 1000:.0f} ms",
                            f"{med['whole'] * 1000:.0f} ms",
                            f"{total * 1000:.0f} ms",
                            f"{rows / total:,.0f}",
                            f"{med[f'{kind}_startup'] * 1000:.0f} ms",
                            f"{med[f'{kind}_features'] * 1000:.0f} ms",
                            f"{med[f'{kind}_load'] * 1000:.0f} ms",
                            f"{med[f'{kind}_predict'] * 1000:.0f} ms",
                            f"{med[f'{kind}_handover'] * 1000:.0f} ms",
                            f"{(total - med['predict']) * 1000:+.0f} ms",
                            f"{total / med['predict']:.1f}x / {total / med['whole']:.1f}x",
                        ]
                    )
                    if rows == max(sizes) and kind == "warm":
                        overhead = total - med["predict"]
                        targets.append(
                            Target(
                                name=f"sandbox cost, {name}, {rows:,} rows (warm)",
                                measured=f"{overhead:.2f} s, {total / med['whole']:.2f}x",
                                goal="< 1 s and < 2x",
                                met=overhead < 1.0 and total / med["whole"] < 2.0,
                            )
                        )
    sandbox.keep_warm(False)

    header = [
        "model",
        "rows",
        "sandbox",
        "predict in process",
        "read + load + predict in process",
        "run_model",
        "rows/s",
        "start-up",
        "read features",
        "load",
        "predict in sandbox",
        "hand-over",
        "sandbox's own cost",
        "ratio (to predict / to read+load+predict)",
    ]
    table = markdown_table(header, rows_out)
    print()
    print(table)
    print()
    for target in targets:
        verdict = "met" if target.met else "NOT MET"
        print(f"{verdict}: {target.name}: {target.measured} (goal {target.goal})")
    Report(
        title="Evaluation in the sandbox",
        command="benchmarks/evaluation.py",
        section=table,
        targets=targets,
    ).save(args.report)


if __name__ == "__main__":
    main()
