"""README.md: its first registration, run as written against the service `make run` starts."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.docs.blocks import ROOT, scenario
from tests.docs.service import make_run
from tests.docs.shell import Session, clean_environment, reader_dir

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def test_readme_links_every_doc() -> None:
    readme = (ROOT / "README.md").read_text()
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"(docs/{page.name})" in readme, f"README.md does not link docs/{page.name}"
    assert len(readme.splitlines()) < 90, "keep the README short: details go to docs/"


def test_links_between_docs_resolve() -> None:
    for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def test_first_registration(tmp_path: Path) -> None:
    cwd = reader_dir(tmp_path)
    with make_run(cwd) as url:
        # The CLI's default URL and the README's curl address are make run's 127.0.0.1:8000.
        session = Session(
            cwd=cwd,
            env=clean_environment(HOKUSAI_API_URL=url),
            substitutions={"http://127.0.0.1:8000": url},
        )
        cli_block, curl_block = scenario("readme")
        cli_output = session.run(cli_block, timeout=90)
        curl_output = session.run(curl_block, timeout=90)
    assert "registered" in cli_output
    assert "hokusai-PNEUMONIA" in cli_output
    assert "token_ready_for_deploy" in cli_output
    token, end = json.JSONDecoder().raw_decode(curl_output)  # curl adds no newline between
    registration = json.loads(curl_output[end:])
    assert token["status"] == "draft"
    assert registration["status"] == "registered"
    assert registration["model_name"] == "hokusai-XRAY"
    assert registration["metric"]["passed"] is True
