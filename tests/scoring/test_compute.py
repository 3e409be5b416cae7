from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from app.errors import InvalidPredictions
from app.scoring import METRICS, compute_from_predictions, required_columns, resolve_metric

WriteCsv = Callable[..., Path]  # the write_csv fixture in conftest.py


def compute(name: str, path: Path, **kwargs: int) -> float:
    return compute_from_predictions(resolve_metric(name), path, **kwargs)


def rejects(name: str, path: Path, **kwargs: int) -> InvalidPredictions:
    with pytest.raises(InvalidPredictions) as info:
        compute(name, path, **kwargs)
    assert info.value.code == "invalid_predictions"
    return info.value


class TestKnownValues:
    def test_accuracy_counts_matching_labels(self, write_csv: WriteCsv) -> None:
        path = write_csv("y_true,y_pred\n1,1\n0,1\n2,2\n3,0\n")
        assert compute("accuracy", path) == 0.5

    def test_accuracy_treats_equal_numbers_as_equal_labels(self, write_csv: WriteCsv) -> None:
        path = write_csv("y_true,y_pred\n1,1.0\n0,-0\n2,2e0\n")
        assert compute("accuracy", path) == 1.0

    def test_auroc_counts_ties_as_half(self, write_csv: WriteCsv) -> None:
        # Positives at 0.5 and 0.9, negatives at 0.5 and 0.1: pairs won 1 + 1 + 1 + 0.5 of 4.
        path = write_csv("y_true,y_score\n1,0.5\n0,0.5\n1,0.9\n0,0.1\n")
        assert compute("auroc", path) == 0.875

    def test_binary_scores_from_confusion_counts(self, write_csv: WriteCsv) -> None:
        # tp=2, fp=1, fn=3
        rows = ["1,1", "1,1", "0,1", "1,0", "1,0", "1,0", "0,0"]
        path = write_csv("y_true,y_pred\n" + "\n".join(rows) + "\n")
        assert compute("precision", path) == 2 / 3
        assert compute("recall", path) == 2 / 5
        assert compute("f1", path) == 4 / 8

    def test_precision_recall_f1_are_zero_when_undefined(self, write_csv: WriteCsv) -> None:
        path = write_csv("y_true,y_pred\n0,0\n0,0\n")
        assert compute("precision", path) == 0.0
        assert compute("recall", path) == 0.0
        assert compute("f1", path) == 0.0

    def test_log_loss_clips_certain_wrong_predictions_like_sklearn(
        self, write_csv: WriteCsv
    ) -> None:
        path = write_csv("y_true,y_score\n1,0\n0,1\n1,1\n0,0\n")
        eps = np.finfo(np.float64).eps
        assert compute("log_loss", path) == pytest.approx(-math.log(eps) / 2, rel=1e-12)
        assert compute("log_loss", path) == pytest.approx(
            skm.log_loss([1, 0, 1, 0], [0.0, 1.0, 1.0, 0.0]), rel=1e-12
        )

    def test_regression_metrics(self, write_csv: WriteCsv) -> None:
        path = write_csv("y_true,y_pred\n1,2\n2,2\n3,5\n6,4\n")
        assert compute("mse", path) == (1 + 0 + 4 + 4) / 4
        assert compute("rmse", path) == 1.5
        assert compute("mae", path) == (1 + 0 + 2 + 2) / 4
        # mean 3, total sum of squares 4 + 1 + 0 + 9 = 14
        assert compute("r2", path) == pytest.approx(1 - 9 / 14, rel=1e-15)

    @pytest.mark.parametrize("alias", ["auc", "ROC_AUC", " AUROC "])
    def test_resolves_aliases_before_computing(self, alias: str, write_csv: WriteCsv) -> None:
        path = write_csv("y_true,y_score\n1,0.9\n0,0.1\n")
        assert compute(alias, path) == 1.0


