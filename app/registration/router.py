"""HTTP endpoints of model registration."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response, status

from app.deps import DatabaseDep, ModelsRegister, TokensRead
from app.openapi import error_responses
from app.registration import service
from app.registration.schemas import RegistrationList, RegistrationPublic

router = APIRouter(tags=["registrations"])

_FORM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["model_file", "metric", "baseline"],
    "properties": {
        "model_file": {
            "type": "string",
            "format": "binary",
            "description": "The model: one file (.pkl, .joblib, .onnx, .pt, .pth, .safetensors, "
            ".h5, .keras, .json, .ubj, .txt, .bin) or an MLflow model folder packed as .zip or "
            ".tar.gz with an MLmodel file at its root.",
        },
        "metric": {"type": "string", "example": "auroc", "description": "the metric's name"},
        "baseline": {"type": "number", "example": 0.82, "description": "the score to beat"},
        "metric_value": {
            "type": "number",
            "example": 0.86,
            "description": "the candidate's score (send this or `predictions`)",
        },
        "predictions": {
            "type": "string",
            "format": "binary",
            "description": "CSV with y_true and y_pred and/or y_score; the service scores it",
        },
        "min_improvement": {"type": "number", "default": 0, "minimum": 0},
        "model_name": {"type": "string", "description": "default: hokusai-{TOKEN_ID}"},
        "sha256": {"type": "string", "description": "hex digest the upload must match"},
        "tags": {
            "type": "string",
            "description": "JSON object of string to string, copied onto the MLflow run",
            "example": '{"framework": "sklearn"}',
        },
    },
    # The model comes last, so a wrong metric is refused before the upload is received.
    "x-field-order": ["metric", "baseline", "metric_value", "model_file"],
}


@router.post(
    "/models/{token_id}/register",
    status_code=status.HTTP_201_CREATED,
    responses={
        201: {"headers": {"Location": {"description": "/registrations/{registration_id}"}}},
        **error_responses(401, 403, 404, 409, 413, 415, 422, 503),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"multipart/form-data": {"schema": _FORM_SCHEMA}},
        }
    },
)
async def register_model(
    token_id: str,
    request: Request,
    response: Response,
    principal: ModelsRegister,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)] = None,
) -> RegistrationPublic:
    """Register a trained model for a draft or failed token (multipart upload).

    The metric is checked (or computed from `predictions`), the upload is checked and streamed
    to MLflow as a run and a new version of the token's registered model, and the token becomes
    `registered` together with its `model_registered` and `token_ready_for_deploy` events.
    """
    services: service.RegistrationServices = request.app.state.registration
    result = await service.register(
        services,
        request,
        raw_token_id=token_id,
        principal=principal,
        idempotency_key=idempotency_key,
    )
    response.headers["Location"] = f"/registrations/{result.registration_id}"
    return result


@router.get("/registrations/{registration_id}", responses=error_responses(401, 403, 404))
async def get_registration(
    registration_id: str, database: DatabaseDep, _: TokensRead
) -> RegistrationPublic:
    """Show one registration attempt, whatever its outcome."""
    return await service.get_registration(database, registration_id)


@router.get("/tokens/{token_id}/registrations", responses=error_responses(401, 403, 404, 422))
async def list_registrations(
    token_id: str,
    database: DatabaseDep,
    _: TokensRead,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> RegistrationList:
    """List a token's registration attempts, newest first."""
    return await service.list_registrations(database, token_id, limit=limit)
