"""The optional registration fields the Hokusai SDK's CLI sends and the Hokusai site reads.

Each is kept with the registration, returned in its JSON, set on the MLflow run as the tag
`hokusai.<name>` and carried in `model_registered`. They are the client's text: at most 255
printable characters, never used as a path or a name anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from app.errors import ValidationFailed

MAX_LENGTH = 255
SDK_FIELDS = (
    "proposal_identifier",
    "eval_spec",
    "scorer_ref",
    "primary_metric",
    "benchmark_spec_id",
)
DESCRIPTIONS = {
    "proposal_identifier": "The Hokusai proposal this model answers, as the site names it.",
    "eval_spec": "The evaluation specification the score was measured under.",
    "scorer_ref": "The scorer that produced the score.",
    "primary_metric": "The metric the site shows first for this model.",
    "benchmark_spec_id": "The benchmark specification the model was evaluated on.",
}
EXAMPLES = {
    "proposal_identifier": "prop-2026-0042",
    "eval_spec": "xray-holdout-v2",
    "scorer_ref": "sklearn.metrics.roc_auc_score",
    "primary_metric": "auroc",
    "benchmark_spec_id": "bench-xray-7",
}


def _printable(value: str) -> str:
    if not value.isprintable():
        raise ValueError("must not contain control characters or line breaks")
    return value


SdkText = Annotated[
    str | None,
    Field(default=None, max_length=MAX_LENGTH),
    AfterValidator(lambda value: None if value is None else _printable(value)),
]


class SdkFields(BaseModel):
    """The five fields, each optional."""

    model_config = ConfigDict(extra="forbid")

    proposal_identifier: SdkText = None
    eval_spec: SdkText = None
    scorer_ref: SdkText = None
    primary_metric: SdkText = None
    benchmark_spec_id: SdkText = None

    def present(self) -> dict[str, str]:
        """The fields that were sent, in SDK_FIELDS order."""
        return {name: value for name in SDK_FIELDS if (value := getattr(self, name)) is not None}


def parse_sdk_fields(fields: Mapping[str, str]) -> SdkFields:
    """The five fields from the form (an empty one counts as absent); 422 validation_error."""
    sent = {name: fields[name] for name in SDK_FIELDS if fields.get(name)}
    try:
        return SdkFields.model_validate(sent)
    except ValidationError as e:
        error = e.errors(include_input=False, include_url=False)[0]
        name = str(error["loc"][0]) if error["loc"] else "a field"
        reason = (
            f"at most {MAX_LENGTH} characters"
            if error["type"] == "string_too_long"
            else str(error["msg"]).removeprefix("Value error, ")
        )
        raise ValidationFailed(f"the field {name!r} is not valid: {reason}") from e


def form_properties() -> dict[str, Any]:
    """The fields' entries in the OpenAPI schema of the registration form."""
    return {
        name: {
            "type": "string",
            "maxLength": MAX_LENGTH,
            "examples": [EXAMPLES[name]],
            "description": f"Optional. {DESCRIPTIONS[name]} Kept with the registration, set "
            f"as the MLflow run tag `hokusai.{name}` and carried in `model_registered`.",
        }
        for name in SDK_FIELDS
    }
