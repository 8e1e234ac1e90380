"""The quality gate on real scikit-learn models and generated holdouts: metrics that agree with
scikit-learn, a bootstrap that agrees with resampling rows, verdicts that catch a worse model
(overall or in one slice) and do not fail on noise."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn import metrics as skm
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.compose import ColumnTransformer
from sklearn.dummy import DummyRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.svm import LinearSVC
from sklearn.tree import DecisionTreeClassifier

from configs.settings import (
    DEFAULT_METRIC,
    ERROR_METRICS,
    METRIC_SPELLINGS,
    QUALITY_METRICS,
    QualitySettings,
    load_settings,
)
from core.errors import ConfigError, RegistryError
from core.vocabulary import Task
from flows.cli import cli
from tasks.quality.bootstrap import resample_means
from tasks.quality.compare import FAIL, NOT_JUDGED, PASS, Incumbent, judge, slices, version_task
from tasks.training.pipeline import evaluate
from tasks.training.quality_metrics import METRICS, answers, encode, metrics_of

REGIONS = {"north": 0.45, "south": 0.3, "east": 0.15, "west": 0.1}


def table(n: int, seed: int, task: Task = Task.BINARY) -> tuple[pd.DataFrame, pd.Series]:
    """Features a, b, c (signal), noise, region; a label that a model of a, b, c learns best."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {
            "a": rng.normal(size=n),
            "b": rng.normal(size=n),
            "c": rng.normal(size=n),
            "noise": rng.normal(size=n),
            "region": rng.choice(list(REGIONS), n, p=list(REGIONS.values())),
        }
    )
    signal = 1.2 * X["a"] + 0.8 * X["b"] + 0.6 * X["c"]
    if task is Task.REGRESSION:
        return X, pd.Series(50 + 10 * signal + rng.normal(scale=8, size=n), name="y")
    if task is Task.MULTICLASS:
        cut = np.digitize(signal + rng.normal(scale=0.8, size=n), [-0.8, 0.8])
        return X, pd.Series(np.array(["low", "mid", "high"])[cut], name="y")
    return X, pd.Series((rng.random(n) < 1 / (1 + np.exp(-signal))).astype(int), name="y")


def fitted(columns: list[str], X: pd.DataFrame, y: pd.Series, estimator=None) -> Pipeline:
    """A pipeline that sees only `columns`: fewer signal columns, a worse model."""
    pick = ColumnTransformer([("keep", "passthrough", columns)])
    return Pipeline([("pick", pick), ("model", estimator or LogisticRegression())]).fit(X, y)


class WorseIn(ClassifierMixin, BaseEstimator):
    """A fitted classifier that answers with `weaker`'s scores where `column == value`: a
    regression in one slice only."""

    def __init__(self, model=None, weaker=None, column: str = "", value: str = ""):
        self.model, self.weaker, self.column, self.value = model, weaker, column, value

    def fit(self, X, y):
        return self

    @property
    def classes_(self):
        return self.model.classes_

    def predict_proba(self, X):
        rows = (X[self.column] == self.value).to_numpy()[:, None]
        return np.where(rows, self.weaker.predict_proba(X), self.model.predict_proba(X))

    def predict(self, X):
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


@pytest.fixture(scope="module")
def binary():
    X, y = table(6_000, seed=1)
    holdout = table(3_000, seed=2)
    return {
        "full": fitted(["a", "b", "c"], X, y),
        "weaker": fitted(["a"], X, y),
        "baseline": fitted(["a"], X, y, DecisionTreeClassifier(max_depth=1)),
        "train": (X, y),
        "holdout": holdout,
    }


def production(model, task: Task = Task.BINARY) -> Incumbent:
    return Incumbent(model, "1", task)


def by_scope(report) -> dict[str, object]:
    return {r.scope: r for r in report.rows if r.metric == report.metric}


# --- metrics and the bootstrap -----------------------------------------------------------------------


