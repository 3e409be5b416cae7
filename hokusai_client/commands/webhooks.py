"""`hokusai webhooks ...` (also `hokusai webhook ...`): endpoints and their deliveries."""

from __future__ import annotations

import enum
import json
import sys
from typing import TYPE_CHECKING, Annotated, TextIO

import typer

from hokusai_client.commands import output
from hokusai_client.commands.base import JsonOption, command, make_client
from hokusai_client.commands.errors import usage_error
from hokusai_client.constants import DeliveryStatus

if TYPE_CHECKING:
    from hokusai_client.transport import ServiceJSON

app = typer.Typer(help="Manage webhook endpoints and their deliveries.", no_args_is_help=True)

WebhookId = Annotated[str, typer.Argument(metavar="WEBHOOK_ID", help="The webhook's id.")]
SECRET_LENGTHS = (16, 256)


class Format(enum.StrEnum):
    """How deliveries are shaped (`payload_format`)."""

    STANDARD = "standard"
    HOKUSAI_SITE = "hokusai-site"

    @property
    def payload_format(self) -> str:
        return self.value.replace("-", "_")


def read_secret(stream: TextIO | None = None) -> str:
    """The shared secret from stdin: one line, 16-256 printable characters."""
    source = stream or sys.stdin
    secret = source.readline().rstrip("\r\n")
    low, high = SECRET_LENGTHS
    if not low <= len(secret) <= high or not secret.isprintable():
        raise usage_error(
            f"--secret-stdin: the secret must be one line of {low} to {high} printable characters"
        )
    return secret


EventTypeOption = Annotated[
    list[str] | None,
    typer.Option(
        "--event-type",
        "-e",
        help="An event type to send; repeat (default: all, '*'; with --format hokusai-site, "
        "model_registered).",
    ),
]
FormatOption = Annotated[
    Format,
    typer.Option(
        "--format",
        help="standard: the event envelope; hokusai-site: the body the Hokusai site's "
        "receiver parses.",
    ),
]
SecretStdinOption = Annotated[
    bool,
    typer.Option(
        "--secret-stdin",
        help="Read the signing secret from stdin (a secret the receiver already has) "
        "instead of letting the service make one.",
    ),
]


def _print_created(webhook: ServiceJSON, *, secret_given: bool) -> None:
    """A new webhook, and the secret the service made for it (shown only this once)."""
    output.print_webhook(webhook, f"Added webhook {webhook.get('id')}")
    if webhook.get("secret") and not secret_given:
        typer.echo(f"  secret       {webhook['secret']}")
        typer.secho(
            "  (shown only now: keep it to verify the webhook-signature header)",
            fg="yellow",
        )


def create(
    ctx: typer.Context,
    url: Annotated[str, typer.Argument(help="Where events are POSTed.")],
    event_type: EventTypeOption = None,
    description: Annotated[str | None, typer.Option(help="What the endpoint is for.")] = None,
    payload_format: FormatOption = Format.STANDARD,
    secret_stdin: SecretStdinOption = False,
    json_output: JsonOption = False,
) -> None:
    """Add a webhook endpoint; a secret the service makes is shown this once.

    \b
    Examples:
      hokusai webhooks create https://example.com/hooks/hokusai
      hokusai webhooks create https://example.com/hook -e model_registered -e model_deployed \\
          --description "site backend"
      printenv SITE_SECRET | hokusai webhook create \\
          https://hokus.ai/api/webhooks/model-registration \\
          --format hokusai-site --secret-stdin
    """
    secret = read_secret() if secret_stdin else None
    types = list(event_type or [])
    if not types:
        types = ["model_registered"] if payload_format is Format.HOKUSAI_SITE else ["*"]
    with make_client(ctx) as client:
        webhook = client.create_webhook(
            url,
            event_types=types,
            description=description,
            payload_format=(
                payload_format.payload_format if payload_format is not Format.STANDARD else None
            ),
            secret=secret,
        )
    if json_output:
        output.write_stdout(webhook.text)
        return
    _print_created(webhook, secret_given=secret_stdin)


create_help = create.__doc__
app.command("create")(command(create))
app.command("add", help=(create_help or "").replace("webhooks create", "webhooks add"))(
    command(create)
)


