"""`hokusai token ...` and `hokusai model list`: tokens and their registered models."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from hokusai_client.commands import output
from hokusai_client.commands.base import (
    JsonOption,
    TokenIdArgument,
    TokenIdOption,
    command,
    make_client,
    pairs,
    pick_token_id,
)
from hokusai_client.commands.errors import usage_error
from hokusai_client.constants import TokenStatus

app = typer.Typer(help="Create, show, list, deploy and archive tokens.", no_args_is_help=True)

StatusOption = Annotated[
    TokenStatus | None, typer.Option(help="Only tokens in this status.", show_default=False)
]
LimitOption = Annotated[
    int | None, typer.Option(min=1, help="Tokens per page (the service's default: 50).")
]
AllOption = Annotated[bool, typer.Option("--all", help="Follow every page.")]


def list_tokens(
    ctx: typer.Context,
    *,
    status: TokenStatus | None,
    limit: int | None,
    every: bool,
    json_output: bool,
    empty: str,
) -> None:
    """One page (or with `every`, all of them) as a table or JSON."""
    wanted = status.value if status else None
    with make_client(ctx) as client:
        if every:
            tokens: list[dict[str, Any]] = list(client.iter_tokens(status=wanted, limit=limit))
            cursor = None
            if json_output:
                output.write_stdout(json.dumps({"items": tokens, "next_cursor": None}))
                return
        else:
            page = client.list_tokens(status=wanted, limit=limit)
            if json_output:
                output.write_stdout(page.text)
                return
            tokens = output.items(page)
            cursor = page.get("next_cursor")
    if not tokens:
        typer.echo(empty)
        return
    output.table(output.TOKEN_COLUMNS, output.token_rows(tokens), status_column=1)
    if cursor:
        typer.secho("more tokens: add --all to list every page", err=True, dim=True)


@app.command("create")
@command
def token_create(
    ctx: typer.Context,
    token_id: TokenIdArgument = None,
    token_id_option: TokenIdOption = None,
    name: Annotated[str | None, typer.Option(help="A readable name.")] = None,
    metric: Annotated[str | None, typer.Option(help="The benchmark's metric (e.g. auroc).")] = None,
    baseline: Annotated[
        float | None, typer.Option(help="The benchmark's baseline: a model must beat it.")
    ] = None,
    confidence: Annotated[
        float | None,
        typer.Option(
            help="With a sealed benchmark: the confidence level (e.g. 0.95) whose whole "
            "interval must clear the baseline.",
            show_default=False,
        ),
    ] = None,
    metadata: Annotated[
        list[str] | None,
        typer.Option("--metadata", metavar="KEY=VALUE", help="Metadata; repeat for more."),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """Create a draft token, optionally with the benchmark its model must beat.

    \b
    Examples:
      hokusai token create XRAY --name "Chest X-ray classifier" --metric auroc --baseline 0.82
      hokusai token create CHURN --metadata team=growth --json
    """
    tid = pick_token_id(token_id, token_id_option)
    if (metric is None) != (baseline is None):
        raise usage_error("a benchmark needs both --metric and --baseline")
    with make_client(ctx) as client:
        token = client.create_token(
            tid,
            name=name,
            metric=metric,
            baseline=baseline,
            metadata=pairs(metadata, "--metadata") or None,
            confidence=confidence,
        )
    if json_output:
        output.write_stdout(token.text)
        return
    output.print_token(token, f"Created token {token.get('token_id')}")


@app.command("show")
@command
def token_show(
    ctx: typer.Context,
    token_id: TokenIdArgument = None,
    token_id_option: TokenIdOption = None,
    json_output: JsonOption = False,
) -> None:
    """Show one token: its status, benchmark and registered model.

    \b
    Examples:
      hokusai token show XRAY
      hokusai token show XRAY --json
    """
    tid = pick_token_id(token_id, token_id_option)
    with make_client(ctx) as client:
        token = client.get_token(tid)
    if json_output:
        output.write_stdout(token.text)
        return
    output.print_token(token)


@app.command("list")
@command
def token_list(
    ctx: typer.Context,
    status: StatusOption = None,
    limit: LimitOption = None,
    every: AllOption = False,
    json_output: JsonOption = False,
) -> None:
    """List tokens, newest first.

    \b
    Examples:
      hokusai token list
      hokusai token list --status draft --all
      hokusai token list --json
    """
    list_tokens(
        ctx, status=status, limit=limit, every=every, json_output=json_output, empty="no tokens"
    )


def _set_status(ctx: typer.Context, tid: str, status: str, json_output: bool) -> None:
    with make_client(ctx) as client:
        token = client.update_token(tid, status=status)
    if json_output:
        output.write_stdout(token.text)
        return
    output.print_token(token, f"Token {token.get('token_id')} is now {token.get('status')}")


@app.command("deploy")
@command
def token_deploy(
    ctx: typer.Context,
    token_id: TokenIdArgument = None,
    token_id_option: TokenIdOption = None,
    json_output: JsonOption = False,
) -> None:
    """Mark a registered token deployed (announced as `model_deployed`).

    \b
    Examples:
      hokusai token deploy XRAY
    """
    _set_status(ctx, pick_token_id(token_id, token_id_option), "deployed", json_output)


@app.command("archive")
@command
def token_archive(
    ctx: typer.Context,
    token_id: TokenIdArgument = None,
    token_id_option: TokenIdOption = None,
    json_output: JsonOption = False,
) -> None:
    """Archive a token (from any status).

    \b
    Examples:
      hokusai token archive XRAY
    """
    _set_status(ctx, pick_token_id(token_id, token_id_option), "archived", json_output)