def _scored(task: Task, seed: int = 3):
    X, y = table(4_000, seed, task)
    Xh, yh = table(1_500, seed + 1, task)
    estimator = LinearRegression() if task is Task.REGRESSION else LogisticRegression()
    model = fitted(["a", "b"], X, y, estimator)
    truth = encode(yh, task, [model])
    return model, truth, answers(model, Xh, truth, task, list(METRICS.values())), Xh, yh


@pytest.mark.parametrize(
    ("task", "name", "reference"),
    [
        (Task.BINARY, "roc_auc", lambda m, X, y: skm.roc_auc_score(y, m.predict_proba(X)[:, 1])),
        (Task.BINARY, "log_loss", lambda m, X, y: skm.log_loss(y, m.predict_proba(X))),
        (Task.BINARY, "accuracy", lambda m, X, y: skm.accuracy_score(y, m.predict(X))),
        (Task.BINARY, "balanced_accuracy", lambda m, X, y: skm.balanced_accuracy_score(y, m.predict(X))),
        (Task.BINARY, "f1", lambda m, X, y: skm.f1_score(y, m.predict(X))),
        (Task.BINARY, "precision", lambda m, X, y: skm.precision_score(y, m.predict(X))),
        (Task.BINARY, "recall", lambda m, X, y: skm.recall_score(y, m.predict(X))),
        (Task.MULTICLASS, "f1_macro", lambda m, X, y: skm.f1_score(y, m.predict(X), average="macro")),
        (Task.MULTICLASS, "precision_macro", lambda m, X, y: skm.precision_score(y, m.predict(X), average="macro")),
        (Task.MULTICLASS, "recall_macro", lambda m, X, y: skm.recall_score(y, m.predict(X), average="macro")),
        (Task.MULTICLASS, "log_loss", lambda m, X, y: skm.log_loss(y, m.predict_proba(X), labels=m.classes_)),
        (Task.MULTICLASS, "balanced_accuracy", lambda m, X, y: skm.balanced_accuracy_score(y, m.predict(X))),
        (Task.REGRESSION, "rmse", lambda m, X, y: skm.root_mean_squared_error(y, m.predict(X))),
        (Task.REGRESSION, "mae", lambda m, X, y: skm.mean_absolute_error(y, m.predict(X))),
        (Task.REGRESSION, "r2", lambda m, X, y: skm.r2_score(y, m.predict(X))),
    ],
)
def test_every_metric_agrees_with_scikit_learn(task, name, reference):
    model, truth, said, Xh, yh = _scored(task)
    assert METRICS[name].point(truth, said) == pytest.approx(reference(model, Xh, yh), abs=1e-9)


@pytest.mark.parametrize("task", [Task.BINARY, Task.MULTICLASS])
def test_label_metrics_agree_with_scikit_learn_when_a_class_is_never_predicted(task):
    """A stump on three classes never answers one of them: its precision is 0/0, counted 0 as scikit-learn does."""
    X, y = table(3_000, 12, task)
    Xh, yh = table(1_000, 13, task)
    stump = fitted(["c"], X, y, DecisionTreeClassifier(max_depth=1))
    stump = stump if task is Task.MULTICLASS else _Always(stump, 0)
    truth = encode(yh, task, [stump])
    said = answers(stump, Xh, truth, task, list(METRICS.values()))
    assert len(set(stump.predict(Xh))) < len(set(yh))
    labels = {"zero_division": 0} | ({"average": "macro"} if task is Task.MULTICLASS else {})
    suffix = "_macro" if task is Task.MULTICLASS else ""
    for name, reference in (("f1", skm.f1_score), ("precision", skm.precision_score), ("recall", skm.recall_score)):
        expected = reference(yh, stump.predict(Xh), **labels)
        assert METRICS[name + suffix].point(truth, said) == pytest.approx(expected, abs=1e-12), name


class _Always(ClassifierMixin, BaseEstimator):
    """A fitted binary classifier that always answers one class."""

    def __init__(self, model, answer):
        self.model, self.answer = model, answer
        self.classes_ = model.classes_

    def predict(self, X):
        return np.full(len(X), self.answer)

    def predict_proba(self, X):
        return self.model.predict_proba(X)


