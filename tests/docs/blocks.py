"""Fenced code blocks of README.md and docs/*.md, and the convention that keeps them honest.

Every fenced block has a language. A block in a runnable language (`RUNNABLE`) carries a marker,
an HTML comment on the line right before its opening fence:

    <!-- example: SCENARIO [FLAG ...] -->   run by the test that owns SCENARIO (see SCENARIOS)
    <!-- include: docs/examples/FILE -->     the block is that file, verbatim; the file is run
    <!-- not-run: REASON -->                 not run, and why

A scenario's blocks run in the order they appear, in one shell whose exported variables carry
from block to block. Flags: `background=NAME` starts the block as a long-running process (a server
a reader starts in its own terminal); `cleanup` runs it after the background processes stopped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

RUNNABLE = {"bash", "sh", "shell", "console", "python", "py", "js", "javascript", "node", "mjs"}

# scenario -> the test module that runs its blocks (it must name the scenario).
SCENARIOS = {
    "readme": "tests/docs/test_readme.py",
    "walkthrough": "tests/docs/test_walkthrough.py",
    "workflows": "tests/docs/test_workflows.py",
    "cli": "tests/docs/test_workflows.py",
    "guide": "tests/docs/test_registration_guide.py",
    "events": "tests/docs/test_events_page.py",
}

_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")
_MARKER = re.compile(r"^\s*<!--\s*(?P<kind>example|include|not-run):\s*(?P<value>.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str  # the content, with the fence's indentation removed
    kind: str | None  # "example", "include", "not-run" or None
    value: str  # the marker's text after the colon

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def scenario(self) -> str:
        return self.value.split()[0] if self.kind == "example" and self.value else ""

    @property
    def flags(self) -> dict[str, str]:
        flags: dict[str, str] = {}
        for word in self.value.split()[1:]:
            name, _, value = word.partition("=")
            flags[name] = value
        return flags


def parse(path: Path) -> list[Block]:
    """The fenced blocks of one Markdown file, with the marker before each."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        lang = opening["info"].strip().split(" ")[0].lower() if opening["info"].strip() else ""
        body: list[str] = []
        end = index + 1
        while end < len(lines) and not (
            lines[end].strip().startswith(fence) and lines[end].strip().strip(fence[0]) == ""
        ):
            line = lines[end]
            body.append(line[len(indent) :] if line.startswith(indent) else line.lstrip())
            end += 1
        kind, value = None, ""
        before = index - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        if before >= 0 and (marker := _MARKER.match(lines[before])):
            kind, value = marker["kind"], marker["value"]
        blocks.append(Block(path, index + 1, lang, "\n".join(body) + "\n", kind, value))
        index = end + 1
    return blocks


def all_blocks() -> list[Block]:
    return [block for path in DOCS for block in parse(path)]


def scenario(name: str) -> list[Block]:
    """A scenario's blocks, in document order (README first, then docs/ by name)."""
    found = [block for block in all_blocks() if block.scenario == name]
    assert found, f"no block is marked `example: {name}`"
    return found
