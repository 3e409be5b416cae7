"""Every query on the registrations table."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.db import table_of
from app.registration.models import Registration


async def get(session: AsyncSession, registration_id: str) -> Registration | None:
    return await session.get(Registration, registration_id)


async def list_for_token(
    session: AsyncSession, token_id: str, *, limit: int
) -> Sequence[Registration]:
    statement = (
        select(Registration)
        .where(Registration.token_id == token_id)
        .order_by(col(Registration.created_at).desc(), col(Registration.id).desc())
        .limit(limit)
    )
    return (await session.exec(statement)).all()


async def get_by_idempotency_key(
    session: AsyncSession, principal_id: str, key: str
) -> Registration | None:
    statement = select(Registration).where(
        Registration.principal_id == principal_id, Registration.idempotency_key == key
    )
    return (await session.exec(statement)).first()


async def release_idempotency_key(session: AsyncSession, registration_id: str) -> None:
    """Free the key held by an expired attempt so it can be used afresh."""
    await session.execute(
        sa.update(Registration)
        .where(col(Registration.id) == registration_id)
        .values(idempotency_key=None)
    )


async def insert(session: AsyncSession, row: Registration) -> None:
    """Store a new registration: one INSERT of `row`, which stays out of the session."""
    await session.execute(_INSERT, _column_values(row, _REGISTRATIONS.columns))


async def update(session: AsyncSession, row: Registration) -> None:
    """Write every field of `row` but its id and creation time over the stored registration.

    One UPDATE, where `session.merge` would first load the stored row to compare.
    """
    values = _column_values(row, _UPDATED_COLUMNS)
    await session.execute(_UPDATE, {**values, "registration_id": row.id})


_REGISTRATIONS = table_of(Registration)
_UPDATED_COLUMNS = [c for c in _REGISTRATIONS.columns if c.key not in ("id", "created_at")]
_INSERT = _REGISTRATIONS.insert()
_UPDATE = _REGISTRATIONS.update().where(_REGISTRATIONS.c.id == sa.bindparam("registration_id"))


def _column_values(row: Registration, columns: Iterable[sa.Column[Any]]) -> dict[str, Any]:
    return {column.key: getattr(row, column.key) for column in columns}
