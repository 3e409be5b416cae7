"""Honest models give the same values in the sandbox as in process; detection tells the truth."""

from __future__ import annotations

import pickle
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LinearRegression, LogisticRegression

from app.evaluation.sandbox import (
    REASONS,
    ModelKind,
    OutputKind,
    SandboxFailure,
    SandboxInfo,
    SandboxMode,
    detect_sandbox,
    run_model,
)
from tests.support.evaluation import LIMITS, Features, Run


def _close(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == np.float64
    np.testing.assert_allclose(actual, np.asarray(expected, dtype=np.float64), rtol=0, atol=1e-12)


class TestDetection:
    def test_auto_picks_an_isolating_mode_here(self, bubblewrap: SandboxInfo) -> None:
        info = detect_sandbox("auto")
        assert info.mode is SandboxMode.BUBBLEWRAP
        assert info.isolated
        assert "namespaces" in info.detail

    def test_none_switches_evaluation_off(self) -> None:
        info = detect_sandbox("none")
        assert info == SandboxInfo(SandboxMode.NONE, False, "evaluation is switched off")

    def test_unknown_preference_is_none(self) -> None:
        info = detect_sandbox("docker")
        assert info.mode is SandboxMode.NONE
        assert not info.isolated
        assert "docker" in info.detail

    def test_process_mode_is_labelled_not_isolated(self, process: SandboxInfo) -> None:
        assert not process.isolated
        assert "NOT ISOLATED" in process.detail

    def test_run_model_refuses_without_a_sandbox(self, features: Features, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="no sandbox"):
            run_model(
                model_path=tmp_path / "m.pkl",
                model_kind=ModelKind.PICKLE,
                features_path=features.path,
                dtypes={"a": "float64"},
                output=OutputKind.PREDICT,
                expected_rows=1,
                limits=LIMITS,
                sandbox=detect_sandbox("none"),
            )

    def test_failure_reasons_are_the_documented_ones(self) -> None:
        assert SandboxFailure("timeout", "x").reason == "timeout"
        with pytest.raises(ValueError, match="unknown"):
            SandboxFailure("exploded")
        assert len(REASONS) == 10


class TestScikitLearnModels:
    def test_pickled_logistic_regression(
        self, bubblewrap: SandboxInfo, run: Run, features: Features, tmp_path: Path
    ) -> None:
        model = LogisticRegression().fit(features.train, features.labels)
        path = tmp_path / "model.pkl"
        path.write_bytes(pickle.dumps(model))

        scores = run(path, sandbox=bubblewrap, output=OutputKind.SCORE)
        labels = run(path, sandbox=bubblewrap, output=OutputKind.PREDICT)

        _close(scores.values, model.predict_proba(features.frame)[:, 1])
        _close(labels.values, model.predict(features.frame))
        assert scores.sandbox == bubblewrap
        assert scores.seconds > 0
        assert {"features", "load", "predict", "startup"} <= set(scores.stages)

    def test_joblib_random_forest(
        self, bubblewrap: SandboxInfo, run: Run, features: Features, tmp_path: Path
    ) -> None:
        model = RandomForestClassifier(n_estimators=20, random_state=0, n_jobs=2)
        model.fit(features.train, features.labels)
        path = tmp_path / "model.joblib"
        joblib.dump(model, path)

        scores = run(path, sandbox=bubblewrap, kind=ModelKind.JOBLIB)

        _close(scores.values, model.predict_proba(features.frame)[:, 1])

    def test_pickled_random_forest_predict(
        self, bubblewrap: SandboxInfo, run: Run, features: Features, tmp_path: Path
    ) -> None:
        model = RandomForestClassifier(n_estimators=10, random_state=1).fit(
            features.train, features.labels
        )
        path = tmp_path / "model.pkl"
        path.write_bytes(pickle.dumps(model))

        labels = run(path, sandbox=bubblewrap, output=OutputKind.PREDICT)

        _close(labels.values, model.predict(features.frame))

    def test_string_labels_come_back_as_strings(
        self, bubblewrap: SandboxInfo, run: Run, features: Features, tmp_path: Path
    ) -> None:
        names = np.where(features.labels == 1, "spam", "ham")
        model = LogisticRegression().fit(features.train, names)
        path = tmp_path / "model.pkl"
        path.write_bytes(pickle.dumps(model))

        labels = run(path, sandbox=bubblewrap, output=OutputKind.PREDICT)

        assert labels.values.dtype.kind == "U"
        assert labels.values.tolist() == model.predict(features.frame).tolist()

    def test_regressor_scores_with_predict(
        self, bubblewrap: SandboxInfo, run: Run, features: Features, tmp_path: Path
    ) -> None:
        model = LinearRegression().fit(features.train, features.train["a"] * 2 + 1)
        path = tmp_path / "model.pkl"
        path.write_bytes(pickle.dumps(model))

        scores = run(path, sandbox=bubblewrap, output=OutputKind.SCORE)

        _close(scores.values, model.predict(features.frame))

    def test_mlflow_sklearn_model_directory(
        self, bubblewrap: SandboxInfo, run: Run, features: Features, tmp_path: Path
    ) -> None:
        import mlflow.sklearn

        model = LogisticRegression().fit(features.train, features.labels)
        folder = tmp_path / "mlflow-model"
        mlflow.sklearn.save_model(
            model, folder, serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_CLOUDPICKLE
        )

        scores = run(folder, sandbox=bubblewrap, kind=ModelKind.MLFLOW)
        labels = run(folder, sandbox=bubblewrap, kind=ModelKind.MLFLOW, output="predict")

        _close(scores.values, model.predict_proba(features.frame)[:, 1])
        _close(labels.values, model.predict(features.frame))

    def test_same_values_in_every_mode(
        self,
        isolated: SandboxInfo,
        process: SandboxInfo,
        run: Run,
        features: Features,
        tmp_path: Path,
    ) -> None:
        model = LogisticRegression().fit(features.train, features.labels)
        path = tmp_path / "model.pkl"
        path.write_bytes(pickle.dumps(model))

        for info in (isolated, process):
            _close(run(path, sandbox=info).values, model.predict_proba(features.frame)[:, 1])

    def test_the_job_folder_is_removed(
        self,
        bubblewrap: SandboxInfo,
        run: Run,
        features: Features,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        import tempfile

        from app.evaluation import sandbox

        jobs = tmp_path / "jobs"
        jobs.mkdir()
        monkeypatch.setattr(tempfile, "tempdir", str(jobs))
        sandbox.keep_warm(False)
        try:
            model = LogisticRegression().fit(features.train, features.labels)
            path = tmp_path / "model.pkl"
            path.write_bytes(pickle.dumps(model))
            run(path, sandbox=bubblewrap)
            assert list(jobs.iterdir()) == []
        finally:
            sandbox.keep_warm(True)


class TestSpares:
    def test_a_spare_outlives_the_thread_whose_run_started_it(
        self, bubblewrap: SandboxInfo, run: Run, features: Features, tmp_path: Path
    ) -> None:
        import threading
        import time

        from app.evaluation import sandbox
        from app.evaluation.sandbox.spare import SPARES

        model = LogisticRegression().fit(features.train, features.labels)
        path = tmp_path / "model.pkl"
        path.write_bytes(pickle.dumps(model))
        sandbox.keep_warm(False)
        sandbox.keep_warm(True)
        worker = threading.Thread(target=run, args=(path,), kwargs={"sandbox": bubblewrap})
        worker.start()
        worker.join()

        # bwrap --die-with-parent follows the thread that started it: the spare must not have
        # been started by that finished thread (nor by any other short-lived one).
        # A refill may replace (and stop) a spare that a slower one overtook: judge the spare the
        # pool still holds once it has stayed the same for half a second.
        deadline = time.monotonic() + 60
        spare = None
        while time.monotonic() < deadline:
            spare = SPARES._spare
            if spare is not None:
                time.sleep(0.5)
                if SPARES._spare is spare:
                    break
            time.sleep(0.1)
        assert spare is not None and SPARES._spare is spare
        assert spare.proc.poll() is None
        _close(run(path, sandbox=bubblewrap).values, model.predict_proba(features.frame)[:, 1])


class TestInputs:
    def test_a_missing_model_file_is_a_load_failure(
        self, bubblewrap: SandboxInfo, run: Run, tmp_path: Path
    ) -> None:
        with pytest.raises(SandboxFailure) as caught:
            run(tmp_path / "absent.pkl", sandbox=bubblewrap)
        assert caught.value.reason == "load_failed"

    def test_an_mlflow_model_must_be_a_directory(
        self, bubblewrap: SandboxInfo, run: Run, tmp_path: Path
    ) -> None:
        path = tmp_path / "model.zip"
        path.write_bytes(b"PK\x03\x04")
        with pytest.raises(SandboxFailure) as caught:
            run(path, sandbox=bubblewrap, kind=ModelKind.MLFLOW)
        assert caught.value.reason == "load_failed"

    def test_unknown_dtypes_are_refused_before_anything_runs(
        self, bubblewrap: SandboxInfo, features: Features, tmp_path: Path
    ) -> None:
        with pytest.raises(ValueError, match="dtype"):
            run_model(
                model_path=tmp_path / "m.pkl",
                model_kind=ModelKind.PICKLE,
                features_path=features.path,
                dtypes={"a": "datetime64[ns]"},
                output=OutputKind.PREDICT,
                expected_rows=1,
                limits=LIMITS,
                sandbox=bubblewrap,
            )
