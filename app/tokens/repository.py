"""Every query on the tokens table."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.db import table_of, utcnow
from app.tokens.models import Token, TokenStatus

# Read on every registration: built once, the token id bound at each call.
_GET = select(Token).where(Token.token_id == sa.bindparam("token_id"))
_GET_FOR_UPDATE = _GET.with_for_update()


async def get(session: AsyncSession, token_id: str, *, for_update: bool = False) -> Token | None:
    statement = _GET_FOR_UPDATE if for_update else _GET
    return (await session.exec(statement, params={"token_id": token_id})).first()


async def holding_model_name(session: AsyncSession, model_name: str) -> Sequence[str]:
    """The tokens whose registered model is `model_name`."""
    statement = select(Token.token_id).where(Token.model_name == model_name).limit(10)
    return (await session.exec(statement)).all()


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
    require_registration: bool = False,
    model_name_unheld: str | None = None,
    values: dict[str, Any],
) -> bool:
    """Update the token only if it is in one of `expected` (and held by `registration_id`; with
    `require_registration`, a `registration_id` of None means "held by no registration"; with
    `model_name_unheld`, only while no other token records that model name).

    The condition and the write are one statement, so of two racing callers exactly one sees
    `True`.
    """
    statement = _compare_and_set_statement(
        tuple(expected),
        tuple(values),
        by_registration=registration_id is not None,
        unheld_registration=registration_id is None and require_registration,
        model_name_unheld=model_name_unheld is not None,
    )
    parameters = {f"new_{name}": value for name, value in values.items()}
    parameters |= {"new_updated_at": utcnow(), "cas_token_id": token_id}
    if registration_id is not None:
        parameters["cas_registration_id"] = registration_id
    if model_name_unheld is not None:
        parameters["cas_model_name"] = model_name_unheld
    result = await session.execute(statement, parameters)
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


@functools.cache
def _compare_and_set_statement(
    expected: tuple[TokenStatus, ...],
    columns: tuple[str, ...],
    *,
    by_registration: bool,
    unheld_registration: bool,
    model_name_unheld: bool,
) -> sa.Update:
    """compare_and_set's UPDATE for one combination of conditions and columns, built once; the
    token id, the values and the names compared with are bound parameters."""
    table = table_of(Token)
    mapped = sa.inspect(Token).columns  # by attribute name (`token_metadata` is "metadata")
    statement = (
        table.update()
        .where(table.c.token_id == sa.bindparam("cas_token_id"))
        .where(table.c.status.in_([status.value for status in expected]))
        .values(
            {
                mapped[name]: sa.bindparam(f"new_{name}", type_=mapped[name].type)
                for name in (*columns, "updated_at")
            }
        )
    )
    if by_registration:
        statement = statement.where(
            table.c.current_registration_id == sa.bindparam("cas_registration_id")
        )
    elif unheld_registration:
        statement = statement.where(table.c.current_registration_id.is_(None))
    if model_name_unheld:
        other = table.alias("other")
        statement = statement.where(
            ~sa.exists().where(
                other.c.model_name == sa.bindparam("cas_model_name"),
                other.c.token_id != table.c.token_id,
            )
        )
    return statement


async def claim_stale_registration(
    session: AsyncSession,
    token_id: str,
    *,
    registration_id: str | None,
    stale_before: dt.datetime,
    now: dt.datetime,
) -> bool:
    """Take over a `registering` token whose claim is older than `stale_before`.

    The claim is renewed to `now`, so of several processes sweeping at once exactly one wins, and
    the winner holds a fresh lease while it settles the token.
    """
    statement = (
        sa.update(Token)
        .where(col(Token.token_id) == token_id)
        .where(col(Token.status) == TokenStatus.REGISTERING.value)
        .where(_claimed_before(stale_before))
        .values(claimed_at=now, updated_at=now)
    )
    if registration_id is None:
        statement = statement.where(col(Token.current_registration_id).is_(None))
    else:
        statement = statement.where(col(Token.current_registration_id) == registration_id)
    result = await session.execute(statement)
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


async def list_stale_registering(
    session: AsyncSession, *, stale_before: dt.datetime, limit: int
) -> Sequence[Token]:
    """Tokens left `registering` by a claim older than `stale_before`, oldest first."""
    statement = (
        select(Token)
        .where(Token.status == TokenStatus.REGISTERING)
        .where(_claimed_before(stale_before))
        .order_by(col(Token.updated_at))
        .limit(limit)
    )
    return (await session.exec(statement)).all()


def _claimed_before(moment: dt.datetime) -> sa.ColumnElement[bool]:
    # A claim without a time (written by hand, or by an older version) ages from the last update.
    return sa.func.coalesce(col(Token.claimed_at), col(Token.updated_at)) < moment
