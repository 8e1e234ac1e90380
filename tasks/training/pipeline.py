"""Training: one scikit-learn Pipeline that carries all of its preprocessing, plus a baseline.

Every statistic (medians, means, scales, category vocabularies) is fitted on the training split
inside the Pipeline, so it ships with the model and serving never recomputes it. The baseline
is one simple rule on one feature: the last resort of the gateway's fallback chain.

The task (binary, multiclass, regression) is resolved from the target when `training.task` is
auto; it decides the built-in estimator, the holdout metrics and the baseline.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from prefect import get_run_logger
from sklearn.base import clone
from sklearn.compose import ColumnTransformer
from sklearn.frozen import FrozenEstimator
from sklearn.impute import SimpleImputer
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import FixedThresholdClassifier, StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.utils import get_tags
from sklearn.utils._param_validation import InvalidParameterError

from configs.settings import DataSettings, Settings, TrainingSettings, is_import_path
from core.errors import ConfigError, DataError, ShipwayError
from core.free_text import text_columns
from core.plain import plain, plain_list
from core.vocabulary import Task
from tasks.features import DateParts, TextTfidf, choose_features, holdout_split, is_datetime, row_numbers
from tasks.retries import shipway_task
from tasks.training import estimators
from tasks.training.baseline import build_baseline
from tasks.training.quality_metrics import METRICS, answers, encode, metrics_of

MAX_AUTO_CLASSES = 20  # an integer target with more distinct values than this is a quantity, not classes
THRESHOLD_FOLDS = 3  # each fold is one more fit of the estimator: few, so that `auto` stays affordable
TEXT_TERMS = 10_000  # TF-IDF vocabulary per text column, for estimators that take sparse input
TEXT_TERMS_DENSE = 200  # ... for those that need dense input (HGB): each term is a column they bin


@dataclass(frozen=True)
class TrainedModel:
    """A fitted version and everything needed to judge it: the quality gate reads the holdout."""

    model: Pipeline
    baseline: Pipeline
    baseline_rule: str
    metrics: dict[str, float]
    baseline_metrics: dict[str, float]
    features: list[str]
    target: str
    X_holdout: pd.DataFrame  # the feature columns of the holdout rows: what the model takes
    y_holdout: pd.Series
    task: Task = Task.BINARY
    estimator: str = ""  # what was fitted, readable: LogisticRegression, Pipeline(...)
    predict_fn: str = "predict"
    holdout_index: pd.Index | None = None  # row labels of the holdout in the snapshot frame (slices)
    search: pd.DataFrame | None = None  # one row per searched candidate, best first
    threshold: float | None = None  # the served decision threshold; None: the estimator's own predict
    threshold_note: str = ""  # how it was chosen, or why there is none (the version tag's text)
    positive_rate: float | None = None  # binary: the training split's share of the positive class
    baseline_training: dict[str, float] = field(default_factory=dict)  # the metric that chose it, on training
    text_columns: list[str] = field(default_factory=list)  # features read as free text (core/free_text.py)

    @property
    def classes(self) -> list | None:
        return plain_list(self.model.classes_) if self.task.is_classification else None

    def serve(self, X: pd.DataFrame) -> np.ndarray:
        """What the served model answers for X: predictions, or probability rows."""
        return getattr(self.model, self.predict_fn)(X)


def split_target(df: pd.DataFrame, target: str, features: list[str]) -> tuple[pd.DataFrame, pd.Series]:
    """Features and label; the label must be present and complete."""
    if target not in df.columns:
        raise DataError(f"target column '{target}' is not in the data (columns: {', '.join(df.columns)})")
    y = df[target]
    if y.isna().any():
        raise DataError(f"target column '{target}' has {int(y.isna().sum())} null labels")
    if not features:
        raise DataError(f"data has no feature columns besides the target '{target}'")
    return df[features], y


def resolve_task(y: pd.Series, requested: Task) -> Task:
    """The task for label `y`. auto: booleans and text are classes; whole numbers with at most
    MAX_AUTO_CLASSES distinct values, each seen at least twice, are classes; any other number is
    regression. Classes are binary when there are two, else multiclass."""
    numeric = pd.api.types.is_numeric_dtype(y.dtype) and not pd.api.types.is_bool_dtype(y.dtype)
    name = y.name
    if requested is Task.REGRESSION:
        if not numeric:
            raise DataError(
                f"training.task is regression, but target '{name}' holds {y.dtype} values, not numbers; "
                "set training.task: auto, binary or multiclass"
            )
        if y.nunique() < 2:
            raise DataError(f"target column '{name}' is constant ({plain(y.iloc[0])!r}); nothing to learn")
        return Task.REGRESSION
    if y.nunique() < 2:
        raise DataError(f"target column '{name}' holds a single class ({plain(y.iloc[0])!r}); nothing to learn")
    if requested is Task.AUTO:
        counts = y.value_counts()
        whole = not numeric or bool(np.all(np.mod(y.to_numpy(dtype="float64"), 1) == 0))
        if numeric and not (whole and len(counts) <= MAX_AUTO_CLASSES and counts.min() >= 2):
            return Task.REGRESSION
        requested = Task.BINARY if len(counts) == 2 else Task.MULTICLASS
    classes = y.nunique()
    if requested is Task.BINARY and classes != 2:
        raise DataError(
            f"training.task is binary, but target '{name}' holds {classes} classes; set training.task: multiclass"
            + (" or regression" if numeric else "")
        )
    if requested is Task.MULTICLASS and classes < 3:
        raise DataError(f"training.task is multiclass, but target '{name}' holds 2 classes; set training.task: binary")
    return requested


def check_classes(y: pd.Series, task: Task, requested: Task) -> None:
    """Every class needs a row in the training split and one in the holdout."""
    counts = y.value_counts()
    if counts.min() >= 2:
        return
    chosen = f"training.task: auto chose {task.value}" if requested is Task.AUTO else f"training.task is {task.value}"
    hint = "; set training.task: regression for a quantity" if pd.api.types.is_numeric_dtype(y.dtype) else ""
    raise DataError(
        f"class {plain(counts.idxmin())!r} of target '{y.name}' has only {counts.min()} row ({chosen}); "
        f"every class needs at least 2 to have one in the training split and one in the holdout{hint}"
    )


def preprocessor(X: pd.DataFrame, text: list[str] | None = None, dense: bool = False) -> ColumnTransformer:
    """Impute and scale numbers (booleans as 0/1), date parts of datetimes, TF-IDF of each free-text
    column (`text`), impute and one-hot encode the rest: all fitted, never recomputed. Only the
    branches that have columns are built. `dense`: the estimator needs dense input, so the text
    vocabulary is small (TEXT_TERMS_DENSE) and the output is never a sparse matrix."""
    text = text or []
    numeric = [c for c in X.columns if pd.api.types.is_numeric_dtype(X[c].dtype)]
    dates = [c for c in X.columns if is_datetime(X[c])]
    categorical = [c for c in X.columns if c not in numeric and c not in dates and c not in text]
    scale = [("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]
    branches = [
        ("numeric", Pipeline(scale), numeric),
        ("dates", Pipeline([("parts", DateParts()), *_fresh(scale)]), dates),
        (
            "categorical",
            Pipeline(
                [
                    ("impute", SimpleImputer(strategy="constant", fill_value="__missing__")),
                    ("encode", OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
                ]
            ),
            categorical,
        ),
        # One branch per text column, given by name: TfidfVectorizer reads a 1-D column of texts.
        *[
            (f"text_{i}", TextTfidf(max_features=TEXT_TERMS_DENSE if dense else TEXT_TERMS, sublinear_tf=True), name)
            for i, name in enumerate(text)
        ],
    ]
    return ColumnTransformer(
        [b for b in branches if len(b[2])],
        verbose_feature_names_out=False,
        sparse_threshold=0 if dense else 0.3,
    )


def _fresh(steps: list[tuple[str, Any]]):
    return [(name, SimpleImputer(strategy="median") if name == "impute" else StandardScaler()) for name, _ in steps]


def build_pipeline(X: pd.DataFrame, training: TrainingSettings, task: Task, text: list[str] | None = None) -> Pipeline:
    """The estimator (built-in or the user's), behind shipway's preprocessing unless `preprocessing: none`."""
    estimator = estimators.make_estimator(training, task)
    if training.preprocessing == "none":
        return Pipeline([("model", estimator)])
    return Pipeline([("preprocess", preprocessor(X, text, dense=not takes_sparse(estimator))), ("model", estimator)])


def takes_sparse(estimator: Any) -> bool:
    """Whether the estimator fits on a sparse matrix (scikit-learn's input tags); unknown: no."""
    try:
        return bool(get_tags(estimator).input_tags.sparse)
    except Exception:  # the user's estimator may have no tags at all
        return False


@dataclass(frozen=True)
class Fitted:
    model: Pipeline  # what is served: the pipeline, its last step behind the decision threshold if any
    search: pd.DataFrame | None
    threshold: float | None
    threshold_note: str


def fit(pipeline: Pipeline, X: pd.DataFrame, y: pd.Series, training: TrainingSettings, task: Task) -> Fitted:
    """Fit (or search, then refit the best), choosing the decision threshold as `training.threshold`
    says; errors name the setting or the user's import path."""
    found = None
    if training.search is not None:
        estimators.check_search_params(pipeline, training.search)
        found = estimators.search(pipeline, training.search, training.seed)
    threshold, note = threshold_plan(training, task, pipeline, y)
    try:
        if found is not None:
            found.fit(X, y)
            pipeline = found.best_estimator_
        if threshold == "auto":
            pipeline, threshold, note = tuned(pipeline, X, y, training.seed)
        elif found is None:
            pipeline.fit(X, y)
    except ShipwayError:
        raise
    except InvalidParameterError as exc:  # sklearn checks parameter values only when fitting
        raise ConfigError(f"training.params: {_first_line(exc)}") from None
    except Exception as exc:  # the user's code (or a parameter it passed on) may raise anything
        where = (
            f"training.estimator {training.estimator}"
            if is_import_path(training.estimator)
            else f"training.estimator {training.estimator} with training.params"
        )
        raise DataError(f"{where}: fit failed: {type(exc).__name__}: {_first_line(exc)}") from None
    search = estimators.candidates(found) if found is not None else None
    if not isinstance(threshold, float):
        return Fitted(pipeline, search, None, note)
    return Fitted(with_threshold(pipeline, threshold, X, y), search, threshold, note)


def estimator_of(model: Pipeline) -> Any:
    """The fitted estimator of a trained model's last step, behind its decision threshold if any."""
    last = model.steps[-1][1]
    return last.estimator_.estimator if isinstance(last, FixedThresholdClassifier) else last


def threshold_plan(training: TrainingSettings, task: Task, pipeline: Pipeline, y: pd.Series) -> tuple[Any, str]:
    """The decision threshold to serve: a number, "auto" (to be chosen by cross-validation) or None
    (the estimator's own predict), and the note that says why."""
    setting = training.threshold
    if isinstance(setting, float):
        if task is not Task.BINARY:
            raise ConfigError(
                f"training.threshold {setting:g} applies to binary classifiers, but target '{y.name}' is "
                f"{task.value}; set training.threshold: auto or none"
            )
        if not hasattr(pipeline, "predict_proba"):
            raise ConfigError(
                f"training.threshold {setting:g} needs predict_proba, which {training.estimator} has not; "
                "set training.threshold: none"
            )
        return setting, "training.threshold"
    if task is Task.REGRESSION:
        return None, ""
    if setting == "none":
        return None, "none (the estimator's own predict)"
    if task is Task.MULTICLASS:
        return None, "none (multiclass: the most probable class)"
    if training.predict_fn == "predict_proba":
        return None, "none (probabilities are served: the client decides)"
    if not hasattr(pipeline, "predict_proba"):
        return None, "none (no predict_proba: the estimator's own predict)"
    if y.value_counts().min() < THRESHOLD_FOLDS:
        return None, f"none (fewer than {THRESHOLD_FOLDS} rows of a class to cross-validate a threshold)"
    return "auto", ""


def tuned(pipeline: Pipeline, X: pd.DataFrame, y: pd.Series, seed: int) -> tuple[Pipeline, float | None, str]:
    """The threshold with the best balanced accuracy on out-of-fold probabilities of the training
    split (THRESHOLD_FOLDS fits), and the pipeline fitted on the whole split. Every distinct
    decision is scored exactly, at the midpoint between neighbouring probabilities: scikit-learn's
    TunedThresholdClassifierCV interpolates each fold's curve onto a grid, which for a model with few
    distinct probabilities (k neighbours, small trees) picked a threshold no fold had scored. None
    (the estimator's own predict) unless a threshold beats 0.5 in that cross-validation."""
    folds = StratifiedKFold(THRESHOLD_FOLDS, shuffle=True, random_state=seed)
    proba = cross_val_predict(clone(pipeline), X, y, cv=folds, method="predict_proba")[:, 1]
    positive = y.to_numpy() == np.unique(y)[1]  # the second of classes_, as predict_proba orders them
    fitted = pipeline.fit(X, y)
    cut, score, default = best_cut(proba, positive)
    said = f"{THRESHOLD_FOLDS}-fold CV on the training split"
    if cut is None or score <= default:
        return (
            fitted,
            None,
            f"auto: 0.5 is best (balanced_accuracy {default:.4f} in {said}): the estimator's own predict",
        )
    return fitted, cut, f"auto: best balanced_accuracy {score:.4f} in {said} (0.5: {default:.4f})"


def best_cut(proba: np.ndarray, positive: np.ndarray) -> tuple[float | None, float, float]:
    """The cut (answer positive when proba >= cut) with the best balanced accuracy, that accuracy,
    and the accuracy at 0.5; ties go to the cut nearest 0.5. One sort: per distinct probability,
    the negatives at or below it and the positives above it."""
    balanced = lambda p: 0.5 * (np.mean(p[positive]) + np.mean(~p[~positive]))
    default = float(balanced(proba >= 0.5))
    values, at = np.unique(proba, return_inverse=True)
    if len(values) < 2:
        return None, default, default
    negatives_upto = np.cumsum(np.bincount(at, weights=~positive, minlength=len(values)))[:-1]
    positives_above = positive.sum() - np.cumsum(np.bincount(at, weights=positive, minlength=len(values)))[:-1]
    scores = 0.5 * (negatives_upto / (~positive).sum() + positives_above / positive.sum())
    cuts = (values[:-1] + values[1:]) / 2
    best = np.flatnonzero(scores >= scores.max() - 1e-12)
    chosen = best[np.argmin(np.abs(cuts[best] - 0.5))]
    return float(cuts[chosen]), float(scores[chosen]), default


def with_threshold(pipeline: Pipeline, threshold: float, X: pd.DataFrame, y: pd.Series) -> Pipeline:
    """The fitted pipeline with its last step answering the positive class (the second of `classes_`)
    when its probability is >= `threshold`: scikit-learn's FixedThresholdClassifier around the
    fitted step, frozen so that nothing is refitted."""
    *head, (name, last) = pipeline.steps
    rows = Pipeline(head).transform(X) if head else X
    fixed = FixedThresholdClassifier(FrozenEstimator(last), threshold=threshold, response_method="predict_proba")
    return Pipeline([*head, (name, fixed.fit(rows, y))])


def evaluate(model: Any, X: pd.DataFrame, y: pd.Series, task: Task) -> dict[str, float]:
    """Holdout metrics of the task, computed as the quality gate computes them (quality_metrics.py,
    held to scikit-learn's functions by tests/quality/test_quality.py). Binary metrics use the positive
    class (the second of `classes_`), multiclass ones average over classes; probability metrics need
    predict_proba, roc_auc every class in the holdout. A multiclass roc_auc (one-vs-rest) is logged,
    never judged: scikit-learn's."""
    names = [name for name in metrics_of(task) if not METRICS[name].needs_proba]
    proba = task is not Task.REGRESSION and hasattr(model, "predict_proba")
    every_class = proba and y.nunique() == len(model.classes_)
    if proba:
        names.append("log_loss")
    if every_class and task is Task.BINARY:
        names.append("roc_auc")
    chosen = [METRICS[name] for name in names]
    truth = encode(y, task, [model])
    said = answers(model, X, truth, task, chosen)
    metrics = {metric.name: metric.point(truth, said) for metric in chosen}
    if every_class and task is Task.MULTICLASS:
        metrics["roc_auc"] = roc_auc_score(y, model.predict_proba(X), multi_class="ovr", labels=model.classes_)
    return {k: round(float(v), 6) for k, v in metrics.items()}


def train(
    df: pd.DataFrame,
    target: str,
    settings: TrainingSettings,
    data: DataSettings | None = None,
    *,
    metric: str | None = None,
    sensitive: Collection[str] = (),
) -> TrainedModel:
    """Choose the features, resolve the task, split, fit the pipeline and the baseline on the
    training split, score both on the holdout. `data` chooses features and the time column
    (default: every column but the target, a random split); `metric` (quality.metric, default the
    task's) chooses the baseline's rule, as it judges the model. The baseline's rule is on no
    `sensitive` column (serving.sensitive_columns): it would name training values in the clear."""
    data = data or DataSettings(target=target)
    features = choose_features(list(df.columns), target, data) if target in df.columns else []
    X, y = split_target(df, target, features)
    task_ = resolve_task(y, settings.task)
    if task_.is_classification:
        check_classes(y, task_, settings.task)
    if settings.predict_fn == "predict_proba" and not task_.is_classification:
        raise ConfigError("training.predict_fn is predict_proba, but training.task is regression (no classes)")
    stratify = y if task_.is_classification and data.time_column is None else None
    train_rows, test_rows = holdout_split(df, settings.test_size, settings.seed, stratify, data.time_column)
    X_train, X_test, y_train, y_test = X.loc[train_rows], X.loc[test_rows], y.loc[train_rows], y.loc[test_rows]
    if task_.is_classification:
        unseen = sorted(set(y_test) - set(y_train), key=str)
        if unseen:
            raise DataError(
                f"class {plain(unseen[0])!r} of target '{target}' is only in the latest rows by "
                f"data.time_column '{data.time_column}': the model would never learn it"
            )
    text = text_columns(X, features, data.text_columns)
    pipeline = build_pipeline(X_train, settings, task_, text)
    fitted = fit(pipeline, X_train, y_train, settings, task_)
    model = fitted.model
    if settings.predict_fn == "predict_proba" and not hasattr(model, "predict_proba"):
        raise ConfigError(f"training.predict_fn is predict_proba, but {settings.estimator} has no predict_proba")
    baseline = build_baseline(X_train, y_train, task_, settings.seed, metric, skip=[*text, *sensitive])
    return TrainedModel(
        model=model,
        baseline=baseline.model,
        baseline_rule=baseline.rule,
        metrics=evaluate(model, X_test, y_test, task_),
        baseline_metrics=evaluate(baseline.model, X_test, y_test, task_),
        features=features,
        target=target,
        X_holdout=X_test,
        y_holdout=y_test,
        task=task_,
        estimator=estimators.describe(pipeline.named_steps["model"]),
        predict_fn=settings.predict_fn,
        holdout_index=test_rows,
        search=fitted.search,
        threshold=fitted.threshold,
        threshold_note=fitted.threshold_note,
        positive_rate=float(np.mean(y_train == model.classes_[1])) if task_ is Task.BINARY else None,
        baseline_training={baseline.metric: round(baseline.training, 6)},
        text_columns=text,
    )


# A task of its own: `train` takes settings' sections, so that a test trains without a whole profile.
@shipway_task("train")
def train_task(df: pd.DataFrame, target: str, settings: Settings) -> TrainedModel:
    trained = train(
        df,
        target,
        settings.training,
        settings.data,
        metric=settings.quality.metric,
        sensitive=list(settings.serving.sensitive_columns),
    )
    get_run_logger().info(
        "%s (%s, %d features) holdout %s; baseline (%s) %s%s",
        trained.estimator,
        trained.task.value,
        len(trained.features),
        headline(trained.metrics),
        trained.baseline_rule,
        headline(trained.baseline_metrics),
        f"; decision threshold {decision_threshold(trained)}" if trained.threshold_note else "",
    )
    if settings.data.features is None:  # chosen for the user: say what looks like no feature at all
        for name, (low, high) in row_numbers(df[trained.features]).items():
            get_run_logger().warning(
                "feature '%s' holds a different integer on every one of the %s rows, from %d to %d: a row number "
                "or an id? A model learns nothing general from it and new rows fall outside its range (the skew "
                "gate stops them); if it is not a feature, list it in data.exclude",
                name, f"{len(df):,}", low, high,
            )  # fmt: skip
    return trained


def decision_threshold(trained: TrainedModel) -> str:
    """The version tag: the threshold served and how it was chosen, or why there is none."""
    return (
        f"{trained.threshold:.6g} ({trained.threshold_note})"
        if trained.threshold is not None
        else trained.threshold_note
    )


HEADLINE = ("roc_auc", "accuracy", "balanced_accuracy", "rmse", "r2")


def headline(metrics: dict[str, float]) -> str:
    """The few metrics a person reads first."""
    return ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k in HEADLINE)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]
