"""The MLflow side of a registration: its run, its logged model and its registered version.

It runs in a worker thread once the token is claimed. The evaluation worker finishes an evaluated
registration with the same step.
"""

from __future__ import annotations

from pathlib import Path

from app.clients.mlflow import MlflowRegistry
from app.errors import ModelNameTaken
from app.registration.attempt import Attempt, RegistrationServices
from app.registration.checks import foreign_owners, is_custom
from app.registration.hooks import Stage
from app.registration.upload import RegistrationForm


def log_to_mlflow(
    services: RegistrationServices,
    attempt: Attempt,
    form: RegistrationForm,
    unpacked: Path | None,
) -> None:
    """Start the run, log the metric and the model, and register the version (worker thread)."""
    assert attempt.check is not None and attempt.model_name is not None
    check = attempt.check
    mlflow = services.mlflow
    mlflow.ensure_experiment()
    attempt.run_id = mlflow.start_run(
        run_name=f"{attempt.token_id}-{attempt.id[:8]}",
        tags={
            **attempt.tags,
            "hokusai.token_id": attempt.token_id,
            "hokusai.metric": check.name,
            "hokusai.baseline": repr(check.baseline),
            "hokusai.metric_value": repr(check.value),
            "hokusai.registration_id": attempt.id,
            "hokusai.sha256": form.model.sha256,
            **{f"hokusai.{name}": value for name, value in attempt.sdk_fields.items()},
            **attempt.extra_run_tags,
        },
    )
    services.hooks.reached_in_thread(Stage.DURING_MLFLOW, attempt.id)
    mlflow.log_metric(attempt.run_id, check.name, check.value)
    for name, value in attempt.extra_run_metrics.items():
        mlflow.log_metric(attempt.run_id, name, value)
    for artifact_file, text in attempt.extra_artifacts.items():
        mlflow.log_text(attempt.run_id, text, artifact_file)
    if unpacked is not None:
        mlflow.log_model_dir(attempt.run_id, unpacked)
    else:
        mlflow.log_model_file(attempt.run_id, form.model.path)
    _require_model_name_free(mlflow, attempt)
    ref = mlflow.register_version(
        run_id=attempt.run_id,
        model_name=attempt.model_name,
        tags={
            "hokusai_token_id": attempt.token_id,
            "hokusai_registration_id": attempt.id,
            "benchmark_metric": check.name,
            "benchmark_value": repr(check.baseline),
            "metric_value": repr(check.value),
            "hokusai_status": "registered",
        },
    )
    attempt.model_version, attempt.model_uri = ref.version, ref.model_uri
    # Another token may have registered the same new name at the same moment; the undo removes
    # this attempt's version.
    _require_model_name_free(mlflow, attempt)
    mlflow.finish_run(attempt.run_id)


def undo(services: RegistrationServices, attempt: Attempt, reason: str) -> None:
    """Mark the attempt's run failed and delete its version, if it got that far (worker thread)."""
    services.mlflow.fail_registration(
        run_id=attempt.run_id,
        model_name=attempt.model_name,
        version=attempt.model_version,
        reason=reason,
    )


def _require_model_name_free(mlflow: MlflowRegistry, attempt: Attempt) -> None:
    """The MLflow step's own check of a custom model name (worker thread)."""
    assert attempt.model_name is not None
    if not is_custom(attempt):
        return
    if foreign_owners(mlflow.model_owners(attempt.model_name), attempt.token_id):
        raise ModelNameTaken(
            f"the model {attempt.model_name} belongs to another token; choose another model_name",
            extra={"model_name": attempt.model_name},
        )
