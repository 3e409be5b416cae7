"""The `hokusai` command line: thin commands over HokusaiClient, one module per group.

Importing this package imports typer and the command modules only; httpx, rich and the client
come in when a command runs, so `hokusai --help` answers at once.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from hokusai_client import __version__
from hokusai_client.commands import benchmarks, events, models, receipts, tokens, webhooks
from hokusai_client.commands.base import Settings
from hokusai_client.config import API_URL_VARIABLES, DEFAULT_API_URL, resolve_api_key

# Other spellings of a group's name, resolved but not listed in --help.
ALIASES = {
    "webhook": "webhooks",
    "event": "events",
    "tokens": "token",
    "models": "model",
    "benchmarks": "benchmark",
    "receipts": "receipt",
}


class _Group(TyperGroup):
    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        return super().get_command(ctx, ALIASES.get(cmd_name, cmd_name))


app = typer.Typer(
    name="hokusai",
    cls=_Group,
    help=(
        "Register ML models for Hokusai tokens, follow their events, manage webhooks.\n\n"
        "\b\n"
        "Configuration (options of hokusai itself, before the command):\n"
        "  --api-url, --api-endpoint    the service (default http://127.0.0.1:8000); also\n"
        "                               HOKUSAI_API_URL, then HOKUSAI_API_ENDPOINT\n"
        "  --api-key, HOKUSAI_API_KEY   the API key; when none is given and the service runs\n"
        "                               on this machine, the key `make run` writes to\n"
        "                               $HOKUSAI_DATA_DIR/dev-api-key, else\n"
        "                               ./.hokusai/dev-api-key\n"
        "\n"
        "\b\n"
        "Examples:\n"
        "  hokusai token create XRAY --metric auroc --baseline 0.82\n"
        "  hokusai model register --token-id XRAY --model-path model.pkl \\\n"
        "      --metric auroc --baseline 0.82 --metric-value 0.86\n"
        "  hokusai model status --token-id XRAY\n"
        "  hokusai events watch --token-id XRAY\n"
        "  hokusai --api-url https://registry.example.com model list --status registered\n"
        "\n"
        "\b\n"
        "Exit codes: 0 ok, 1 unexpected answer, 2 usage, 3 auth, 4 conflict, 5 refused input,\n"
        "6 server or network, 7 timed out, 8 not found, 9 invalid receipt, 130 interrupted.\n"
        "Reference: docs/cli.md"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
app.add_typer(models.app, name="model")
app.add_typer(tokens.app, name="token")
app.add_typer(events.app, name="events")
app.add_typer(webhooks.app, name="webhooks")
app.add_typer(benchmarks.app, name="benchmark")
app.add_typer(receipts.app, name="receipt")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hokusai {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    api_url: Annotated[
        str,
        typer.Option(
            "--api-url",
            "--api-endpoint",
            envvar=list(API_URL_VARIABLES),
            help="The service's base URL.",
        ),
    ] = DEFAULT_API_URL,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="HOKUSAI_API_KEY",
            help="API key (prefer the environment variable: a flag shows in `ps`).",
            show_default=False,
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option(min=1.0, help="Seconds to wait for the service to answer.")
    ] = 30.0,
    retries: Annotated[
        int,
        typer.Option(
            min=0, max=10, help="Retries of a connection failure or a 503 with Retry-After."
        ),
    ] = 3,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    source = ctx.get_parameter_source("api_key")
    given_source = "HOKUSAI_API_KEY" if source and source.name == "ENVIRONMENT" else "--api-key"
    key, key_source = resolve_api_key(api_key, given_source, api_url)
    ctx.obj = Settings(
        api_url=api_url.strip().rstrip("/"),
        api_key=key,
        key_source=key_source,
        timeout=timeout,
        retries=retries,
    )


def main() -> None:
    app()
