"""The heuristic baseline: the best one-split rule on one column, the last link of the gateway's
fallback chain and the bar every candidate must beat.

Every column competes. A number (a boolean as 0/1) splits at a threshold, a missing value imputed
with the training median; a text or categorical column splits into a set of its categories and the
rest. For two classes or a quantity the set is CART's optimal partition (categories ordered by
their first class's rate or their mean, cut where the impurity falls most); for more classes, one
category against the rest. A missing value is a category of its own; categories beyond the
TOP_CATEGORIES most frequent, those seen fewer than MIN_CATEGORY_ROWS times and those never seen
are outside the set, so they get the rule's else side. Each column's rule is fitted on the training
split, and the one that scores best there by the quality gate's metric is the baseline.

Free-text columns (core/free_text.py) do not compete: a text's exact value almost never repeats,
so a set of them is a rule on noise, and a rule on the text's length is rarely better than the
class rates while it would cost the baseline its compiled form (no string-length operator
in the ONNX opset shipway compiles to), the one thing the last resort of the fallback chain must keep.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.dummy import DummyClassifier, DummyRegressor
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

from configs.settings import DEFAULT_METRIC
from core.vocabulary import Task
from tasks.features import InSet, is_datetime
from tasks.training.quality_metrics import METRICS, Metric, Truth, answers, encode

TOP_CATEGORIES = 32  # a high-cardinality column competes with its most frequent categories only
MIN_CATEGORY_ROWS = 10  # fewer rows say too little about a category's rate to place it
SHOWN_MEMBERS = 8  # a rule names at most this many categories


@dataclass(frozen=True)
class Baseline:
    model: Pipeline
    rule: str  # readable: "sex in {male}", "carat <= 0.995", "training median"
    metric: str  # the quality gate's metric, which chose the rule
    training: float  # its value on the training split


def build_baseline(
    X: pd.DataFrame, y: pd.Series, task: Task, seed: int, metric: str | None = None, skip: list[str] | None = None
) -> Baseline:
    """The one-split rule that scores best on the training split by `metric` (the quality gate's,
    default the task's) on a column not in `skip` (the free-text ones); with no usable column: the
    training class rates or median."""
    scorer = _selection_metric(metric, task)
    tree = DecisionTreeRegressor if task is Task.REGRESSION else DecisionTreeClassifier
    best: tuple[float, str, Any] | None = None
    truth = None
    for column in [c for c in X.columns if c not in (skip or [])]:
        found = _encoder(X[column], y, task)
        if found is None:
            continue
        encoder, feature = found
        stump = tree(max_depth=1, random_state=seed).fit(feature, y)
        truth = truth or encode(y, task, [stump])  # every stump learns the same classes
        score = _score(scorer, stump, feature, truth, task)
        if best is None or _better(scorer, score, best[0]):
            best = (score, column, encoder)
    if best is None:
        dummy, rule = (
            (DummyRegressor(strategy="median"), "training median")
            if task is Task.REGRESSION
            else (DummyClassifier(strategy="prior"), "training class rates")
        )
        model = Pipeline([("model", dummy)]).fit(X, y)
        return Baseline(model, rule, scorer.name, _score(scorer, model, X, encode(y, task, [model]), task))
    score, column, encoder = best
    model = Pipeline(
        [
            ("preprocess", ColumnTransformer([("rule_feature", encoder, [column])])),
            ("model", tree(max_depth=1, random_state=seed)),
        ]
    ).fit(X, y)
    return Baseline(model, _rule(column, X[column], encoder, model.named_steps["model"].tree_), scorer.name, score)


def _selection_metric(name: str | None, task: Task) -> Metric:
    """The quality gate's metric; one that is no metric of the task falls back to the task's default
    (the quality gate itself names the setting's mistake)."""
    chosen = METRICS.get(name or "")
    return chosen if chosen is not None and task in chosen.tasks else METRICS[DEFAULT_METRIC[task]]


def _score(metric: Metric, model: Any, X: pd.DataFrame, truth: Truth, task: Task) -> float:
    value = metric.point(truth, answers(model, X, truth, task, [metric]))
    if value != value:  # undefined on these rows: the worst score
        return np.inf if metric.error else -np.inf
    return value


def _better(metric: Metric, score: float, than: float) -> bool:
    return score < than if metric.error else score > than


def _encoder(values: pd.Series, y: pd.Series, task: Task) -> tuple[Any, pd.DataFrame] | None:
    """The column as the one number a rule splits (the transformer, and its output on `values`):
    numbers and booleans imputed with their median, other columns as membership of their best
    category set; None when the column cannot split."""
    if is_datetime(values):
        return None
    if pd.api.types.is_numeric_dtype(values.dtype):
        if values.isna().all():
            return None
        return SimpleImputer(strategy="median"), values.astype("float64").fillna(values.median()).to_frame()
    found = _category_set(values, y, task)
    return None if found is None else (found, pd.DataFrame(found.fit_transform(values.to_frame())))


def _category_set(values: pd.Series, y: pd.Series, task: Task) -> InSet | None:
    """The categories on one side of the best split of the column's frequent categories (a missing
    value is one); the other side holds the rarer ones, or else it is the larger side."""
    codes, uniques = pd.factorize(values, use_na_sentinel=False)
    names = uniques.tolist()  # Python values: str, not numpy scalars
    counts = np.bincount(codes)
    kept = [int(c) for c in np.argsort(-counts, kind="stable")[:TOP_CATEGORIES] if counts[c] >= MIN_CATEGORY_ROWS]
    group = np.full(len(names), len(kept))  # the last group: every rarer category
    group[kept] = np.arange(len(kept))
    rows = group[codes]
    n = np.bincount(rows, minlength=len(kept) + 1).astype(np.float64)
    sums = _target_sums(rows, len(kept) + 1, y, task)
    rare = n[-1] > 0
    if not rare:
        n, sums = n[:-1], sums[:-1]
    if len(n) < 2:
        return None
    sides = _partitions(n, sums, len(kept))
    left_n, left_sums = sides @ n, sides @ sums
    right_n, right_sums = n.sum() - left_n, sums.sum(axis=0) - left_sums
    # CART's impurity decrease is, up to a constant, the sum over both sides of |sums|^2 / rows
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = (left_sums**2).sum(axis=1) / left_n + (right_sums**2).sum(axis=1) / right_n
    inside = sides[int(np.nanargmax(gain))]
    if rare and inside[-1]:
        inside = ~inside
    elif not rare and inside.sum() * 2 > len(inside):
        inside = ~inside  # the shorter list reads better; an unseen category stays outside either way
    chosen = [names[kept[g]] for g in range(len(kept)) if inside[g]]
    members = [v for v in chosen if not pd.isna(v)]
    return InSet(members, missing=len(members) < len(chosen))


def _target_sums(rows: np.ndarray, groups: int, y: pd.Series, task: Task) -> np.ndarray:
    """Per group, the sum of the target (regression) or of each class's indicator."""
    if task is Task.REGRESSION:
        return np.bincount(rows, weights=np.asarray(y, dtype=np.float64), minlength=groups)[:, None]
    labels, classes = pd.factorize(y)
    flat = np.bincount(rows * len(classes) + labels, minlength=groups * len(classes))
    return flat.reshape(groups, len(classes)).astype(np.float64)


def _partitions(n: np.ndarray, sums: np.ndarray, kept: int) -> np.ndarray:
    """Candidate left sides as rows of group masks: for one target value per row (two classes, a
    quantity) every cut of the groups ordered by their first column's mean, which holds CART's optimal
    partition; for more classes each frequent category alone."""
    if sums.shape[1] <= 2:
        order = np.argsort(sums[:, 0] / n, kind="stable")
        sides = np.zeros((len(n) - 1, len(n)), dtype=bool)
        sides[:, order] = np.tri(len(n) - 1, len(n), dtype=bool)
        return sides
    return np.eye(len(n), dtype=bool)[:kept]


def _rule(column: str, values: pd.Series, encoder: Any, fitted: Any) -> str:
    if fitted.node_count == 1:
        return f"{column} (no split)"
    if isinstance(encoder, InSet):
        shown = [str(m) for m in encoder.members] + (["missing"] if encoder.missing else [])
        more = len(shown) - SHOWN_MEMBERS
        listed = ", ".join(shown[:SHOWN_MEMBERS]) + (f", … {more} more" if more > 0 else "")
        return f"{column} in {{{listed}}}"
    if pd.api.types.is_bool_dtype(values.dtype):
        return f"{column} in {{False}}"
    return f"{column} <= {fitted.threshold[0]:.4g}"
