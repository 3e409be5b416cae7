"""The Python client of the Hokusai model registration service, and the `hokusai` commands.

`from hokusai_client import HokusaiClient` (docs/python-client.md). The package imports neither
the service's stack nor, until a client is made, httpx: `hokusai --help` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from hokusai_client.client import HokusaiClient, WaitTimedOut
    from hokusai_client.errors import (
        ApiError,
        AuthError,
        Conflict,
        ConnectionFailed,
        HokusaiError,
        InvalidRequest,
        NotFound,
        ReceiptInvalid,
        RegistrationRefused,
        ServiceUnavailable,
        UnexpectedResponse,
        UsageError,
    )
    from hokusai_client.receipts import VerifiedReceipt

__all__ = [
    "ApiError",
    "AuthError",
    "Conflict",
    "ConnectionFailed",
    "HokusaiClient",
    "HokusaiError",
    "InvalidRequest",
    "NotFound",
    "ReceiptInvalid",
    "RegistrationRefused",
    "ServiceUnavailable",
    "UnexpectedResponse",
    "UsageError",
    "VerifiedReceipt",
    "WaitTimedOut",
    "__version__",
]

_HOMES = {
    "HokusaiClient": "hokusai_client.client",
    "WaitTimedOut": "hokusai_client.client",
    "VerifiedReceipt": "hokusai_client.receipts",
}


def __getattr__(name: str) -> Any:
    if name in __all__ and name != "__version__":
        import importlib

        return getattr(importlib.import_module(_HOMES.get(name, "hokusai_client.errors")), name)
    raise AttributeError(f"module 'hokusai_client' has no attribute {name!r}")
