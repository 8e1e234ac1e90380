"""Prediction drift and performance estimated without labels, on prediction-log rows of real models."""

import numpy as np
import orjson
import pandas as pd
import pytest
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from configs.settings import load_settings
from tasks.monitoring.estimate import assess, estimate, expected_auc, served_outputs
from tasks.monitoring.trend import plot_trend
from tasks.release.prediction_reference import PredictionReference, build

COEF = np.array([1.6, -1.1, 0.8, 0.5])
NO_LABELS = pd.DataFrame({"request_id": pd.Series(dtype=str), "label": pd.Series(dtype=object)})


def draw(rows, seed, shrink=1.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, len(COEF)))
    x[:, :3] *= shrink  # towards the boundary: the label's law unchanged, accuracy lower
    y = np.where(rng.random(rows) < 1 / (1 + np.exp(-(x @ COEF))), "yes", "no")
    return pd.DataFrame(x, columns=[f"x{i}" for i in range(len(COEF))]), y


@pytest.fixture(scope="module")
def classifier():
    X, y = draw(8_000, 1)
    # strongly regularised: its probabilities huddle near 0.5, so the estimate rests on the calibration
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.0005)).fit(X, y)
    Xh, yh = draw(4_000, 2)
    return model, build(model, Xh, yh, "binary", "predict_proba")


def log_of(model, X, predict_fn="predict_proba", version="1", start=0, inputs=None):
    answers = getattr(model, predict_fn)(X).tolist()
    X = X if inputs is None else inputs
    return pd.DataFrame(
        {
            "request_id": [f"r{start + i}" for i in range(len(X))],
            "role": "production",
            "model_version": version,
            "inputs": [orjson.dumps([r]).decode() for r in X.to_dict(orient="records")],
            "prediction": [orjson.dumps([a]).decode() for a in answers],
        }
    )


def settings_with(**monitoring):
    settings = load_settings(None)
    return settings.model_copy(update={"monitoring": settings.monitoring.model_copy(update=monitoring)})


def test_the_reference_is_small_and_reads_back(classifier):
    _, reference = classifier
    data = reference.dumps()
    assert len(data) < 20_000  # bins and calibration points, not the holdout's 4,000 rows
    again = PredictionReference.loads(data)
    assert again.classes == ["no", "yes"] and again.holdout == reference.holdout
    assert sum(again.class_counts.values()) == 4_000 and set(again.scores) == {'p("yes")'}


def test_estimate_follows_the_realised_figures_under_covariate_shift(classifier):
    model, reference = classifier
    for shrink, seed in ((1.0, 3), (0.4, 4)):
        X, y = draw(6_000, seed, shrink)
        log = log_of(model, X)
        result = estimate(served_outputs(log, "1", reference), reference)
        p = model.predict_proba(X)[:, 1]
        realised_accuracy = np.mean(np.where(p > 0.5, "yes", "no") == y)
        realised_auc = roc_auc_score(y == "yes", p)
        low, high = result.bands["accuracy"]
        assert abs(result.figures["accuracy"] - realised_accuracy) < 0.03 and low < result.figures["accuracy"] < high
        assert abs(result.figures["roc_auc"] - realised_auc) < 0.03
    assert result.figures["accuracy"] < reference.holdout["accuracy"] - 0.05  # the shift is seen without labels


def test_expected_auc_of_certain_probabilities_is_the_auc():
    scores = np.array([0.9, 0.8, 0.7, 0.3, 0.2, 0.1])
    truth = np.array([1, 1, 0, 1, 0, 0])
    assert expected_auc(scores, truth.astype(float)) == pytest.approx(roc_auc_score(truth, scores))


def test_a_shifted_window_breaches_on_its_estimate_and_its_outputs_a_clean_one_does_not(classifier):
    model, reference = classifier
    settings = settings_with(max_estimated_drop=0.05, min_requests=100)
    clean = assess(log_of(model, draw(5_000, 5)[0]), NO_LABELS, "1", reference, settings)
    assert clean.breaches == [] and clean.metrics["prediction_psi"] < 0.05
    shifted = assess(log_of(model, draw(5_000, 6, 0.4)[0]), NO_LABELS, "1", reference, settings)
    assert any(b.startswith("estimated accuracy") for b in shifted.breaches)
    assert any(b.startswith("estimated roc_auc") for b in shifted.breaches)
    assert any(b.startswith("prediction drift: ") and 'p("yes")' in b for b in shifted.breaches)
    assert shifted.metrics["estimated_roc_auc_floor"] == pytest.approx(reference.holdout["roc_auc"] - 0.05)
    unset = assess(
        log_of(model, draw(5_000, 6, 0.4)[0]), NO_LABELS, "1", reference, settings_with(max_estimated_drop=None)
    )
    assert not any(b.startswith("estimated") for b in unset.breaches)  # empty: not checked


def test_class_shares_drift_for_a_version_served_with_predict():
    X, y = draw(6_000, 7)
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y)
    Xh, yh = draw(3_000, 8)
    reference = build(model, Xh, yh, "binary", "predict")
    settings = settings_with(min_requests=100)
    clean = assess(log_of(model, draw(3_000, 9)[0], "predict"), NO_LABELS, "1", reference, settings)
    assert clean.breaches == [] and clean.not_estimable.startswith("served with predict")
    moved, _ = draw(3_000, 10)
    moved["x0"] += 1.5  # more "yes" answers
    drifted = assess(log_of(model, moved, "predict"), NO_LABELS, "1", reference, settings)
    assert drifted.breaches and drifted.breaches[0].startswith("prediction drift: class shares")
    assert drifted.metrics["share_yes"] > clean.metrics["share_yes"] + 0.1


