"""Where a queued evaluation's model is kept until its job is over; the request rebuilt from it."""

from __future__ import annotations

import shutil
from pathlib import Path

import structlog

from app.config import Settings
from app.evaluation.models import EvaluationJob
from app.registration.models import Registration
from app.registration.upload import ReceivedFile, RegistrationForm

log = structlog.get_logger(__name__)


def keep_model(folder: Path, model: Path, unpacked: Path | None) -> str:
    """Move the upload out of the request's working folder into the evaluation's own."""
    folder.mkdir(mode=0o700, parents=True)
    if unpacked is not None:
        target = folder / "unpacked"
        shutil.move(unpacked, target)
        return "unpacked"
    (folder / "model").mkdir(mode=0o700)
    target = folder / "model" / model.name
    shutil.move(model, target)
    return f"model/{model.name}"


def model_file(settings: Settings, job: EvaluationJob) -> Path:
    return settings.evaluation_dir / job.registration_id / job.model_path


def form_of(settings: Settings, job: EvaluationJob, row: Registration) -> RegistrationForm:
    """The request as the registration's MLflow step reads it, rebuilt from what was kept."""
    path = model_file(settings, job)
    return RegistrationForm(
        fields=dict(job.request_fields),
        model=ReceivedFile(
            path=path,
            filename=row.artifact_filename or path.name,
            size=row.artifact_size_bytes or 0,
            sha256=row.artifact_sha256 or "",
            head=b"",
        ),
        predictions=None,
    )


def remove_model(settings: Settings, registration_id: str) -> None:
    shutil.rmtree(settings.evaluation_dir / registration_id, ignore_errors=True)


def remove_abandoned_models(settings: Settings, live: frozenset[str], older_than: float) -> int:
    """Delete kept models whose evaluation is over (the worker deletes them; a crash may not)."""
    root = settings.evaluation_dir
    if not root.is_dir():
        return 0
    removed = 0
    for folder in root.iterdir():
        if folder.name in live or not folder.is_dir():
            continue
        try:
            if folder.stat().st_mtime >= older_than:
                continue
        except OSError:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed += 1
        log.info("abandoned_evaluation_model_removed", folder=folder.name)
    return removed
