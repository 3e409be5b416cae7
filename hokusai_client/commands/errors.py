"""From a failure to what the user sees: one `error:` line, a `hint:` line, an exit code."""

from __future__ import annotations

import enum
import json
import sys
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

import typer

from hokusai_client.constants import METRICS
from hokusai_client.errors import (
    ApiError,
    ConnectionFailed,
    HokusaiError,
    ReceiptInvalid,
    UnexpectedResponse,
    UsageError,
)
from hokusai_client.uploads import FileChanged


class Exit(enum.IntEnum):
    """Exit codes, one per class of failure (listed in docs/cli.md)."""

    OK = 0
    UNEXPECTED = 1  # an answer the CLI does not understand, or a bug
    USAGE = 2  # bad arguments or options (click uses 2 as well)
    AUTH = 3  # 401 or 403: missing, unknown or under-scoped API key
    CONFLICT = 4  # 409: the current state does not allow it
    INVALID = 5  # 400, 413, 415, 422: the service refused the input (or an evaluation refused it)
    UNAVAILABLE = 6  # network failure or a 5xx answer, after the retries
    TIMEOUT = 7  # `events watch --timeout` or `model register --wait-timeout` ran out
    NOT_FOUND = 8  # 404 or 410: no such token, registration, benchmark, receipt or webhook
    INVALID_RECEIPT = 9  # `receipt verify`: the signature does not verify
    INTERRUPTED = 130  # Ctrl-C


def exit_for_status(status: int) -> Exit:
    """The exit code for an HTTP error status."""
    if status in (401, 403):
        return Exit.AUTH
    if status in (404, 410):
        return Exit.NOT_FOUND
    if status == 409:
        return Exit.CONFLICT
    if status in (400, 413, 415, 422):
        return Exit.INVALID
    if status >= 500:
        return Exit.UNAVAILABLE
    return Exit.UNEXPECTED


_METRIC_NAMES = ", ".join(METRICS)
# Hints for the failures a newcomer meets first; `{token_id}` and `{api_url}` are filled in.
HINTS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "token_not_found": "check the id with `hokusai token list`, or create the token with "
        "`hokusai token create {token_id}`",
        "token_not_registrable": "only draft and failed tokens can be registered; see "
        "`hokusai model status --token-id {token_id}`",
        "registration_in_progress": "a registration of this token is running; wait, then see "
        "`hokusai model status --token-id {token_id}`",
        "metric_below_baseline": "the score must be at least as good as the baseline (moved by "
        "--min-improvement); nothing was registered",
        "benchmark_mismatch": "use the token's own metric and baseline: "
        "`hokusai token show {token_id}`",
        "unsupported_metric": f"supported metrics: {_METRIC_NAMES}",
        "idempotency_key_reused": "this --idempotency-key came with a different request; use a "
        "new key, or leave the option out to get a fresh one",
        "checksum_mismatch": "the file changed while it was read or sent; run the command again",
        "model_name_taken": "leave --model-name out to use the token's own registered model, "
        "or choose a name no other token uses",
        "upload_incomplete": "the upload was cut off before it was complete; run the command again",
        "request_timeout": "the upload stalled; check the connection and run the command again",
        "invalid_model_file": "send a model file (.pkl, .joblib, .onnx, .pt, .safetensors, ...) "
        "or an MLflow model folder (with an MLmodel file at its top)",
        "payload_too_large": "the service refuses uploads above HOKUSAI_MAX_UPLOAD_BYTES",
        "forbidden": "use a key with the scope named above (`hokusai-registry create-api-key "
        "--name NAME --scopes SCOPES` creates one)",
        "mlflow_unavailable": "the service cannot reach MLflow; try again later "
        "(`curl {api_url}/ready` shows which dependency is down)",
        "database_unavailable": "the service cannot reach its database; try again later "
        "(`curl {api_url}/ready` shows which dependency is down)",
        "benchmark_not_found": "the token has no sealed benchmark; its owner uploads one with "
        "`hokusai benchmark upload --token-id {token_id} --dataset holdout.csv`",
        "invalid_benchmark": "send a CSV with a header row, at least one row, and the label "
        "column (--label-column, default y_true) holding labels the token's metric can use",
        "evaluation_failed": "the service ran the model on the token's benchmark and it failed; "
        "the detail says how (see docs/troubleshooting.md#evaluation_failed)",
        "evaluation_unavailable": "this service cannot sandbox models, so it does not evaluate "
        "them; ask its operator",
        "receipt_not_found": "only a registration evaluated on a sealed benchmark has a receipt",
    }
)


