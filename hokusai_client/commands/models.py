"""`hokusai model ...`: register a model (and wait for its evaluation), see registrations."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

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
from hokusai_client.commands.errors import (
    HINTS,
    CliError,
    Exit,
    unknown_outcome_hint,
    usage_error,
)
from hokusai_client.commands.progress import Bars, show_progress
from hokusai_client.commands.tokens import AllOption, LimitOption, StatusOption, list_tokens
from hokusai_client.errors import AuthError, NotFound
from hokusai_client.uploads import PackFormat

if TYPE_CHECKING:
    from hokusai_client.client import HokusaiClient

app = typer.Typer(help="Register models and see their status.", no_args_is_help=True)

SdkField = Annotated[
    str | None,
    typer.Option(
        help="Sent as the form field of the same name (as the Hokusai SDK does).",
        show_default=False,
    ),
]


RegisterTokenIdOption = Annotated[
    str, typer.Option("--token-id", "-t", help="The token to register for.")
]
ModelPathOption = Annotated[
    Path,
    typer.Option(
        "--model-path",
        "-m",
        exists=True,
        readable=True,
        help="A model file, or an MLflow model folder (packed on the fly).",
    ),
]
MetricOption = Annotated[str, typer.Option(help="The metric's name (e.g. auroc).")]
BaselineOption = Annotated[float, typer.Option(help="The score to beat: the token's baseline.")]
MetricValueOption = Annotated[
    float | None,
    typer.Option(help="The model's score on the benchmark (or give --predictions)."),
]
PredictionsOption = Annotated[
    Path | None,
    typer.Option(
        exists=True,
        dir_okay=False,
        readable=True,
        help="CSV with y_true and y_pred and/or y_score; the service scores it.",
    ),
]
MinImprovementOption = Annotated[
    float | None, typer.Option(help="How much better than the baseline (default 0).")
]
ModelNameOption = Annotated[
    str | None, typer.Option(help="MLflow registered model name (default hokusai-TOKEN).")
]
TagOption = Annotated[
    list[str] | None,
    typer.Option("--tag", metavar="KEY=VALUE", help="A tag for the MLflow run; repeat."),
]
IdempotencyKeyOption = Annotated[
    str | None,
    typer.Option(
        help="Reuse the key of an interrupted run to get its outcome instead of a second "
        "registration (default: a new key, printed if the outcome is unknown).",
        show_default=False,
    ),
]
PackFormatOption = Annotated[
    PackFormat, typer.Option("--pack-format", help="How a model folder is packed.")
]
WaitOption = Annotated[
    bool,
    typer.Option(
        "--wait/--no-wait",
        help="Wait for an evaluation on the token's sealed benchmark to end (--no-wait: "
        "return once it is accepted).",
    ),
]
WaitTimeoutOption = Annotated[
    float, typer.Option(min=1.0, help="Seconds to wait for an evaluation (exit 7 after).")
]
ProgressOption = Annotated[
    bool | None,
    typer.Option(
        "--progress/--no-progress",
        help="Progress on stderr (default: only on a terminal).",
        show_default=False,
    ),
]


def _require_benchmark(client: HokusaiClient, token_id: str) -> None:
    """Without --metric-value or --predictions only a token with a sealed benchmark will do."""
    try:
        client.get_benchmark(token_id)
    except NotFound as e:
        if e.code == "token_not_found":
            raise
        raise usage_error(
            f"give exactly one of --metric-value and --predictions: token {token_id} has no "
            "sealed benchmark for the service to evaluate the model on"
        ) from None
    except AuthError:
        pass  # a key that may register but not read: the service will say what it needs


@contextmanager
def _registration_errors(token_id: str, key: str) -> Iterator[None]:
    """A refused, still-evaluating or interrupted registration as the command's error."""
    from hokusai_client.client import WaitTimedOut
    from hokusai_client.errors import RegistrationRefused

    try:
        yield
    except RegistrationRefused as e:
        error = CliError(
            f"{e.summary()} [registration {e.registration.get('registration_id')}]",
            exit_code=Exit.UNAVAILABLE if e.status >= 500 else Exit.INVALID,
            body=json.dumps(e.registration),
        )
        error.hint = HINTS.get(e.code, "").replace("{token_id}", token_id) or None
        raise error from None
    except WaitTimedOut as e:
        raise CliError(
            str(e),
            exit_code=Exit.TIMEOUT,
            hint=f"the evaluation goes on; see `hokusai model status --token-id {token_id}`",
            body=e.registration.text,
        ) from None
    except KeyboardInterrupt:
        raise CliError(
            "interrupted", exit_code=Exit.INTERRUPTED, hint=unknown_outcome_hint(key)
        ) from None