@pytest.mark.parametrize("task", [Task.BINARY, Task.MULTICLASS, Task.REGRESSION])
def test_the_runs_log_every_metric_the_gate_judges_under_the_same_name_and_value(task):
    """One vocabulary and one value: what a run logs (evaluate) is what quality.metric / min / max
    name, and what the gate computes from its per-row columns (held to scikit-learn's above)."""
    model, truth, said, Xh, yh = _scored(task)
    logged = evaluate(model, Xh, yh, task)
    judged = metrics_of(task)
    assert set(judged) <= set(logged)
    assert set(logged) - set(judged) == ({"roc_auc"} if task is Task.MULTICLASS else set())  # one-vs-rest: logged only
    for name in judged:
        assert logged[name] == pytest.approx(METRICS[name].point(truth, said), abs=1e-6), name


def test_the_settings_name_the_metrics_the_gate_computes():
    """configs/settings/ keeps the names (it cannot import numpy's metrics); they are these."""
    assert list(METRICS) == list(QUALITY_METRICS)
    assert set(ERROR_METRICS) <= set(QUALITY_METRICS)
    assert all(DEFAULT_METRIC[task] in metrics_of(task) for task in (Task.BINARY, Task.MULTICLASS, Task.REGRESSION))
    assert set(METRIC_SPELLINGS.values()) <= set(QUALITY_METRICS)
    assert not set(METRIC_SPELLINGS) & set(QUALITY_METRICS)


def test_roc_auc_counts_ties_as_scikit_learn_does():
    y = pd.Series([0, 0, 1, 1, 0, 1, 1, 0])
    score = np.array([0.1, 0.4, 0.4, 0.8, 0.8, 0.8, 0.2, 0.1])
    truth = encode(y, Task.BINARY, [LogisticRegression().fit(np.c_[score], y)])
    from tasks.training.quality_metrics import Answers

    assert METRICS["roc_auc"].point(truth, Answers(truth.values, score, None)) == skm.roc_auc_score(y, score)


def test_the_vectorized_paired_bootstrap_agrees_with_resampling_rows(binary):
    """The interval of the AUC difference against a plain loop that draws rows with replacement."""
    Xh, yh = binary["holdout"]
    Xh, yh = Xh.iloc[:800], yh.iloc[:800]
    a, b = binary["full"].predict_proba(Xh)[:, 1], binary["weaker"].predict_proba(Xh)[:, 1]
    rng, labels = np.random.default_rng(5), yh.to_numpy()
    loop = []
    for _ in range(300):
        rows = rng.integers(0, len(labels), len(labels))
        loop.append(skm.roc_auc_score(labels[rows], a[rows]) - skm.roc_auc_score(labels[rows], b[rows]))
    truth = encode(yh, Task.BINARY, [binary["full"]])
    auc = METRICS["roc_auc"]
    said = [answers(m, Xh, truth, Task.BINARY, [auc]) for m in (binary["full"], binary["weaker"])]
    means = resample_means([[np.hstack([auc.model(truth, s) for s in said])]], 2_000, seed=0)[0][0]
    vectorized = means[:, 0] - means[:, 1]
    assert np.mean(vectorized) == pytest.approx(np.mean(loop), abs=0.004)
    assert np.std(vectorized) == pytest.approx(np.std(loop), rel=0.15)


def test_resamples_are_seeded_and_weight_both_models_alike():
    columns = np.random.default_rng(0).normal(size=(500, 2))
    columns[:, 1] = columns[:, 0]  # two identical models: every paired difference is zero
    first = resample_means([[columns]], 300, seed=7)[0][0]
    assert np.array_equal(first, resample_means([[columns]], 300, seed=7)[0][0])
    assert np.allclose(first[:, 0], first[:, 1])
    assert first[:, 0].std() > 0.02  # and yet each resample differs


# --- verdicts -----------------------------------------------------------------------------------------


def test_a_better_candidate_passes(binary):
    X, y = binary["holdout"]
    report = judge(
        binary["full"], binary["baseline"], production(binary["weaker"]), X, y, Task.BINARY, QualitySettings()
    )
    overall = by_scope(report)["overall"]
    assert report.passed and overall.verdict == PASS and overall.reason.endswith("better")
    assert overall.production < overall.candidate and overall.low > 0
    assert report.production == "1"


