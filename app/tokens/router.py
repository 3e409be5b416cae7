"""HTTP endpoints of the tokens API."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from app.deps import DatabaseDep, TokensRead, TokensWrite
from app.openapi import error_responses
from app.tokens import service
from app.tokens.models import TokenStatus
from app.tokens.schemas import TokenCreate, TokenPage, TokenPublic, TokenUpdate

router = APIRouter(prefix="/tokens", tags=["tokens"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(401, 403, 409, 422),
)
async def create_token(body: TokenCreate, database: DatabaseDep, _: TokensWrite) -> TokenPublic:
    """Create a draft token, optionally with the benchmark its model must beat."""
    return await service.create_token(database, body)


@router.get("", responses=error_responses(401, 403, 422))
async def list_tokens(
    database: DatabaseDep,
    _: TokensRead,
    status: TokenStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=service.MAX_PAGE)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> TokenPage:
    """List tokens, newest first, a page at a time."""
    return await service.list_tokens(database, status=status, limit=limit, cursor=cursor)


@router.get("/{token_id}", responses=error_responses(401, 403, 404, 422))
async def get_token(token_id: str, database: DatabaseDep, _: TokensRead) -> TokenPublic:
    """Show one token (ids are case-insensitive)."""
    return await service.get_token(database, token_id)


@router.patch("/{token_id}", responses=error_responses(401, 403, 404, 409, 422))
async def update_token(
    token_id: str, body: TokenUpdate, database: DatabaseDep, _: TokensWrite
) -> TokenPublic:
    """Mark a registered token deployed, or archive a token; optionally rename it."""
    return await service.update_token(database, token_id, body)
