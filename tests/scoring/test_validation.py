from __future__ import annotations

import math

import pytest

from app.errors import (
    AppError,
    InvalidBaseline,
    InvalidMetricValue,
    MetricBelowBaseline,
    ValidationFailed,
)
from app.scoring import (
    METRICS,
    TIE_TOLERANCE,
    MetricCheck,
    evaluate,
    parse_number,
    require_passed,
    validate_baseline,
    validate_metric_value,
    validate_min_improvement,
)

HIGHER = METRICS["auroc"]
LOWER = METRICS["mse"]


class TestParseNumber:
    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            ("0.82", 0.82),
            (" 0.5\t", 0.5),
            ("1", 1.0),
            ("-2", -2.0),
            ("+.5", 0.5),
            ("5.", 5.0),
            ("1e-3", 0.001),
            ("1.5E+2", 150.0),
            ("1e308", 1e308),
            ("0" * 63 + "7", 7.0),
            (0.25, 0.25),
            (3, 3.0),
            (-0.0, 0.0),
        ],
    )
    def test_parses_plain_decimal_numbers(self, raw: str | float, expected: float) -> None:
        value = parse_number(raw, field="baseline", error=InvalidBaseline)
        assert value == expected
        assert type(value) is float

    @pytest.mark.parametrize(
        "raw",
        [
            "abc",
            "nan",
            "NaN",
            "inf",
            "-inf",
            "Infinity",
            "1_000",
            "0x10",
            "١٢",  # Arabic-Indic digits, which float() would accept
            "1,5",
            "1.2.3",
            "1e",
            "--1",
            "0.5 0.6",
        ],
    )
    def test_rejects_text_that_is_not_a_finite_decimal(self, raw: str) -> None:
        with pytest.raises(InvalidBaseline, match="baseline must be a finite number") as info:
            parse_number(raw, field="baseline", error=InvalidBaseline)
        assert info.value.extra == {"field": "baseline"}

    @pytest.mark.parametrize("raw", ["1e999", "-1e999", "1.8e308", "1e309", "0.0001e313"])
    def test_rejects_text_that_overflows_to_infinity(self, raw: str) -> None:
        with pytest.raises(InvalidMetricValue, match="too large"):
            parse_number(raw, field="metric_value", error=InvalidMetricValue)

    @pytest.mark.parametrize("raw", [None, "", "   "])
    def test_rejects_missing_value_as_required(self, raw: str | None) -> None:
        with pytest.raises(InvalidMetricValue, match="metric_value is required"):
            parse_number(raw, field="metric_value", error=InvalidMetricValue)

    def test_rejects_strings_longer_than_64_characters(self) -> None:
        raw = "0." + "1" * 63  # a valid number, 65 characters
        with pytest.raises(InvalidBaseline, match="too long"):
            parse_number(raw, field="baseline", error=InvalidBaseline)

    def test_accepts_strings_of_exactly_64_characters(self) -> None:
        raw = "0." + "1" * 62
        assert parse_number(raw, field="baseline", error=InvalidBaseline) == pytest.approx(1 / 9)

    @pytest.mark.parametrize("raw", [math.nan, math.inf, -math.inf, 10**400, True])
    def test_rejects_non_finite_or_non_numeric_values(self, raw: float) -> None:
        with pytest.raises(InvalidBaseline):
            parse_number(raw, field="baseline", error=InvalidBaseline)

    @pytest.mark.parametrize("error", [InvalidBaseline, InvalidMetricValue, ValidationFailed])
    def test_raises_the_error_class_it_is_given(self, error: type[AppError]) -> None:
        with pytest.raises(AppError) as info:
            parse_number("nope", field="x", error=error)
        assert type(info.value) is error

    def test_truncates_long_garbage_in_detail(self) -> None:
        with pytest.raises(InvalidBaseline) as info:
            parse_number(" " * 10 + "z" * 50, field="baseline", error=InvalidBaseline)
        assert "z" * 50 in info.value.detail
        assert len(info.value.detail) < 200


class TestValidateBaseline:
    @pytest.mark.parametrize(
        ("name", "baseline"),
        [
            ("accuracy", 0.0),
            ("accuracy", 1.0),
            ("auroc", 0.5),
            ("mse", 0.0),
            ("mse", 1e300),
            ("r2", -1e300),
            ("r2", 1.0),
            ("engagement_score", 12345.0),
        ],
    )
    def test_accepts_edges_and_interior_of_range(self, name: str, baseline: float) -> None:
        assert validate_baseline(METRICS[name], baseline) == baseline

    def test_returns_a_float_for_an_int(self) -> None:
        value = validate_baseline(METRICS["accuracy"], 1)
        assert value == 1.0
        assert type(value) is float

    @pytest.mark.parametrize(
        ("name", "baseline"),
        [
            ("accuracy", 1.5),
            ("accuracy", 1 + 2**-52),
            ("accuracy", -1e-12),
            ("auroc", math.nan),
            ("mse", -0.1),
            ("mse", math.inf),
            ("log_loss", -1e-300),
            ("r2", 1.0000001),
            ("r2", -math.inf),
            ("engagement_score", -1.0),
        ],
    )
    def test_rejects_baseline_out_of_range(self, name: str, baseline: float) -> None:
        spec = METRICS[name]
        with pytest.raises(InvalidBaseline) as info:
            validate_baseline(spec, baseline)
        err = info.value
        assert err.code == "invalid_baseline"
        assert f"in {spec.range_text()}" in err.detail
        assert f"got {baseline!r}" in err.detail
        assert err.extra == {"metric_name": name, "valid_range": spec.range_text()}

    def test_detail_reads_clearly(self) -> None:
        with pytest.raises(InvalidBaseline) as info:
            validate_baseline(METRICS["auroc"], 1.5)
        assert info.value.detail == "baseline must be a finite number in [0, 1] for auroc; got 1.5"


