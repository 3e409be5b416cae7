"""HTTP endpoints of the tokens API."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, status

from app.auth.models import Scope
from app.deps import DatabaseDep, TokensRead, TokensWrite
from app.errors import (
    InvalidBaseline,
    InvalidStatusTransition,
    PayloadTooLarge,
    TokenAlreadyExists,
    TokenNotFound,
    UnsupportedMetric,
    ValidationFailed,
)
from app.openapi import invalid_field, json_example, problem_responses
from app.tokens import service
from app.tokens.models import TokenStatus
from app.tokens.schemas import (
    EXAMPLE_DRAFT_TOKEN,
    TOKEN_ID_RULE,
    TokenCreate,
    TokenPage,
    TokenPublic,
    TokenUpdate,
)

router = APIRouter(prefix="/tokens", tags=["tokens"])

_BAD_TOKEN_ID = (ValidationFailed, TOKEN_ID_RULE)
TokenIdPath = Annotated[
    str,
    Path(
        description="the token's id, any case",
        openapi_examples={"xray": {"summary": "a token id", "value": "XRAY"}},
    ),
]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Create a token",
    responses={
        201: json_example(EXAMPLE_DRAFT_TOKEN, description="The new token, in `draft`"),
        **problem_responses(
            TokenAlreadyExists,
            PayloadTooLarge,
            invalid_field(
                "body",
                "token_id",
                msg="String should match pattern '^[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?$'",
                type_="string_pattern_mismatch",
            ),
            UnsupportedMetric,
            (InvalidBaseline, "a baseline needs a metric: send both or neither"),
            scope=Scope.TOKENS_WRITE,
        ),
    },
)
async def create_token(body: TokenCreate, database: DatabaseDep, _: TokensWrite) -> TokenPublic:
    """Create a draft token, optionally with the benchmark its model must beat.

    Called by the site when a token is created. `token_id` is stored upper-case; `metric`
    (any alias, any case) is stored under its canonical name, and `baseline` must lie in the
    metric's valid range. Creating a token that already exists is a 409
    `token_already_exists`.
    """
    return await service.create_token(database, body)


@router.get(
    "",
    summary="List tokens",
    responses=problem_responses(
        (ValidationFailed, "cursor is not one this service issued"), scope=Scope.TOKENS_READ
    ),
)
async def list_tokens(
    database: DatabaseDep,
    _: TokensRead,
    status: Annotated[TokenStatus | None, Query(description="only tokens in this status")] = None,
    limit: Annotated[
        int, Query(ge=1, le=service.MAX_PAGE, description="most tokens on one page")
    ] = 50,
    cursor: Annotated[
        str | None,
        Query(max_length=512, description="`next_cursor` of the previous page"),
    ] = None,
) -> TokenPage:
    """List tokens, newest first, a page at a time.

    Pass each page's `next_cursor` back as `cursor` for the next one; it is null on the last
    page. Cursors are opaque and only valid with this service.
    """
    return await service.list_tokens(database, status=status, limit=limit, cursor=cursor)


@router.get(
    "/{token_id}",
    summary="Get a token",
    responses=problem_responses(TokenNotFound, _BAD_TOKEN_ID, scope=Scope.TOKENS_READ),
)
async def get_token(token_id: TokenIdPath, database: DatabaseDep, _: TokensRead) -> TokenPublic:
    """Show one token (ids are case-insensitive).

    After a registration it carries the MLflow run, model name, version and URI the site
    deploys from.
    """
    return await service.get_token(database, token_id)


@router.patch(
    "/{token_id}",
    summary="Change a token's status",
    responses=problem_responses(
        TokenNotFound,
        InvalidStatusTransition,
        PayloadTooLarge,
        invalid_field(
            "body",
            "status",
            msg="Input should be 'deployed' or 'archived'",
            type_="literal_error",
        ),
        _BAD_TOKEN_ID,
        scope=Scope.TOKENS_WRITE,
    ),
)
async def update_token(
    token_id: TokenIdPath, body: TokenUpdate, database: DatabaseDep, _: TokensWrite
) -> TokenPublic:
    """Mark a registered token deployed, or archive a token; optionally rename it.

    Called by the site after it deploys a token's model: `deployed` is accepted only from
    `registered` (and again from `deployed`, which changes nothing) and announces
    `model_deployed`; `archived` is accepted from any status. `name` and `metadata` replace the
    stored ones when given.
    """
    return await service.update_token(database, token_id, body)
