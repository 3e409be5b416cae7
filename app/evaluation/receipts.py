"""Evaluation receipts: an Ed25519 compact JWS over the evaluation's outcome, and the JWKS.

The signing key comes from `HOKUSAI_EVALUATION_SIGNING_KEY` (a PEM Ed25519 private key) or, when
that is unset, from `DATA_DIR/evaluation-keys/signing-key.pem`, generated once (mode 0600; the
first process to create it wins, the others read it). Every key a process signs with leaves its
public half in `DATA_DIR/evaluation-keys/public/<kid>.pem`, and the JWKS lists every key found
there: after a rotation, receipts signed with an older key still verify. The `kid` is the key's
RFC 7638 thumbprint.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from joserfc import jws
from joserfc.jwk import OKPKey

from app.config import Settings

log = structlog.get_logger(__name__)

ALGORITHM = "EdDSA"
_PRIVATE_NAME = "signing-key.pem"


class SigningKeyError(ValueError):
    """The configured signing key cannot be used (not PEM, not Ed25519)."""


@dataclass(frozen=True)
class ReceiptSigner:
    """The key receipts are signed with, and every public key the JWKS lists."""

    key: OKPKey
    kid: str
    public_keys: tuple[dict[str, Any], ...]

    def sign(self, payload: dict[str, Any]) -> str:
        """A compact JWS (alg EdDSA, header kid) whose payload is exactly `payload` as JSON."""
        body = canonical_json(payload)
        with warnings.catch_warnings():
            # RFC 9864 prefers the alg name "Ed25519"; the contract names "EdDSA", which every
            # JOSE library verifies.
            warnings.simplefilter("ignore")
            token = jws.serialize_compact(
                {"alg": ALGORITHM, "kid": self.kid}, body, self.key, algorithms=[ALGORITHM]
            )
        return str(token)

    def jwks(self) -> dict[str, Any]:
        return {"keys": list(self.public_keys)}


def canonical_json(payload: dict[str, Any]) -> bytes:
    """The receipt payload's bytes: sorted keys, no spaces, UTF-8."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def load_signer(settings: Settings) -> ReceiptSigner:
    """The signing key from the settings or the data folder, its public key recorded there."""
    folder = settings.evaluation_key_dir
    public_dir = folder / "public"
    public_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    configured = settings.evaluation_signing_key
    if configured is not None:
        private = _parse_private(configured.get_secret_value().encode())
    else:
        private = _generated_key(folder / _PRIVATE_NAME)
    key = OKPKey.import_key(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    kid = key.thumbprint()
    _record_public_key(public_dir / f"{kid}.pem", private.public_key())
    public_keys = _public_keys(public_dir)
    log.info("receipt_signing_key_loaded", kid=kid, listed_keys=len(public_keys))
    return ReceiptSigner(key=key, kid=kid, public_keys=public_keys)


def _parse_private(pem: bytes) -> Ed25519PrivateKey:
    try:
        private = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise SigningKeyError(
            "HOKUSAI_EVALUATION_SIGNING_KEY is not an unencrypted PEM private key"
        ) from e
    if not isinstance(private, Ed25519PrivateKey):
        raise SigningKeyError("HOKUSAI_EVALUATION_SIGNING_KEY must be an Ed25519 key")
    return private


def _generated_key(path: Path) -> Ed25519PrivateKey:
    """Read the data folder's key, creating it first if no process has yet."""
    if not path.exists():
        pem = Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(pem)
            file.flush()
            os.fsync(file.fileno())
        try:
            # link() fails if another process made the key first: then theirs is the key.
            os.link(partial, path)
            log.info("receipt_signing_key_generated", path=str(path))
        except FileExistsError:
            pass
        finally:
            partial.unlink(missing_ok=True)
    return _parse_private(path.read_bytes())


def _record_public_key(path: Path, public: Ed25519PublicKey) -> None:
    if path.exists():
        return
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_bytes(pem)
    os.replace(partial, path)


def _public_keys(folder: Path) -> tuple[dict[str, Any], ...]:
    """Every recorded public key as a JWK (kty OKP, crv Ed25519, kid, alg, use), oldest first."""
    keys: list[tuple[float, dict[str, Any]]] = []
    for path in folder.glob("*.pem"):
        try:
            key = OKPKey.import_key(path.read_bytes())
        except Exception:  # a stray file is skipped, not fatal for the service
            log.warning("receipt_public_key_unreadable", file=path.name)
            continue
        if key.as_dict().get("crv") != "Ed25519":
            continue
        jwk = {**key.as_dict(private=False), "kid": key.thumbprint(), "alg": ALGORITHM}
        jwk["use"] = "sig"
        with contextlib.suppress(OSError):
            keys.append((path.stat().st_mtime, jwk))
    keys.sort(key=lambda item: (item[0], item[1]["kid"]))
    return tuple(jwk for _, jwk in keys)
