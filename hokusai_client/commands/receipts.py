"""`hokusai receipt verify`: check an evaluation receipt's signature."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from hokusai_client.commands import output
from hokusai_client.commands.base import JsonOption, command, make_client
from hokusai_client.commands.errors import usage_error

if TYPE_CHECKING:
    from hokusai_client.receipts import VerifiedReceipt

app = typer.Typer(
    help="Verify the signed receipts of evaluated registrations.", no_args_is_help=True
)

RegistrationIdOption = Annotated[
    str | None,
    typer.Option(help="Fetch this registration's receipt from the service.", show_default=False),
]
ReceiptFileOption = Annotated[
    Path | None,
    typer.Option(
        "--file",
        exists=True,
        dir_okay=False,
        readable=True,
        help="A receipt saved earlier (its JSON, or the compact JWS alone).",
        show_default=False,
    ),
]
JwksOption = Annotated[
    Path | None,
    typer.Option(
        exists=True,
        dir_okay=False,
        readable=True,
        help="Verify against this JWKS file instead of the service's /.well-known/jwks.json.",
        show_default=False,
    ),
]


def _load(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeError, ValueError) as e:
        raise usage_error(f"{path} is not a {what} in JSON ({type(e).__name__})") from e


def _read_receipt(file: Path) -> Any:
    """A saved receipt: its JSON, or the compact JWS alone."""
    raw = file.read_text(encoding="utf-8", errors="replace").strip()
    return raw if raw.count(".") == 2 and not raw.startswith("{") else _load(file, "receipt")


def _print_verified(verified: VerifiedReceipt) -> None:
    """A valid receipt's fields, as a human reads them."""
    payload = verified.payload
    ci95 = payload.get("ci95")
    interval = (
        f" (95% CI [{output.num(ci95[0])}, {output.num(ci95[1])}])"
        if isinstance(ci95, list) and len(ci95) == 2
        else ""
    )
    output.print_fields(
        f"Valid receipt, signed by key {verified.kid}",
        [
            ("registration", payload.get("registration_id")),
            ("token", payload.get("token_id")),
            ("metric", f"{payload.get('metric')} {output.num(payload.get('value'))}{interval}"),
            ("baseline", output.num(payload.get("baseline"))),
            ("passed", payload.get("passed")),
            ("rows", payload.get("rows")),
            (
                "benchmark",
                f"version {payload.get('benchmark_version')}, sha256 "
                f"{payload.get('benchmark_sha256')}",
            ),
            ("model sha256", payload.get("model_sha256")),
            ("evaluated", output.when(payload.get("evaluated_at"))),
        ],
    )


@app.command("verify")
@command
def receipt_verify(
    ctx: typer.Context,
    registration_id: RegistrationIdOption = None,
    file: ReceiptFileOption = None,
    jwks: JwksOption = None,
    json_output: JsonOption = False,
) -> None:
    """Verify a receipt's Ed25519 signature; exits 0 only if it is valid.

    The keys come from the service's /.well-known/jwks.json (or --jwks); the signed payload must
    equal the receipt's readable one.

    \b
    Examples:
      hokusai receipt verify --registration-id 5f0c9a6e-...
      hokusai receipt verify --file receipt.json --jwks jwks.json --json
    """
    if (registration_id is None) == (file is None):
        raise usage_error("give exactly one of --registration-id and --file")
    receipt = _read_receipt(file) if file is not None else None
    keys = _load(jwks, "JWKS") if jwks is not None else None
    if receipt is not None and keys is not None:
        from hokusai_client.receipts import verify_receipt

        verified = verify_receipt(receipt, keys)
    else:
        with make_client(ctx) as client:
            verified = client.verify_receipt(registration_id, receipt=receipt, jwks=keys)
    if json_output:
        output.write_stdout(
            json.dumps({"valid": True, "kid": verified.kid, "payload": verified.payload})
        )
        return
    _print_verified(verified)