def test_a_clearly_worse_candidate_fails_naming_the_metric(binary):
    X, y = binary["holdout"]
    report = judge(
        binary["weaker"], binary["baseline"], production(binary["full"]), X, y, Task.BINARY, QualitySettings()
    )
    assert not report.passed
    assert [r.scope for r in report.failures] == ["overall"]
    assert report.reason().startswith("overall: roc_auc worse than Production (version 1): ")
    overall = by_scope(report)["overall"]
    assert overall.high < 0 and overall.difference < -0.01


def test_two_equally_good_models_pass_on_noise():
    """Two models of the same design fitted on different draws, a 1,000-row holdout: 20 of 20 pass."""
    settings = QualitySettings(slices=["region"], min_slice_rows=100)
    verdicts = []
    for seed in range(20):
        X1, y1 = table(2_000, 100 + seed)
        X2, y2 = table(2_000, 200 + seed)
        X, y = table(1_000, 300 + seed)
        mine, theirs = fitted(["a", "b", "c"], X1, y1), fitted(["a", "b", "c"], X2, y2)
        baseline = fitted(["a"], X1, y1, DecisionTreeClassifier(max_depth=1))
        report = judge(mine, baseline, production(theirs), X, y, Task.BINARY, settings)
        verdicts.append(report.passed)
        assert len([r for r in report.rows if r.verdict != NOT_JUDGED]) >= 4  # overall and the large regions
    assert verdicts == [True] * 20


def test_a_regression_in_one_slice_is_caught_and_named(binary):
    X, y = binary["holdout"]
    crippled = WorseIn(binary["full"], binary["weaker"], "region", "west")  # 10 % of the rows
    settings = QualitySettings(slices=["region"])
    report = judge(crippled, binary["baseline"], production(binary["full"]), X, y, Task.BINARY, settings)
    assert [r.scope for r in report.failures] == ["region=west"]
    assert report.reason().startswith("region=west: roc_auc worse than Production (version 1): ")
    scopes = by_scope(report)
    assert scopes["overall"].verdict == PASS and scopes["region=north"].verdict == PASS
    assert report.alpha_each == pytest.approx(0.05 / 5)  # overall and four judged regions (Bonferroni)


def test_small_slices_are_reported_not_judged(binary):
    X, y = binary["holdout"]
    crippled = WorseIn(binary["full"], binary["weaker"], "region", "west")  # 313 rows
    settings = QualitySettings(slices=["region"], min_slice_rows=400)
    report = judge(crippled, binary["baseline"], production(binary["full"]), X, y, Task.BINARY, settings)
    west = by_scope(report)["region=west"]
    assert report.passed
    assert west.verdict == NOT_JUDGED and "< quality.min_slice_rows 400" in west.reason
    assert west.candidate < west.production - 0.05 and west.low is None  # reported all the same
    assert report.alpha_each == pytest.approx(0.05 / 4)


def test_numeric_slices_are_quantile_bins_and_missing_values_a_slice_of_their_own():
    X, _ = table(1_000, seed=4)
    X.loc[:49, "a"] = np.nan
    groups = slices(X, QualitySettings(slices=["a", "region"], slice_bins=4))
    names = [[label for label, _ in group] for group in groups]
    assert len(names[0]) == 5 and names[0][0].startswith("a in (") and names[0][-1] == "a missing"
    assert [len(rows) for _, rows in groups[0]] == [238, 237, 237, 238, 50]
    assert names[1] == ["region=north", "region=south", "region=east", "region=west"]
    assert all(sorted(np.concatenate([rows for _, rows in g])) == list(range(1_000)) for g in groups)