@app.command("register")
@command
def model_register(
    ctx: typer.Context,
    token_id: RegisterTokenIdOption,
    model_path: ModelPathOption,
    metric: MetricOption,
    baseline: BaselineOption,
    metric_value: MetricValueOption = None,
    predictions: PredictionsOption = None,
    min_improvement: MinImprovementOption = None,
    model_name: ModelNameOption = None,
    tag: TagOption = None,
    proposal_identifier: SdkField = None,
    eval_spec: SdkField = None,
    scorer_ref: SdkField = None,
    primary_metric: SdkField = None,
    benchmark_spec_id: SdkField = None,
    idempotency_key: IdempotencyKeyOption = None,
    pack_format: PackFormatOption = PackFormat.TAR_GZ,
    wait: WaitOption = True,
    wait_timeout: WaitTimeoutOption = 3600.0,
    progress: ProgressOption = None,
    json_output: JsonOption = False,
) -> None:
    """Register a model for a draft or failed token; exits 0 only when it is registered.

    The metric fields go first, so a bad metric is refused before the upload; the file is read
    once, hashed while it streams, and its sha256 sent after it. Transient failures are retried
    under one Idempotency-Key, so a model is never registered twice. For a token with a sealed
    benchmark the service evaluates the model itself: the command waits, showing progress.

    \b
    Examples:
      hokusai model register --token-id XRAY --model-path model.pkl \\
          --metric auroc --baseline 0.82 --metric-value 0.86
      hokusai model register -t XRAY -m ./mlflow-model/ --metric auroc --baseline 0.82 \\
          --predictions scores.csv --tag framework=sklearn --json
      hokusai model register -t XRAY -m model.pkl --metric auroc --baseline 0.82 --no-wait
    """
    if metric_value is not None and predictions is not None:
        raise usage_error("give exactly one of --metric-value and --predictions")
    if idempotency_key is not None and not 0 < len(idempotency_key) <= 255:
        raise usage_error("--idempotency-key takes 1 to 255 characters")
    tags = pairs(tag, "--tag")
    key = idempotency_key or f"cli-{secrets.token_hex(16)}"
    with make_client(ctx) as client, Bars(show_progress(progress)) as bars:
        if metric_value is None and predictions is None:
            _require_benchmark(client, token_id)
        with _registration_errors(token_id, key):
            registration = client.register_model(
                token_id,
                model_path,
                metric=metric,
                baseline=baseline,
                metric_value=metric_value,
                predictions=predictions,
                min_improvement=min_improvement,
                model_name=model_name,
                tags=tags or None,
                idempotency_key=key,
                pack_format=pack_format,
                wait=wait,
                wait_timeout=wait_timeout,
                on_update=bars.evaluation,
                progress=bars,
                proposal_identifier=proposal_identifier,
                eval_spec=eval_spec,
                scorer_ref=scorer_ref,
                primary_metric=primary_metric,
                benchmark_spec_id=benchmark_spec_id,
            )
    if json_output:
        output.write_stdout(registration.text)
    elif registration.get("status") == "registered":
        output.print_registration(registration)
    else:
        output.print_accepted(registration)


@app.command("status")
@command
def model_status(
    ctx: typer.Context,
    token_id: TokenIdArgument = None,
    token_id_option: TokenIdOption = None,
    limit: Annotated[int, typer.Option(min=1, max=200, help="Registrations to show.")] = 10,
    json_output: JsonOption = False,
) -> None:
    """Show a token's registration status and its latest registration attempts.

    With --json: {"token": <GET /tokens/ID>, "registrations": <its "items">}.

    \b
    Examples:
      hokusai model status --token-id XRAY
      hokusai model status XRAY --json
    """
    tid = pick_token_id(token_id, token_id_option)
    with make_client(ctx) as client:
        token = client.get_token(tid)
        registrations = output.items(client.list_registrations(tid, limit=limit))
    if json_output:
        output.write_stdout(json.dumps({"token": token, "registrations": registrations}))
        return
    output.print_token(token)
    if not registrations:
        typer.echo("\nNo registration attempts yet.")
        return
    typer.echo("")
    typer.secho("Registration attempts (newest first)", bold=True)
    rows = []
    for item in registrations:
        metric = item.get("metric") or {}
        error = item.get("error") or {}
        rows.append(
            [
                output.when(item.get("created_at")),
                str(item.get("status") or ""),
                f"{metric.get('name')} {output.num(metric.get('value'))}" if metric else "",
                str(item.get("model_version") or ""),
                str(error.get("code") or ""),
                str(item.get("registration_id") or ""),
            ]
        )
    output.table(
        ("CREATED (UTC)", "STATUS", "SCORE", "VERSION", "ERROR", "REGISTRATION"),
        rows,
        status_column=1,
    )


@app.command("list")
@command
def model_list(
    ctx: typer.Context,
    status: StatusOption = None,
    limit: LimitOption = None,
    every: AllOption = False,
    json_output: JsonOption = False,
) -> None:
    """List tokens with their registered models (GET /tokens).

    \b
    Examples:
      hokusai model list --status registered
      hokusai model list --all --json
    """
    list_tokens(
        ctx, status=status, limit=limit, every=every, json_output=json_output, empty="no models"
    )