class TestRequiredColumns:
    @pytest.mark.parametrize(
        ("name", "columns"),
        [
            ("accuracy", ("y_true", "y_pred")),
            ("auroc", ("y_true", "y_score")),
            ("f1", ("y_true", "y_pred")),
            ("log_loss", ("y_true", "y_score")),
            ("r2", ("y_true", "y_pred")),
            ("reply_rate", ()),
        ],
    )
    def test_names_the_columns_each_metric_reads(self, name: str, columns: tuple[str, ...]) -> None:
        assert required_columns(METRICS[name]) == columns


class TestHeader:
    def test_ignores_case_whitespace_and_extra_columns(self, write_csv: WriteCsv) -> None:
        path = write_csv(" ID , Y_Score ,note, y_TRUE \n7,0.9,a,1\n8,0.1,b,0\n9,0.05,c,1\n")
        assert compute("auroc", path) == 0.5

    def test_accepts_utf8_byte_order_mark(self, write_csv: WriteCsv) -> None:
        path = write_csv(b"\xef\xbb\xbfy_true,y_pred\n1,1\n0,1\n")
        assert compute("accuracy", path) == 0.5

    def test_reads_the_right_column_when_both_pred_and_score_exist(
        self, write_csv: WriteCsv
    ) -> None:
        path = write_csv("y_true,y_pred,y_score\n1,0,0.9\n0,1,0.1\n")
        assert compute("accuracy", path) == 0.0
        assert compute("auroc", path) == 1.0

    def test_rejects_missing_column(self, write_csv: WriteCsv) -> None:
        path = write_csv("y_true,y_pred\n1,1\n")
        err = rejects("auroc", path)
        assert "auroc needs the columns y_true and y_score" in err.detail
        assert "missing y_score" in err.detail
        assert err.extra["missing_columns"] == ["y_score"]
        assert err.extra["required_columns"] == ["y_true", "y_score"]

    def test_rejects_header_without_any_required_column(self, write_csv: WriteCsv) -> None:
        err = rejects("mse", write_csv("a,b\n1,2\n"))
        assert err.extra["missing_columns"] == ["y_true", "y_pred"]
        assert "'a', 'b'" in err.detail

    def test_rejects_duplicated_required_column(self, write_csv: WriteCsv) -> None:
        err = rejects("mse", write_csv("y_true,y_pred,Y_PRED\n1,2,3\n"))
        assert "y_pred more than once" in err.detail

    def test_rejects_blank_first_line(self, write_csv: WriteCsv) -> None:
        err = rejects("mse", write_csv("\ny_true,y_pred\n1,2\n"))
        assert "header row" in err.detail


class TestEmptyFile:
    def test_rejects_empty_file(self, write_csv: WriteCsv) -> None:
        assert rejects("accuracy", write_csv("")).detail == "the predictions file is empty"

    def test_rejects_bom_only_file(self, write_csv: WriteCsv) -> None:
        assert rejects("accuracy", write_csv(b"\xef\xbb\xbf")).detail == (
            "the predictions file is empty"
        )

    @pytest.mark.parametrize("content", ["y_true,y_pred\n", "y_true,y_pred", "y_true,y_pred\n\n\n"])
    def test_rejects_header_without_data_rows(self, content: str, write_csv: WriteCsv) -> None:
        err = rejects("accuracy", write_csv(content))
        assert "no data rows" in err.detail