def test_floors_and_ceilings(binary):
    X, y = binary["holdout"]
    settings = QualitySettings(min={"roc_auc": 0.99, "accuracy": 0.5})
    report = judge(binary["full"], binary["baseline"], None, X, y, Task.BINARY, settings)
    floors = {r.metric: r for r in report.rows if r.scope == "floor"}
    assert floors["accuracy"].verdict == PASS and floors["accuracy"].reason.endswith(">= 0.5 (quality.min.accuracy)")
    assert floors["roc_auc"].verdict == FAIL
    assert [r.scope for r in report.failures] == ["floor"]
    assert report.reason().startswith("floor: roc_auc 0.")
    assert report.reason().endswith("below 0.99 (quality.min.roc_auc)")

    Xr, yr = table(3_000, 5, Task.REGRESSION)
    model = fitted(["a", "b", "c"], *table(3_000, 6, Task.REGRESSION), LinearRegression())
    median = fitted(["a"], *table(3_000, 6, Task.REGRESSION), DummyRegressor(strategy="median"))
    ceiling = QualitySettings(max={"rmse": 5.0})
    failed = judge(model, median, None, Xr, yr, Task.REGRESSION, ceiling)
    assert failed.reason().startswith("ceiling: rmse ") and failed.reason().endswith("above 5 (quality.max.rmse)")
    assert judge(model, median, None, Xr, yr, Task.REGRESSION, QualitySettings(max={"rmse": 50.0})).passed


def test_without_production_only_the_baseline_and_the_floors_judge(binary):
    X, y = binary["holdout"]
    settings = QualitySettings(slices=["region"])
    report = judge(binary["full"], binary["baseline"], None, X, y, Task.BINARY, settings)
    scopes = by_scope(report)
    assert report.passed and report.production is None
    assert scopes["overall"].production is None and scopes["overall"].baseline < scopes["overall"].candidate
    assert "no Production version yet" in scopes["overall"].reason
    assert {r.verdict for s, r in scopes.items() if s != "overall"} == {NOT_JUDGED}

    Xt, yt = binary["train"]
    useless = fitted(["noise"], Xt, yt)  # learns nothing: below its one-rule baseline
    failed = judge(useless, binary["baseline"], None, X, y, Task.BINARY, settings)
    assert not failed.passed and "does not beat the baseline's" in failed.reason()


def test_regression_candidates_are_judged_on_rmse():
    X, y = table(4_000, 7, Task.REGRESSION)
    Xh, yh = table(3_000, 8, Task.REGRESSION)
    full, weaker = fitted(["a", "b", "c"], X, y, LinearRegression()), fitted(["a"], X, y, LinearRegression())
    median = fitted(["a"], X, y, DummyRegressor(strategy="median"))
    task = Task.REGRESSION
    worse = judge(weaker, median, production(full, task), Xh, yh, task, QualitySettings(slices=["b"]))
    assert worse.metric == "rmse" and worse.reason().startswith("overall: rmse worse than Production (version 1)")
    assert by_scope(worse)["overall"].low > 0  # errors: worse means higher
    same = fitted(["a", "b", "c"], *table(4_000, 9, task), LinearRegression())
    assert judge(same, median, production(full, task), Xh, yh, task, QualitySettings(slices=["b"])).passed
    r2 = judge(weaker, median, production(full, task), Xh, yh, task, QualitySettings(metric="r2"))
    assert r2.reason().startswith("overall: r2 worse than Production")


@pytest.mark.parametrize("metric", [None, "log_loss"])
def test_multiclass_candidates_are_judged_on_f1_macro_or_log_loss(metric):
    X, y = table(4_000, 10, Task.MULTICLASS)
    Xh, yh = table(3_000, 11, Task.MULTICLASS)
    full, weaker = fitted(["a", "b", "c"], X, y), fitted(["a"], X, y)
    baseline = fitted(["a"], X, y, DecisionTreeClassifier(max_depth=1))
    settings = QualitySettings(metric=metric)
    task = Task.MULTICLASS
    worse = judge(weaker, baseline, production(full, task), Xh, yh, task, settings)
    assert worse.metric == (metric or "f1_macro")
    assert worse.reason().startswith(f"overall: {worse.metric} worse than Production (version 1)")
    assert judge(full, baseline, production(weaker, task), Xh, yh, task, settings).passed


