"""Holdout metrics as functions of means of per-row columns, so that the paired bootstrap
(tasks/quality/bootstrap.py) resamples them all the same way: the one implementation of what a run
logs (tasks/training/pipeline.evaluate) and what the quality gate judges.

A metric has shared columns (from the true labels: which class a row is, y and y^2) and model
columns (from one model's answers: correct or not, squared error, the probability it gave the
true class). Its value is a function of the means of those columns: accuracy is the mean of
"correct", rmse the root of the mean squared error, f1_macro a function of per-class rates.
roc_auc is the mean of per-row pseudo-values built from DeLong's placement values: exactly the
AUC on the rows themselves, and its first-order expansion under resampling. Every value agrees
with scikit-learn's on the unweighted rows (tests/quality/test_quality.py checks it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from configs.settings import ERROR_METRICS
from core.vocabulary import Task


@dataclass(frozen=True)
class Truth:
    """The holdout's labels: class codes into `classes` (classification) or target values."""

    values: np.ndarray
    classes: pd.Index  # every label any model or the holdout knows; empty for regression
    positive: int | None = None  # code of the positive class (binary)

    def take(self, rows: np.ndarray) -> Truth:
        return Truth(self.values[rows], self.classes, self.positive)


@dataclass(frozen=True)
class Answers:
    """One model's answers on the holdout, in the forms the metrics read."""

    predicted: np.ndarray  # class codes, or predicted values
    score: np.ndarray | None = None  # binary: probability of the positive class
    p_true: np.ndarray | None = None  # classification: probability given to the true class

    def take(self, rows: np.ndarray) -> Answers:
        pick = lambda a: None if a is None else a[rows]
        return Answers(self.predicted[rows], pick(self.score), pick(self.p_true))


Columns = Callable[[Truth, Answers], np.ndarray]
Value = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (shared means, model means) -> metric


