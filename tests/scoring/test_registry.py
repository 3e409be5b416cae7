from __future__ import annotations

import math

import pytest

from app.errors import UnsupportedMetric
from app.scoring import METRICS, MetricSpec, resolve_metric, supported_metric_names

INF = math.inf

# The contract's "Supported metrics" table, restated independently of the implementation:
# name -> (aliases, lower, upper, higher_is_better, computable).
CONTRACT_TABLE: dict[str, tuple[tuple[str, ...], float, float, bool, bool]] = {
    "accuracy": ((), 0.0, 1.0, True, True),
    "auroc": (("auc", "roc_auc"), 0.0, 1.0, True, True),
    "f1": (("f1_score",), 0.0, 1.0, True, True),
    "precision": ((), 0.0, 1.0, True, True),
    "recall": ((), 0.0, 1.0, True, True),
    "log_loss": ((), 0.0, INF, False, True),
    "mse": ((), 0.0, INF, False, True),
    "rmse": ((), 0.0, INF, False, True),
    "mae": ((), 0.0, INF, False, True),
    "r2": ((), -INF, 1.0, True, True),
    "reply_rate": ((), 0.0, 1.0, True, False),
    "conversion_rate": ((), 0.0, 1.0, True, False),
    "engagement_score": ((), 0.0, INF, True, False),
}


class TestMetricsTable:
    def test_lists_exactly_the_contract_metrics_in_order(self) -> None:
        assert list(METRICS) == list(CONTRACT_TABLE)
        assert supported_metric_names() == list(CONTRACT_TABLE)

    @pytest.mark.parametrize("name", list(CONTRACT_TABLE))
    def test_spec_matches_contract_row(self, name: str) -> None:
        aliases, lower, upper, higher, computable = CONTRACT_TABLE[name]
        spec = METRICS[name]
        assert spec == MetricSpec(
            name=name,
            aliases=aliases,
            lower=lower,
            upper=upper,
            higher_is_better=higher,
            computable=computable,
        )

    def test_table_cannot_be_modified(self) -> None:
        with pytest.raises(TypeError):
            METRICS["accuracy"] = METRICS["mse"]  # type: ignore[index]

    def test_supported_names_is_a_fresh_list(self) -> None:
        names = supported_metric_names()
        names.append("bogus")
        assert "bogus" not in supported_metric_names()


class TestResolveMetric:
    @pytest.mark.parametrize("name", list(CONTRACT_TABLE))
    def test_resolves_canonical_names(self, name: str) -> None:
        assert resolve_metric(name) is METRICS[name]

    @pytest.mark.parametrize(
        ("alias", "canonical"),
        [("auc", "auroc"), ("roc_auc", "auroc"), ("f1_score", "f1")],
    )
    def test_resolves_aliases_to_canonical_spec(self, alias: str, canonical: str) -> None:
        assert resolve_metric(alias).name == canonical

    @pytest.mark.parametrize(
        ("raw", "canonical"),
        [
            ("AUROC", "auroc"),
            ("Log_Loss", "log_loss"),
            ("  ROC_AUC\t", "auroc"),
            ("\nF1_SCORE ", "f1"),
            ("R2", "r2"),
        ],
    )
    def test_ignores_case_and_surrounding_whitespace(self, raw: str, canonical: str) -> None:
        assert resolve_metric(raw).name == canonical


class TestUnsupportedMetric:
    @pytest.mark.parametrize("raw", ["bleu", "roc-auc", "auroc2", "f 1", "accuracy_score"])
    def test_rejects_unknown_names(self, raw: str) -> None:
        with pytest.raises(UnsupportedMetric) as info:
            resolve_metric(raw)
        err = info.value
        assert err.code == "unsupported_metric"
        assert err.status == 422
        assert repr(raw) in err.detail
        assert err.extra["supported_metrics"] == list(CONTRACT_TABLE)
        assert err.extra["metric_aliases"] == {"auc": "auroc", "roc_auc": "auroc", "f1_score": "f1"}

    @pytest.mark.parametrize("raw", ["", "   ", "\t\n"])
    def test_rejects_blank_name_as_required(self, raw: str) -> None:
        with pytest.raises(UnsupportedMetric, match="metric is required"):
            resolve_metric(raw)

    def test_rejects_non_string(self) -> None:
        with pytest.raises(UnsupportedMetric):
            resolve_metric(None)  # type: ignore[arg-type]

    def test_truncates_long_names_in_detail(self) -> None:
        with pytest.raises(UnsupportedMetric) as info:
            resolve_metric("x" * 10_000)
        assert len(info.value.detail) < 500
        assert "x" * 64 + "…" in info.value.detail


class TestRangeText:
    @pytest.mark.parametrize(
        ("name", "text"),
        [
            ("accuracy", "[0, 1]"),
            ("log_loss", "[0, ∞)"),
            ("engagement_score", "[0, ∞)"),
            ("r2", "(-∞, 1]"),
        ],
    )
    def test_renders_interval_notation(self, name: str, text: str) -> None:
        assert METRICS[name].range_text() == text

    def test_renders_non_integer_bounds(self) -> None:
        spec = MetricSpec("x", (), -0.5, 2.25, True, False)
        assert spec.range_text() == "[-0.5, 2.25]"


class TestContains:
    @pytest.mark.parametrize("x", [0.0, -0.0, 1.0, 0.5, 5e-324, 1 - 2**-53])
    def test_accepts_closed_unit_interval_edges(self, x: float) -> None:
        assert METRICS["accuracy"].contains(x)

    @pytest.mark.parametrize("x", [-5e-324, -1e-12, 1 + 2**-52, 1.5, 1e308, -1e308])
    def test_rejects_just_outside_unit_interval(self, x: float) -> None:
        assert not METRICS["accuracy"].contains(x)

    @pytest.mark.parametrize("name", list(CONTRACT_TABLE))
    @pytest.mark.parametrize("x", [math.nan, INF, -INF])
    def test_rejects_non_finite_for_every_metric(self, name: str, x: float) -> None:
        assert not METRICS[name].contains(x)

    @pytest.mark.parametrize("x", [0.0, 1e-300, 1.0, 1e308, 1.7976931348623157e308])
    def test_accepts_huge_values_on_open_upper_end(self, x: float) -> None:
        assert METRICS["mse"].contains(x)

    def test_rejects_negative_on_open_upper_end(self) -> None:
        assert not METRICS["mse"].contains(-1e-300)

    @pytest.mark.parametrize("x", [-1.7976931348623157e308, -1e9, 0.0, 1.0])
    def test_accepts_huge_negatives_on_open_lower_end(self, x: float) -> None:
        assert METRICS["r2"].contains(x)

    def test_rejects_above_one_on_open_lower_end(self) -> None:
        assert not METRICS["r2"].contains(1 + 2**-52)
