"""HTTP endpoints of model registration."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import (
    APIRouter,
    BackgroundTasks,
    Depends,
    Header,
    Path,
    Query,
    Request,
    Response,
    status,
)
from sqlmodel.ext.asyncio.session import AsyncSession

from app.auth.models import Scope
from app.auth.service import Principal
from app.deps import DatabaseDep, TokensRead, requires_then
from app.errors import (
    BenchmarkMismatch,
    ChecksumMismatch,
    EvaluationFailed,
    EvaluationUnavailable,
    IdempotencyKeyReused,
    InternalError,
    InvalidBaseline,
    InvalidMetricValue,
    InvalidModelFile,
    InvalidPredictions,
    MetricBelowBaseline,
    MlflowFailed,
    MlflowUnavailable,
    ModelNameTaken,
    PayloadTooLarge,
    RegistrationInProgress,
    RegistrationNotFound,
    TokenNotFound,
    TokenNotRegistrable,
    UnsupportedMediaType,
    UnsupportedMetric,
    UploadTimedOut,
    ValidationFailed,
)
from app.evaluation import service as evaluation
from app.openapi import REQUEST_NOT_VALID, problem_responses
from app.registration import service
from app.registration.attempt import RegistrationServices
from app.registration.form import form_schema
from app.registration.models import RegistrationStatus
from app.registration.schemas import RegistrationList, RegistrationPublic
from app.registration.upload import receive_form
from app.tokens.schemas import TOKEN_ID_RULE

router = APIRouter(tags=["registrations"])


_REGISTER_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": form_schema(),
        }
    },
}


async def _read_token(request: Request, session: AsyncSession) -> service.TokenRead | None:
    services: RegistrationServices = request.app.state.registration
    return await service.read_token(services, session, request.path_params["token_id"])


# The caller's key and then the token are read in one transaction.
RegisteringCaller = Annotated[
    tuple[Principal, service.TokenRead | None],
    Depends(requires_then(Scope.MODELS_REGISTER, _read_token)),
]

TokenIdPath = Annotated[
    str,
    Path(
        description="the token's id, any case",
        openapi_examples={"xray": {"summary": "a token id", "value": "XRAY"}},
    ),
]


@router.post(
    "/models/{token_id}/register",
    status_code=status.HTTP_201_CREATED,
    summary="Register a model",
    response_description="The model is registered: the token is now `registered`",
    responses={
        201: {
            "headers": {
                "Location": {
                    "description": "`/registrations/{registration_id}`",
                    "schema": {"type": "string"},
                }
            }
        },
        202: {
            "description": "The token has a sealed benchmark: the model is being evaluated "
            "(status `evaluating`); follow `Location` until the status changes",
            "model": RegistrationPublic,
            "headers": {
                "Location": {
                    "description": "`/registrations/{registration_id}`",
                    "schema": {"type": "string"},
                }
            },
        },
        **problem_responses(
            TokenNotFound,
            TokenNotRegistrable,
            RegistrationInProgress,
            (
                PayloadTooLarge,
                "the model file is larger than the limit of 2147483648 bytes",
                {"limit_bytes": 2147483648},
            ),
            UnsupportedMediaType,
            MetricBelowBaseline,
            UnsupportedMetric,
            InvalidBaseline,
            InvalidMetricValue,
            BenchmarkMismatch,
            InvalidModelFile,
            InvalidPredictions,
            ChecksumMismatch,
            IdempotencyKeyReused,
            (
                ModelNameTaken,
                "the model hokusai-OTHER belongs to another token; choose another model_name",
                {"model_name": "hokusai-OTHER"},
            ),
            (UploadTimedOut, "no data arrived for 30 s", {"idle_timeout_seconds": 30}),
            (
                ValidationFailed,
                "send exactly one of 'metric_value' (the score) and 'predictions' (a CSV the "
                "service scores)",
            ),
            (
                EvaluationFailed,
                "the model raised an error (raised): ValueError: X has 3 features, but "
                "LogisticRegression is expecting 4 features as input.",
                {"reason": "raised"},
            ),
            InternalError,
            MlflowFailed,
            MlflowUnavailable,
            (
                EvaluationUnavailable,
                "this service cannot run models in an isolated sandbox, so it cannot evaluate "
                "them (no bubblewrap or unshare); ask the operator to install bubblewrap",
                {"sandbox": "none"},
            ),
            scope=Scope.MODELS_REGISTER,
        ),
    },
    openapi_extra={"requestBody": _REGISTER_REQUEST_BODY},
)
async def register_model(
    token_id: TokenIdPath,
    request: Request,
    response: Response,
    background: BackgroundTasks,
    caller: RegisteringCaller,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            max_length=255,
            # Printable ASCII only: the key is stored, compared and shown back.
            pattern=r"^[\x20-\x7e]+$",
            description="Optional, printable ASCII. The same key with the same request "
            "replays the first outcome; with a different request it is a 422 "
            "`idempotency_key_reused`; while the first is still running, a 409 "
            "`registration_in_progress`.",
        ),
    ] = None,
    prefer: Annotated[
        str | None,
        Header(
            alias="Prefer",
            max_length=200,
            description="Optional, for a token with a sealed benchmark: `wait=N` (N ≤ 300) "
            "holds the answer up to N seconds while the model is evaluated; a finished "
            "evaluation then answers as a synchronous registration does (201 or the 422).",
        ),
    ] = None,
) -> RegistrationPublic:
    """Register a trained model for a draft or failed token (multipart upload).

    Called by the `hokusai` CLI and the site on behalf of a data scientist. The metric is
    checked against the token's benchmark (or computed from `predictions`), the upload is
    checked, and the model is logged to MLflow as a run and a new version of the token's
    registered model; the token becomes `registered` together with its `model_registered` and
    `token_ready_for_deploy` events. A request refused by a check leaves the token and MLflow
    as they were; the attempt is kept as a `rejected` registration. For a token with a sealed
    benchmark the service runs the model in a sandbox and measures the metric itself: the
    answer is a 202 `evaluating` (or, with `Prefer: wait=N`, the outcome when it comes in
    time). Send the text fields before `model_file`: a wrong metric is then refused before the
    upload is read. To try it from /docs, create the example token with `POST /tokens` first
    and pick any small model file.
    """
    services: RegistrationServices = request.app.state.registration
    principal, read = caller
    wait = evaluation.parse_prefer_wait(prefer)
    async with service.registering(
        services,
        raw_token_id=token_id,
        principal=principal,
        idempotency_key=idempotency_key,
        read=read,
        # Waiting for an evaluation may still end in a refusal, whose answer drops the tasks
        # meant for after it: the folder is then removed before the wait.
        after_response=None if wait else background.add_task,
    ) as registration:
        with registration.step("receive_upload"):
            form = await receive_form(
                request,
                directory=registration.workdir,
                limits=registration.limits,
                before_model=registration.before_model,
            )
        result = await registration.complete(form)
    response.headers["Location"] = f"/registrations/{result.registration_id}"
    if result.status == RegistrationStatus.EVALUATING:
        if wait:
            response.headers["Preference-Applied"] = f"wait={wait}"
            result = await evaluation.await_outcome(services.database, result, wait)
        if result.status == RegistrationStatus.EVALUATING:
            response.status_code = status.HTTP_202_ACCEPTED
    return result


@router.get(
    "/registrations/{registration_id}",
    summary="Get a registration",
    responses=problem_responses(RegistrationNotFound, REQUEST_NOT_VALID, scope=Scope.TOKENS_READ),
)
async def get_registration(
    registration_id: Annotated[str, Path(description="the `registration_id` of the attempt")],
    database: DatabaseDep,
    _: TokensRead,
) -> RegistrationPublic:
    """Show one registration attempt, whatever its outcome.

    The `Location` of a registration's 201 points here. A `rejected` or `failed` attempt
    carries its problem in `error`.
    """
    return await service.get_registration(database, registration_id)


@router.get(
    "/tokens/{token_id}/registrations",
    summary="List a token's registrations",
    responses=problem_responses(
        TokenNotFound,
        (ValidationFailed, TOKEN_ID_RULE),
        scope=Scope.TOKENS_READ,
    ),
)
async def list_registrations(
    token_id: TokenIdPath,
    database: DatabaseDep,
    _: TokensRead,
    limit: Annotated[int, Query(ge=1, le=200, description="most attempts returned")] = 50,
) -> RegistrationList:
    """List a token's registration attempts, newest first, rejected and failed ones included."""
    return await service.list_registrations(database, token_id, limit=limit)
