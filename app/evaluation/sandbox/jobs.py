"""A sandbox's job folder: the runner, then the copies of the model and the features it is shown."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from app.evaluation.sandbox.failures import SandboxFailure
from app.evaluation.sandbox.kinds import ModelKind

RUNNER = Path(__file__).with_name("runner.py")


def new_job_folder() -> Path:
    job = Path(tempfile.mkdtemp(prefix="hokusai-eval-"))
    # The sandbox's uid reads the inputs (root-owned, world-readable) and nothing else here.
    job.chmod(0o711)
    (job / "in").mkdir(mode=0o755)
    shutil.copyfile(RUNNER, job / "in" / "runner.py")
    (job / "in" / "runner.py").chmod(0o644)
    return job


def remove_job_folder(job: Path) -> None:
    shutil.rmtree(job, ignore_errors=True)


def copy_inputs(job: Path, model_path: Path, model_kind: ModelKind, features_path: Path) -> str:
    """Copy the model and the features into the job folder, world-readable; the model's name."""
    target = job / "in"
    if model_kind is ModelKind.MLFLOW:
        if not model_path.is_dir():
            raise SandboxFailure("load_failed", "an MLflow model must be an unpacked directory")
        dest = target / "model"
        # Symlinks are copied as symlinks: inside the sandbox they point at nothing of the host.
        shutil.copytree(model_path, dest, symlinks=True)
        for folder, _dirs, files in os.walk(dest):
            os.chmod(folder, 0o755)  # noqa: S103 - the sandbox's uid must read it
            for name in files:
                path = os.path.join(folder, name)
                if not os.path.islink(path):
                    os.chmod(path, 0o644)
        name = "model"
    else:
        if not model_path.is_file():
            raise SandboxFailure("load_failed", "the model file is missing")
        name = "model.pkl" if model_kind is ModelKind.PICKLE else "model.joblib"
        shutil.copyfile(model_path, target / name)
        (target / name).chmod(0o644)
    shutil.copyfile(features_path, target / "features.csv")
    (target / "features.csv").chmod(0o644)
    return name
