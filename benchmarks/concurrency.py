"""Concurrent registrations on PostgreSQL: 2 API processes, one worker, 16 clients, 1 MiB models.

Creates two fresh PostgreSQL databases (the service's, and MLflow's tracking store), migrates,
starts `hokusai-registry serve` twice (the dispatcher off) and one `hokusai-registry worker`,
subscribes a local webhook receiver, and has concurrent clients register distinct 1 MiB pickles,
each request going to the next API process in turn (a stand-in for a load balancer). Prints
registrations per second, latency percentiles, errors, the time for every event to reach the
receiver, the CPU each process used, and where each registration's time went (the service's
`registration_step` and `mlflow_call` log lines), and what PostgreSQL's server processes were
waiting for (pg_stat_activity, sampled every 50 ms). Both databases are dropped at the end.
The services run the app/ next to this script, so a scratch copy of the tree benchmarks itself.

    .venv/bin/python benchmarks/concurrency.py [--clients 16] [--registrations 320] [--profile]

With --profile, py-spy samples both API processes and the worker during the measured phase (by
default only the thread holding the GIL: where the interpreter's time goes; see --profile-mode)
and the top functions are printed by cumulative and by self time, grouped as ours (app/), MLflow,
SQLAlchemy/psycopg, Starlette/uvicorn and other; the API processes and the worker separately.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import json
import os
import pickle
import platform
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.harness import (
    BIN,
    Report,
    Target,
    free_port,
    markdown_table,
    migrate_and_create_key,
    percentile,
    service_env,
    start,
    wait_ready,
)
from tests.webhook_receiver import WebhookReceiver

ROOT = Path(__file__).resolve().parent.parent
CLIENT = "client (this script)"
# Issue 15's starting point: CPU per registration of the server processes and PostgreSQL.
CPU_BEFORE_MS = 124.0
MODEL_BYTES = 1024 * 1024
CLK_TCK = os.sysconf("SC_CLK_TCK")


# Processes ---------------------------------------------------------------------------------------


@dataclass
class Service:
    """The processes under test, their logs, and their URLs."""

    apis: list[subprocess.Popen[bytes]] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    worker: subprocess.Popen[bytes] | None = None

    def all(self) -> list[subprocess.Popen[bytes]]:
        return [*self.apis, *([self.worker] if self.worker else [])]


def launch(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start a venv command with its output (the service's log lines) going to `log`."""
    return start(command, env, log=log)


def stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of a process so far (None once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def postgres_backends(admin: psycopg.Connection, databases: list[str]) -> dict[int, str]:
    """The server processes serving our databases, by pid, with their database's name."""
    rows = admin.execute(
        "SELECT pid, datname FROM pg_stat_activity WHERE datname = ANY(%s)", (databases,)
    ).fetchall()
    return {int(pid): str(name) for pid, name in rows}


class WaitSampler:
    """Samples pg_stat_activity for our databases: what each server process is doing or waiting
    for (e.g. `Lock:advisory`, or `idle in transaction` while the service works between queries)."""

    def __init__(self, url: str, databases: list[str], interval: float = 0.05) -> None:
        self._url, self._databases, self._interval = url, databases, interval
        self._stop = threading.Event()
        self.samples = 0
        self.counts: Counter[tuple[str, str]] = Counter()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> WaitSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with psycopg.connect(self._url, autocommit=True) as conn:
            while not self._stop.wait(self._interval):
                rows = conn.execute(
                    "SELECT datname, state, wait_event_type, wait_event, left(query, 60) "
                    "FROM pg_stat_activity WHERE datname = ANY(%s) AND pid <> pg_backend_pid()",
                    (self._databases,),
                ).fetchall()
                self.samples += 1
                for datname, state, wait_type, wait, query in rows:
                    if state == "idle":
                        continue
                    which = "mlflow db" if datname == self._databases[1] else "service db"
                    what = f"{state}" + (f", waiting {wait_type}:{wait}" if wait_type else "")
                    if state == "active":
                        what += f" [{' '.join((query or '').split())[:60]}]"
                    self.counts[(which, what)] += 1

    def report(self, top: int = 15) -> None:
        if not self.samples:
            return
        print(
            f"\n== PostgreSQL server processes of our databases, non-idle, average over "
            f"{self.samples} samples of pg_stat_activity"
        )
        for (which, what), n in self.counts.most_common(top):
            print(f"   {n / self.samples:6.2f}  {which:10} {what}")


# Databases ---------------------------------------------------------------------------------------


def create_databases(admin_url: str) -> tuple[psycopg.Connection, list[str]]:
    admin = psycopg.connect(admin_url, autocommit=True)
    suffix = uuid.uuid4().hex[:10]
    names = [f"hokusai_bench_{suffix}", f"hokusai_bench_{suffix}_mlflow"]
    for name in names:
        admin.execute(f'CREATE DATABASE "{name}"')
    return admin, names


def drop_databases(admin: psycopg.Connection, names: list[str]) -> None:
    for name in names:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


def database_url(admin_url: str, name: str, driver: str = "postgresql") -> str:
    base, _, _ = admin_url.rpartition("/")
    return f"{driver}{base[base.index(':') :]}/{name}"


# Clients -----------------------------------------------------------------------------------------


@dataclass
class Outcome:
    token_id: str
    url: str
    status: int
    seconds: float
    finished_at: float
    body: str = ""


def make_model() -> tuple[bytes, str]:
    """A distinct 1 MiB pickle (random weights) and its SHA-256."""
    model = pickle.dumps({"weights": os.urandom(MODEL_BYTES - 64)}, protocol=5)
    return model, hashlib.sha256(model).hexdigest()


async def create_tokens(urls: list[str], key: str, token_ids: list[str], clients: int) -> None:
    queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
    for item in enumerate(token_ids):
        queue.put_nowait(item)

    async def one_client(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            i, token_id = queue.get_nowait()
            response = await client.post(
                f"{urls[i % len(urls)]}/tokens", json={"token_id": token_id}
            )
            if response.status_code != 201:
                raise SystemExit(f"creating {token_id}: {response.status_code} {response.text}")

    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        await asyncio.gather(*(one_client(client) for _ in range(clients)))


async def register_all(
    urls: list[str], key: str, token_ids: list[str], clients: int
) -> tuple[list[Outcome], float]:
    """Register one model per token with `clients` concurrent clients; request i goes to
    urls[i % len(urls)]. Returns the outcomes and the wall time."""
    queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
    for item in enumerate(token_ids):
        queue.put_nowait(item)
    outcomes: list[Outcome] = []
    limits = httpx.Limits(max_connections=clients * 2, max_keepalive_connections=clients * 2)

    async def one_client(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            i, token_id = queue.get_nowait()
            url = urls[i % len(urls)]
            model, digest = make_model()
            began = time.perf_counter()
            try:
                response = await client.post(
                    f"{url}/models/{token_id}/register",
                    data={
                        "metric": "auroc",
                        "baseline": "0.82",
                        "metric_value": "0.86",
                        "sha256": digest,
                    },
                    files={"model_file": ("model.pkl", model, "application/octet-stream")},
                )
                status, body = response.status_code, response.text
            except httpx.HTTPError as e:
                status, body = 0, f"{type(e).__name__}: {e}"
            now = time.perf_counter()
            outcomes.append(
                Outcome(token_id, url, status, now - began, now, body if status != 201 else "")
            )

    async with httpx.AsyncClient(
        headers={"Authorization": f"Bearer {key}"}, timeout=300, limits=limits
    ) as client:
        began = time.perf_counter()
        await asyncio.gather(*(one_client(client) for _ in range(clients)))
        return outcomes, time.perf_counter() - began


# Profiling ---------------------------------------------------------------------------------------


def start_profilers(
    pids: list[int], folder: Path, *, mode: str, rate: int
) -> list[tuple[subprocess.Popen[bytes], Path]]:
    """py-spy record on each pid until SIGINT, raw (collapsed) stacks with full file names."""
    spy = BIN / "py-spy"
    if not spy.exists():
        raise SystemExit("py-spy is not installed in the venv (it is a dev dependency)")
    profilers = []
    for pid in pids:
        out = folder / f"py-spy-{pid}.txt"
        command = [str(spy), "record", "--pid", str(pid), "--format", "raw", "--full-filenames"]
        command += ["--rate", str(rate), "--output", str(out), "--nonblocking"]
        if mode != "active":
            command.append(f"--{mode}")
        process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=(folder / f"py-spy-{pid}.log").open("wb"),
        )
        profilers.append((process, out))
    time.sleep(0.5)  # let py-spy attach before the measured phase starts
    for process, out in profilers:
        if process.poll() is not None:
            log = out.with_suffix(".log").read_text(errors="replace")[-2000:]
            raise SystemExit(f"py-spy could not attach:\n{log}")
    return profilers


def stop_profilers(profilers: list[tuple[subprocess.Popen[bytes], Path]]) -> list[Path]:
    for process, _ in profilers:
        process.send_signal(signal.SIGINT)
    for process, _ in profilers:
        process.wait(timeout=60)
    return [out for _, out in profilers if out.exists()]


_STDLIB = sysconfig.get_paths()["stdlib"]


def group_of(path: str) -> str:
    if path.startswith(str(ROOT / "app")):
        return "ours (app/)"
    if "site-packages/" in path:
        package = path.split("site-packages/", 1)[1].split("/", 1)[0]
        if package == "mlflow":
            return "MLflow"
        if package in {"sqlalchemy", "sqlmodel", "psycopg", "psycopg_binary", "psycopg_pool"}:
            return "SQLAlchemy/psycopg"
        if package in {
            "starlette",
            "uvicorn",
            "fastapi",
            "anyio",
            "h11",
            "httptools",
            "uvloop",
        }:
            return "Starlette/uvicorn"
        return "other"
    if path.startswith((_STDLIB, "<")):
        return "stdlib"
    return "other"


def short(path: str) -> str:
    if path.startswith(str(ROOT) + "/"):
        return path[len(str(ROOT)) + 1 :]
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1]
    if path.startswith(_STDLIB):
        return "stdlib/" + path[len(_STDLIB) + 1 :]
    return path


def thread_of(stack: str) -> str:
    """Which kind of thread a sample comes from."""
    if "Runner.run (" in stack:
        return "event loop (requests, our awaits)"
    if "WorkerThread.run (" in stack:
        if "_log_to_mlflow (" in stack:
            return "worker threads: MLflow calls (_log_to_mlflow)"
        return "worker threads: other (rmtree, ...)"
    if "Thread._bootstrap" in stack:
        return "other threads"
    # SQLAlchemy's asyncio layer runs the ORM in greenlets on the event loop's thread; py-spy
    # shows their stacks without the loop under them.
    return "SQLAlchemy greenlets (our queries, on the event loop's thread)"


def parse_frame(frame: str) -> tuple[str, str, int]:
    """`func (path:line)` -> (func, path, line)."""
    name, _, rest = frame.rpartition(" (")
    path, _, line = rest.rstrip(")").rpartition(":")
    return name, path, int(line) if line.isdigit() else 0


def summarise_profile(files: list[Path], top: int, who: str = "the API processes") -> None:
    """Cumulative and self samples by function, and by group; our own lines separately."""
    total = 0
    cumulative: Counter[tuple[str, str]] = Counter()
    own: Counter[tuple[str, str]] = Counter()
    line_cumulative: Counter[tuple[str, str, int]] = Counter()
    line_self: Counter[tuple[str, str, int]] = Counter()
    group_self: Counter[str] = Counter()
    group_cumulative: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    for file in files:
        for raw in file.read_text(errors="replace").splitlines():
            stack, _, count_text = raw.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            total += count
            frames = [parse_frame(f) for f in stack.split(";") if " (" in f]
            if not frames:
                continue
            functions = {(name, path) for name, path, _ in frames}
            for key in functions:
                cumulative[key] += count
            for name, path, line in set(frames):
                if group_of(path) == "ours (app/)":
                    line_cumulative[(name, path, line)] += count
            leaf = frames[-1]
            own[(leaf[0], leaf[1])] += count
            if group_of(leaf[1]) == "ours (app/)":
                line_self[leaf] += count
            # A sample belongs to the innermost frame outside the standard library: time in
            # json, ssl or socket is charged to whoever called it.
            owner = next(
                (group_of(p) for _, p, _ in reversed(frames) if group_of(p) != "stdlib"), "stdlib"
            )
            group_self[owner] += count
            threads[thread_of(stack)] += count
            for group in {group_of(p) for _, p, _ in frames}:
                group_cumulative[group] += count
    if not total:
        print("profile: no samples")
        return

    def pct(n: int) -> str:
        return f"{100 * n / total:5.1f}%"

    print(f"\n== profile of {who}: {total} samples")
    print("by group (self: the innermost non-stdlib frame; cumulative: anywhere on the stack)")
    for group in [
        "ours (app/)",
        "MLflow",
        "SQLAlchemy/psycopg",
        "Starlette/uvicorn",
        "other",
        "stdlib",
    ]:
        print(
            f"   {group:20} self {pct(group_self[group])}   cumulative "
            f"{pct(group_cumulative[group])}"
        )

    print("by thread")
    for name, n in threads.most_common():
        print(f"   {pct(n)}  {name}")

    def show(
        title: str, counter: Counter[tuple[str, str]], other: Counter[tuple[str, str]]
    ) -> None:
        print(f"\ntop {top} by {title}:      self    cum")
        for (name, path), n in counter.most_common(top):
            s, c = (n, other[(name, path)]) if title == "self" else (other[(name, path)], n)
            print(f"   {pct(s)} {pct(c)}  [{group_of(path)[:6]}] {name} ({short(path)})")

    show("cumulative", cumulative, own)
    show("self", own, cumulative)
    print(f"\nours (app/), top {top} lines by cumulative:     cum   self")
    for (name, path, line), n in line_cumulative.most_common(top):
        print(f"   {pct(n)} {pct(line_self[(name, path, line)])}  {short(path)}:{line} {name}")


# Log analysis ------------------------------------------------------------------------------------


def step_breakdown(logs: list[Path], measured: set[str]) -> dict[str, float]:
    """Median and p90 of each registration step and MLflow call, from the service's JSON logs."""
    durations: defaultdict[str, list[float]] = defaultdict(list)
    for log in logs:
        for line in log.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("token_id") not in measured or "duration_ms" not in entry:
                continue
            if entry.get("event") == "registration_step":
                durations[f"step {entry['step']}"].append(entry["duration_ms"])
            elif entry.get("event") == "mlflow_call":
                durations[f"  mlflow {entry['op']}"].append(entry["duration_ms"])
            elif entry.get("event") == "registration_committed":
                durations["total (server side)"].append(entry["duration_ms"])
    if not durations:
        print("\n(no registration_step lines: run with --log-level INFO for the step breakdown)")
        return {}
    print("\n== where a registration's time goes (server-side log lines, measured phase)")
    print(f"   {'':34}  {'n':>4} {'median':>9} {'p90':>9} {'mean':>9}")
    for name, values in durations.items():
        values.sort()
        p90 = values[int(0.9 * (len(values) - 1))]
        print(
            f"   {name:34}  {len(values):4} {statistics.median(values):7.1f}ms "
            f"{p90:7.1f}ms {statistics.fmean(values):7.1f}ms"
        )
    return {name.strip(): statistics.median(values) for name, values in durations.items()}


# Main --------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--registrations", type=int, default=320, help="measured registrations")
    parser.add_argument("--warmup", type=int, default=16, help="registrations before measuring")
    parser.add_argument("--apis", type=int, default=2, help="API processes")
    parser.add_argument(
        "--postgres",
        default="postgresql://postgres@127.0.0.1:5432/test",
        help="an existing database to connect to for CREATE/DROP DATABASE",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        help="the services' log level (INFO, as deployed, gives the step table)",
    )
    parser.add_argument("--no-webhook", action="store_true", help="no webhook subscriber")
    parser.add_argument("--profile", action="store_true", help="py-spy the API processes")
    parser.add_argument(
        "--profile-mode",
        choices=["gil", "active", "idle"],
        default="gil",
        help="with --profile, which threads py-spy samples: gil, the one holding the GIL (where "
        "the interpreter's time goes); active, those py-spy sees running (it counts threads "
        "blocked in psycopg's wait as running); idle, every thread (wall time)",
    )
    parser.add_argument("--profile-rate", type=int, default=100, help="samples per second")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--keep", metavar="DIR", help="copy the logs and profiles to DIR")
    parser.add_argument("--report", help="write the figures as JSON here (for run_all.py)")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra setting for the services, e.g. HOKUSAI_MLFLOW_THREADS=16",
    )
    args = parser.parse_args()

    admin, names = create_databases(args.postgres)
    service = Service()
    receiver: WebhookReceiver | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="hokusai-bench-") as tmp:
            folder = Path(tmp)
            env = service_env(
                tmp,
                HOKUSAI_DATABASE_URL=database_url(args.postgres, names[0]),
                HOKUSAI_MLFLOW_TRACKING_URI=database_url(
                    args.postgres, names[1], "postgresql+psycopg"
                ),
                HOKUSAI_MLFLOW_ARTIFACT_ROOT=str(folder / "mlartifacts"),
                HOKUSAI_RUN_DISPATCHER="false",
                HOKUSAI_LOG_LEVEL=args.log_level,
                HOKUSAI_LOG_JSON="true",
            )
            # The services run the app/ next to this script (also when it is a scratch copy).
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
            env.update(item.split("=", 1) for item in args.env)
            key = migrate_and_create_key(env)
            # One at a time: the first creates MLflow's tables, the others find them.
            for i in range(args.apis):
                port = free_port()
                log = folder / f"api-{i}.log"
                process = launch(
                    ["hokusai-registry", "serve", "--port", str(port), "--no-migrate"], env, log
                )
                service.apis.append(process)
                service.urls.append(f"http://127.0.0.1:{port}")
                service.logs.append(log)
                try:
                    wait_ready(service.urls[-1], process, seconds=120)
                except SystemExit:
                    print(log.read_text(errors="replace")[-3000:], file=sys.stderr)
                    raise
            service.worker = launch(["hokusai-registry", "worker"], env, folder / "worker.log")
            headers = {"Authorization": f"Bearer {key}"}
            if not args.no_webhook:
                receiver = WebhookReceiver().start()
                created = httpx.post(
                    f"{service.urls[0]}/webhooks",
                    json={"url": receiver.url},
                    headers=headers,
                    timeout=30,
                )
                created.raise_for_status()
                receiver.secret = created.json()["secret"]

            warm = [f"WARM-{i}" for i in range(args.warmup)]
            measured = [f"BENCH-{i}" for i in range(args.registrations)]
            asyncio.run(create_tokens(service.urls, key, warm + measured, args.clients))
            warm_outcomes, _ = asyncio.run(register_all(service.urls, key, warm, args.clients))

            tracked = {p.pid: f"api-{i}" for i, p in enumerate(service.apis)}
            assert service.worker is not None
            tracked[service.worker.pid] = "worker"
            tracked[os.getpid()] = CLIENT
            backends = postgres_backends(admin, names)
            cpu_before = {pid: cpu_seconds(pid) for pid in [*tracked, *backends]}
            profilers = (
                start_profilers(
                    [p.pid for p in service.all()],
                    folder,
                    mode=args.profile_mode,
                    rate=args.profile_rate,
                )
                if args.profile
                else []
            )
            with WaitSampler(args.postgres, names) as waits:
                outcomes, wall = asyncio.run(
                    register_all(service.urls, key, measured, args.clients)
                )
            profiles = stop_profilers(profilers) if profilers else []
            last_response = max(o.finished_at for o in outcomes)
            backends.update(postgres_backends(admin, names))
            cpu_after = {pid: cpu_seconds(pid) for pid in [*tracked, *backends]}

            delivered_after = None
            if receiver is not None:
                wanted = 2 * (len(warm) + len(measured))
                deadline = time.monotonic() + 300
                while True:
                    ids = {
                        r.headers.get("webhook-id")
                        for r in receiver.requests
                        if r.reply.status == 200
                    }
                    if len(ids) >= wanted or time.monotonic() > deadline:
                        break
                    time.sleep(0.02)
                delivered_after = time.perf_counter() - last_response
            with psycopg.connect(database_url(args.postgres, names[0])) as conn:
                registered = conn.execute(
                    "SELECT count(*) FROM tokens WHERE status = 'registered'"
                ).fetchone()
                events = conn.execute("SELECT count(*), max(sequence) FROM events").fetchone()
                cursor = conn.execute("SELECT max(position) FROM dispatch_cursors").fetchone()
            stop_all(service.all())

            figures = report(
                args, outcomes, warm_outcomes, wall, tracked, backends, cpu_before, cpu_after, names
            )
            print(
                f"tokens registered in the database: {registered[0] if registered else '?'}; "
                f"events: {events[0] if events else '?'}; fan-out cursor at "
                f"{cursor[0] if cursor else '?'} of {events[1] if events else '?'}"
            )
            if receiver is not None:
                report_delivery(receiver, wanted, delivered_after)
            steps = step_breakdown(service.logs, set(measured))
            waits.report()
            save_report(args, figures, steps)
            if profiles:
                worker_pid = service.worker.pid if service.worker else None
                worker_file = f"py-spy-{worker_pid}.txt"
                summarise_profile([p for p in profiles if p.name != worker_file], args.top)
                worker_profiles = [p for p in profiles if p.name == worker_file]
                if worker_profiles:
                    summarise_profile(worker_profiles, args.top, who="the worker")
            if args.keep:
                keep = Path(args.keep)
                keep.mkdir(parents=True, exist_ok=True)
                for path in [*service.logs, folder / "worker.log", *profiles]:
                    if path.exists():
                        (keep / path.name).write_bytes(path.read_bytes())
                print(f"\nlogs and profiles copied to {keep}")
    finally:
        stop_all(service.all())
        if receiver is not None:
            receiver.stop()
        drop_databases(admin, names)


