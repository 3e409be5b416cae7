"""The text fields of the registration form, as one pydantic model.

`RegistrationFields` checks each field's own form (a number, a pattern, a length, a JSON object of
strings) and generates the form's schema in the OpenAPI document. A refused field raises the same
`AppError` as the contract names for it (`invalid_baseline`, `invalid_metric_value`,
`unsupported_metric`, else `validation_error`); when several are wrong, the first in `CHECK_ORDER`
is reported. What depends on the token, the metric's range or the files is checked by the service.

An empty field is not sent (browsers send the optional fields left empty), except `baseline`,
which is then refused as empty.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, ClassVar, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from app.errors import AppError, InvalidBaseline, InvalidMetricValue, ValidationFailed
from app.registration.artifacts.names import SINGLE_FILE_EXTENSIONS
from app.registration.sdk_fields import DESCRIPTIONS as SDK_DESCRIPTIONS
from app.registration.sdk_fields import EXAMPLES as SDK_EXAMPLES
from app.registration.sdk_fields import MAX_LENGTH as SDK_MAX_LENGTH
from app.registration.sdk_fields import SDK_FIELDS, SdkText
from app.scoring import parse_number, resolve_metric, validate_min_improvement
from app.scoring.registry import METRICS

DEFAULT_MODEL_PREFIX = "hokusai-"
MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
SHA256_PATTERN = re.compile(r"^[0-9a-fA-F]{64}$")
MAX_TAGS = 50
MAX_TAG_KEY = 250
MAX_TAG_VALUE = 5000
RESERVED_TAG_PREFIXES = ("hokusai.", "hokusai_", "mlflow.")
MODEL_FIELD = "model_file"
PREDICTIONS_FIELD = "predictions"


class FieldRefused(ValueError):
    """A field's refusal as the contract words it, carried through pydantic's validation."""

    def __init__(self, error: AppError) -> None:
        super().__init__(error.detail)
        self.error = error


# What a number field may hold before it is parsed: the form's text, or a number in Python.
RawNumber = str | float | int | None


def _refusing(error: type[AppError], field: str) -> Callable[[RawNumber], float]:
    """A validator parsing a number with `parse_number`, refused as `error`."""

    def parse(raw: RawNumber) -> float:
        try:
            return parse_number(raw, field=field, error=error)
        except AppError as e:
            raise FieldRefused(e) from e

    return parse


def _metric(raw: object) -> str:
    try:
        return resolve_metric(str(raw)).name
    except AppError as e:
        raise FieldRefused(e) from e


def _min_improvement(raw: RawNumber) -> float:
    try:
        return validate_min_improvement(
            parse_number(raw, field="min_improvement", error=ValidationFailed)
        )
    except AppError as e:
        raise FieldRefused(e) from e


def _sha256(raw: str) -> str:
    if not SHA256_PATTERN.fullmatch(raw):
        raise FieldRefused(ValidationFailed("sha256 must be 64 hexadecimal characters"))
    return raw.lower()


def _model_name(raw: str) -> str:
    if not MODEL_NAME_PATTERN.fullmatch(raw):
        raise FieldRefused(
            ValidationFailed(
                "model_name must be 1-200 characters of letters, digits, '.', '_' and '-', "
                "starting with a letter or digit"
            )
        )
    return raw


def _tags(raw: object) -> dict[str, str]:
    try:
        tags = json.loads(str(raw))
    except ValueError as e:
        raise FieldRefused(ValidationFailed("tags must be a JSON object of strings")) from e
    if not isinstance(tags, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
    ):
        raise FieldRefused(
            ValidationFailed("tags must be a JSON object whose keys and values are strings")
        )
    if len(tags) > MAX_TAGS:
        raise FieldRefused(ValidationFailed(f"at most {MAX_TAGS} tags"))
    for key, value in tags.items():
        if not key or len(key) > MAX_TAG_KEY or len(value) > MAX_TAG_VALUE:
            raise FieldRefused(
                ValidationFailed(
                    f"tag keys need 1-{MAX_TAG_KEY} characters and values at most {MAX_TAG_VALUE}"
                )
            )
        if key.lower().startswith(RESERVED_TAG_PREFIXES):
            raise FieldRefused(ValidationFailed(f"tag {key!r} uses a reserved prefix"))
        if not key.isprintable() or not value.isprintable():
            raise FieldRefused(ValidationFailed(f"tag {key!r} holds control characters"))
    return tags


def _metric_names() -> str:
    return ", ".join(
        f"`{spec.name}`" + (f" ({', '.join(spec.aliases)})" if spec.aliases else "")
        for spec in METRICS.values()
    )


def _sdk_field(name: str) -> Any:
    return Field(
        default=None,
        examples=[SDK_EXAMPLES[name]],
        description=f"Optional. {SDK_DESCRIPTIONS[name]} Kept with the registration, set "
        f"as the MLflow run tag `hokusai.{name}` and carried in `model_registered`.",
    )


class MetricFields(BaseModel):
    """The fields of the metric check, refused as soon as they arrive (before the model file)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    # What a missing required field is refused as.
    MISSING: ClassVar[dict[str, tuple[type[AppError], str]]] = {
        "metric": (ValidationFailed, "the field 'metric' is required"),
        "baseline": (InvalidBaseline, "the field 'baseline' is required"),
    }
    # The order in which a request's faulty fields are reported: the first one is.
    CHECK_ORDER: ClassVar[tuple[str, ...]] = (
        "metric",
        "baseline",
        "metric_value",
        "min_improvement",
        "sha256",
        *SDK_FIELDS,
        "model_name",
        "tags",
    )

    metric: Annotated[str, BeforeValidator(_metric)] = Field(
        examples=["auroc"],
        description=f"The metric's name, any case: {_metric_names()}. Must be the "
        "token's benchmark metric when it has one.",
    )
    baseline: Annotated[float, BeforeValidator(_refusing(InvalidBaseline, "baseline"))] = Field(
        examples=[0.82],
        description="The score to beat; must equal the token's benchmark baseline when it has one.",
    )
    metric_value: Annotated[
        float | None, BeforeValidator(_refusing(InvalidMetricValue, "metric_value"))
    ] = Field(
        default=None,
        examples=[0.86],
        description="The candidate's score on the benchmark. Send this or `predictions`.",
    )

    @classmethod
    def from_form(cls, fields: Mapping[str, str]) -> Self:
        """The model of the form's text fields; the first faulty field's `AppError` if any."""
        sent = {name: value for name, value in fields.items() if value or name == "baseline"}
        try:
            return cls.model_validate(sent)
        except ValidationError as e:
            raise cls._refusal(e) from e

    @classmethod
    def _refusal(cls, error: ValidationError) -> AppError:
        rank = {name: i for i, name in enumerate(cls.CHECK_ORDER)}
        errors = error.errors(include_url=False, include_input=False)
        first = min(errors, key=lambda e: rank.get(str(e["loc"][0]) if e["loc"] else "", 99))
        name = str(first["loc"][0]) if first["loc"] else "a field"
        if first["type"] == "missing" and name in cls.MISSING:
            kind, detail = cls.MISSING[name]
            return kind(detail)
        refused = (first.get("ctx") or {}).get("error")
        if isinstance(refused, FieldRefused):
            return refused.error
        reason = (
            f"at most {SDK_MAX_LENGTH} characters"
            if first["type"] == "string_too_long"
            else str(first["msg"]).removeprefix("Value error, ")
        )
        return ValidationFailed(f"the field {name!r} is not valid: {reason}")


