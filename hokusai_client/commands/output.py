"""How results look: `label  value` blocks, tables, event lines; JSON as the service sent it."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console


def write_stdout(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


def console() -> Console:
    from rich.console import Console

    # A table piped to a file or another program is not squeezed into 80 columns.
    width = None if sys.stdout.isatty() else max(int(os.environ.get("COLUMNS") or 0), 200)
    return Console(highlight=False, width=width)


def print_fields(title: str, fields: Sequence[tuple[str, object]]) -> None:
    """A titled block of `label  value` lines; empty values are left out."""
    typer.secho(title, bold=True)
    shown = [(label, value) for label, value in fields if value not in (None, "", [], {})]
    width = max((len(label) for label, _ in shown), default=0)
    for label, value in shown:
        typer.echo(f"  {label.ljust(width)}  {text(value)}")


def text(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def when(value: object) -> str:
    """An ISO timestamp as `YYYY-MM-DD HH:MM:SS` (UTC); empty for none."""
    return str(value)[:19].replace("T", " ") if value else ""


def num(value: object) -> str:
    return "" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def size(count: object) -> str:
    if not isinstance(count, int):
        return ""
    amount = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024 or unit == "GiB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return str(count)


STATUS_STYLES = {
    "registered": "green",
    "deployed": "cyan",
    "delivered": "green",
    "succeeded": "green",
    "failed": "red",
    "rejected": "red",
    "dead": "red",
    "registering": "yellow",
    "in_progress": "yellow",
    "evaluating": "yellow",
    "queued": "yellow",
    "running": "yellow",
    "pending": "yellow",
    "archived": "dim",
}


def table(
    columns: Sequence[str], rows: Sequence[Sequence[str]], *, status_column: int = -1
) -> None:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    grid = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for column in columns:
        grid.add_column(column, overflow="fold")
    for row in rows:
        cells = list(row)
        if 0 <= status_column < len(cells):
            style = STATUS_STYLES.get(cells[status_column])
            if style:
                cells[status_column] = f"[{style}]{cells[status_column]}[/]"
        grid.add_row(
            *(cell if i == status_column else escape(cell) for i, cell in enumerate(cells))
        )
    console().print(grid)


def status(value: object) -> str:
    """A status, coloured on a terminal."""
    word = str(value or "")
    color = STATUS_STYLES.get(word)
    return typer.style(word, fg=color, bold=True) if color and color != "dim" else word


def items(body: Any, key: str = "items") -> list[dict[str, Any]]:
    """The list in a page (`{"items": [...]}`), or the body itself when it is a list."""
    found = body.get(key) if isinstance(body, dict) else body
    return [item for item in found if isinstance(item, dict)] if isinstance(found, list) else []


# Tokens ------------------------------------------------------------------------------------------


def print_token(token: Mapping[str, Any], title: str | None = None) -> None:
    benchmark = (
        f"{token.get('metric')} (baseline {num(token.get('baseline'))})"
        if token.get("metric")
        else None
    )
    version = (
        f"{token.get('model_name')} version {token.get('model_version')}"
        if token.get("model_version")
        else token.get("model_name")
    )
    print_fields(
        title or f"Token {token.get('token_id')}",
        [
            ("status", status(token.get("status"))),
            ("name", token.get("name")),
            ("benchmark", benchmark),
            ("confidence", num(token.get("confidence"))),
            ("score", num(token.get("metric_value"))),
            ("model", version),
            ("model URI", token.get("model_uri")),
            ("MLflow run", token.get("mlflow_run_id")),
            ("registered", when(token.get("registered_at"))),
            ("created", when(token.get("created_at"))),
            ("updated", when(token.get("updated_at"))),
            ("metadata", token.get("metadata")),
        ],
    )


TOKEN_COLUMNS = (
    "TOKEN",
    "STATUS",
    "NAME",
    "METRIC",
    "BASELINE",
    "SCORE",
    "MODEL",
    "VERSION",
    "UPDATED (UTC)",
)


def token_rows(tokens: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    return [
        [
            str(token.get("token_id") or ""),
            str(token.get("status") or ""),
            str(token.get("name") or ""),
            str(token.get("metric") or ""),
            num(token.get("baseline")),
            num(token.get("metric_value")),
            str(token.get("model_name") or ""),
            str(token.get("model_version") or ""),
            when(token.get("updated_at")),
        ]
        for token in tokens
    ]


# Registrations -----------------------------------------------------------------------------------


def _check(metric: Mapping[str, Any]) -> str | None:
    if not metric:
        return None
    improvement = metric.get("improvement")
    sign = "+" if isinstance(improvement, int | float) and improvement >= 0 else ""
    line = (
        f"{metric.get('name')} {num(metric.get('value'))} against baseline "
        f"{num(metric.get('baseline'))} (improvement {sign}{num(improvement)})"
    )
    ci95 = metric.get("ci95")
    if isinstance(ci95, list) and len(ci95) == 2:
        line += f", 95% CI [{num(ci95[0])}, {num(ci95[1])}]"
    return line


def print_registration(registration: Mapping[str, Any]) -> None:
    metric = registration.get("metric") or {}
    artifact = registration.get("artifact") or {}
    evaluation = registration.get("evaluation") or {}
    stored = None
    if artifact:
        stored = (
            f"{artifact.get('filename')} ({artifact.get('format')}, "
            f"{size(artifact.get('size_bytes'))}), sha256 {artifact.get('sha256')}"
        )
    evaluated = None
    if evaluation:
        evaluated = (
            f"{evaluation.get('rows')} rows of benchmark version "
            f"{evaluation.get('benchmark_version')} in {num(evaluation.get('seconds'))} s "
            f"(sandbox {evaluation.get('sandbox')})"
        )
    print_fields(
        f"Registered a model for {registration.get('token_id')}",
        [
            (
                "model",
                f"{registration.get('model_name')} version {registration.get('model_version')}",
            ),
            ("model URI", registration.get("model_uri")),
            ("MLflow run", registration.get("mlflow_run_id")),
            ("metric", _check(metric)),
            ("source", metric.get("source") if metric.get("source") == "evaluated" else None),
            ("evaluation", evaluated),
            ("artifact", stored),
            ("API schema", "yes" if registration.get("api_schema") else None),
            ("registration", registration.get("registration_id")),
        ],
    )


def print_accepted(registration: Mapping[str, Any]) -> None:
    """A registration accepted for evaluation, not waited for."""
    rid = registration.get("registration_id")
    print_fields(
        f"Evaluating a model for {registration.get('token_id')}",
        [
            ("status", status(registration.get("status"))),
            ("registration", rid),
            ("follow", f"hokusai model status --token-id {registration.get('token_id')}"),
        ],
    )


# Events ------------------------------------------------------------------------------------------


def event_summary(event: Mapping[str, Any]) -> str:
    """One line about an event's payload."""
    payload = event.get("payload") if isinstance(event.get("payload"), dict) else {}
    assert isinstance(payload, dict)
    kind = event.get("event_type")
    model = f"{payload.get('model_name')} version {payload.get('model_version')}"
    if kind == "model_registered":
        return (
            f"{model}: {payload.get('metric_name')} {num(payload.get('metric_value'))} "
            f"(baseline {num(payload.get('baseline_value'))})"
        )
    if kind == "token_ready_for_deploy":
        return f"{model} ready to deploy"
    if kind in ("model_validation_failed", "registration_failed"):
        return f"{payload.get('code')}: {payload.get('detail')}"
    if kind == "model_deployed":
        return model
    if kind == "ping":
        return f"webhook {payload.get('webhook_id')}"
    line = json.dumps(payload, separators=(",", ":"))
    return line if len(line) <= 120 else line[:117] + "..."


