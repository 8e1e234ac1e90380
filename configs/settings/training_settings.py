"""`training:` the estimator, its search and its split; the built-in estimators' names."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from configs.settings.base import LocalPaths, Section
from core.vocabulary import Task

BUILT_IN_ESTIMATORS = (
    "auto",
    "logistic_regression",
    "ridge",
    "random_forest",
    "hist_gradient_boosting",
    "gradient_boosting",
)
IMPORT_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def is_import_path(estimator: str) -> bool:
    """`training.estimator` names the user's own estimator (package.module:name), not a built-in."""
    return IMPORT_PATH.match(estimator) is not None


class SearchSettings(Section):
    """A hyperparameter search run by scikit-learn's own GridSearchCV or RandomizedSearchCV."""

    method: Literal["grid", "random"] = Field("grid", description="grid: every combination; random: n_iter draws.")
    params: dict[str, list[Any]] = Field(
        description="Candidate values per parameter, named as scikit-learn names them inside the Pipeline "
        "(model__C for the estimator, preprocess__... for shipway's preprocessing)."
    )
    cv: int = Field(3, ge=2, description="Cross-validation folds on the training split.")
    scoring: str | None = Field(
        None,
        description="A scikit-learn scorer name (roc_auc, f1_macro, neg_root_mean_squared_error...); "
        "empty: the estimator's own score.",
    )
    n_iter: int = Field(10, gt=0, description="Candidates drawn by the random search.")

    @field_validator("params")
    @classmethod
    def _candidates(cls, params: dict[str, list[Any]]) -> dict[str, list[Any]]:
        if not params or any(not values for values in params.values()):
            raise ValueError("must name at least one parameter, each with at least one candidate value")
        return params


class TrainingSettings(Section):
    model_name: str = Field("churn-classifier", description="Registered model name.")
    task: Task = Field(
        Task.AUTO,
        description="What the model predicts: binary, multiclass, regression, or auto (from the target: "
        "booleans and text are classes; integers with at most 20 distinct values, each seen at least twice, "
        "are classes; other numbers are regression).",
    )
    estimator: str = Field(
        "auto",
        description="A built-in (" + ", ".join(BUILT_IN_ESTIMATORS) + ") or an import path package.module:name "
        "of an estimator class or of a factory that returns an unfitted estimator or Pipeline. auto suits the "
        "task: logistic_regression for classes, ridge for regression (training.params go to the one chosen).",
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="Hyperparameters: the estimator's keyword arguments, or the factory's."
    )
    preprocessing: Literal["auto", "none"] = Field(
        "auto",
        description="auto: the estimator gets shipway's fitted preprocessing (impute, scale, one-hot, date parts); "
        "none: the estimator (your own Pipeline) gets the raw feature columns.",
    )
    code_path: LocalPaths = Field(
        default_factory=list,
        description="Folders added to the import path for training.estimator (the working directory always is).",
    )
    search: SearchSettings | None = Field(None, description="A hyperparameter search; empty: no search.")
    predict_fn: Literal["predict", "predict_proba"] = Field(
        "predict",
        description="What the served model answers: predict (a class or a number per row) or predict_proba "
        "(a row of class probabilities, classification only).",
    )
    threshold: Literal["auto", "none"] | float = Field(
        "auto",
        description="Decision threshold of a binary classifier served with predict: the positive class is "
        "answered when its probability is >= the threshold. auto: chosen on the training split by "
        "3-fold cross-validation for the best balanced accuracy (needs predict_proba; multiclass keeps the most "
        "probable class); none: the estimator's own predict; a number in (0, 1): that threshold (binary only).",
    )
    test_size: float = Field(0.2, gt=0, lt=1, description="Holdout share of the snapshot.")
    seed: int = Field(42, description="Seed of the split and the estimator: same seed, same model.")

    @field_validator("threshold", mode="before")
    @classmethod
    def _auto_none_or_probability(cls, threshold: Any) -> Any:
        if threshold in ("auto", "none"):
            return threshold
        try:
            value = float(threshold)
        except (TypeError, ValueError):
            value = float("nan")
        if isinstance(threshold, bool) or not 0 < value < 1:
            raise ValueError("must be auto, none or a number between 0 and 1 (exclusive)")
        return value

    @model_validator(mode="after")
    def _threshold_decides_labels(self) -> TrainingSettings:
        if isinstance(self.threshold, float) and self.predict_fn == "predict_proba":
            raise ValueError(
                f"training.threshold {self.threshold:g} decides labels, but training.predict_fn is predict_proba "
                "(probabilities are served); set training.threshold: auto or none"
            )
        return self

    @field_validator("estimator")
    @classmethod
    def _known_or_import_path(cls, estimator: str) -> str:
        if estimator not in BUILT_IN_ESTIMATORS and not is_import_path(estimator):
            raise ValueError(
                f"must be a built-in ({', '.join(BUILT_IN_ESTIMATORS)}) or an import path package.module:name"
            )
        return estimator
