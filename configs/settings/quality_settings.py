"""`quality:` the quality gate; the metric names the runs log, kept here without importing their code."""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import Field, field_validator

from configs.settings.base import Section
from core.vocabulary import Task

# scikit-learn's names, as the runs log them (tasks/training/pipeline.py evaluate)
QualityMetric = Literal[
    "roc_auc", "log_loss", "accuracy", "balanced_accuracy", "f1", "precision", "recall", "f1_macro",
    "precision_macro", "recall_macro", "rmse", "mae", "r2",
]  # fmt: skip
QUALITY_METRICS: tuple[str, ...] = get_args(QualityMetric)
# Other spellings of them (shipway's before, scikit-learn's scorers): refused, naming the one used here.
METRIC_SPELLINGS = {
    "macro_f1": "f1_macro",
    "macro_precision": "precision_macro",
    "macro_recall": "recall_macro",
    "auc": "roc_auc",
    "neg_log_loss": "log_loss",
    "neg_root_mean_squared_error": "rmse",
    "neg_mean_absolute_error": "mae",
}
ERROR_METRICS = ("log_loss", "rmse", "mae")  # lower is better; every other quality metric is a score
# quality.metric when it is empty: the one the quality gate judges and the baseline is chosen by
DEFAULT_METRIC = {Task.BINARY: "roc_auc", Task.MULTICLASS: "f1_macro", Task.REGRESSION: "rmse"}


class QualitySettings(Section):
    """The quality gate: before a version may become Shadow it must beat its own baseline on the
    holdout, meet the floors, and not be worse than Production on the holdout rows Production did
    not train on, overall and in each slice. "Worse" needs both a paired bootstrap that excludes no
    difference (at `alpha`, Bonferroni-split over the overall test and the judged slices) and a loss larger than
    `min_effect`: a 100k-row holdout does not fail on trivia, a 300-row one not on noise."""

    metric: QualityMetric | None = Field(
        None,
        description="Primary metric compared with Production; empty: "
        + ", ".join(f"{metric} ({task.value})" for task, metric in DEFAULT_METRIC.items())
        + ". It must be a metric of the model's task.",
    )
    min: dict[QualityMetric, float] = Field(
        default_factory=dict,
        description="Floors of the candidate's holdout scores, e.g. {roc_auc: 0.7}: scores only "
        "(roc_auc, accuracy, balanced_accuracy, f1, precision, recall, their _macro forms for multiclass, r2).",
    )
    max: dict[QualityMetric, float] = Field(
        default_factory=dict,
        description="Ceilings of the candidate's holdout errors, e.g. {rmse: 50}: errors only (rmse, mae, log_loss).",
    )
    min_effect: float = Field(
        0.01,
        ge=0,
        description="Smallest loss against Production that counts: points of a score (0.01 = one point of "
        "roc_auc), or a share of Production's error for rmse, mae, log_loss (0.01 = 1 % higher).",
    )
    alpha: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="Chance that a candidate no worse than Production fails, split over the overall test "
        "and each judged slice (Bonferroni).",
    )
    resamples: int = Field(1_000, ge=100, le=100_000, description="Paired bootstrap resamples of the holdout.")
    seed: int = Field(0, description="Seed of the bootstrap: same holdout, same seed, same verdict.")
    slices: list[str] = Field(
        default_factory=list,
        description="Feature columns whose values define segments judged on their own (numeric columns with "
        "more than slice_bins values are cut into slice_bins quantile bins).",
    )
    slice_bins: int = Field(4, ge=2, le=20, description="Quantile bins of a numeric slice column.")
    min_slice_rows: int = Field(
        200, ge=1, description="Slices with fewer holdout rows are reported but not judged: too few to tell."
    )
    min_unseen_rows: int = Field(
        200,
        ge=1,
        description="Fewest holdout rows Production did not train on for a paired comparison on them; with "
        "fewer, the candidate's interval on the whole holdout is compared with Production's recorded holdout "
        "figure and fails only when it lies wholly below it by more than min_effect.",
    )

    @field_validator("metric", "min", "max", mode="before")
    @classmethod
    def _known_metrics(cls, value: Any) -> Any:
        """A misspelt metric is named with the list; another library's spelling, with the one used here."""
        for name in value if isinstance(value, dict) else [value] if isinstance(value, str) else []:
            if name in METRIC_SPELLINGS:
                raise ValueError(f"{name!r} is spelled {METRIC_SPELLINGS[name]!r} here")
            if name not in QUALITY_METRICS:
                raise ValueError(f"unknown metric {name!r} (metrics: {', '.join(QUALITY_METRICS)})")
        return value

    @field_validator("min")
    @classmethod
    def _scores_only(cls, floors: dict[str, float]) -> dict[str, float]:
        errors = sorted(set(floors) & set(ERROR_METRICS))
        if errors:
            raise ValueError(f"{', '.join(errors)}: an error metric takes a ceiling (quality.max), not a floor")
        return floors

    @field_validator("max")
    @classmethod
    def _errors_only(cls, ceilings: dict[str, float]) -> dict[str, float]:
        scores = sorted(set(ceilings) - set(ERROR_METRICS))
        if scores:
            raise ValueError(f"{', '.join(scores)}: a score takes a floor (quality.min), not a ceiling")
        return ceilings
