"""Every fenced block in README.md and docs/*.md follows the convention of tests/docs/blocks.py."""

from __future__ import annotations

import json
import re

import pytest

from app.events.feed import Envelope
from tests.docs.blocks import DOCS, ROOT, SCENARIOS, Block, all_blocks
from tests.site_receiver import parse_site_body

BLOCKS = all_blocks()

# The payload fields each event type carries at least (CONTRACT.md, Events).
PAYLOAD_FIELDS = {
    "model_registered": {
        "token_id", "registration_id", "mlflow_run_id", "model_name", "model_version",
        "model_uri", "metric_name", "metric_value", "baseline_value", "improvement", "sha256",
        "api_schema",
    },
    "token_ready_for_deploy": {
        "token_id", "mlflow_run_id", "model_name", "model_version", "metric_name",
        "metric_value", "baseline_value",
    },
    "model_validation_failed": {
        "token_id", "registration_id", "code", "detail", "metric_name", "metric_value",
        "baseline_value",
    },
    "registration_failed": {"token_id", "registration_id", "code", "detail"},
    "model_deployed": {"token_id", "model_name", "model_version"},
    "ping": {"webhook_id"},
}  # fmt: skip


def _ids(blocks: list[Block]) -> list[str]:
    return [block.where for block in blocks]


def test_the_docs_have_blocks() -> None:
    assert len(DOCS) >= 9
    assert len(BLOCKS) > 50


@pytest.mark.parametrize("block", BLOCKS, ids=_ids(BLOCKS))
def test_every_block_names_its_language(block: Block) -> None:
    assert block.lang, f"{block.where}: give the fence a language (`text` for plain output)"


RUNNABLE_BLOCKS = [block for block in BLOCKS if block.lang in {"bash", "sh", "shell", "console",
                   "python", "py", "js", "javascript", "node", "mjs"}]  # fmt: skip


@pytest.mark.parametrize("block", RUNNABLE_BLOCKS, ids=_ids(RUNNABLE_BLOCKS))
def test_every_runnable_block_is_run_or_says_why_not(block: Block) -> None:
    assert block.kind is not None, (
        f"{block.where}: put `<!-- example: SCENARIO -->`, `<!-- include: FILE -->` or "
        "`<!-- not-run: REASON -->` on the line before the fence"
    )
    if block.kind == "not-run":
        assert len(block.value) >= 10, f"{block.where}: say why it is not run"
    elif block.kind == "example":
        assert block.scenario in SCENARIOS, f"{block.where}: unknown scenario {block.scenario!r}"
        owner = (ROOT / SCENARIOS[block.scenario]).read_text()
        assert f'scenario("{block.scenario}"' in owner, f"{block.where}: not run by its owner"
    else:
        assert (ROOT / block.value).is_file(), f"{block.where}: no file {block.value}"


INCLUDED = [block for block in BLOCKS if block.kind == "include"]


@pytest.mark.parametrize("block", INCLUDED, ids=_ids(INCLUDED))
def test_included_blocks_are_the_file_verbatim(block: Block) -> None:
    assert block.text == (ROOT / block.value).read_text(), (
        f"{block.where} differs from {block.value}: copy the file into the block again"
    )


def test_every_example_file_is_included_somewhere() -> None:
    included = {block.value for block in INCLUDED}
    files = {
        str(path.relative_to(ROOT)) for path in (ROOT / "docs" / "examples").iterdir()
        if path.is_file()
    }  # fmt: skip
    assert files <= included


def test_every_scenario_has_blocks() -> None:
    used = {block.scenario for block in BLOCKS if block.kind == "example"}
    assert used == set(SCENARIOS)


JSON_BLOCKS = [block for block in BLOCKS if block.lang == "json"]


@pytest.mark.parametrize("block", JSON_BLOCKS, ids=_ids(JSON_BLOCKS))
def test_json_blocks_parse_and_events_match_the_schema(block: Block) -> None:
    try:
        documents = [json.loads(block.text)]
    except json.JSONDecodeError:
        # A block of JSON lines (one object per line, as `events watch --json` prints).
        documents = [json.loads(line) for line in block.text.splitlines() if line.strip()]
    for document in documents:
        events = document.get("events", [document]) if isinstance(document, dict) else []
        for event in events:
            if not isinstance(event, dict) or "event_type" not in event:
                continue
            if event.get("source") == "mlflow":  # the Hokusai site's format, shown indented
                parse_site_body(json.dumps(event, separators=(",", ":")).encode())
                continue
            envelope = Envelope.model_validate(event)
            assert envelope.source == "hokusai-ml-platform"
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", envelope.timestamp)
            missing = PAYLOAD_FIELDS[envelope.event_type] - set(envelope.payload)
            assert not missing, f"{block.where}: {envelope.event_type} payload lacks {missing}"