class TestLayout:
    def test_skips_blank_lines(self, write_csv: WriteCsv) -> None:
        path = write_csv("y_true,y_pred\n1,1\n\n0,1\n\n")
        assert compute("accuracy", path) == 0.5

    @pytest.mark.parametrize("newline", ["\r\n", "\r", "\n"])
    def test_accepts_any_line_ending(self, newline: str, write_csv: WriteCsv) -> None:
        path = write_csv(newline.join(["y_true,y_pred", "1,1", "0,1", "2,2"]) + newline)
        assert compute("accuracy", path) == 2 / 3

    def test_accepts_missing_final_newline(self, write_csv: WriteCsv) -> None:
        assert compute("mae", write_csv("y_true,y_pred\n1,2\n3,5")) == 1.5

    def test_accepts_quoted_and_padded_cells(self, write_csv: WriteCsv) -> None:
        path = write_csv('y_true,y_pred\n"1"," 2 "\n 3 ,5\t\n')
        assert compute("mae", path) == 1.5

    def test_counts_rows_across_many_chunks(self, write_csv: WriteCsv) -> None:
        # More rows than one conversion chunk, so chunk boundaries are crossed.
        rng = np.random.default_rng(7)
        y_true = rng.normal(size=150_001)
        y_pred = y_true + rng.normal(scale=0.5, size=y_true.size)
        pairs = zip(y_true.tolist(), y_pred.tolist(), strict=True)
        lines = ["y_true,y_pred", *(f"{a!r},{b!r}" for a, b in pairs)]
        path = write_csv("\n".join(lines) + "\n")
        assert compute("mse", path) == pytest.approx(
            skm.mean_squared_error(y_true, y_pred), rel=1e-12
        )
        assert compute("r2", path) == pytest.approx(skm.r2_score(y_true, y_pred), rel=1e-12)


class TestRaggedRows:
    def test_rejects_short_row(self, write_csv: WriteCsv) -> None:
        err = rejects("accuracy", write_csv("y_true,y_pred\n1,1\n0\n"))
        assert err.detail == "row 2 (line 3): has 1 fields; the header has 2"
        assert err.extra == {"row": 2, "line": 3}

    def test_rejects_long_row(self, write_csv: WriteCsv) -> None:
        err = rejects("accuracy", write_csv("y_true,y_pred\n1,1,1\n"))
        assert "row 1 (line 2): has 3 fields" in err.detail

    def test_reports_file_line_after_blank_lines(self, write_csv: WriteCsv) -> None:
        err = rejects("accuracy", write_csv("y_true,y_pred\n\n1,1\n\n\n0\n"))
        assert err.detail.startswith("row 2 (line 6):")


class TestBadCells:
    @pytest.mark.parametrize(
        ("cell", "problem"),
        [
            ("abc", "is not a number: 'abc'"),
            ("1_000", "is not a number: '1_000'"),
            ("1,5", "is not a number: '1,5'"),
            ("", "is empty"),
            ("  ", "is empty"),
            ("nan", "is not a number: 'nan'"),
            ("-inf", "is not a number: '-inf'"),
            ("1e999", "is not a finite number: '1e999'"),
        ],
    )
    def test_rejects_unusable_cell_naming_row_and_column(
        self, cell: str, problem: str, write_csv: WriteCsv
    ) -> None:
        path = write_csv(f'y_true,y_pred\n1,2\n3,4\n5,"{cell}"\n7,8\n')
        err = rejects("mse", path)
        assert err.detail.startswith(f"row 3 (line 4): y_pred {problem}")
        assert err.extra == {"row": 3, "line": 4, "column": "y_pred"}

    def test_reports_bad_y_true_cell(self, write_csv: WriteCsv) -> None:
        err = rejects("mae", write_csv("y_pred,y_true\n1,2\n3,x\n"))
        assert err.detail.startswith("row 2 (line 3): y_true is not a number: 'x'")

    def test_truncates_long_cells_in_detail(self, write_csv: WriteCsv) -> None:
        err = rejects("mae", write_csv("y_true,y_pred\n1," + "z" * 5000 + "\n"))
        assert len(err.detail) < 300


