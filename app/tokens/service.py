"""Tokens: creation, look-up, listing and the site's status changes."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json

import structlog
from sqlalchemy.exc import IntegrityError

from app.db import Database, utcnow
from app.errors import (
    InvalidBaseline,
    InvalidStatusTransition,
    TokenAlreadyExists,
    TokenNotFound,
    ValidationFailed,
)
from app.events.outbox import EventType, NewEvent, write_events
from app.scoring import resolve_metric, validate_baseline
from app.tokens import repository
from app.tokens.models import Token, TokenStatus
from app.tokens.schemas import TokenCreate, TokenPage, TokenPublic, TokenUpdate, normalize_token_id

log = structlog.get_logger(__name__)

MAX_PAGE = 200


async def create_token(database: Database, body: TokenCreate) -> TokenPublic:
    token_id = normalize_token_id(body.token_id)
    metric = resolve_metric(body.metric).name if body.metric is not None else None
    baseline = body.baseline
    if baseline is not None:
        if metric is None:
            raise InvalidBaseline("a baseline needs a metric: send both or neither")
        baseline = validate_baseline(resolve_metric(metric), baseline)
    token = Token(
        token_id=token_id,
        name=body.name,
        metric=metric,
        baseline=baseline,
        confidence=body.confidence,
        token_metadata=body.metadata,
    )
    try:
        async with database.transaction() as session:
            session.add(token)
            await session.flush()
    except IntegrityError as e:
        raise TokenAlreadyExists(f"token {token_id} already exists") from e
    log.info("token_created", token_id=token_id, metric=metric, baseline=baseline)
    return TokenPublic.of(token)


async def get_token(database: Database, raw_token_id: str) -> TokenPublic:
    token_id = normalize_token_id(raw_token_id)
    async with database.transaction(read_only=True) as session:
        token = await repository.get(session, token_id)
    if token is None:
        raise TokenNotFound(f"no token {token_id}")
    return TokenPublic.of(token)


async def list_tokens(
    database: Database, *, status: TokenStatus | None, limit: int, cursor: str | None
) -> TokenPage:
    after = _decode_cursor(cursor) if cursor else None
    async with database.transaction(read_only=True) as session:
        rows = await repository.list_page(
            session, status=status, limit=min(limit, MAX_PAGE) + 1, after=after
        )
    page = list(rows[:limit])
    next_cursor = _encode_cursor(page[-1]) if len(rows) > limit else None
    return TokenPage(items=[TokenPublic.of(token) for token in page], next_cursor=next_cursor)


# Which statuses each requested status may be reached from.
_TRANSITIONS: dict[str, tuple[TokenStatus, ...]] = {
    TokenStatus.DEPLOYED: (TokenStatus.REGISTERED, TokenStatus.DEPLOYED),
    TokenStatus.ARCHIVED: tuple(TokenStatus),
}


async def update_token(database: Database, raw_token_id: str, body: TokenUpdate) -> TokenPublic:
    token_id = normalize_token_id(raw_token_id)
    async with database.transaction() as session:
        token = await repository.get(session, token_id, for_update=True)
        if token is None:
            raise TokenNotFound(f"no token {token_id}")
        previous_status = token.status
        if body.status is not None and token.status != body.status:
            target = TokenStatus(body.status)
            if token.status not in _TRANSITIONS[target]:
                raise InvalidStatusTransition(
                    f"token {token_id} is {token.status.value}; it cannot become {target.value}",
                    extra={"token_status": token.status.value},
                )
            token.status = target
        if body.name is not None:
            token.name = body.name
        if body.metadata is not None:
            token.token_metadata = body.metadata
        if "confidence" in body.model_fields_set:
            token.confidence = body.confidence
        token.updated_at = utcnow()
        session.add(token)
        if token.status == TokenStatus.DEPLOYED and previous_status != TokenStatus.DEPLOYED:
            await session.flush()
            await write_events(
                session,
                [
                    NewEvent(
                        EventType.MODEL_DEPLOYED,
                        token_id,
                        {
                            "token_id": token_id,
                            "model_name": token.model_name,
                            "model_version": token.model_version,
                        },
                    )
                ],
            )
    log.info("token_updated", token_id=token_id, status=token.status.value)
    return TokenPublic.of(token)


def _encode_cursor(token: Token) -> str:
    raw = json.dumps([token.created_at.isoformat(), token.token_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, token_id = json.loads(raw)
        return dt.datetime.fromisoformat(created_at), str(token_id)
    except (binascii.Error, ValueError, TypeError) as e:
        raise ValidationFailed("cursor is not one this service issued") from e
