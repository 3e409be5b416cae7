"""What every command shares: the global settings, the client they make, the error wrapper and
the common options."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec

import typer

from hokusai_client.commands.errors import CliError, Exit, cli_error, usage_error
from hokusai_client.errors import HokusaiError

if TYPE_CHECKING:
    from hokusai_client.client import HokusaiClient
    from hokusai_client.transport import RetryNotice


@dataclass(frozen=True, slots=True)
class Settings:
    """Where the service is and how to talk to it; built by the root callback."""

    api_url: str
    api_key: str | None
    key_source: str | None  # "--api-key", "HOKUSAI_API_KEY" or the dev key file's path
    timeout: float
    retries: int


def settings(ctx: typer.Context) -> Settings:
    found = ctx.find_root().obj
    assert isinstance(found, Settings)
    return found


def _say_retry(notice: RetryNotice) -> None:
    about = "" if notice.exact else "about "
    typer.secho(
        f"retrying in {about}{notice.wait:.1f} s ({notice.reason}; "
        f"attempt {notice.attempt + 1} of {notice.attempts})",
        err=True,
        fg="yellow",
    )


def make_client(ctx: typer.Context) -> HokusaiClient:
    """A client for this invocation: its URL, key, timeout and retries; retries told on stderr."""
    import stamina

    from hokusai_client.client import HokusaiClient

    # This process is the CLI's own: stamina's default retry hooks would log to stdout.
    stamina.instrumentation.set_on_retry_hooks([])
    found = settings(ctx)
    return HokusaiClient(
        found.api_url,
        found.api_key,
        key_source=found.key_source,
        timeout=found.timeout,
        retries=found.retries,
        on_retry=_say_retry,
        user_agent=f"hokusai-cli/{_version()}",
    )


def _version() -> str:
    from hokusai_client import __version__

    return __version__


P = ParamSpec("P")


def command(func: Callable[P, None]) -> Callable[P, None]:
    """Turn the client's errors, `CliError` and Ctrl-C into a message and an exit code."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        json_output = bool(kwargs.get("json_output"))
        try:
            try:
                func(*args, **kwargs)
            except HokusaiError as e:
                # typer hands over its own Context class (typer vendors click): duck-type it.
                ctx: Any = kwargs.get("ctx") or next(
                    (a for a in args if hasattr(a, "find_root")), None
                )
                found = settings(ctx) if ctx is not None else None
                token = kwargs.get("token_id_option") or kwargs.get("token_id")
                raise cli_error(
                    e,
                    api_url=found.api_url if found else "",
                    token_id=str(token) if token else None,
                    key_source=found.key_source if found else None,
                ) from None
        except CliError as e:
            e.report(json_output=json_output)
            raise typer.Exit(int(e.exit_code)) from None
        except KeyboardInterrupt:
            typer.secho("interrupted", err=True, fg="yellow")
            raise typer.Exit(int(Exit.INTERRUPTED)) from None
        except BrokenPipeError:
            # The reader went away (`hokusai events watch | head -1`): stop quietly.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(int(Exit.OK)) from None

    return wrapper


JsonOption = Annotated[
    bool, typer.Option("--json", help="Print the service's JSON unchanged, for scripts.")
]
TokenIdArgument = Annotated[
    str | None,
    typer.Argument(metavar="TOKEN_ID", help="The token's id (or --token-id).", show_default=False),
]
TokenIdOption = Annotated[
    str | None,
    typer.Option("--token-id", "-t", help="The token's id.", show_default=False),
]


def pick_token_id(argument: str | None, option: str | None) -> str:
    if argument and option and argument.upper() != option.upper():
        raise usage_error(f"two different token ids given: {argument} and --token-id {option}")
    found = (argument or option or "").strip()
    if not found:
        raise usage_error("give the token id, as an argument or with --token-id")
    return found


def pairs(values: Sequence[str] | None, option: str) -> dict[str, str]:
    """`KEY=VALUE` options as a dict; a repeated key is a usage error."""
    result: dict[str, str] = {}
    for item in values or ():
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise usage_error(f"{option} takes KEY=VALUE, got {item!r}")
        if key in result:
            raise usage_error(f"{option} {key} is given twice")
        result[key] = value
    return result