class RegistrationFields(MetricFields):
    """Every text field of `POST /models/{token_id}/register`."""

    min_improvement: Annotated[float, BeforeValidator(_min_improvement)] = Field(
        default=0,
        ge=0,
        description="How much better than the baseline the score must be.",
    )
    model_name: Annotated[str | None, BeforeValidator(_model_name)] = Field(
        default=None,
        json_schema_extra={"default": ""},
        description="MLflow registered model name; empty means `hokusai-{TOKEN_ID}`.",
    )
    sha256: Annotated[str | None, BeforeValidator(_sha256)] = Field(
        default=None,
        json_schema_extra={"default": ""},
        description="Hex SHA-256 the upload must match; empty means not checked.",
    )
    tags: Annotated[dict[str, str], BeforeValidator(_tags), WithJsonSchema({"type": "string"})] = (
        Field(
            default_factory=dict,
            examples=['{"framework": "sklearn"}'],
            description="JSON object of string to string, copied onto the MLflow run. The "
            "tag `user_id` (or `fulfilled_by_user_id`) names the registrant to the Hokusai site.",
        )
    )
    proposal_identifier: SdkText = _sdk_field("proposal_identifier")
    eval_spec: SdkText = _sdk_field("eval_spec")
    scorer_ref: SdkText = _sdk_field("scorer_ref")
    primary_metric: SdkText = _sdk_field("primary_metric")
    benchmark_spec_id: SdkText = _sdk_field("benchmark_spec_id")

    def sdk_fields(self) -> dict[str, str]:
        """The SDK fields that were sent, in SDK_FIELDS order."""
        return {name: value for name in SDK_FIELDS if (value := getattr(self, name)) is not None}


TEXT_FIELDS = tuple(RegistrationFields.model_fields)


class _FormSchema(GenerateJsonSchema):
    """A form field is text that is sent or not: an optional field is its type, never null."""

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False


def form_schema() -> dict[str, Any]:
    """The registration form's OpenAPI schema: the text fields, then the two files.

    Properties come in the order a client should send them: the model comes last, so a wrong
    metric is refused before the upload is received. Swagger UI prefills each field from
    `examples`, shows a file picker for `format: binary`, and sends the optional fields left empty
    as empty values (its "Send empty value" is on by default): the service takes an empty field,
    and an empty file field, as not sent. No multipart `encoding` is given: with one, Swagger UI
    sends an empty file field as an empty file of that type.
    """
    fields = RegistrationFields.model_json_schema(schema_generator=_FormSchema)
    properties: dict[str, Any] = {}
    for name, prop in fields["properties"].items():
        if prop.get("default", "") is None:
            del prop["default"]
        properties[name] = prop
    properties[PREDICTIONS_FIELD] = {
        "type": "string",
        "format": "binary",
        "contentMediaType": "text/csv",
        "description": "Instead of `metric_value`: a CSV with a header of `y_true` and "
        "`y_pred` and/or `y_score`; the service computes the metric.",
    }
    properties[MODEL_FIELD] = {
        "type": "string",
        "format": "binary",
        "contentMediaType": "application/octet-stream",
        "description": f"The model: one file ({', '.join(SINGLE_FILE_EXTENSIONS)}) or an "
        "MLflow model folder packed as .zip or .tar.gz with an MLmodel file at its root.",
    }
    return {
        "type": "object",
        "required": [MODEL_FIELD, *fields["required"]],
        "properties": properties,
    }