def event_line(event: Mapping[str, Any]) -> str:
    return (
        f"{event.get('sequence')!s:>6}  {when(event.get('timestamp'))}  "
        f"{event.get('event_type')!s:<24}  {event.get('token_id') or '-'!s:<12}  "
        f"{event_summary(event)}"
    )


# Webhooks and benchmarks -------------------------------------------------------------------------


def print_webhook(webhook: Mapping[str, Any], title: str) -> None:
    print_fields(
        title,
        [
            ("id", webhook.get("id")),
            ("url", webhook.get("url")),
            ("event types", ", ".join(map(str, webhook.get("event_types") or []))),
            ("format", webhook.get("payload_format")),
            ("description", webhook.get("description")),
            ("active", webhook.get("active")),
            ("created", when(webhook.get("created_at"))),
        ],
    )


def print_benchmark(benchmark: Mapping[str, Any], title: str) -> None:
    features = [
        f"{f.get('name')} ({f.get('dtype')})"
        for f in benchmark.get("features") or []
        if isinstance(f, dict)
    ]
    classes = benchmark.get("classes")
    print_fields(
        title,
        [
            ("version", benchmark.get("version")),
            ("rows", benchmark.get("rows")),
            ("label column", benchmark.get("label_column")),
            ("features", ", ".join(features)),
            ("classes", ", ".join(map(str, classes)) if isinstance(classes, list) else None),
            ("sha256", benchmark.get("sha256")),
            ("created", when(benchmark.get("created_at"))),
        ],
    )
