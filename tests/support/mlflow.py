"""Reading back what the service wrote to MLflow, with MLflow's own client."""

from __future__ import annotations

import re

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from tests.support.service import Api

# Names MLflow's search grammar takes as they are inside single quotes.
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def mlflow_client(api: Api) -> MlflowClient:
    uri = api.settings.resolved_tracking_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def model_versions(api: Api, model_name: str) -> list[ModelVersion]:
    """Every version of `model_name` (none: an empty list); a failed lookup raises.

    A hostile name (quotes, control characters) cannot be written in a search filter, so for one
    every version in the store is read and compared by name.
    """
    client = mlflow_client(api)
    if _PLAIN_NAME.fullmatch(model_name):
        return list(client.search_model_versions(f"name='{model_name}'"))
    found: list[ModelVersion] = []
    page_token: str | None = None
    for _ in range(1000):  # bounded: 1000 pages of 1000 versions
        page = client.search_model_versions(max_results=1000, page_token=page_token)
        found += [version for version in page if version.name == model_name]
        page_token = page.token
        if not page_token:
            return found
    raise AssertionError("more than a million model versions in the test store")