def report(
    args: argparse.Namespace,
    outcomes: list[Outcome],
    warm: list[Outcome],
    wall: float,
    tracked: dict[int, str],
    backends: dict[int, str],
    before: dict[int, float | None],
    after: dict[int, float | None],
    names: list[str],
) -> dict[str, float]:
    ok = [o.seconds for o in outcomes if o.status == 201]
    errors = [o for o in outcomes if o.status != 201]
    warm_errors = [o for o in warm if o.status != 201]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        f"; load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"{args.apis} API processes + 1 worker on PostgreSQL (MLflow store on PostgreSQL too), "
        f"{args.clients} clients, {len(outcomes)} registrations of distinct 1 MiB pickles "
        f"after {len(warm)} warm-up; log level {args.log_level}"
        + ("; py-spy attached" if args.profile else "")
    )
    print(f"registrations/s: {len(ok) / wall:.2f} ({len(ok)} in {wall:.2f} s)")
    if ok:
        print(
            f"latency: p50 {percentile(ok, 0.5) * 1000:.0f} ms, "
            f"p90 {percentile(ok, 0.9) * 1000:.0f} ms, "
            f"p99 {percentile(ok, 0.99) * 1000:.0f} ms, max {max(ok) * 1000:.0f} ms, "
            f"min {min(ok) * 1000:.0f} ms"
        )
    for url in sorted({o.url for o in outcomes}):
        mine = [o.seconds for o in outcomes if o.url == url and o.status == 201]
        if mine:
            print(f"   {url}: {len(mine)}, p50 {percentile(mine, 0.5) * 1000:.0f} ms")
    print(f"errors: {len(errors)} (warm-up: {len(warm_errors)})")
    for o in (warm_errors + errors)[:10]:
        print(f"   {o.token_id} -> {o.status}: {o.body[:500]}")
    print("CPU seconds used during the measured phase:")
    totals: defaultdict[str, float] = defaultdict(float)
    for pid, name in [*tracked.items(), *((p, f"postgres ({d})") for p, d in backends.items())]:
        first, last = before.get(pid), after.get(pid)
        if last is None:
            continue
        totals[name.replace(names[0], "service db").replace(names[1], "mlflow db")] += last - (
            first or 0.0
        )
    done = max(1, len(ok))
    for name, seconds in sorted(totals.items()):
        print(
            f"   {name:28} {seconds:7.2f} s  ({seconds / wall * 100:5.1f}% of one core; "
            f"{seconds / done * 1000:5.1f} ms per registration)"
        )
    print(
        f"   {'total':28} {sum(totals.values()):7.2f} s  of {wall * (os.cpu_count() or 1):.1f} "
        f"core-seconds available ({sum(totals.values()) / done * 1000:.1f} ms per registration)"
    )
    service = sum(seconds for name, seconds in totals.items() if name != CLIENT)
    print(
        f"   {'service (all but the client)':28} {service:7.2f} s  "
        f"({service / done * 1000:.1f} ms per registration: the API processes, the worker and "
        "PostgreSQL)"
    )
    return {
        "rate": len(ok) / wall,
        "p50": percentile(ok, 0.5) if ok else float("nan"),
        "p90": percentile(ok, 0.9) if ok else float("nan"),
        "p99": percentile(ok, 0.99) if ok else float("nan"),
        "errors": float(len(errors) + len(warm_errors)),
        "registrations": float(len(outcomes)),
        "cpu_ms": sum(totals.values()) / done * 1000,
        "service_cpu_ms": service / done * 1000,
    }


