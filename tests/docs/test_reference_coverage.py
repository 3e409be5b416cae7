"""The reference pages cover what the code has: settings, CLI commands and options, error codes."""

from __future__ import annotations

import re
from typing import Any, TypeVar

import pytest
import typer.main
from pydantic_core import PydanticUndefined

import cli
from app import errors
from app.config import Settings
from tests.docs.blocks import ROOT

CONFIGURATION = (ROOT / "docs" / "configuration.md").read_text()
CLI_REFERENCE = (ROOT / "docs" / "cli.md").read_text()
TROUBLESHOOTING = (ROOT / "docs" / "troubleshooting.md").read_text()


# Settings ----------------------------------------------------------------------------------------


def _setting_rows() -> dict[str, str]:
    """`HOKUSAI_X` -> its row in a configuration.md table."""
    rows: dict[str, str] = {}
    for line in CONFIGURATION.splitlines():
        if found := re.match(r"\|\s*`(HOKUSAI_[A-Z0-9_]+)`\s*\|", line):
            rows[found[1]] = line
    return rows


def _default_spellings(name: str) -> list[str]:
    """Ways the documented default of a field may be written."""
    field = Settings.model_fields[name]
    default = field.default
    if default is None or default is PydanticUndefined:
        return ["unset"]
    if isinstance(default, bool):
        return [f"`{str(default).lower()}`"]
    if isinstance(default, list):
        return [f"`{','.join(f'{value:g}' for value in default)}`"]
    value = getattr(default, "value", default)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return [f"`{value}`"]


FIELDS = sorted(Settings.model_fields)


@pytest.mark.parametrize("name", FIELDS)
def test_every_setting_is_documented_with_its_default(name: str) -> None:
    env = f"HOKUSAI_{name.upper()}"
    rows = _setting_rows()
    assert env in rows, f"docs/configuration.md has no table row for {env}"
    cells = [cell.strip() for cell in rows[env].strip("|").split("|")]
    assert len(cells) == 4, f"{env}: | setting | default | what it does | when to change it |"
    default_cell = cells[1]
    assert any(default_cell.startswith(spelling) for spelling in _default_spellings(name)), (
        f"{env}: the default cell {default_cell!r} should start with one of "
        f"{_default_spellings(name)}"
    )
    assert cells[2], f"{env}: say what it does"


def test_no_documented_setting_is_gone() -> None:
    known = {f"HOKUSAI_{name.upper()}" for name in FIELDS}
    assert set(_setting_rows()) <= known


# The CLI -----------------------------------------------------------------------------------------


# typer vendors its own click: walk the commands by duck typing, not by click's classes.
def _walk(command: Any, path: tuple[str, ...]) -> list[tuple[tuple[str, ...], Any]]:
    found = [(path, command)]
    if hasattr(command, "commands"):
        for name, sub in command.commands.items():
            found += _walk(sub, (*path, name))
    return found


COMMANDS = _walk(typer.main.get_command(cli.app), ())


def _section(path: tuple[str, ...]) -> str:
    """The `### hokusai ...` section of cli.md for a command."""
    heading = "### `hokusai" + "".join(f" {part}" for part in path) + "`"
    assert heading in CLI_REFERENCE, f"docs/cli.md has no section {heading}"
    text = CLI_REFERENCE.split(heading, 1)[1]
    return re.split(r"\n## |\n### ", text, maxsplit=1)[0]


LEAVES = [(path, command) for path, command in COMMANDS if not hasattr(command, "commands")]


@pytest.mark.parametrize(("path", "command"), LEAVES, ids=[" ".join(path) for path, _ in LEAVES])
def test_every_command_and_option_is_in_the_cli_reference(
    path: tuple[str, ...], command: Any
) -> None:
    section = _section(path)
    for param in command.params:
        if param.param_type_name == "option":
            for opt in [*param.opts, *param.secondary_opts]:
                assert re.search(rf"`[^`]*{re.escape(opt)}\b", section), (
                    f"docs/cli.md, `hokusai {' '.join(path)}`: {opt} is not mentioned"
                )
        else:
            assert param.name is not None
            assert param.name.upper() in section, (
                f"docs/cli.md, `hokusai {' '.join(path)}`: argument {param.name.upper()} missing"
            )


def test_global_options_are_in_the_cli_reference() -> None:
    root = COMMANDS[0][1]
    for param in root.params:
        for opt in getattr(param, "opts", []):
            assert f"`{opt}`" in CLI_REFERENCE, f"docs/cli.md: global option {opt} is not mentioned"


# Error codes -------------------------------------------------------------------------------------


def error_codes() -> set[str]:
    """Every code a problem can carry: app/errors.py's classes, and the generic HTTP ones of
    app/errors.py and app/error_handlers.py."""
    codes = {cls.code for cls in _subclasses(errors.AppError)} | {errors.AppError.code}
    codes |= {error.code for error in errors.HTTP_ERRORS.values()}
    source = "\n".join(
        (ROOT / "app" / name).read_text() for name in ("errors.py", "error_handlers.py")
    )
    codes |= set(re.findall(r'code="([a-z_]+)"', source))
    # ("code", "Title") pairs: the generic HTTP codes, `http_error` among them.
    codes |= set(re.findall(r'(?<!get)\(\s*"([a-z_]+)",\s*"[A-Z]', source))
    return codes


T = TypeVar("T")


def _subclasses(cls: type[T]) -> list[type[T]]:
    found: list[type[T]] = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def test_the_error_codes_are_found() -> None:
    assert {"metric_below_baseline", "http_error", "method_not_allowed"} <= error_codes()


@pytest.mark.parametrize("code", sorted(error_codes()))
def test_every_error_code_has_a_troubleshooting_section(code: str) -> None:
    heading = f"### `{code}`"
    assert heading in TROUBLESHOOTING, f"docs/troubleshooting.md has no section {heading}"
    section = TROUBLESHOOTING.split(heading, 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    for part in ("**Means:**", "**Typical cause:**", "**What to do:**"):
        assert part in section, f"docs/troubleshooting.md, {code}: no {part}"


def test_contract_error_codes_are_all_in_app_errors() -> None:
    contract = ROOT.parent / "shared" / "CONTRACT.md"
    if not contract.exists():
        pytest.skip("CONTRACT.md is not beside the repository")
    text = contract.read_text().split("Error codes:", 1)[1].split("\n\n", 1)[0]
    assert set(re.findall(r"`([a-z_]+)`", text)) <= error_codes() | {"unauthorized", "forbidden"}


# Metrics -----------------------------------------------------------------------------------------

DEPLOYMENT = (ROOT / "docs" / "deployment.md").read_text()


def _service_metrics() -> dict[str, list[str]]:
    """Every metric app/observability.py defines -> its label names."""
    from prometheus_client import Counter, Gauge, Histogram

    from app import observability

    return {
        # A counter's samples carry the `_total` suffix that its own name leaves off.
        metric._name + ("_total" if isinstance(metric, Counter) else ""): list(metric._labelnames)
        for metric in vars(observability).values()
        if isinstance(metric, Counter | Gauge | Histogram)
    }


def test_the_metrics_are_found() -> None:
    assert len(_service_metrics()) >= 10


@pytest.mark.parametrize("name", sorted(_service_metrics()))
def test_every_metric_is_in_the_observability_table(name: str) -> None:
    row = next((line for line in DEPLOYMENT.splitlines() if line.startswith(f"| `{name}` |")), None)
    assert row is not None, f"{name} has no row in docs/deployment.md#observability"
    for label in _service_metrics()[name]:
        assert f"`{label}`" in row, f"{name}'s label {label} is not in its row"
