"""`hokusai benchmark ...`: a token's sealed benchmark (held-out rows with labels)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hokusai_client.commands import output
from hokusai_client.commands.base import JsonOption, command, make_client
from hokusai_client.commands.progress import Bars, show_progress

app = typer.Typer(
    help="Upload and show a token's sealed benchmark (the service evaluates models on it).",
    no_args_is_help=True,
)

TokenId = Annotated[str, typer.Option("--token-id", "-t", help="The token.")]


@app.command("upload")
@command
def benchmark_upload(
    ctx: typer.Context,
    token_id: TokenId,
    dataset: Annotated[
        Path,
        typer.Option(
            exists=True,
            dir_okay=False,
            readable=True,
            help="CSV of held-out rows with a header row and the label column.",
        ),
    ],
    label_column: Annotated[
        str | None,
        typer.Option(
            help="The column holding the labels (the service's default: y_true).",
            show_default=False,
        ),
    ] = None,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress",
            help="A progress bar on stderr (default: only on a terminal).",
            show_default=False,
        ),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Seal a benchmark for a token: from now on the service scores registrations itself.

    The rows and labels stay in the service; the answer holds only their description (rows,
    feature columns and types, classes, sha256). Uploading again makes a new version.

    \b
    Examples:
      hokusai benchmark upload --token-id XRAY --dataset holdout.csv
      hokusai benchmark upload -t CHURN --dataset holdout.csv --label-column churned --json
    """
    with make_client(ctx) as client, Bars(show_progress(progress)) as bars:
        benchmark = client.upload_benchmark(
            token_id, dataset, label_column=label_column, progress=bars
        )
    if json_output:
        output.write_stdout(benchmark.text)
        return
    output.print_benchmark(
        benchmark,
        f"Sealed benchmark version {benchmark.get('version')} of {benchmark.get('token_id')}",
    )


@app.command("show")
@command
def benchmark_show(ctx: typer.Context, token_id: TokenId, json_output: JsonOption = False) -> None:
    """Show a token's sealed benchmark: version, rows, features, classes, sha256 (never rows).

    \b
    Examples:
      hokusai benchmark show --token-id XRAY
      hokusai benchmark show -t XRAY --json
    """
    with make_client(ctx) as client:
        benchmark = client.get_benchmark(token_id)
    if json_output:
        output.write_stdout(benchmark.text)
        return
    output.print_benchmark(benchmark, f"Benchmark of {benchmark.get('token_id')}")
