"""docs/registration.md, the user guide: every block, in order, against what `make run` starts.

The guide makes its own data (a pickle, an MLflow model folder, a predictions file) and tokens.
Its curl commands name make run's address, replaced here by the test service's URL; the CLI finds
it through `HOKUSAI_API_URL`. After the run, the service is asked what the guide left behind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.docs.blocks import ROOT, parse
from tests.docs.service import make_run
from tests.docs.shell import Session, clean_environment, reader_dir, run_scenario

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

GUIDE = ROOT / "docs" / "registration.md"
AUROC_OF_SCORES = 5 / 6  # work/scores.csv: 5 of its 6 (positive, negative) pairs in order


def _get(url: str, key: str, path: str) -> Any:
    response = httpx.get(f"{url}{path}", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def test_the_shown_predictions_file_is_the_one_the_guide_makes() -> None:
    blocks = parse(GUIDE)
    (shown,) = [block for block in blocks if block.lang == "csv"]
    made = next(block for block in blocks if "> work/scores.csv <<'EOF'" in block.text)
    heredoc = made.text.split("> work/scores.csv <<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0]
    assert shown.text == heredoc + "\n"


def test_registration_guide(tmp_path: Path) -> None:
    cwd = reader_dir(tmp_path)
    with make_run(cwd) as url:
        session = Session(
            cwd=cwd,
            env=clean_environment(HOKUSAI_API_URL=url),
            substitutions={"http://127.0.0.1:8000": url},
        )
        transcript = "\n".join(run_scenario("guide", session))
        key = (cwd / ".hokusai" / "dev-api-key").read_text().strip()
        tokens = {
            token_id: _get(url, key, f"/tokens/{token_id}")
            for token_id in ("XRAY", "CHURN", "SEPSIS", "RETENTION", "TRIAGE")
        }
        registrations = {
            token_id: _get(url, key, f"/tokens/{token_id}/registrations")["items"]
            for token_id in tokens
        }
        ready = _get(url, key, "/events?event_type=token_ready_for_deploy&limit=100")["events"]

    # Step 2: the curl registration kept its id, and the record section showed that registration.
    xray = json.loads((cwd / "work" / "xray.json").read_text())
    assert xray["status"] == "registered"
    assert xray["model_name"] == "hokusai-XRAY"
    assert xray["artifact"]["format"] == "pickle"
    assert xray["tags"] == {"framework": "sklearn"}
    assert f'"registration_id":"{xray["registration_id"]}"' in transcript.replace(" ", "")

    # The MLflow folder, zipped by hand (CHURN) or packed by the CLI (RETENTION), scored from
    # the predictions file, with its signature as the api_schema.
    for token_id, fmt in (("CHURN", "mlflow_zip"), ("RETENTION", "mlflow_tar_gz")):
        (registered,) = registrations[token_id]
        assert registered["status"] == "registered", registered
        assert registered["artifact"]["format"] == fmt
        assert registered["metric"]["source"] == "computed"
        assert registered["metric"]["value"] == pytest.approx(AUROC_OF_SCORES, abs=1e-9)
        names = [column["name"] for column in registered["api_schema"]["inputs"]]
        assert names == ["age", "opacity"]

    # The refusals left TRIAGE a draft (then archived) with two rejected attempts.
    codes = sorted(attempt["error"]["code"] for attempt in registrations["TRIAGE"])
    assert codes == ["benchmark_mismatch", "metric_below_baseline"]
    assert all(attempt["status"] == "rejected" for attempt in registrations["TRIAGE"])
    assert "HTTP 422" in transcript and "refused: exit 5" in transcript

    # Every accepted registration reached token_ready_for_deploy, and the guide showed XRAY's.
    assert {event["token_id"] for event in ready} == {"XRAY", "CHURN", "SEPSIS", "RETENTION"}
    assert "token_ready_for_deploy" in transcript
    assert "model_deployed" in transcript

    statuses = {token_id: token["status"] for token_id, token in tokens.items()}
    assert statuses == {
        "XRAY": "deployed",
        "CHURN": "registered",
        "SEPSIS": "deployed",
        "RETENTION": "registered",
        "TRIAGE": "archived",
    }
