"""The registered model and its versions: create, alias, look up and undo.

`MlflowRegistry` is the package's one entry point: the runs (`runs.py`) and the model versions of
the registrations, on the plumbing of `calls.py`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion, ModelVersionTag
from mlflow.exceptions import MlflowException
from mlflow.store.model_registry.abstract_store import AbstractStore as RegistryStore

from app.clients.mlflow.calls import log
from app.clients.mlflow.errors import MlflowError, describe, has_code, is_unique_violation
from app.clients.mlflow.runs import ARTIFACT_PATH, Attempt, MlflowRuns
from app.errors import MlflowUnavailable

REGISTERED_ALIAS = "registered"
# On a registered model and each of its versions: the token whose registrations it holds.
OWNER_TAG = "hokusai_token_id"

_READY_POLL_SECONDS = 0.25


@dataclass(frozen=True, slots=True)
class ModelVersionRef:
    model_name: str
    version: str
    model_uri: str


def quote(value: str) -> str:
    # MLflow's search grammar has no escape sequences, only a choice of quote characters.
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise MlflowError(f"cannot search for a name containing both quote characters: {value!r}")


class MlflowRegistry(MlflowRuns):
    """Registers one model upload as an MLflow run plus a registered model version."""

    def register_version(
        self, *, run_id: str, model_name: str, tags: Mapping[str, str]
    ) -> ModelVersionRef:
        """Create a READY version of `model_name` from the run's `model/` and alias it."""
        self._check_run_id(run_id)
        created = self._create_registered_model(model_name, owner=tags.get(OWNER_TAG))
        # A registered model this call created holds no prompt; the store skips the client's
        # check. One that existed before goes through the client, which checks.
        store = self._registry_store if created else None
        version = self._create_version(
            store, model_name, run_id, tags={"hokusai_status": "registered", **tags}
        )
        # If anything below fails the version stays behind; fail_registration finds it by run.
        self._await_ready(version)
        number = str(version.version)
        self._set_alias(store, model_name, number)
        return ModelVersionRef(model_name, number, f"models:/{model_name}/{number}")

    def _create_registered_model(self, model_name: str, *, owner: str | None) -> bool:
        """Create the registered model (tagged with its owner); False when it existed already."""

        def create_model(client: MlflowClient) -> bool:
            try:
                client.create_registered_model(
                    model_name, tags={OWNER_TAG: owner} if owner else None
                )
            except MlflowException as e:
                if not has_code(e, "RESOURCE_ALREADY_EXISTS"):
                    raise
                return False
            return True

        return self._call("create_registered_model", create_model, model_name=model_name)

    def _create_version(
        self,
        store: RegistryStore | None,
        model_name: str,
        run_id: str,
        *,
        tags: Mapping[str, str],
    ) -> ModelVersion:
        """A new version of `model_name` from the run's `model/`, through `store` when given."""
        source = f"runs:/{run_id}/{ARTIFACT_PATH}"

        def create_version(client: MlflowClient) -> ModelVersion:
            if store is not None:
                created_version: ModelVersion = store.create_model_version(
                    model_name,
                    source,
                    run_id=run_id,
                    tags=[ModelVersionTag(key, str(value)) for key, value in tags.items()],
                )
                return created_version
            return client.create_model_version(
                model_name, source, run_id=run_id, tags=dict(tags), await_creation_for=0
            )

        def recover(client: MlflowClient) -> ModelVersion | None:
            existing = self._search_versions(client, model_name, run_id)
            return max(existing, key=lambda mv: int(mv.version)) if existing else None

        return self._call(
            "create_model_version",
            create_version,
            recover=recover,
            run_id=run_id,
            model_name=model_name,
        )

    def _set_alias(self, store: RegistryStore | None, model_name: str, number: str) -> None:
        """Point the `registered` alias at version `number`, through `store` when given."""

        def alias(client: MlflowClient) -> None:
            if store is not None:
                store.set_registered_model_alias(model_name, REGISTERED_ALIAS, number)
            else:
                client.set_registered_model_alias(model_name, REGISTERED_ALIAS, number)

        def set_alias(client: MlflowClient) -> None:
            try:
                alias(client)
            except MlflowException as e:
                if not is_unique_violation(e):
                    raise
                # Two versions of one model were aliased at once and the store's insert-or-update
                # raced; the alias row exists now, so setting it again updates it.
                alias(client)

        self._call("set_registered_model_alias", set_alias, model_name=model_name, version=number)

    def model_owners(self, model_name: str) -> frozenset[str]:
        """The token ids holding `model_name`: its own owner tag and each version's token tag.

        A version made outside the service (no token tag) counts as the owner "". Empty when no
        such registered model exists.
        """

        def look(client: MlflowClient) -> frozenset[str]:
            try:
                model = client.get_registered_model(model_name)
            except MlflowException as e:
                if has_code(e, "RESOURCE_DOES_NOT_EXIST"):
                    return frozenset()
                raise
            owners = {model.tags[OWNER_TAG]} if model.tags.get(OWNER_TAG) else set()
            for version in client.search_model_versions(f"name={quote(model_name)}"):
                owners.add(version.tags.get(OWNER_TAG, ""))
            return frozenset(owners)

        return self._call("get_registered_model", look, model_name=model_name)

    def fail_registration(
        self, *, run_id: str | None, model_name: str | None, version: str | None, reason: str
    ) -> None:
        """Best-effort undo after a failed registration; logs and never raises."""
        # One budget for the whole compensation: it runs on an error path, maybe with MLflow down.
        deadline = time.monotonic() + self._retry_seconds

        def attempt(op: str, fn: Callable[[MlflowClient], object]) -> bool:
            try:
                self._call(op, fn, budget=max(0.0, deadline - time.monotonic()))
            except Exception as e:
                log.warning("mlflow_compensation_failed", op=op, error=describe(e))
                return False
            return True

        if run_id is not None:
            self._fail_run(run_id, reason, attempt)

        if model_name is None:
            return
        versions = [version] if version is not None else []
        if version is None and run_id is not None:
            # register_version may have created a version before it failed without returning it.
            source_run = run_id
            found: list[ModelVersion] = []

            def search(client: MlflowClient) -> None:
                self._check_run_id(source_run)
                found[:] = self._search_versions(client, model_name, source_run)

            if attempt("search_model_versions", search):
                versions = [str(mv.version) for mv in found]

        for number in versions:
            self._discard_version(model_name, number, attempt)

    def find_versions_for_run(self, model_name: str, run_id: str) -> list[ModelVersionRef]:
        """Every live version of `model_name` created from the run, oldest first."""
        return _refs(model_name, self._versions_of_run(model_name, run_id))

    def find_registration_versions(
        self, model_name: str, run_id: str, registration_id: str
    ) -> list[ModelVersionRef]:
        """READY versions of `model_name` from the run that carry the registration's tags."""
        found = self._versions_of_run(model_name, run_id)
        return _refs(
            model_name,
            [
                mv
                for mv in found
                if mv.status == "READY"
                and mv.tags.get("hokusai_registration_id") == registration_id
                and mv.tags.get("hokusai_status") == "registered"
            ],
        )

    # helpers ------------------------------------------------------------------------------------

    def _versions_of_run(self, model_name: str, run_id: str) -> list[ModelVersion]:
        self._check_run_id(run_id)
        found: list[ModelVersion] = self._call(
            "search_model_versions",
            lambda c: self._search_versions(c, model_name, run_id),
            quiet=True,
        )
        return found

    @staticmethod
    def _search_versions(client: MlflowClient, model_name: str, run_id: str) -> list[ModelVersion]:
        query = f"name = {quote(model_name)} AND run_id = '{run_id}'"
        versions: list[ModelVersion] = []
        page_token: str | None = None
        while True:
            page = client.search_model_versions(query, page_token=page_token)
            versions.extend(page)
            page_token = page.token
            if not page_token:
                return versions

    def _await_ready(self, version: ModelVersion) -> None:
        """Poll a new version until MLflow reports it READY, for at most the retry budget."""
        deadline = time.monotonic() + self._retry_seconds
        name, number = version.name, str(version.version)
        while version.status == "PENDING_REGISTRATION":
            if time.monotonic() >= deadline:
                raise MlflowUnavailable(f"model version {name}/{number} is not READY in time")
            time.sleep(_READY_POLL_SECONDS)
            version = self._call(
                "get_model_version",
                lambda c: c.get_model_version(name, number),
                quiet=True,
            )
        if version.status != "READY":
            raise MlflowError(
                f"model version {name}/{number} ended {version.status}: {version.status_message}"
            )

    def _discard_version(
        self,
        model_name: str,
        number: str,
        attempt: Attempt,
    ) -> None:
        """Delete a version, or failing that, mark it failed and take the alias off it."""
        if attempt("delete_model_version", self._deleter(model_name, number)):
            log.info("mlflow_version_deleted", model_name=model_name, version=number)
            return
        # Could not delete: at least make sure nothing deploys it.
        attempt(
            "set_model_version_tag",
            lambda c: c.set_model_version_tag(model_name, number, "hokusai_status", "failed"),
        )
        attempt("delete_registered_model_alias", self._alias_remover(model_name, number))

    @staticmethod
    def _deleter(model_name: str, number: str) -> Callable[[MlflowClient], None]:
        def delete(client: MlflowClient) -> None:
            try:
                client.delete_model_version(model_name, number)
            except MlflowException as e:
                # Already gone, e.g. an earlier attempt succeeded but its answer was lost.
                if not has_code(e, "RESOURCE_DOES_NOT_EXIST"):
                    raise

        return delete

    @staticmethod
    def _alias_remover(model_name: str, number: str) -> Callable[[MlflowClient], None]:
        def remove(client: MlflowClient) -> None:
            try:
                current = client.get_model_version_by_alias(model_name, REGISTERED_ALIAS)
            except MlflowException as e:
                if has_code(e, "RESOURCE_DOES_NOT_EXIST") or has_code(e, "INVALID_PARAMETER_VALUE"):
                    return
                raise
            if str(current.version) == number:
                client.delete_registered_model_alias(model_name, REGISTERED_ALIAS)

        return remove


def _refs(model_name: str, versions: list[ModelVersion]) -> list[ModelVersionRef]:
    """References to `versions`, oldest first."""
    refs = [
        ModelVersionRef(model_name, str(mv.version), f"models:/{model_name}/{mv.version}")
        for mv in versions
    ]
    return sorted(refs, key=lambda ref: int(ref.version))