class CliError(Exception):
    """A failure to report as one line (plus an optional hint) and an exit code."""

    def __init__(
        self,
        message: str,
        *,
        exit_code: Exit,
        hint: str | None = None,
        body: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.hint = hint
        # The service's problem+json (or the final registration), printed on stdout under --json.
        self.body = body

    def report(self, *, json_output: bool) -> None:
        if json_output and self.body:
            sys.stdout.write(self.body if self.body.endswith("\n") else self.body + "\n")
            sys.stdout.flush()
        typer.secho(f"error: {self.message}", err=True, fg="red")
        if self.hint:
            typer.secho(f"hint: {self.hint}", err=True, fg="yellow")


def usage_error(message: str) -> CliError:
    return CliError(message, exit_code=Exit.USAGE)


def _unauthorized_hint(key_source: str | None) -> str:
    if key_source is None:
        return (
            "no API key was sent: pass --api-key or set HOKUSAI_API_KEY (for a service started "
            "with `make run` on this machine, its key file .hokusai/dev-api-key is read "
            "automatically)"
        )
    if key_source in ("--api-key", "HOKUSAI_API_KEY"):
        return f"the service does not know the key given by {key_source}"
    return (
        f"the service does not know the key in {key_source} (a key of another data folder?); "
        "restarting `make run` writes a fresh one"
    )


def cli_error(
    error: HokusaiError,
    *,
    api_url: str,
    token_id: str | None = None,
    key_source: str | None = None,
) -> CliError:
    """The CliError for anything the client raised."""
    if isinstance(error, ApiError):
        hint = (
            _unauthorized_hint(key_source)
            if error.code == "unauthorized"
            else HINTS.get(error.code)
        )
        if hint:
            hint = hint.replace("{token_id}", token_id or "TOKEN_ID").replace("{api_url}", api_url)
        return CliError(
            error.summary(),
            exit_code=exit_for_status(error.status),
            hint=hint,
            body=error.text if error.problem else None,
        )
    if isinstance(error, ConnectionFailed):
        hint = None
        if not error.reached:
            hint = "start it with `make run`, or point --api-url / HOKUSAI_API_URL at it"
        key = getattr(error, "idempotency_key", None)
        if key:
            hint = unknown_outcome_hint(key)
        return CliError(str(error), exit_code=Exit.UNAVAILABLE, hint=hint)
    if isinstance(error, UsageError):
        return usage_error(str(error))
    if isinstance(error, ReceiptInvalid):
        return CliError(
            f"the receipt is not valid: {error}",
            exit_code=Exit.INVALID_RECEIPT,
            body=json.dumps({"valid": False, "reason": str(error)}),
        )
    if isinstance(error, UnexpectedResponse):
        return CliError(str(error), exit_code=Exit.UNEXPECTED)
    if isinstance(error, FileChanged):
        return CliError(
            str(error),
            exit_code=Exit.UNEXPECTED,
            hint="run the command again once the file is complete",
        )
    return CliError(str(error), exit_code=Exit.UNEXPECTED)


def unknown_outcome_hint(key: str) -> str:
    return (
        f"the outcome is unknown; run the same command with --idempotency-key {key} to learn "
        "it: a registration that went through is answered again, never made twice"
    )
