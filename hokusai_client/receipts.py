"""Checking an evaluation receipt: a compact JWS (EdDSA over Ed25519) against the service's JWKS.

The JOSE work is joserfc's; this module decides what counts as valid: a key the JWKS lists under
the JWS header's `kid`, an Ed25519 key, alg EdDSA, a good signature, and a signed payload equal to
the receipt's readable `payload` (when the receipt carries one).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from typing import Any

from hokusai_client.errors import ReceiptInvalid

ALGORITHMS = ["EdDSA"]


@dataclass(frozen=True, slots=True)
class VerifiedReceipt:
    """A receipt whose signature checked out."""

    payload: dict[str, Any]
    kid: str | None
    algorithm: str


def _compact_jws(receipt: Any) -> tuple[str, dict[str, Any] | None]:
    if isinstance(receipt, str):
        return receipt.strip(), None
    if not isinstance(receipt, dict) or not isinstance(receipt.get("jws"), str):
        raise ReceiptInvalid('a receipt is {"payload": {...}, "jws": "<compact JWS>"}')
    payload = receipt.get("payload")
    return receipt["jws"].strip(), payload if isinstance(payload, dict) else None


def verify_receipt(receipt: Any, jwks: Any) -> VerifiedReceipt:
    """Verify `receipt` (the receipt JSON, or the compact JWS alone) against `jwks`.

    Raises ReceiptInvalid with the reason when it does not verify.
    """
    from joserfc import jws
    from joserfc.errors import JoseError
    from joserfc.jwk import KeySet

    token, readable = _compact_jws(receipt)
    keys = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(keys, list) or not keys:
        raise ReceiptInvalid("the JWKS lists no keys")
    usable = [
        key
        for key in keys
        if isinstance(key, dict) and key.get("kty") == "OKP" and key.get("crv") == "Ed25519"
    ]
    if not usable:
        raise ReceiptInvalid("the JWKS lists no Ed25519 key")
    with warnings.catch_warnings():
        # RFC 9864 prefers the algorithm name "Ed25519"; the receipt's contract names "EdDSA".
        warnings.filterwarnings("ignore", message=".*EdDSA is deprecated")
        try:
            header = jws.extract_compact(token.encode("ascii")).headers()
        except (JoseError, ValueError, UnicodeError) as e:
            raise ReceiptInvalid(f"not a compact JWS ({type(e).__name__})") from e
        kid = header.get("kid")
        if header.get("alg") not in ALGORITHMS:
            raise ReceiptInvalid(f"the JWS is signed with {header.get('alg')!r}, not EdDSA")
        if not any(key.get("kid") == kid for key in usable):
            raise ReceiptInvalid(f"the JWKS has no Ed25519 key with kid {kid!r}")
        try:
            key_set = KeySet.import_key_set({"keys": usable})
            verified = jws.deserialize_compact(token, key_set, algorithms=ALGORITHMS)
        except JoseError as e:
            raise ReceiptInvalid(f"the signature does not verify ({e.error})") from e
        except ValueError as e:
            raise ReceiptInvalid(f"the JWS or the JWKS is malformed ({e})") from e
    try:
        payload = json.loads(verified.payload)
    except ValueError as e:
        raise ReceiptInvalid("the signed payload is not JSON") from e
    if not isinstance(payload, dict):
        raise ReceiptInvalid("the signed payload is not a JSON object")
    if readable is not None and readable != payload:
        raise ReceiptInvalid("the receipt's payload differs from the one that was signed")
    return VerifiedReceipt(payload=payload, kid=kid, algorithm=str(header.get("alg")))