class TestValidateMetricValue:
    @pytest.mark.parametrize(("name", "value"), [("f1", 0.0), ("f1", 1.0), ("rmse", 1e308)])
    def test_accepts_values_in_range(self, name: str, value: float) -> None:
        assert validate_metric_value(METRICS[name], value) == value

    @pytest.mark.parametrize(
        ("name", "value"),
        [("f1", 1.01), ("f1", -0.01), ("rmse", math.inf), ("r2", math.nan), ("mae", -1.0)],
    )
    def test_rejects_metric_value_out_of_range(self, name: str, value: float) -> None:
        with pytest.raises(InvalidMetricValue) as info:
            validate_metric_value(METRICS[name], value)
        assert info.value.code == "invalid_metric_value"
        assert info.value.detail.startswith("metric_value must be a finite number in ")


class TestValidateMinImprovement:
    @pytest.mark.parametrize("raw", [0, 0.0, 0.05, 1e6])
    def test_accepts_zero_and_positive(self, raw: float) -> None:
        assert validate_min_improvement(raw) == raw

    def test_normalises_negative_zero(self) -> None:
        value = validate_min_improvement(-0.0)
        assert value == 0.0
        assert math.copysign(1.0, value) == 1.0

    @pytest.mark.parametrize("raw", [-1e-12, -0.05, -math.inf, math.inf, math.nan])
    def test_rejects_negative_or_non_finite(self, raw: float) -> None:
        with pytest.raises(ValidationFailed) as info:
            validate_min_improvement(raw)
        assert type(info.value) is ValidationFailed
        assert info.value.code == "validation_error"
        assert "min_improvement must be a finite number >= 0" in info.value.detail
        assert info.value.extra == {"field": "min_improvement"}


class TestDirection:
    def test_higher_metric_passes_when_value_is_higher(self) -> None:
        check = evaluate(HIGHER, value=0.85, baseline=0.80)
        assert check.passed
        assert check.improvement == pytest.approx(0.05)
        assert check.higher_is_better

    def test_higher_metric_fails_when_value_is_lower(self) -> None:
        check = evaluate(HIGHER, value=0.75, baseline=0.80)
        assert not check.passed
        assert check.improvement == pytest.approx(-0.05)

    def test_lower_metric_passes_when_value_is_lower(self) -> None:
        check = evaluate(LOWER, value=0.10, baseline=0.25)
        assert check.passed
        assert check.improvement == pytest.approx(0.15)
        assert not check.higher_is_better

    def test_lower_metric_fails_when_value_is_higher(self) -> None:
        check = evaluate(LOWER, value=0.30, baseline=0.25)
        assert not check.passed
        assert check.improvement == pytest.approx(-0.05)

    def test_r2_is_higher_is_better_even_below_zero(self) -> None:
        assert evaluate(METRICS["r2"], value=-0.5, baseline=-2.0).passed
        assert not evaluate(METRICS["r2"], value=-2.0, baseline=-0.5).passed

    @pytest.mark.parametrize("name", ["auroc", "log_loss", "r2", "mae"])
    def test_equal_value_passes(self, name: str) -> None:
        check = evaluate(METRICS[name], value=0.3, baseline=0.3)
        assert check.passed
        assert check.improvement == 0.0


class TestMinImprovement:
    def test_higher_metric_needs_baseline_plus_min_improvement(self) -> None:
        assert evaluate(HIGHER, value=0.86, baseline=0.80, min_improvement=0.05).passed
        assert not evaluate(HIGHER, value=0.84, baseline=0.80, min_improvement=0.05).passed

    def test_lower_metric_needs_baseline_minus_min_improvement(self) -> None:
        assert evaluate(LOWER, value=0.19, baseline=0.25, min_improvement=0.05).passed
        assert not evaluate(LOWER, value=0.21, baseline=0.25, min_improvement=0.05).passed

    def test_exact_target_passes_despite_float_rounding(self) -> None:
        # 0.85 - 0.8 is 0.04999999999999993 in floats, just short of 0.05.
        assert 0.85 - 0.8 < 0.05
        assert evaluate(HIGHER, value=0.85, baseline=0.80, min_improvement=0.05).passed
        assert evaluate(LOWER, value=0.15, baseline=0.2, min_improvement=0.05).passed

    def test_value_better_than_baseline_but_short_of_improvement_fails(self) -> None:
        check = evaluate(HIGHER, value=0.81, baseline=0.80, min_improvement=0.05)
        assert not check.passed
        assert check.improvement > 0

    def test_records_min_improvement_on_the_check(self) -> None:
        check = evaluate(LOWER, value=0.1, baseline=0.25, min_improvement=0.1)
        assert check.min_improvement == 0.1
        assert check.passed


