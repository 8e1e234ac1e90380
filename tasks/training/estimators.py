"""The estimator a version trains: a built-in for the task, or the user's own by import path, and
the hyperparameter search around it.

`training.estimator` is a built-in name (each picks its classifier or regressor by task; `auto`, the
default, can do every task) or
`package.module:name`: an estimator class, built with `training.params`, or a factory called with
`training.params` that returns an unfitted estimator or Pipeline. The working directory and
`training.code_path` are importable. Every failure in the user's code is one error that names the
import path.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path
from typing import Any

import pandas as pd
from sklearn.base import BaseEstimator, is_classifier, is_regressor
from sklearn.ensemble import (
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import GridSearchCV, RandomizedSearchCV

from configs.settings import SearchSettings, TrainingSettings, is_import_path
from core.errors import ConfigError
from core.plain import plain_or_repr
from core.vocabulary import Task

CLASSIFICATION, REGRESSION = "classification", "regression"
BUILT_INS: dict[str, dict[str, type[BaseEstimator]]] = {
    "auto": {CLASSIFICATION: LogisticRegression, REGRESSION: Ridge},  # the default: a linear model for any task
    "logistic_regression": {CLASSIFICATION: LogisticRegression},
    "ridge": {REGRESSION: Ridge},
    "random_forest": {CLASSIFICATION: RandomForestClassifier, REGRESSION: RandomForestRegressor},
    "hist_gradient_boosting": {
        CLASSIFICATION: HistGradientBoostingClassifier,
        REGRESSION: HistGradientBoostingRegressor,
    },
    "gradient_boosting": {CLASSIFICATION: GradientBoostingClassifier, REGRESSION: GradientBoostingRegressor},
}


def kind(task: Task) -> str:
    return CLASSIFICATION if task.is_classification else REGRESSION


def make_estimator(training: TrainingSettings, task: Task) -> Any:
    """An unfitted estimator (or the user's Pipeline) for `task`, built from the settings."""
    if is_import_path(training.estimator):
        estimator = user_estimator(training.estimator, training.params, training.code_path)
        check_task(estimator, training.estimator, task)
        return estimator
    family = BUILT_INS[training.estimator]
    if kind(task) not in family:
        other = next(iter(family))
        suited = ", ".join(name for name, f in BUILT_INS.items() if kind(task) in f)
        raise ConfigError(
            f"training.estimator {training.estimator} does {other}, but training.task is {task.value} "
            f"(built-ins for {task.value}: {suited})"
        )
    return built_in(family[kind(task)], training.estimator, training.params, training.seed)


def built_in(cls: type[BaseEstimator], name: str, params: dict[str, Any], seed: int) -> BaseEstimator:
    accepted = inspect.signature(cls).parameters
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ConfigError(f"training.params: {name} ({cls.__name__}) has no parameter {', '.join(map(repr, unknown))}")
    params = dict(params)
    if "random_state" in accepted:
        params.setdefault("random_state", seed)
    try:
        return cls(**params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"training.params: {exc}") from None


def importable(code_path: list[str]) -> None:
    """The working directory and `training.code_path` on sys.path, first, once each."""
    for folder in [*reversed(code_path), str(Path.cwd())]:
        if folder not in sys.path:
            sys.path.insert(0, folder)


def load_object(path: str, code_path: list[str]) -> Any:
    """The object `package.module:name` names (a dotted name may reach into a class)."""
    importable(code_path)
    module_name, _, attribute = path.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # the user's module may raise anything while it imports
        raise ConfigError(f"training.estimator {path}: cannot import {module_name}: {_reason(exc)}") from None
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigError(f"training.estimator {path}: {module_name} has no attribute '{attribute}'") from None
    return target


def user_estimator(path: str, params: dict[str, Any], code_path: list[str]) -> Any:
    """Build the user's estimator: a class with `params`, or a factory called with `params`."""
    target = load_object(path, code_path)
    if not callable(target):
        raise ConfigError(f"training.estimator {path} is a {type(target).__name__}, not a class or a factory")
    try:
        estimator = target(**params)
    except TypeError as exc:
        raise ConfigError(f"training.estimator {path}: called with training.params: {_reason(exc)}") from None
    except Exception as exc:  # the user's factory may raise anything
        raise ConfigError(f"training.estimator {path} raised {_reason(exc)}") from None
    if not (hasattr(estimator, "fit") and hasattr(estimator, "predict") and hasattr(estimator, "get_params")):
        raise ConfigError(
            f"training.estimator {path} returned a {type(estimator).__name__}, not a scikit-learn estimator "
            "(fit, predict, get_params) or Pipeline"
        )
    return estimator


def check_task(estimator: Any, path: str, task: Task) -> None:
    """A classifier for classes, a regressor for numbers (when the estimator says what it is)."""
    if task.is_classification and is_regressor(estimator):
        raise ConfigError(f"training.estimator {path} is a regressor, but training.task is {task.value}")
    if task is Task.REGRESSION and is_classifier(estimator):
        raise ConfigError(f"training.estimator {path} is a classifier, but training.task is regression")


def search(pipeline: Any, settings: SearchSettings, seed: int) -> GridSearchCV | RandomizedSearchCV:
    """scikit-learn's own search over `settings.params`, refitting the best candidate on the training split."""
    common = {"scoring": settings.scoring, "cv": settings.cv, "refit": True, "error_score": "raise"}
    if settings.method == "grid":
        return GridSearchCV(pipeline, settings.params, **common)
    return RandomizedSearchCV(pipeline, settings.params, n_iter=settings.n_iter, random_state=seed, **common)


def candidates(found: GridSearchCV | RandomizedSearchCV) -> pd.DataFrame:
    """One row per candidate: its parameters, mean and spread of its cross-validated score, its rank."""
    results = found.cv_results_
    table = pd.DataFrame([{k: plain_or_repr(v) for k, v in p.items()} for p in results["params"]])
    table["mean_score"] = results["mean_test_score"]
    table["std_score"] = results["std_test_score"]
    table["rank"] = results["rank_test_score"]
    table["fit_seconds"] = results["mean_fit_time"]
    return table.sort_values("rank", kind="stable").reset_index(drop=True)


def check_search_params(pipeline: Any, settings: SearchSettings) -> None:
    """Each searched parameter must exist in the Pipeline, named as scikit-learn names it."""
    known = pipeline.get_params(deep=True)
    for name in settings.params:
        if name not in known:
            steps = ", ".join(sorted(k for k in known if "__" in k and k.count("__") == 1)[:12])
            raise ConfigError(f"training.search.params: the Pipeline has no parameter '{name}' (e.g. {steps})")


def describe(estimator: Any) -> str:
    """The estimator's class name, or a Pipeline's step classes."""
    steps = getattr(estimator, "steps", None)
    if steps:
        return "Pipeline(" + ", ".join(type(step).__name__ for _, step in steps) + ")"
    return type(estimator).__name__


def _reason(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