@app.command("list")
@command
def webhooks_list(ctx: typer.Context, json_output: JsonOption = False) -> None:
    """List webhook endpoints.

    \b
    Examples:
      hokusai webhooks list
      hokusai webhooks list --json
    """
    with make_client(ctx) as client:
        page = client.list_webhooks()
    if json_output:
        output.write_stdout(page.text)
        return
    webhooks = output.items(page)
    if not webhooks:
        typer.echo("no webhooks")
        return
    output.table(
        ("ID", "URL", "EVENT TYPES", "FORMAT", "ACTIVE", "DESCRIPTION", "CREATED (UTC)"),
        [
            [
                str(hook.get("id")),
                str(hook.get("url")),
                ",".join(map(str, hook.get("event_types") or [])),
                str(hook.get("payload_format") or "standard"),
                output.text(bool(hook.get("active"))),
                str(hook.get("description") or ""),
                output.when(hook.get("created_at")),
            ]
            for hook in webhooks
        ],
    )


@app.command("remove")
@command
def webhooks_remove(
    ctx: typer.Context, webhook_id: WebhookId, json_output: JsonOption = False
) -> None:
    """Remove a webhook endpoint.

    \b
    Examples:
      hokusai webhooks remove 3f6c1e2a-...
    """
    with make_client(ctx) as client:
        response = client.delete_webhook(webhook_id)
    if json_output:
        output.write_stdout(response.text or json.dumps({"id": webhook_id, "removed": True}))
        return
    typer.echo(f"removed webhook {webhook_id}")


@app.command("deliveries")
@command
def webhooks_deliveries(
    ctx: typer.Context,
    webhook_id: WebhookId,
    status: Annotated[
        DeliveryStatus | None,
        typer.Option(help="Only deliveries in this status.", show_default=False),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(min=1, help="At most this many (newest first).", show_default=False),
    ] = None,
    json_output: JsonOption = False,
) -> None:
    """List a webhook's deliveries, newest first: one per event, with attempts and last error.

    \b
    Examples:
      hokusai webhooks deliveries 3f6c1e2a-...
      hokusai webhooks deliveries 3f6c1e2a-... --status dead --json | jq '.items[].id'
    """
    with make_client(ctx) as client:
        page = client.list_deliveries(
            webhook_id, status=status.value if status else None, limit=limit
        )
    if json_output:
        output.write_stdout(page.text)
        return
    deliveries = output.items(page)
    if not deliveries:
        typer.echo("no deliveries")
        return
    output.table(
        (
            "DELIVERY",
            "EVENT TYPE",
            "STATUS",
            "ATTEMPTS",
            "LAST CODE",
            "LAST ERROR",
            "NEXT ATTEMPT (UTC)",
            "DELIVERED (UTC)",
        ),
        [
            [
                str(item.get("id")),
                str(item.get("event_type") or ""),
                str(item.get("status") or ""),
                output.num(item.get("attempts")),
                output.num(item.get("last_status_code")),
                str(item.get("last_error") or ""),
                output.when(item.get("next_attempt_at")),
                output.when(item.get("delivered_at")),
            ]
            for item in deliveries
        ],
        status_column=2,
    )


@app.command("retry")
@command
def webhooks_retry(
    ctx: typer.Context,
    webhook_id: WebhookId,
    delivery_id: Annotated[str, typer.Argument(metavar="DELIVERY_ID", help="The delivery.")],
    json_output: JsonOption = False,
) -> None:
    """Send a delivery again now (a dead one too).

    \b
    Examples:
      hokusai webhooks retry 3f6c1e2a-... 9b1d7c40-...
    """
    with make_client(ctx) as client:
        response = client.retry_delivery(webhook_id, delivery_id)
    if json_output:
        output.write_stdout(response.text or "{}")
        return
    try:
        delivery = response.json() if response.content else {}
    except ValueError:
        delivery = {}
    attempts = delivery.get("attempts") if isinstance(delivery, dict) else None
    done = f" ({attempts} attempts so far)" if isinstance(attempts, int) else ""
    typer.echo(f"delivery {delivery_id} is queued for another attempt{done}")


@app.command("test")
@command
def webhooks_test(
    ctx: typer.Context, webhook_id: WebhookId, json_output: JsonOption = False
) -> None:
    """Send a `ping` event to this endpoint alone.

    \b
    Examples:
      hokusai webhooks test 3f6c1e2a-...
    """
    with make_client(ctx) as client:
        response = client.test_webhook(webhook_id)
    if json_output:
        output.write_stdout(response.text or "{}")
        return
    typer.echo(
        f"ping queued for webhook {webhook_id}; see `hokusai webhooks deliveries {webhook_id}`"
    )