class TestLabelDomains:
    @pytest.mark.parametrize("name", ["f1", "precision", "recall"])
    def test_rejects_non_binary_prediction(self, name: str, write_csv: WriteCsv) -> None:
        err = rejects(name, write_csv("y_true,y_pred\n1,1\n0,2\n"))
        assert err.detail == (f"row 2 (line 3): y_pred is '2'; {name} needs y_pred to be 0 or 1")

    @pytest.mark.parametrize("name", ["f1", "auroc", "log_loss"])
    def test_rejects_non_binary_truth(self, name: str, write_csv: WriteCsv) -> None:
        path = write_csv("y_true,y_pred,y_score\n1,1,0.5\n-1,0,0.5\n")
        err = rejects(name, path)
        assert err.detail.startswith("row 2 (line 3): y_true is '-1'")

    def test_accepts_binary_labels_written_as_floats(self, write_csv: WriteCsv) -> None:
        path = write_csv("y_true,y_pred\n1.0,1.00\n0.0,1e0\n")
        assert compute("precision", path) == 0.5

    @pytest.mark.parametrize("score", ["1.5", "-0.01", "1.0000001"])
    def test_rejects_log_loss_score_outside_unit_interval(
        self, score: str, write_csv: WriteCsv
    ) -> None:
        err = rejects("log_loss", write_csv(f"y_true,y_score\n1,0.5\n0,{score}\n"))
        assert err.detail == (
            f"row 2 (line 3): y_score is '{score}'; "
            "log_loss needs y_score to be a probability in [0, 1]"
        )

    def test_accepts_auroc_scores_outside_unit_interval(self, write_csv: WriteCsv) -> None:
        path = write_csv("y_true,y_score\n1,12.5\n0,-3\n1,-7\n")
        assert compute("auroc", path) == 0.5

    @pytest.mark.parametrize("label", ["0.7", "1e300"])
    def test_rejects_accuracy_labels_that_are_not_class_labels(
        self, label: str, write_csv: WriteCsv
    ) -> None:
        err = rejects("accuracy", write_csv(f"y_true,y_pred\n1,1\n0,{label}\n"))
        assert f"y_pred is '{label}'" in err.detail
        assert "class label" in err.detail


class TestDegenerateData:
    @pytest.mark.parametrize("label", ["0", "1"])
    def test_rejects_auroc_with_single_class(self, label: str, write_csv: WriteCsv) -> None:
        err = rejects("auroc", write_csv(f"y_true,y_score\n{label},0.2\n{label},0.7\n"))
        assert err.detail == (
            f"auroc needs both classes in y_true, but every row has y_true = {label}"
        )

    def test_rejects_r2_with_constant_truth(self, write_csv: WriteCsv) -> None:
        err = rejects("r2", write_csv("y_true,y_pred\n0.1,1\n0.1,2\n0.1,3\n"))
        assert "every y_true is the same value" in err.detail

    def test_rejects_r2_with_a_single_row(self, write_csv: WriteCsv) -> None:
        rejects("r2", write_csv("y_true,y_pred\n3,2\n"))

    def test_log_loss_with_single_class_is_still_computed(self, write_csv: WriteCsv) -> None:
        path = write_csv("y_true,y_score\n1,0.5\n1,1\n")
        assert compute("log_loss", path) == pytest.approx(
            skm.log_loss([1, 1], [0.5, 1.0], labels=[0, 1]), rel=1e-12
        )

    @pytest.mark.parametrize("name", ["mse", "rmse", "r2"])
    def test_rejects_overflowing_result(self, name: str, write_csv: WriteCsv) -> None:
        err = rejects(name, write_csv("y_true,y_pred\n1e300,-1e300\n0,1\n"))
        assert f"{name} is not a finite number" in err.detail


class TestRowLimit:
    def test_accepts_exactly_max_rows(self, write_csv: WriteCsv) -> None:
        path = write_csv("y_true,y_pred\n1,1\n0,1\n1,0\n")
        assert compute("accuracy", path, max_rows=3) == 1 / 3

    def test_rejects_too_many_rows(self, write_csv: WriteCsv) -> None:
        path = write_csv("y_true,y_pred\n1,1\n0,1\n1,0\n0,0\n")
        err = rejects("accuracy", path, max_rows=3)
        assert err.detail == "the predictions file has more than 3 data rows"
        assert err.extra == {"max_rows": 3}

    def test_stops_reading_at_the_limit(self, write_csv: WriteCsv) -> None:
        # The garbage after the limit is never parsed: the row count is what gets reported.
        path = write_csv("y_true,y_pred\n1,1\n0,1\n1,0\nx,y,z\n")
        err = rejects("accuracy", path, max_rows=2)
        assert "more than 2 data rows" in err.detail

    def test_blank_lines_do_not_count_as_rows(self, write_csv: WriteCsv) -> None:
        path = write_csv("y_true,y_pred\n\n1,1\n\n\n0,1\n\n")
        assert compute("accuracy", path, max_rows=2) == 0.5


