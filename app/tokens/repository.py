"""Every query on the tokens table."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.db import utcnow
from app.tokens.models import Token, TokenStatus


async def get(session: AsyncSession, token_id: str, *, for_update: bool = False) -> Token | None:
    statement = select(Token).where(Token.token_id == token_id)
    if for_update:
        statement = statement.with_for_update()
    return (await session.exec(statement)).first()


async def list_page(
    session: AsyncSession,
    *,
    status: TokenStatus | None,
    limit: int,
    after: tuple[dt.datetime, str] | None,
) -> Sequence[Token]:
    """Newest first; `after` is the (created_at, token_id) of the previous page's last token."""
    statement = select(Token)
    if status is not None:
        statement = statement.where(Token.status == status)
    if after is not None:
        created_at, token_id = after
        statement = statement.where(
            sa.or_(
                col(Token.created_at) < created_at,
                sa.and_(col(Token.created_at) == created_at, col(Token.token_id) < token_id),
            )
        )
    statement = statement.order_by(col(Token.created_at).desc(), col(Token.token_id).desc())
    return (await session.exec(statement.limit(limit))).all()


async def compare_and_set(
    session: AsyncSession,
    token_id: str,
    *,
    expected: Sequence[TokenStatus],
    registration_id: str | None = None,
    values: dict[str, Any],
) -> bool:
    """Update the token only if it is in one of `expected` (and held by `registration_id`).

    The condition and the write are one statement, so of two racing callers exactly one sees
    `True`.
    """
    statement = (
        sa.update(Token)
        .where(col(Token.token_id) == token_id)
        .where(col(Token.status).in_([status.value for status in expected]))
        .values(**values, updated_at=utcnow())
    )
    if registration_id is not None:
        statement = statement.where(col(Token.current_registration_id) == registration_id)
    result = await session.execute(statement)
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]
