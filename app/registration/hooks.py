"""Named stages of a registration after its claim, and the hooks called as one passes them.

The service's own hooks do nothing. Tests install hooks of their own on the app's
`RegistrationServices` to pause a registration at a stage (and kill the process there, or let it
go on) or to break it there, which is how crash recovery and graceful shutdown are tested.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol

__all__ = ["NO_HOOKS", "NoHooks", "RegistrationHooks", "Stage"]


class Stage(StrEnum):
    """Where a claimed registration is."""

    AFTER_CLAIM = "after_claim"  # the token is `registering`; MLflow not touched yet
    DURING_MLFLOW = "during_mlflow"  # the run is started, the model not yet logged
    AFTER_MLFLOW = "after_mlflow"  # the version exists; the commit has not happened


class RegistrationHooks(Protocol):
    """What a registration calls as it passes each stage; a hook that raises fails it there."""

    async def reached(self, stage: Stage, registration_id: str) -> None:
        """A stage reached on the event loop (`AFTER_CLAIM`, `AFTER_MLFLOW`)."""

    def reached_in_thread(self, stage: Stage, registration_id: str) -> None:
        """A stage reached in the MLflow worker thread (`DURING_MLFLOW`)."""


class NoHooks:
    """The service's hooks: nothing happens at any stage."""

    async def reached(self, stage: Stage, registration_id: str) -> None:
        return None

    def reached_in_thread(self, stage: Stage, registration_id: str) -> None:
        return None


NO_HOOKS: RegistrationHooks = NoHooks()
