"""Creating and checking API keys.

A key reads `hok_<id>_<secret>`. The id finds the row; the SHA-256 of the whole key is compared in
constant time with the stored hash. Keys carry 256 bits of randomness, so a fast hash is enough: the
database never holds anything that lets a reader authenticate.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from sqlmodel.ext.asyncio.session import AsyncSession

from app.auth.models import ApiKey, Scope
from app.errors import Forbidden, Unauthorized, ValidationFailed

KEY_PREFIX = "hok_"
# Compared against when the id is unknown, so a miss costs the same as a wrong secret.
_DUMMY_HASH = hashlib.sha256(b"hokusai-no-such-key").hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the API key's id, name and scopes."""

    key_id: str
    name: str
    scopes: frozenset[str]

    def allows(self, scope: Scope) -> bool:
        return Scope.ADMIN in self.scopes or scope in self.scopes


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_scopes(raw: Iterable[str]) -> list[str]:
    """Validated, de-duplicated scope names, in the order given."""
    valid = {scope.value for scope in Scope}
    scopes: list[str] = []
    for item in raw:
        name = item.strip()
        if not name:
            continue
        if name not in valid:
            raise ValidationFailed(
                f"unknown scope {name!r}; valid scopes: {', '.join(sorted(valid))}"
            )
        if name not in scopes:
            scopes.append(name)
    if not scopes:
        raise ValidationFailed("an API key needs at least one scope")
    return scopes


async def create_api_key(
    session: AsyncSession, *, name: str, scopes: Iterable[str]
) -> tuple[ApiKey, str]:
    """Store a new key; returns the row and the key itself, which is shown only once."""
    key_id = secrets.token_hex(6)
    key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    row = ApiKey(id=key_id, name=name, key_hash=hash_key(key), scopes=parse_scopes(scopes))
    session.add(row)
    await session.flush()
    return row, key


def _key_id(key: str) -> str | None:
    if not key.startswith(KEY_PREFIX):
        return None
    key_id, sep, secret = key[len(KEY_PREFIX) :].partition("_")
    if not sep or not secret or len(key_id) > 32:
        return None
    return key_id


async def authenticate(session: AsyncSession, key: str | None) -> Principal:
    """The principal for a presented key; `Unauthorized` for a missing, unknown or revoked one."""
    if not key:
        raise Unauthorized("send an API key as 'Authorization: Bearer <key>' or 'X-API-Key'")
    key_id = _key_id(key)
    row = await session.get(ApiKey, key_id) if key_id else None
    expected = row.key_hash if row is not None else _DUMMY_HASH
    matches = hmac.compare_digest(hash_key(key), expected)
    if row is None or not matches or row.revoked_at is not None:
        raise Unauthorized("the API key is not valid")
    return Principal(key_id=row.id, name=row.name, scopes=frozenset(row.scopes))


def require_scope(principal: Principal, scope: Scope) -> None:
    if not principal.allows(scope):
        raise Forbidden(f"this endpoint needs the {scope.value!r} scope")