@dataclass(frozen=True)
class Metric:
    name: str
    tasks: tuple[Task, ...]
    model: Columns
    value: Value
    shared: Callable[[Truth], np.ndarray] = lambda truth: np.empty((len(truth.values), 0))
    needs_proba: bool = False  # reads probabilities (roc_auc, log_loss), not predicted labels

    @property
    def error(self) -> bool:
        """Lower is better (rmse, mae, log_loss); every other metric is a score."""
        return self.name in ERROR_METRICS

    def point(self, truth: Truth, answers: Answers) -> float:
        """The metric on the rows as they are (every weight 1)."""
        return self.of_columns(self.shared(truth), self.model(truth, answers))

    def of_columns(self, shared: np.ndarray, model: np.ndarray) -> float:
        """The metric from its per-row columns, every row weighing 1."""
        if len(model) == 0:
            return float("nan")
        with np.errstate(divide="ignore", invalid="ignore"):
            return float(self.value(shared.mean(axis=0)[None, :], model.mean(axis=0)[None, :])[0])

    def resampled(self, shared: np.ndarray, model: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.value(shared, model)


def _column(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)[:, None]


def _onehot(codes: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((len(codes), k))
    valid = codes >= 0
    out[np.flatnonzero(valid), codes[valid]] = 1.0
    return out


def _auc_pseudo_values(truth: Truth, answers: Answers) -> np.ndarray:
    """Per-row pseudo-values whose mean is the AUC: a positive's share of negatives scored below it
    (ties half), a negative's share of positives above it, spread around the AUC by the class sizes."""
    positive = truth.values == truth.positive
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return np.full((len(positive), 1), np.nan)  # AUC is undefined on one class
    score = answers.score
    assert score is not None, "AUC needs the positive class's probability"
    values, at = np.unique(score, return_inverse=True)  # one sort; tied scores share a value
    pos = np.bincount(at, weights=positive, minlength=len(values))
    neg = np.bincount(at, weights=~positive, minlength=len(values))
    negatives_below = np.cumsum(neg) - neg + neg / 2
    positives_above = n_pos - np.cumsum(pos) + pos / 2
    placement = np.where(positive, negatives_below[at] / n_neg, positives_above[at] / n_pos)
    auc = placement[positive].mean()
    spread = np.where(positive, len(score) / n_pos, len(score) / n_neg)
    return _column(auc + spread * (placement - auc))


def _log_loss(truth: Truth, answers: Answers) -> np.ndarray:
    eps = np.finfo(np.float64).eps  # scikit-learn clips the same way
    assert answers.p_true is not None, "log loss needs the true class's probability"
    return _column(-np.log(np.clip(answers.p_true, eps, 1 - eps)))


def _per_class(truth: Truth, answers: Answers) -> np.ndarray:
    """Per class: the row's true class and the model hit it; the model predicted it."""
    k = len(truth.classes)
    hits = _onehot(np.where(answers.predicted == truth.values, truth.values, -1), k)
    return np.hstack([hits, _onehot(answers.predicted, k)])


def _true_class(truth: Truth) -> np.ndarray:
    return _onehot(truth.values, len(truth.classes))


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where there is nothing to divide by (scikit-learn's zero_division=0)."""
    return np.where(denominator > 0, numerator / np.where(denominator > 0, denominator, 1), 0.0)


def _macro_mean(numerator: np.ndarray, denominator: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Mean of per-class rates over the `present` classes."""
    return (_ratio(numerator, denominator) * present).sum(axis=1) / present.sum(axis=1)


def _macro(rate: Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]) -> Value:
    """A macro average over the classes in the labels or the predictions (as scikit-learn), of
    rate(hits, predicted, true) = (numerator, denominator) per class."""

    def value(shared: np.ndarray, model: np.ndarray) -> np.ndarray:
        k = shared.shape[1]
        hits, predicted = model[:, :k], model[:, k:]
        return _macro_mean(*rate(hits, predicted, shared), predicted + shared > 0)

    return value


def _balanced_accuracy(shared: np.ndarray, model: np.ndarray) -> np.ndarray:
    """Mean recall over the classes that occur in the labels (as scikit-learn)."""
    return _macro_mean(model[:, : shared.shape[1]], shared, shared > 0)


def _positives(truth: Truth, answers: Answers) -> np.ndarray:
    """Binary: the row is a true positive; the model predicted positive."""
    predicted = answers.predicted == truth.positive
    return np.column_stack([predicted & (truth.values == truth.positive), predicted]).astype(np.float64)


def _positive(truth: Truth) -> np.ndarray:
    return _column(truth.values == truth.positive)


def _squared_error(truth: Truth, answers: Answers) -> np.ndarray:
    return _column((answers.predicted - truth.values) ** 2)


def _r2(shared: np.ndarray, model: np.ndarray) -> np.ndarray:
    variance = shared[:, 1] - shared[:, 0] ** 2
    return 1 - model[:, 0] / variance


CLASSIFICATION = (Task.BINARY, Task.MULTICLASS)
METRICS: dict[str, Metric] = {
    m.name: m
    for m in [
        Metric("roc_auc", (Task.BINARY,), _auc_pseudo_values, lambda s, m: m[:, 0], needs_proba=True),
        Metric("log_loss", CLASSIFICATION, _log_loss, lambda s, m: m[:, 0], needs_proba=True),
        Metric("accuracy", CLASSIFICATION, lambda t, a: _column(a.predicted == t.values), lambda s, m: m[:, 0]),
        Metric("balanced_accuracy", CLASSIFICATION, _per_class, _balanced_accuracy, shared=_true_class),
        Metric("f1", (Task.BINARY,), _positives, lambda s, m: _ratio(2 * m[:, 0], m[:, 1] + s[:, 0]), shared=_positive),
        Metric("precision", (Task.BINARY,), _positives, lambda s, m: _ratio(m[:, 0], m[:, 1]), shared=_positive),
        Metric("recall", (Task.BINARY,), _positives, lambda s, m: _ratio(m[:, 0], s[:, 0]), shared=_positive),
        Metric("f1_macro", (Task.MULTICLASS,), _per_class, _macro(lambda h, p, t: (2 * h, p + t)), shared=_true_class),
        Metric("precision_macro", (Task.MULTICLASS,), _per_class, _macro(lambda h, p, t: (h, p)), shared=_true_class),
        Metric("recall_macro", (Task.MULTICLASS,), _per_class, _macro(lambda h, p, t: (h, t)), shared=_true_class),
        Metric("rmse", (Task.REGRESSION,), _squared_error, lambda s, m: np.sqrt(m[:, 0])),
        Metric("mae", (Task.REGRESSION,), lambda t, a: _column(np.abs(a.predicted - t.values)), lambda s, m: m[:, 0]),
        Metric(
            "r2",
            (Task.REGRESSION,),
            _squared_error,
            _r2,
            shared=lambda t: np.column_stack([t.values, t.values**2]),
        ),
    ]
}  # fmt: skip


def metrics_of(task: Task) -> list[str]:
    return [name for name, metric in METRICS.items() if task in metric.tasks]


def encode(y: pd.Series, task: Task, models: list[Any]) -> Truth:
    """The labels as codes into every class the holdout or any of `models` knows; the first model's
    second class is the positive one (scikit-learn's convention for binary scores)."""
    if task is Task.REGRESSION:
        return Truth(np.asarray(y, dtype=np.float64), pd.Index([]))
    known = [list(getattr(m, "classes_", [])) for m in models]
    classes = pd.Index(known[0] if known else [])
    for labels in [*known[1:], list(pd.unique(np.asarray(y, dtype=object)))]:
        classes = classes.append(pd.Index(labels).difference(classes, sort=False))
    positive = classes.get_loc(known[0][1]) if task is Task.BINARY and known and len(known[0]) > 1 else None
    return Truth(classes.get_indexer(np.asarray(y, dtype=object)), classes, positive)


def answers(model: Any, X: pd.DataFrame, truth: Truth, task: Task, metrics: list[Metric]) -> Answers:
    """What `model` answers on X, in the forms `metrics` read: each prediction made once, and
    only if some metric reads it (roc_auc alone needs no labels, accuracy no probabilities)."""
    if task is Task.REGRESSION:
        return Answers(np.asarray(model.predict(X), dtype=np.float64))
    codes = np.full(len(X), -1)
    if not all(m.needs_proba for m in metrics):
        codes = truth.classes.get_indexer(np.asarray(model.predict(X), dtype=object))
    if not any(m.needs_proba for m in metrics):
        return Answers(codes)
    proba = np.asarray(model.predict_proba(X), dtype=np.float64)
    column = pd.Index(list(model.classes_)).get_indexer(truth.classes)  # each class's column, -1 if unknown
    padded = np.hstack([proba, np.zeros((len(proba), 1))])  # column -1: a class the model never saw
    p_true = padded[np.arange(len(proba)), column[truth.values]]
    score = padded[:, column[truth.positive]] if truth.positive is not None else None
    return Answers(codes, score, p_true)
