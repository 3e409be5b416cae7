"""`hokusai events ...`: read and follow the events feed."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from hokusai_client.commands import output
from hokusai_client.commands.base import JsonOption, TokenIdOption, command, make_client
from hokusai_client.commands.errors import CliError, Exit

app = typer.Typer(help="Read and follow the events feed.", no_args_is_help=True)

AfterOption = Annotated[
    int, typer.Option(min=0, help="Start after this sequence number (0: from the first event).")
]
EventTypeOption = Annotated[
    str | None, typer.Option("--event-type", "-e", help="Only this event type.", show_default=False)
]


@app.command("list")
@command
def events_list(
    ctx: typer.Context,
    after: AfterOption = 0,
    limit: Annotated[
        int | None, typer.Option(min=1, help="At most this many events.", show_default=False)
    ] = None,
    event_type: EventTypeOption = None,
    token_id: TokenIdOption = None,
    json_output: JsonOption = False,
) -> None:
    """List events in sequence order (one page of GET /events).

    \b
    Examples:
      hokusai events list
      hokusai events list --token-id XRAY --event-type model_registered
      hokusai events list --after 120 --limit 50 --json
    """
    with make_client(ctx) as client:
        page = client.list_events(
            after=after, limit=limit, event_type=event_type, token_id=token_id
        )
    if json_output:
        output.write_stdout(page.text)
        return
    events = output.items(page, "events")
    if not events:
        typer.echo("no events")
    else:
        output.table(
            ("SEQ", "TIME (UTC)", "TYPE", "TOKEN", "DETAIL"),
            [
                [
                    str(event.get("sequence")),
                    output.when(event.get("timestamp")),
                    str(event.get("event_type")),
                    str(event.get("token_id") or ""),
                    output.event_summary(event),
                ]
                for event in events
            ],
        )
    if page.get("next_after") is not None:
        typer.secho(f"next page: --after {page['next_after']}", err=True, dim=True)


@app.command("watch")
@command
def events_watch(
    ctx: typer.Context,
    after: AfterOption = 0,
    event_type: EventTypeOption = None,
    token_id: TokenIdOption = None,
    count: Annotated[
        int | None, typer.Option(min=1, help="Stop after this many events.", show_default=False)
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="Stop after this many seconds (exit 7 if --count events have not come).",
            show_default=False,
        ),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="One event envelope (JSON) per line.")
    ] = False,
) -> None:
    """Follow the events feed (long-polling) and print each event as it arrives.

    Starts after --after (0: replays the feed from its first event), then waits for new ones
    until Ctrl-C, --count or --timeout. Connection failures are retried (up to 10 in a row).

    \b
    Examples:
      hokusai events watch
      hokusai events watch --token-id XRAY --event-type model_registered --count 1 --timeout 120
      hokusai events watch --after 120 --json | jq .payload
    """
    seen = 0
    with make_client(ctx) as client:
        for event in client.watch_events(
            after=after, event_type=event_type, token_id=token_id, timeout=timeout
        ):
            output.write_stdout(
                json.dumps(event, separators=(",", ":"))
                if json_output
                else output.event_line(event)
            )
            seen += 1
            if count is not None and seen >= count:
                return
    if count is not None:
        raise CliError(
            f"{seen} of {count} events arrived within {timeout or 0:g} s", exit_code=Exit.TIMEOUT
        )
