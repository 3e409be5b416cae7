"""The one package that talks to MLflow: the registration run, its artifacts and the model version.

Everything here is synchronous; the service calls it from a bounded worker-thread pool. Callers
see two errors only: `MlflowUnavailable` (MLflow did not answer within the retry budget) and
`MlflowError` (MLflow answered, and the answer was a failure that retrying will not fix).

- `setup.py`: MLflow's loggers and its REST client's environment (`configured_mlflow`).
- `errors.py`: which failures are worth retrying, and how they read in a log line.
- `calls.py`: the shared client and the retry policy every operation runs under.
- `runs.py`: the registration's run, its metrics and artifacts.
- `versions.py`: `MlflowRegistry`, with the registered model, its versions, alias and undo.
"""

from app.clients.mlflow.calls import EXPERIMENT_NAME
from app.clients.mlflow.errors import MlflowError, is_transient
from app.clients.mlflow.runs import ARTIFACT_PATH, RegistrationRun
from app.clients.mlflow.setup import adopt_mlflow_loggers, client_environment, configured_mlflow
from app.clients.mlflow.versions import (
    OWNER_TAG,
    REGISTERED_ALIAS,
    MlflowRegistry,
    ModelVersionRef,
)

__all__ = [
    "ARTIFACT_PATH",
    "EXPERIMENT_NAME",
    "OWNER_TAG",
    "REGISTERED_ALIAS",
    "MlflowError",
    "MlflowRegistry",
    "ModelVersionRef",
    "RegistrationRun",
    "adopt_mlflow_loggers",
    "client_environment",
    "configured_mlflow",
    "is_transient",
]
