"""Receipt signing keys: generated once, taken from the settings, rotated with old keys listed."""

from __future__ import annotations

import json
import os
import stat
import warnings
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import generate_private_key
from joserfc import jws
from joserfc.errors import BadSignatureError
from joserfc.jwk import KeySet
from pydantic import SecretStr

from app.config import Settings
from app.evaluation.receipts import SigningKeyError, load_signer
from app.evaluation.service import parse_prefer_wait


def _pem(key: object) -> str:
    return key.private_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _verify(token: str, jwks: dict[str, Any]) -> dict[str, object]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # joserfc prefers RFC 9864's "Ed25519" to "EdDSA"
        keys = KeySet.import_key_set({"keys": jwks["keys"]})
        verified = jws.deserialize_compact(token, keys, algorithms=["EdDSA"])
    payload: dict[str, object] = json.loads(verified.payload)
    return payload


class TestSigningKey:
    def test_generated_once_into_the_data_folder_with_mode_0600(self, tmp_path: Path) -> None:
        settings = Settings(data_dir=tmp_path)
        first = load_signer(settings)
        second = load_signer(settings)
        assert first.kid == second.kid
        path = tmp_path / "evaluation-keys" / "signing-key.pem"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
        assert [key["kid"] for key in first.jwks()["keys"]] == [first.kid]

    def test_receipt_payload_is_exactly_the_given_object(self, tmp_path: Path) -> None:
        signer = load_signer(Settings(data_dir=tmp_path))
        payload = {"value": 0.91, "ci95": [0.9, 0.92], "token_id": "XRAY", "passed": True}
        token = signer.sign(payload)
        header = json.loads(
            jws.extract_compact(token.encode()).headers().__repr__().replace("'", '"')
        )
        assert header == {"alg": "EdDSA", "kid": signer.kid}
        assert _verify(token, signer.jwks()) == payload

    def test_rotation_keeps_old_keys_listed_and_old_receipts_valid(self, tmp_path: Path) -> None:
        old = load_signer(Settings(data_dir=tmp_path))
        old_receipt = old.sign({"n": 1})
        new_key = Ed25519PrivateKey.generate()
        rotated = load_signer(
            Settings(data_dir=tmp_path, evaluation_signing_key=SecretStr(_pem(new_key)))
        )
        assert rotated.kid != old.kid
        kids = {key["kid"] for key in rotated.jwks()["keys"]}
        assert kids == {old.kid, rotated.kid}
        assert _verify(old_receipt, rotated.jwks()) == {"n": 1}
        assert _verify(rotated.sign({"n": 2}), rotated.jwks()) == {"n": 2}
        for key in rotated.jwks()["keys"]:
            assert set(key) == {"kty", "crv", "x", "kid", "alg", "use"}
            assert "d" not in key

    def test_a_tampered_receipt_does_not_verify(self, tmp_path: Path) -> None:
        signer = load_signer(Settings(data_dir=tmp_path))
        # A refusal's receipt with the payload of a pass swapped in, its signature kept.
        header, _, signature = signer.sign({"passed": False}).split(".")
        payload = signer.sign({"passed": True}).split(".")[1]
        with pytest.raises(BadSignatureError):
            _verify(f"{header}.{payload}.{signature}", signer.jwks())

    @pytest.mark.parametrize("pem", ["not a key", "__rsa__"])
    def test_unusable_configured_key_stops_start_up(self, tmp_path: Path, pem: str) -> None:
        if pem == "__rsa__":
            pem = _pem(generate_private_key(public_exponent=65537, key_size=2048))
        with pytest.raises(SigningKeyError):
            load_signer(Settings(data_dir=tmp_path, evaluation_signing_key=SecretStr(pem)))


class TestPreferWait:
    @pytest.mark.parametrize(
        ("header", "seconds"),
        [
            (None, 0),
            ("", 0),
            ("wait=10", 10),
            ("respond-async, wait=30", 30),
            ("WAIT=5", 5),
            ('wait="7"', 7),
            ("wait=900", 300),
            ("wait=-1", 0),
            ("wait=abc", 0),
            ("return=minimal", 0),
            ("wait=99999999999", 0),
        ],
    )
    def test_parses_rfc_7240_wait(self, header: str | None, seconds: int) -> None:
        assert parse_prefer_wait(header) == seconds