def save_report(
    args: argparse.Namespace, figures: dict[str, float], steps: dict[str, float]
) -> None:
    step_rows = [
        [name.replace("step ", ""), f"{ms:.0f} ms"]
        for name, ms in steps.items()
        if name.startswith(("step ", "total"))
    ]
    errors = int(figures["errors"])
    Report(
        title="Concurrency on PostgreSQL",
        command=f"benchmarks/concurrency.py --clients {args.clients} "
        f"--registrations {args.registrations}",
        section="\n\n".join(
            [
                f"{args.apis} `hokusai-registry serve` processes (the dispatcher off) and one "
                "`hokusai-registry worker`, on PostgreSQL, with MLflow's tracking store on "
                f"PostgreSQL too and its artifacts on local disk; {args.clients} clients "
                f"register {int(figures['registrations'])} distinct 1 MiB pickles after "
                f"{args.warmup} warm-up, each request going to the next API process in turn, "
                "while a local receiver takes every webhook.",
                markdown_table(
                    ["registrations/s", "p50", "p90", "p99", "errors", "CPU per registration"],
                    [
                        [
                            f"{figures['rate']:.1f}",
                            f"{figures['p50'] * 1000:.0f} ms",
                            f"{figures['p90'] * 1000:.0f} ms",
                            f"{figures['p99'] * 1000:.0f} ms",
                            str(errors),
                            f"{figures['service_cpu_ms']:.0f} ms (API processes, worker and "
                            f"PostgreSQL; {figures['cpu_ms']:.0f} ms with the clients)",
                        ]
                    ],
                ),
                "Median time of each step inside the API processes:\n\n"
                + markdown_table(["step", "median"], step_rows)
                if step_rows
                else "",
            ]
        ),
        targets=[
            Target(
                f"4. concurrency: {args.clients} clients, {args.apis} API processes, PostgreSQL",
                f"{figures['rate']:.1f} registrations/s, p50 {figures['p50'] * 1000:.0f} ms, "
                f"p99 {figures['p99'] * 1000:.0f} ms, {errors} errors",
                "reported; no errors",
                errors == 0,
            ),
            Target(
                "4. concurrency: CPU per registration (API processes, worker, PostgreSQL) / "
                f"{CPU_BEFORE_MS:.0f} ms before issue 15",
                f"{figures['service_cpu_ms']:.1f} ms / {CPU_BEFORE_MS:.0f} ms = "
                f"{figures['service_cpu_ms'] / CPU_BEFORE_MS:.2f}",
                "<= 0.5",
                figures["service_cpu_ms"] / CPU_BEFORE_MS <= 0.5,
            ),
            Target(
                "4. concurrency: registrations/s with p99 under 2 s, on this machine",
                f"{figures['rate']:.1f} /s, p99 {figures['p99'] * 1000:.0f} ms",
                ">= 25 /s, p99 < 2 s",
                figures["rate"] >= 25 and figures["p99"] < 2.0,
            ),
        ],
    ).save(args.report)


def report_delivery(receiver: WebhookReceiver, wanted: int, after_last: float | None) -> None:
    delivered = [r for r in receiver.requests if r.reply.status == 200]
    unique = {r.headers.get("webhook-id") for r in delivered}
    latencies = sorted(
        r.received_wall
        - dt.datetime.fromisoformat(r.json()["timestamp"].replace("Z", "+00:00")).timestamp()
        for r in delivered
    )
    verified = sum(1 for r in delivered if r.signature_ok)
    print(
        f"events delivered by the worker: {len(unique)} of {wanted} ({verified} signatures "
        f"verified, {len(delivered) - len(unique)} duplicates); the last arrived "
        f"{after_last:.2f} s after the last registration's response"
        if after_last is not None
        else ""
    )
    if latencies:
        print(
            f"   commit to receipt: median {statistics.median(latencies) * 1000:.0f} ms, "
            f"p99 {percentile(latencies, 0.99) * 1000:.0f} ms"
        )


if __name__ == "__main__":
    main()