def test_a_production_that_cannot_score_the_holdout_is_reported_not_compared(binary):
    X, y = binary["holdout"]
    Xt, yt = binary["train"]
    old = fitted(["a", "b", "gone"], Xt.assign(gone=1.0), yt)  # needs a column the new holdout lacks
    report = judge(binary["full"], binary["baseline"], production(old), X, y, Task.BINARY, QualitySettings())
    assert report.passed and report.production is None
    assert "Production (version 1) cannot score this holdout" in report.note and "gone" in report.note
    other_task = judge(
        binary["full"], binary["baseline"], production(old, Task.REGRESSION), X, y, Task.BINARY, QualitySettings()
    )
    assert "predicts a regression target: not compared" in other_task.note


@pytest.mark.parametrize(
    ("settings", "task", "message"),
    [
        (QualitySettings(metric="rmse"), Task.BINARY, "quality.metric: rmse is not a metric of a binary model"),
        (QualitySettings(metric="roc_auc"), Task.MULTICLASS, "quality.metric: roc_auc is not a metric of a multiclass"),
        (QualitySettings(min={"roc_auc": 0.7}), Task.REGRESSION, "quality.min.roc_auc: roc_auc is not a metric"),
        (QualitySettings(slices=["regoin"]), Task.BINARY, "quality.slices: column 'regoin' is not a feature"),
    ],
)
def test_settings_that_do_not_fit_the_model_are_one_line_errors(binary, settings, task, message):
    X, y = binary["holdout"]
    with pytest.raises(ConfigError, match=message):
        judge(binary["full"], binary["baseline"], None, X, y, task, settings)


def test_a_metric_that_needs_probabilities_names_the_estimator_that_has_none(binary):
    X, y = binary["holdout"]
    Xt, yt = binary["train"]
    svm = fitted(["a", "b"], Xt, yt, LinearSVC())
    with pytest.raises(ConfigError, match="quality.metric: roc_auc needs predict_proba, which Pipeline has not"):
        judge(svm, binary["baseline"], None, X, y, Task.BINARY, QualitySettings())
    assert judge(svm, binary["baseline"], None, X, y, Task.BINARY, QualitySettings(metric="accuracy")).passed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("quality:\n  min: {rmse: 5}\n", "rmse: an error metric takes a ceiling (quality.max)"),
        ("quality:\n  max: {roc_auc: 0.9}\n", "roc_auc: a score takes a floor (quality.min)"),
        ("quality:\n  min: {auc: 0.9}\n", "key 'quality.min': 'auc' is spelled 'roc_auc' here"),
        ("quality:\n  min: {macro_f1: 0.9}\n", "key 'quality.min': 'macro_f1' is spelled 'f1_macro' here"),
        ("quality:\n  metric: neg_log_loss\n", "key 'quality.metric': 'neg_log_loss' is spelled 'log_loss' here"),
        ("quality:\n  max: {rmse: 5, f1_macr: 1}\n", "key 'quality.max': unknown metric 'f1_macr' (metrics: roc_auc, "),
        ("quality:\n  alpha: 0\n", "key 'quality.alpha'"),
    ],
)
def test_bad_quality_keys_in_a_profile_are_named(settings, tmp_path, text, message):
    profile = tmp_path / "bad.yaml"
    profile.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_settings(profile, cwd=tmp_path)


def test_the_task_of_a_version_is_its_tag_or_told_from_its_model(binary):
    assert version_task({"task": "regression"}) is Task.REGRESSION
    assert version_task({}, fitted(["a"], *table(200, 1, Task.REGRESSION), LinearRegression())) is Task.REGRESSION
    assert version_task({}, fitted(["a"], *table(300, 1, Task.MULTICLASS))) is Task.MULTICLASS
    assert version_task({}, binary["full"]) is Task.BINARY
    assert version_task({}) is Task.BINARY  # before the tag only classifiers were trained
    with pytest.raises(RegistryError, match="task='ranking'"):
        version_task({"task": "ranking"})


def test_force_quality_needs_a_reason(settings):
    result = CliRunner().invoke(cli, ["train", "--force-quality"])
    assert result.exit_code == 2 and "--force-quality needs --reason TEXT" in result.stderr