class TestTieRule:
    def test_tolerance_is_one_billionth(self) -> None:
        assert TIE_TOLERANCE == 1e-9

    def test_higher_value_1e10_below_baseline_passes(self) -> None:
        assert evaluate(HIGHER, value=0.8 - 1e-10, baseline=0.8).passed

    def test_higher_value_1e6_below_baseline_fails(self) -> None:
        assert not evaluate(HIGHER, value=0.8 - 1e-6, baseline=0.8).passed

    def test_lower_value_1e10_above_baseline_passes(self) -> None:
        assert evaluate(LOWER, value=0.3 + 1e-10, baseline=0.3).passed

    def test_lower_value_1e6_above_baseline_fails(self) -> None:
        assert not evaluate(LOWER, value=0.3 + 1e-6, baseline=0.3).passed

    def test_tie_applies_to_the_improved_target(self) -> None:
        assert evaluate(HIGHER, value=0.85 - 1e-10, baseline=0.8, min_improvement=0.05).passed
        assert not evaluate(HIGHER, value=0.85 - 1e-6, baseline=0.8, min_improvement=0.05).passed
        assert evaluate(LOWER, value=0.15 + 1e-10, baseline=0.2, min_improvement=0.05).passed
        assert not evaluate(LOWER, value=0.15 + 1e-6, baseline=0.2, min_improvement=0.05).passed


class TestEvaluateNeverRaises:
    def test_nan_value_fails_without_raising(self) -> None:
        assert not evaluate(HIGHER, value=math.nan, baseline=0.5).passed

    def test_out_of_range_value_is_still_evaluated(self) -> None:
        assert evaluate(HIGHER, value=7.0, baseline=0.5).passed


class TestMetricCheckAsDict:
    def test_has_exactly_the_contract_fields(self) -> None:
        check = evaluate(LOWER, value=0.1, baseline=0.25, min_improvement=0.05)
        assert check.as_dict() == {
            "name": "mse",
            "value": 0.1,
            "baseline": 0.25,
            "min_improvement": 0.05,
            "improvement": pytest.approx(0.15),
            "higher_is_better": False,
            "passed": True,
        }

    def test_reports_canonical_name(self) -> None:
        assert evaluate(METRICS["auroc"], value=0.9, baseline=0.8).as_dict()["name"] == "auroc"


class TestRequirePassed:
    @pytest.mark.parametrize(("value", "baseline"), [(0.9, 0.8), (0.8, 0.8), (0.8 - 1e-10, 0.8)])
    def test_returns_quietly_when_passed(self, value: float, baseline: float) -> None:
        require_passed(evaluate(HIGHER, value=value, baseline=baseline))

    def test_raises_metric_below_baseline_with_the_check(self) -> None:
        check = evaluate(HIGHER, value=0.81, baseline=0.82)
        with pytest.raises(MetricBelowBaseline) as info:
            require_passed(check)
        err = info.value
        assert err.code == "metric_below_baseline"
        assert err.status == 422
        assert err.extra == {"metric": check.as_dict()}
        assert err.detail == "auroc 0.81 is below the baseline 0.82 (higher is better)"

    def test_lower_metric_detail_says_above(self) -> None:
        with pytest.raises(MetricBelowBaseline) as info:
            require_passed(evaluate(LOWER, value=0.3, baseline=0.25))
        assert info.value.detail == "mse 0.3 is above the baseline 0.25 (lower is better)"

    def test_min_improvement_detail_names_the_target(self) -> None:
        with pytest.raises(MetricBelowBaseline) as info:
            require_passed(evaluate(HIGHER, value=0.85, baseline=0.82, min_improvement=0.05))
        detail = info.value.detail
        assert "by at least 0.05" in detail
        assert "at least 0.87" in detail
        assert "improvement 0.03" in detail

    def test_lower_min_improvement_detail_says_at_most(self) -> None:
        with pytest.raises(MetricBelowBaseline) as info:
            require_passed(evaluate(LOWER, value=0.2, baseline=0.25, min_improvement=0.1))
        assert "at most 0.15" in info.value.detail

    def test_detail_distinguishes_values_just_outside_the_tie(self) -> None:
        check = evaluate(HIGHER, value=0.82 - 1e-6, baseline=0.82)
        with pytest.raises(MetricBelowBaseline) as info:
            require_passed(check)
        assert "0.819999" in info.value.detail

    def test_check_is_immutable(self) -> None:
        check = MetricCheck("auroc", 0.9, 0.8, 0.0, 0.1, True, True)
        with pytest.raises(AttributeError):
            check.passed = False  # type: ignore[misc]