def test_regression_is_not_estimable_but_its_outputs_drift():
    rng = np.random.default_rng(11)
    X = pd.DataFrame(rng.normal(size=(3_000, 2)), columns=["a", "b"])
    y = X["a"] * 2 + rng.normal(size=3_000)
    model = LinearRegression().fit(X, y)
    reference = build(model, X, y, "regression", "predict")
    assert reference.classes is None and set(reference.scores) == {"output"}
    settings = settings_with(min_requests=100)
    clean = assess(log_of(model, X.sample(2_000, random_state=1), "predict"), NO_LABELS, "1", reference, settings)
    assert clean.not_estimable.startswith("regression: ") and not any(k.startswith("estimated") for k in clean.metrics)
    assert clean.breaches == []
    shifted = assess(log_of(model, X.assign(a=X["a"] + 1), "predict"), NO_LABELS, "1", reference, settings)
    assert shifted.breaches[0].startswith("prediction drift: output")


def test_realised_and_estimated_sit_side_by_side_per_slice(classifier):
    model, reference = classifier
    X, y = draw(4_000, 12, 0.6)
    log = log_of(model, X, inputs=X.assign(plan=np.where(np.arange(len(X)) % 2, "basic", "pro")))
    feedback = pd.DataFrame({"request_id": log["request_id"][:3_000], "label": list(y[:3_000])})
    settings = load_settings(None)
    settings = settings.model_copy(
        update={"quality": settings.quality.model_copy(update={"slices": ["plan", "x0"], "slice_bins": 4})}
    )
    result = assess(log, feedback, "1", reference, settings)
    p = model.predict_proba(X)[:3_000, 1]
    assert result.metrics["realised_accuracy"] == pytest.approx(np.mean(np.where(p > 0.5, "yes", "no") == y[:3_000]))
    assert abs(result.metrics["realised_accuracy"] - result.metrics["estimated_accuracy"]) < 0.04
    plans = {row["value"]: row for row in result.slices if row["column"] == "plan"}
    assert set(plans) == {"basic", "pro"} and plans["basic"]["rows"] == 2_000
    assert {"estimated_accuracy", "realised_accuracy", "estimated_roc_auc", "realised_roc_auc"} <= set(plans["pro"])
    assert len([row for row in result.slices if row["column"] == "x0"]) == 4


def test_the_trend_draws_the_estimate_with_its_band_and_floor(classifier, tmp_path):
    from datetime import UTC, datetime, timedelta

    model, reference = classifier
    result = assess(log_of(model, draw(2_000, 13, 0.4)[0]), NO_LABELS, "1", reference, load_settings(None))
    end = datetime(2026, 1, 1, tzinfo=UTC)
    from tasks.monitoring.trend import trend_figure

    fig = trend_figure([], result.metrics, end - timedelta(hours=1), end, load_settings(None))
    panel = fig.axes[-1]
    assert any("estimated roc_auc" in t.get_text() for t in panel.get_legend().get_texts())
    floors = [line for line in panel.get_lines() if line.get_linestyle() == "--" and len(line.get_ydata())]
    assert floors and floors[0].get_ydata()[0] == pytest.approx(reference.holdout["roc_auc"] - 0.05)
    assert plot_trend([], result.metrics, end - timedelta(hours=1), end, load_settings(None), tmp_path / "t.png")


def test_registration_keeps_the_reference_with_its_sha256_and_a_changed_file_is_refused(small):
    from pathlib import Path
    from urllib.parse import urlparse

    import mlflow

    from core.integrity import IntegrityError
    from tasks.release import prediction_reference
    from tasks.release.registry import get_version
    from tests.conftest import register_versions, tuned

    settings = tuned(small, training={"predict_fn": "predict_proba"})
    registered, trained, _ = register_versions(settings, 1)[0]
    version = get_version(settings, registered.name, registered.version)
    assert len(version.tags["prediction_reference_sha256"]) == 64
    reference = prediction_reference.load(settings, version)
    assert reference is not None and reference.has_probabilities and reference.rows == len(trained.X_holdout)
    assert reference.holdout["roc_auc"] == pytest.approx(trained.metrics["roc_auc"], abs=1e-5)
    stored = Path(urlparse(mlflow.get_run(registered.run_id).info.artifact_uri).path) / prediction_reference.ARTIFACT
    stored.write_bytes(stored.read_bytes().replace(b'"rows": ', b'"rows": 1'))
    with pytest.raises(IntegrityError, match="prediction_reference.json does not match the sha256"):
        prediction_reference.load(settings, version)


def test_multiclass_accuracy_is_estimated_without_an_auc():
    rng = np.random.default_rng(21)

    def three(rows, shrink=1.0):
        x = rng.normal(size=(rows, 3))
        x[:, :2] *= shrink
        logits = np.column_stack([x[:, 0] * 1.5, x[:, 1] * 1.5, -x[:, 0] - x[:, 1]])
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        y = np.array(["a", "b", "c"])[(rng.random(rows)[:, None] > p.cumsum(axis=1)).sum(axis=1)]
        return pd.DataFrame(x, columns=["x0", "x1", "x2"]), y

    X, y = three(8_000)
    model = LogisticRegression().fit(X, y)
    reference = build(model, *three(4_000), "multiclass", "predict_proba")
    assert set(reference.calibration) == {'"a"', '"b"', '"c"'} and "roc_auc" not in reference.holdout
    Xw, yw = three(6_000, 0.4)
    result = estimate(served_outputs(log_of(model, Xw), "1", reference), reference)
    realised_accuracy = np.mean(model.predict(Xw) == yw)
    assert set(result.figures) == {"accuracy"}
    assert abs(result.figures["accuracy"] - realised_accuracy) < 0.03
    assert realised_accuracy < reference.holdout["accuracy"] - 0.05  # the shift lowered it
