"""Running documentation blocks as a reader would: one shell session, some servers beside it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from tests.docs.blocks import ROOT, Block, scenario


def reader_dir(tmp_path: Path) -> Path:
    """A working directory that looks like the repository root to the docs' commands."""
    cwd = tmp_path / "repo"
    cwd.mkdir()
    for name in (".venv", "docs"):
        (cwd / name).symlink_to(ROOT / name)
    return cwd


def clean_environment(**extra: str) -> dict[str, str]:
    """The test's environment without any HOKUSAI_* setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOKUSAI_")}
    env.update(extra)
    return env


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket() as sock, suppress(OSError):
            sock.settimeout(0.5)
            sock.connect(("127.0.0.1", port))
            return
        assert time.monotonic() < deadline, f"nothing listens on 127.0.0.1:{port}"
        time.sleep(0.1)


@dataclass
class Session:
    """Blocks run in order in bash (`set -euo pipefail`); exported variables carry over."""

    cwd: Path
    env: dict[str, str]
    substitutions: dict[str, str] = field(default_factory=dict)
    background: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    transcript: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.state = self.cwd.parent / "session.env"
        self.state.write_text("")

    def script(self, block: Block) -> str:
        text = block.text
        for old, new in self.substitutions.items():
            text = text.replace(old, new)
        return text

    def run(self, block: Block, *, timeout: float = 60) -> str:
        """Run one block to its end; its stdout. A failure names the block and shows its output."""
        script = (
            f"set -euo pipefail\nsource {self.state}\n{self.script(block)}\n"
            f"export -p > {self.state}\n"
        )
        try:
            done = subprocess.run(
                ["bash", "-c", script],
                cwd=self.cwd,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise AssertionError(f"{block.where} ran over {timeout} s:\n{self.logs()}") from e
        self.transcript.append(f"$ {block.where}\n{done.stdout}{done.stderr}")
        assert done.returncode == 0, (
            f"{block.where} exited {done.returncode}\n--- stdout\n{done.stdout}\n"
            f"--- stderr\n{done.stderr}\n{self.logs()}"
        )
        return done.stdout

    def start(self, block: Block, name: str) -> subprocess.Popen[bytes]:
        """Start a block as a long-running process in its own session (a reader's terminal)."""
        log = self.cwd.parent / f"{name}.log"
        script = f"set -euo pipefail\nsource {self.state}\n{self.script(block)}"
        with log.open("wb") as out:
            process = subprocess.Popen(
                ["bash", "-c", script],
                cwd=self.cwd,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.background[name] = process
        return process

    def log(self, name: str) -> str:
        path = self.cwd.parent / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(
            f"--- {name} (exit {process.poll()})\n{self.log(name)[-4000:]}"
            for name, process in self.background.items()
        )

    def stop(self, name: str) -> None:
        """SIGTERM the process group of one background block, then SIGKILL after 10 s."""
        process = self.background[name]
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        # Children that left the group's leader behind (uvicorn's, mlflow's workers).
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    def stop_all(self) -> None:
        for name in reversed(list(self.background)):
            self.stop(name)


def run_scenario(name: str, session: Session, *, timeout: float = 90) -> list[str]:
    """Run a scenario's blocks in order (background ones started); the outputs of the others."""
    outputs = []
    try:
        for block in scenario(name):
            background = block.flags.get("background")
            if background:
                session.start(block, background)
            else:
                outputs.append(session.run(block, timeout=timeout))
    finally:
        session.stop_all()
    return outputs
