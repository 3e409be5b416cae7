"""The optional registration fields the Hokusai SDK's CLI sends and the Hokusai site reads.

Each is kept with the registration, returned in its JSON, set on the MLflow run as the tag
`hokusai.<name>` and carried in `model_registered`. They are the client's text: at most 255
printable characters, never used as a path or a name anywhere.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field

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


# One SDK field of the form: optional, short, printable (app.registration.form).
SdkText = Annotated[
    str | None,
    Field(default=None, max_length=MAX_LENGTH),
    AfterValidator(lambda value: None if value is None else _printable(value)),
]
