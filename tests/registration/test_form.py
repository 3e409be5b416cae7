"""The registration form's text fields as one model: each field's bounds, the error code a faulty
field is refused with, which of several faults is reported, and the OpenAPI schema it generates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.errors import AppError
from app.main import create_app
from app.registration.form import (
    MAX_TAGS,
    MetricFields,
    RegistrationFields,
    form_schema,
)
from app.registration.sdk_fields import MAX_LENGTH, SDK_FIELDS
from tests.support.service import make_settings

VALID = {"metric": "auroc", "baseline": "0.82", "metric_value": "0.86"}


def refusal(fields: dict[str, str]) -> AppError:
    with pytest.raises(AppError) as caught:
        RegistrationFields.from_form(fields)
    return caught.value


class TestValidForm:
    def test_parses_every_field(self) -> None:
        parsed = RegistrationFields.from_form(
            {
                **VALID,
                "min_improvement": "0.01",
                "model_name": "my-model_1.2",
                "sha256": "AB" * 32,
                "tags": '{"framework": "sklearn"}',
                "eval_spec": "xray-holdout-v2",
            }
        )
        assert parsed.metric == "auroc"
        assert (parsed.baseline, parsed.metric_value, parsed.min_improvement) == (
            0.82,
            0.86,
            0.01,
        )
        assert parsed.model_name == "my-model_1.2"
        assert parsed.sha256 == "ab" * 32
        assert parsed.tags == {"framework": "sklearn"}
        assert parsed.sdk_fields() == {"eval_spec": "xray-holdout-v2"}

    def test_an_alias_names_the_metric_by_its_own_name(self) -> None:
        assert RegistrationFields.from_form({**VALID, "metric": " ROC_AUC "}).metric == "auroc"

    def test_empty_optional_fields_are_not_sent(self) -> None:
        empty = {name: "" for name in RegistrationFields.model_fields if name != "baseline"}
        parsed = RegistrationFields.from_form({**empty, "metric": "auroc", "baseline": "0.8"})
        assert parsed.metric_value is None
        assert parsed.min_improvement == 0
        assert parsed.model_name is None and parsed.sha256 is None
        assert parsed.tags == {}
        assert parsed.sdk_fields() == {}

    def test_unknown_fields_are_ignored(self) -> None:
        assert RegistrationFields.from_form({**VALID, "colour": "blue"}).metric == "auroc"


class TestRequiredFields:
    def test_rejects_a_missing_metric(self) -> None:
        error = refusal({"baseline": "0.82"})
        assert (error.code, error.detail) == ("validation_error", "the field 'metric' is required")

    def test_rejects_an_empty_metric_as_missing(self) -> None:
        assert refusal({"metric": "", "baseline": "0.82"}).detail == (
            "the field 'metric' is required"
        )

    def test_rejects_a_missing_baseline(self) -> None:
        error = refusal({"metric": "auroc"})
        assert (error.code, error.detail) == (
            "invalid_baseline",
            "the field 'baseline' is required",
        )

    def test_rejects_an_empty_baseline(self) -> None:
        error = refusal({"metric": "auroc", "baseline": ""})
        assert (error.code, error.detail) == ("invalid_baseline", "baseline is required")


class TestFieldBounds:
    def test_rejects_an_unsupported_metric(self) -> None:
        error = refusal({**VALID, "metric": "bleu"})
        assert error.code == "unsupported_metric"
        assert "auroc" in error.extra["supported_metrics"]

    @pytest.mark.parametrize("raw", ["abc", "nan", "inf", "1e999", "0x10", "1" * 500])
    def test_rejects_a_baseline_that_is_no_finite_number(self, raw: str) -> None:
        error = refusal({**VALID, "baseline": raw})
        assert error.code == "invalid_baseline"
        assert error.extra["field"] == "baseline"

    @pytest.mark.parametrize("raw", ["abc", "-inf", "1,5"])
    def test_rejects_a_metric_value_that_is_no_finite_number(self, raw: str) -> None:
        error = refusal({**VALID, "metric_value": raw})
        assert (error.code, error.extra["field"]) == ("invalid_metric_value", "metric_value")

    @pytest.mark.parametrize("raw", ["-0.01", "abc", "nan"])
    def test_rejects_a_min_improvement_below_zero_or_no_number(self, raw: str) -> None:
        error = refusal({**VALID, "min_improvement": raw})
        assert (error.code, error.extra["field"]) == ("validation_error", "min_improvement")

    def test_takes_a_min_improvement_of_minus_zero_as_zero(self) -> None:
        parsed = RegistrationFields.from_form({**VALID, "min_improvement": "-0"})
        assert str(parsed.min_improvement) == "0.0"

    @pytest.mark.parametrize("raw", ["ab" * 31, "g" * 64, "ab" * 33])
    def test_rejects_a_sha256_that_is_not_64_hex_digits(self, raw: str) -> None:
        error = refusal({**VALID, "sha256": raw})
        assert (error.code, error.detail) == (
            "validation_error",
            "sha256 must be 64 hexadecimal characters",
        )

    @pytest.mark.parametrize("raw", ["-starts-with-dash", "has/slash", "a" * 201, "spa ce"])
    def test_rejects_a_model_name_outside_the_pattern(self, raw: str) -> None:
        error = refusal({**VALID, "model_name": raw})
        assert error.code == "validation_error"
        assert error.detail.startswith("model_name must be 1-200 characters")

    def test_takes_a_model_name_of_200_characters(self) -> None:
        assert RegistrationFields.from_form({**VALID, "model_name": "a" * 200}).model_name

    @pytest.mark.parametrize(
        ("raw", "detail"),
        [
            ("not json", "tags must be a JSON object of strings"),
            ("[1, 2]", "tags must be a JSON object whose keys and values are strings"),
            ('{"a": 1}', "tags must be a JSON object whose keys and values are strings"),
            (
                json.dumps({f"k{i}": "v" for i in range(MAX_TAGS + 1)}),
                f"at most {MAX_TAGS} tags",
            ),
            ('{"": "v"}', "tag keys need 1-250 characters and values at most 5000"),
            (
                json.dumps({"k" * 251: "v"}),
                "tag keys need 1-250 characters and values at most 5000",
            ),
            (
                json.dumps({"k": "v" * 5001}),
                "tag keys need 1-250 characters and values at most 5000",
            ),
            ('{"hokusai.token_id": "X"}', "tag 'hokusai.token_id' uses a reserved prefix"),
            ('{"MLflow.user": "X"}', "tag 'MLflow.user' uses a reserved prefix"),
            ('{"k": "a\\nb"}', "tag 'k' holds control characters"),
        ],
    )
    def test_rejects_tags_that_are_not_a_small_object_of_strings(
        self, raw: str, detail: str
    ) -> None:
        error = refusal({**VALID, "tags": raw})
        assert (error.code, error.detail) == ("validation_error", detail)

    def test_takes_the_most_tags_of_the_longest_sizes(self) -> None:
        tags = {f"{i:03d}" + "k" * 247: "v" * 5000 for i in range(MAX_TAGS)}
        assert RegistrationFields.from_form({**VALID, "tags": json.dumps(tags)}).tags == tags

    @pytest.mark.parametrize("name", SDK_FIELDS)
    def test_rejects_an_sdk_field_longer_than_its_limit(self, name: str) -> None:
        assert RegistrationFields.from_form({**VALID, name: "x" * MAX_LENGTH}).sdk_fields() == {
            name: "x" * MAX_LENGTH
        }
        error = refusal({**VALID, name: "x" * (MAX_LENGTH + 1)})
        assert (error.code, error.detail) == (
            "validation_error",
            f"the field {name!r} is not valid: at most {MAX_LENGTH} characters",
        )

    def test_rejects_an_sdk_field_with_a_line_break(self) -> None:
        error = refusal({**VALID, "scorer_ref": "a\nb"})
        assert error.detail == (
            "the field 'scorer_ref' is not valid: must not contain control characters or "
            "line breaks"
        )


class TestSeveralFaults:
    def test_reports_the_metric_before_the_baseline(self) -> None:
        assert refusal({"metric": "bleu", "baseline": "x"}).code == "unsupported_metric"

    def test_reports_a_missing_metric_before_a_bad_baseline(self) -> None:
        assert refusal({"baseline": "x"}).detail == "the field 'metric' is required"

    def test_reports_the_sha256_before_the_sdk_fields_the_model_name_and_the_tags(
        self,
    ) -> None:
        faulty = {"sha256": "x", "eval_spec": "a\nb", "model_name": "/", "tags": "x"}
        assert refusal({**VALID, **faulty}).detail == "sha256 must be 64 hexadecimal characters"
        del faulty["sha256"]
        assert refusal({**VALID, **faulty}).detail.startswith("the field 'eval_spec'")
        del faulty["eval_spec"]
        assert refusal({**VALID, **faulty}).detail.startswith("model_name must be")


class TestMetricFields:
    def test_checks_only_the_metric_score_and_baseline(self) -> None:
        parsed = MetricFields.from_form({**VALID, "tags": "not json", "sha256": "x"})
        assert (parsed.metric, parsed.baseline, parsed.metric_value) == ("auroc", 0.82, 0.86)

    def test_refuses_a_bad_score_with_its_code(self) -> None:
        with pytest.raises(AppError) as caught:
            MetricFields.from_form({**VALID, "metric_value": "high"})
        assert caught.value.code == "invalid_metric_value"


class TestSchema:
    def test_lists_every_field_then_the_two_files_with_the_required_ones(self) -> None:
        schema = form_schema()
        assert schema["type"] == "object"
        assert schema["required"] == ["model_file", "metric", "baseline"]
        assert list(schema["properties"]) == [
            *RegistrationFields.model_fields,
            "predictions",
            "model_file",
        ]

    def test_types_each_field_as_a_form_sends_it(self) -> None:
        properties = form_schema()["properties"]
        types = {name: prop["type"] for name, prop in properties.items()}
        assert types == {
            "metric": "string",
            "baseline": "number",
            "metric_value": "number",
            "min_improvement": "number",
            "model_name": "string",
            "sha256": "string",
            "tags": "string",
            **dict.fromkeys(SDK_FIELDS, "string"),
            "predictions": "string",
            "model_file": "string",
        }
        assert properties["min_improvement"]["minimum"] == 0
        assert properties["min_improvement"]["default"] == 0
        assert properties["model_name"]["default"] == properties["sha256"]["default"] == ""
        assert all(properties[name]["maxLength"] == MAX_LENGTH for name in SDK_FIELDS)
        assert (
            properties["model_file"]["format"] == properties["predictions"]["format"] == ("binary")
        )

    def test_describes_every_field_and_never_null(self) -> None:
        properties = form_schema()["properties"]
        for name, prop in properties.items():
            assert prop["description"], name
            assert "anyOf" not in prop and "title" not in prop, name
            assert prop.get("default", "") is not None, name
        assert "`auroc` (auc, roc_auc)" in properties["metric"]["description"]

    def test_is_the_schema_the_api_serves(self, tmp_path: Path) -> None:
        app = create_app(make_settings(tmp_path, f"sqlite:///{tmp_path / 'x.db'}", tmp_path / "ml"))
        spec = app.openapi()
        body = spec["paths"]["/models/{token_id}/register"]["post"]["requestBody"]
        assert body["required"] is True
        assert body["content"]["multipart/form-data"]["schema"] == form_schema()
