"""The CLI starts fast because it imports nothing of the server's stack (and httpx only when a
command needs it), without faking any module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import hokusai_client
from tests.cli.servers import HOKUSAI, cli_env
from tests.mlflow_server import free_port

SERVER_STACK = (
    "app",
    "mlflow",
    "sqlalchemy",
    "sqlmodel",
    "fastapi",
    "starlette",
    "alembic",
    "uvicorn",
    "numpy",
    "pandas",
    "pydantic_settings",
)


def imported(*args: str) -> tuple[int, set[str]]:
    """The exit code of `hokusai ARGS` and every module it imported."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", HOKUSAI, *args],
        env=cli_env(f"http://127.0.0.1:{free_port()}", None),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    modules = {
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    return result.returncode, modules - {"package"}


def roots(modules: set[str]) -> set[str]:
    return {name.split(".", 1)[0] for name in modules}


def test_help_imports_neither_the_server_stack_nor_httpx() -> None:
    code, modules = imported("--help")
    assert code == 0
    assert "cli" in modules and "typer" in roots(modules)
    assert roots(modules).isdisjoint({*SERVER_STACK, "httpx", "httpcore"})


def test_a_command_imports_httpx_and_still_nothing_of_the_server() -> None:
    code, modules = imported("--retries", "0", "token", "list")
    assert code == 6  # nothing listens on that port
    assert "httpx" in modules and "stamina" in modules
    assert roots(modules).isdisjoint(SERVER_STACK)


def test_the_library_imports_nothing_of_the_server() -> None:
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import hokusai_client.client"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    modules = {
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "hokusai_client.client" in modules
    # Nothing of the command line either (rich and click may come with httpx's own CLI).
    assert roots(modules).isdisjoint({*SERVER_STACK, "typer"})
    assert not {m for m in modules if m.startswith("hokusai_client.commands")}


def test_no_module_is_faked() -> None:
    package = Path(hokusai_client.__file__).parent
    for source in [*package.rglob("*.py"), package.parent / "cli.py"]:
        assert "sys.modules" not in source.read_text(), source
