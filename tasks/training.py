"""Training: one scikit-learn Pipeline that carries all of its preprocessing, plus a baseline.

Every statistic (medians, means, scales, category vocabularies) is fitted on the training split
inside the Pipeline, so it ships with the model and serving never recomputes it. The baseline
is one simple rule on one feature: the last resort of the gateway's fallback chain.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from sklearn.base import ClassifierMixin
from sklearn.compose import ColumnTransformer
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, log_loss, precision_score, recall_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.tree import DecisionTreeClassifier
from sklearn.utils._param_validation import InvalidParameterError

from configs.settings import TrainingSettings
from core.errors import DataError

ESTIMATORS: dict[str, type[ClassifierMixin]] = {
    "logistic_regression": LogisticRegression,
    "random_forest": RandomForestClassifier,
    "hist_gradient_boosting": HistGradientBoostingClassifier,
    "gradient_boosting": GradientBoostingClassifier,
}


@dataclass(frozen=True)
class TrainedModel:
    model: Pipeline
    baseline: Pipeline
    baseline_rule: str
    metrics: dict[str, float]
    baseline_metrics: dict[str, float]
    features: list[str]
    target: str
    X_holdout: pd.DataFrame
    y_holdout: pd.Series


def split_features(df: pd.DataFrame, target: str) -> tuple[pd.DataFrame, pd.Series]:
    """Features and label; the label must be present, complete and hold at least two classes."""
    if target not in df.columns:
        raise DataError(f"target column '{target}' is not in the data (columns: {', '.join(df.columns)})")
    y = df[target]
    if y.isna().any():
        raise DataError(f"target column '{target}' has {int(y.isna().sum())} null labels")
    if y.nunique() < 2:
        raise DataError(f"target column '{target}' holds a single class ({_plain(y.iloc[0])!r}); nothing to learn")
    X = df.drop(columns=[target])
    if X.shape[1] == 0:
        raise DataError(f"data has no feature columns besides the target '{target}'")
    return X, y


def _plain(value):
    """A numpy scalar as the Python value it holds, so messages read 2, not np.int64(2)."""
    return value.item() if hasattr(value, "item") else value


def preprocessor(X: pd.DataFrame, columns: list[str] | None = None) -> ColumnTransformer:
    """Impute and scale numbers, impute and one-hot encode categories: all fitted, never recomputed."""
    columns = list(X.columns) if columns is None else columns
    numeric = [c for c in columns if pd.api.types.is_numeric_dtype(X[c])]
    categorical = [c for c in columns if c not in numeric]
    return ColumnTransformer(
        [
            ("numeric", Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())]), numeric),
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
        ],
        verbose_feature_names_out=False,
    )


def build_pipeline(X: pd.DataFrame, settings: TrainingSettings) -> Pipeline:
    estimator_cls = ESTIMATORS[settings.estimator]
    accepted = inspect.signature(estimator_cls).parameters
    unknown = sorted(set(settings.params) - set(accepted))
    if unknown:
        raise DataError(f"training.params: {settings.estimator} has no parameter {', '.join(map(repr, unknown))}")
    params = dict(settings.params)
    if "random_state" in accepted:
        params.setdefault("random_state", settings.seed)
    try:
        estimator = estimator_cls(**params)
    except (TypeError, ValueError) as exc:
        raise DataError(f"training.params: {exc}") from None
    return Pipeline([("preprocess", preprocessor(X)), ("model", estimator)])


def build_baseline(X: pd.DataFrame, y: pd.Series, seed: int) -> tuple[Pipeline, str]:
    """One rule on the numeric feature that best separates the classes on the training split."""
    numeric = [c for c in X.columns if pd.api.types.is_numeric_dtype(X[c]) and X[c].notna().any()]
    if not numeric:
        return Pipeline([("model", DummyClassifier(strategy="prior"))]).fit(X, y), "training class rates"
    best = max(numeric, key=lambda c: _separation(y, X[c].fillna(X[c].median())))
    pipe = Pipeline(
        [
            ("preprocess", ColumnTransformer([("rule_feature", SimpleImputer(strategy="median"), [best])])),
            ("model", DecisionTreeClassifier(max_depth=1, random_state=seed)),
        ]
    ).fit(X, y)
    tree = pipe.named_steps["model"].tree_
    return pipe, f"{best} <= {tree.threshold[0]:.4g}" if tree.node_count > 1 else f"{best} (no split)"


def _separation(y: pd.Series, values: pd.Series) -> float:
    """How well one feature ranks a binary label: AUC folded around 0.5 (multiclass: no ranking)."""
    if y.nunique() != 2:
        return 0.0
    auc = float(roc_auc_score(y, values))
    return max(auc, 1 - auc)


def evaluate(model: Pipeline, X: pd.DataFrame, y: pd.Series) -> dict[str, float]:
    """Holdout metrics; binary metrics use the positive class, multiclass ones average over classes."""
    predicted = model.predict(X)
    proba = model.predict_proba(X)
    binary = len(model.classes_) == 2
    average = "binary" if binary else "macro"
    positive = {"pos_label": model.classes_[1]} if binary else {}
    metrics = {
        "accuracy": accuracy_score(y, predicted),
        "f1": f1_score(y, predicted, average=average, zero_division=0, **positive),
        "precision": precision_score(y, predicted, average=average, zero_division=0, **positive),
        "recall": recall_score(y, predicted, average=average, zero_division=0, **positive),
        "log_loss": log_loss(y, proba, labels=model.classes_),
    }
    if y.nunique() == len(model.classes_):
        metrics["roc_auc"] = (
            roc_auc_score(y, proba[:, 1])
            if binary
            else roc_auc_score(y, proba, multi_class="ovr", labels=model.classes_)
        )
    return {k: round(float(v), 6) for k, v in metrics.items()}


def train(df: pd.DataFrame, target: str, settings: TrainingSettings) -> TrainedModel:
    """Split, fit the pipeline and the baseline on the training split, score both on the holdout."""
    X, y = split_features(df, target)
    counts = y.value_counts()
    if counts.min() < 2:
        raise DataError(
            f"class {_plain(counts.idxmin())!r} of target '{target}' has only {counts.min()} row; "
            "every class needs at least 2 to have one in the training split and one in the holdout"
        )
    try:
        X_train, X_test, y_train, y_test = train_test_split(
            X, y, test_size=settings.test_size, random_state=settings.seed, stratify=y
        )
    except ValueError as exc:  # a holdout too small to hold every class
        raise DataError(f"cannot split {len(y)} rows into training and holdout: {exc}") from None
    try:
        model = build_pipeline(X_train, settings).fit(X_train, y_train)
    except InvalidParameterError as exc:  # sklearn checks parameter values only when fitting
        raise DataError(f"training.params: {exc}") from None
    baseline, rule = build_baseline(X_train, y_train, settings.seed)
    return TrainedModel(
        model=model,
        baseline=baseline,
        baseline_rule=rule,
        metrics=evaluate(model, X_test, y_test),
        baseline_metrics=evaluate(baseline, X_test, y_test),
        features=list(X.columns),
        target=target,
        X_holdout=X_test,
        y_holdout=y_test,
    )


@task(name="train", cache_policy=NO_CACHE)
def train_task(df: pd.DataFrame, target: str, settings: TrainingSettings) -> TrainedModel:
    trained = train(df, target, settings)
    get_run_logger().info(
        "%s holdout %s; baseline (%s) %s",
        settings.estimator,
        _fmt(trained.metrics),
        trained.baseline_rule,
        _fmt(trained.baseline_metrics),
    )
    return trained


def _fmt(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k in ("roc_auc", "accuracy"))