class TestMalformedFile:
    def test_rejects_non_utf8_bytes(self, write_csv: WriteCsv) -> None:
        err = rejects("mse", write_csv(b"y_true,y_pred\n1,2\n\xff\xfe,3\n"))
        assert err.detail == "the predictions file is not UTF-8 text"

    def test_rejects_utf16_file(self, write_csv: WriteCsv) -> None:
        rejects("mse", write_csv("y_true,y_pred\n1,2\n".encode("utf-16")))

    def test_rejects_broken_quoting(self, write_csv: WriteCsv) -> None:
        err = rejects("mse", write_csv('y_true,y_pred\n1,"2"x\n'))
        assert err.detail.startswith("the predictions file is not valid CSV at line 2")

    def test_rejects_unterminated_quote(self, write_csv: WriteCsv) -> None:
        err = rejects("mse", write_csv('y_true,y_pred\n1,"2\n3,4\n'))
        assert "not valid CSV" in err.detail

    def test_rejects_nul_bytes(self, write_csv: WriteCsv) -> None:
        err = rejects("mse", write_csv(b"y_true,y_pred\n1,\x002\n"))
        assert err.detail.startswith("row 1 (line 2): y_pred is not a number: '\\x002'")

    def test_rejects_line_without_newline_that_never_ends(self, write_csv: WriteCsv) -> None:
        err = rejects("mse", write_csv("y_true,y_pred\n1," + "2" * (1 << 21)))
        assert "longer than" in err.detail


class TestNotComputable:
    @pytest.mark.parametrize("name", ["reply_rate", "conversion_rate", "engagement_score"])
    def test_rejects_metric_that_cannot_be_computed(self, name: str, write_csv: WriteCsv) -> None:
        err = rejects(name, write_csv("y_true,y_pred\n1,1\n"))
        assert (
            err.detail == f"{name} cannot be computed from predictions; send metric_value instead"
        )
        assert "reply_rate" not in err.extra["computable_metrics"]
        assert "auroc" in err.extra["computable_metrics"]


COMPUTABLE = [name for name, spec in METRICS.items() if spec.computable]
# Characters that make up numbers, CSV structure and the usual ways numbers go wrong.
NOISE = st.text(alphabet=st.sampled_from(list('0123456789.eE+- \t,"\r\nnaif_x\u00a0\ufeff')))


class TestArbitraryInput:
    @settings(max_examples=50, deadline=None)
    @given(
        name=st.sampled_from(COMPUTABLE),
        header=st.sampled_from(["y_true,y_pred,y_score\n", "y_score, Y_TRUE ,y_pred\r\n", ""]),
        body=st.one_of(
            NOISE,
            st.lists(
                st.lists(st.one_of(st.sampled_from(["0", "1", "0.5"]), NOISE), max_size=4),
                max_size=20,
            ).map(lambda rows: "\n".join(",".join(row) for row in rows)),
        ),
    )
    def test_returns_a_value_in_range_or_invalid_predictions(
        self, tmp_path_factory: pytest.TempPathFactory, name: str, header: str, body: str
    ) -> None:
        path = tmp_path_factory.mktemp("noise") / "predictions.csv"
        path.write_bytes((header + body).encode("utf-8"))
        spec = resolve_metric(name)
        outcome: float | InvalidPredictions
        try:
            outcome = compute_from_predictions(spec, path)
        except InvalidPredictions as e:
            outcome = e
        if isinstance(outcome, InvalidPredictions):
            assert outcome.detail
        else:
            assert spec.contains(outcome)
