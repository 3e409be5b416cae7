"""Receipts: a registration's signed receipt, the keys that sign it, and its verification."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hokusai_client.client.base import ClientBase, _path
from hokusai_client.errors import UsageError
from hokusai_client.receipts import VerifiedReceipt, verify_receipt
from hokusai_client.transport import ServiceJSON


class ReceiptsAPI(ClientBase):
    """Receipts, the JWKS, and verifying one against the other."""

    def get_receipt(self, registration_id: str) -> ServiceJSON:
        """GET /registrations/{registration_id}/receipt: `{"payload": {...}, "jws": "..."}`."""
        return self._json("GET", _path("registrations", registration_id, "receipt"))

    def get_jwks(self) -> ServiceJSON:
        """GET /.well-known/jwks.json: the public keys that sign receipts."""
        return self._json("GET", "/.well-known/jwks.json")

    def verify_receipt(
        self,
        registration_id: str | None = None,
        *,
        receipt: Mapping[str, Any] | str | None = None,
        jwks: Mapping[str, Any] | None = None,
    ) -> VerifiedReceipt:
        """Verify a receipt (fetched by registration id, or given) against the service's JWKS
        (or `jwks`); raises ReceiptInvalid when it does not verify."""
        if receipt is None:
            if registration_id is None:
                raise UsageError("give a registration id or a receipt")
            receipt = self.get_receipt(registration_id)
        verified = verify_receipt(
            dict(receipt) if isinstance(receipt, Mapping) else receipt,
            dict(jwks) if jwks is not None else self.get_jwks(),
        )
        return verified
