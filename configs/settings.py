"""Typed settings. A YAML profile gives the values, SHIPWAY_* environment variables override them.

`SHIPWAY_TRAINING__SEED=7` overrides `training.seed`: the prefix, then the keys joined by `__`.
Relative paths are resolved against the working directory when the profile is loaded, so the
embedded default keeps all of its state under `./.shipway/`.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from core.errors import ConfigError
from core.vocabulary import Task

PROFILES = Path(__file__).parent
DEFAULT_PROFILE = PROFILES / "default.yaml"
ENV_PREFIX = "SHIPWAY_"
ENV_DELIMITER = "__"

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
BUILT_IN_ESTIMATORS = (
    "auto",
    "logistic_regression",
    "ridge",
    "random_forest",
    "hist_gradient_boosting",
    "gradient_boosting",
)
# Keys that said the latency budget per stage before there was one: read as serving.latency_budget_p99_ms.
LATENCY_BUDGET = ("serving", "latency_budget_p99_ms")
RENAMED_LATENCY_KEYS = (("promotion", "latency_p99_ms"), ("monitoring", "latency_p99_ms"))
IMPORT_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def is_import_path(estimator: str) -> bool:
    """`training.estimator` names the user's own estimator (package.module:name), not a built-in."""
    return IMPORT_PATH.match(estimator) is not None


class RenamedSetting(FutureWarning):
    """A profile key read under its new name; the warning says which to rename."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MlflowSettings(_Section):
    tracking_uri: str = Field(
        "sqlite:///.shipway/mlflow.db",
        description="MLflow tracking and registry store: sqlite:///PATH or http(s)://server.",
    )
    artifact_location: str = Field(
        ".shipway/artifacts",
        description="Artifact root of experiments shipway creates: a folder or s3://bucket/prefix. "
        "Leave empty to use the tracking server's proxied artifact store.",
    )
    experiment: str = Field("shipway", description="Experiment that holds the training runs.")


class S3Settings(_Section):
    endpoint_url: str | None = Field(None, description="S3 endpoint for boto3 (MinIO, moto); empty means AWS itself.")
    region: str = Field("us-east-1", description="Region for the S3 client.")


class SnapshotSettings(_Section):
    store: str = Field(".shipway/snapshots", description="Snapshot store: a folder or s3://bucket/prefix.")


class PrefectSettings(_Section):
    api_url: str | None = Field(None, description="Prefect server API; empty runs flows in Prefect's ephemeral mode.")


class PredictionLogSettings(_Section):
    url: str = Field(
        "sqlite:///.shipway/predictions.db",
        description="SQLAlchemy URL of the gateway's prediction log (SQLite or PostgreSQL).",
    )


class ServingSettings(_Section):
    host: str = Field("127.0.0.1", description="Address `shipway serve` binds to.")
    port: int = Field(5001, ge=0, le=65535, description="Port `shipway serve` listens on.")
    poll_interval_s: float = Field(
        5.0, gt=0, description="How often the gateway reads aliases and the canary share from the registry."
    )
    timeout_ms: float = Field(
        250.0,
        gt=0,
        description="A model call's time allowance, plus timeout_per_row_ms for each row of its batch: a model "
        "slower than that (or finding no free thread within it) is treated as failed and the fallback chain answers.",
    )
    timeout_per_row_ms: float = Field(
        0.5,
        ge=0,
        description="Time added to timeout_ms for each row of a batch, so that a large batch gets the model's answer "
        "late rather than a fallback's: 10,000 rows are given 5.25 s, 100,000 rows 50.25 s (`mlflow models serve` "
        "gives any request 60 s).",
    )
    baseline_max_rows: int = Field(
        100,
        ge=0,
        description="Largest batch the heuristic baseline may answer for a failing model. A larger batch that "
        "neither the model nor Previous answered gets 504 DEADLINE_EXCEEDED (the model ran out of time) or 503 "
        "TEMPORARILY_UNAVAILABLE (it failed), never the baseline's guesses; counted in "
        "shipway_large_batches_refused_total.",
    )
    cache_size: int = Field(10_000, ge=0, description="Last good answers kept for the fallback chain (0: no cache).")
    cache_max_age_s: float = Field(600.0, gt=0, description="A cached answer older than this is not served.")
    max_body_bytes: int = Field(1_048_576, gt=0, description="Larger request bodies get 413.")
    max_rows: int = Field(100_000, gt=0, description="Requests with more rows get 413.")
    max_feedback_labels: int = Field(
        500, gt=0, description="Most labels one POST /feedback may carry; a call with more gets 413, none logged."
    )
    body_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Longest wait for a request's body once its headers are in; a slower body (or one shorter "
        "than its Content-Length) gets 408 and the connection is closed.",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A connection that has not sent a complete request head (request line and headers) this long "
        "after connecting or starting the request is closed (408 once part of a head arrived).",
    )
    keep_alive_s: float = Field(
        5.0, gt=0, description="An idle keep-alive connection is closed after this long (uvicorn's timeout_keep_alive)."
    )
    max_header_bytes: int = Field(
        65_536, gt=0, description="A request head larger than this gets 431 and the connection is closed."
    )
    model_threads: int = Field(
        4,
        gt=0,
        description="Threads for Production's and Canary's model calls (ONNX calls of up to 64 rows run inline). "
        "A call waits at most its time allowance (timeout_ms + timeout_per_row_ms a row) for one; a call past it "
        "gives its thread's place to a new one.",
    )
    fallback_threads: int = Field(
        2, gt=0, description="Threads of the fallback chain's own (Previous, baseline), free when the others are busy."
    )
    sensitive_columns: dict[str, Literal["hash", "drop"]] = Field(
        default_factory=dict,
        description="Input columns hashed (HMAC-SHA256 keyed by hash_salt) or dropped before they are logged; a "
        "name the served version does not have is an error (in /health problems, and at `shipway serve` start). "
        "Training follows it: the contract keeps such a column hashed (under the same salt) or as type and nulls "
        "only, and monitoring and the shadow analysis check what the log keeps.",
    )
    hash_salt: SecretStr = Field(
        SecretStr(""),
        description="Secret key of the sensitive-column hash (from SHIPWAY_SERVING__HASH_SALT); required when a "
        "column is hashed: an unkeyed hash of a small domain (ages, ZIP codes) is reversed by trying every value. "
        "Give training, monitoring and the gateway the same one: contracts hold hashes under it.",
    )
    api_token: SecretStr = Field(
        SecretStr(""),
        description="Bearer token required on /feedback (every endpoint that changes state) when set; from "
        "SHIPWAY_SERVING__API_TOKEN, never a profile file.",
    )
    require_api_token: bool = Field(
        False, description="Refuse to start the gateway without serving.api_token (the production profile sets it)."
    )
    log_queue_size: int = Field(
        50_000, gt=0, description="Prediction-log rows waiting to be written; beyond it rows are dropped and counted."
    )
    log_batch_size: int = Field(500, gt=0, description="Prediction-log rows written per transaction.")
    log_flush_interval_s: float = Field(0.5, gt=0, description="Longest time a logged row waits to be written.")
    shadow_queue_size: int = Field(
        1_000, gt=0, description="Requests waiting for the Shadow model; beyond it they are skipped and counted."
    )
    shadow_cpus: list[int] | None = Field(
        None,
        description="CPUs the Shadow's process may use; default: the last CPU, when there are more ([]: any).",
    )
    state_dir: str = Field(
        ".shipway/serving-state",
        description="Where the gateway keeps the last good version of each alias, to serve at once after a "
        "restart while it reads the registry; empty: always start from the registry.",
    )
    latency_budget_p99_ms: float = Field(
        50.0,
        gt=0,
        description="The latency budget, one for every stage: p99 of one-row requests through the gateway. The "
        "benchmark gates a new version on it (judged as The latency budget below says), the shadow analysis "
        "judges Shadow's p99 and monitoring each window's p99 against it.",
    )
    bench_requests: int = Field(
        1_000,
        gt=0,
        description="Most requests per measurement of `shipway bench`; it stops sooner once the verdict is clear "
        "or bench_seconds have passed (with 100 requests at least).",
    )
    bench_seconds: float = Field(
        3.0, gt=0, description="Time after which a measurement of `shipway bench` judges on the requests it has."
    )
    startup_timeout_s: float = Field(
        120.0,
        gt=0,
        description="Longest wait for a gateway that shipway starts itself (the latency bench, tests) to "
        "answer: loading the model included. Raise it on a busy machine.",
    )

    @model_validator(mode="after")
    def _hashing_needs_a_key(self) -> ServingSettings:
        hashed = sorted(c for c, rule in self.sensitive_columns.items() if rule == "hash")
        if hashed and not self.hash_salt.get_secret_value():
            raise ValueError(
                f"serving.sensitive_columns hashes {', '.join(map(repr, hashed))} but serving.hash_salt is empty: "
                "set SHIPWAY_SERVING__HASH_SALT to a secret"
            )
        return self


class DataSettings(_Section):
    source: str = Field("demo", description="Training data: a CSV or Parquet file, s3://bucket/key, or 'demo'.")
    target: str = Field("churned", description="The label column.")
    demo_rows: int = Field(30_000, gt=0, description="Rows of the generated demo dataset.")
    features: list[str] | None = Field(
        None,
        description="The columns the model sees, in order. Empty: every column but the target, the excluded "
        "columns and the time column. Snapshots keep every column; the model's signature, its contract, the "
        "gate and the gateway use these only.",
    )
    exclude: list[str] = Field(
        default_factory=list,
        description="Columns never used as features (IDs, free text, leaks); they stay in the snapshot.",
    )
    time_column: str | None = Field(
        None,
        description="A datetime (or sortable) column: the latest training.test_size share of rows by it is the "
        "holdout (an out-of-time test). It is not a feature unless data.features lists it.",
    )
    text_columns: list[str] | None = Field(
        None,
        description="Feature columns of free text: TF-IDF inside the Pipeline and length and vocabulary "
        "statistics in the contract, instead of categories. Empty: the string columns that read as text "
        "(at least 20 values, half of them distinct, a median of 30+ characters and 4+ words); [] for none.",
    )


class SearchSettings(_Section):
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


class TrainingSettings(_Section):
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
    code_path: list[str] = Field(
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


class PromotionSettings(_Section):
    canary_steps: list[float] = Field(
        [0.05, 0.25, 0.5], description="Canary traffic shares, in order; each is analysed before the next."
    )
    step_seconds: float = Field(
        300.0, gt=0, description="Longest a canary step (or the shadow window) waits for min_requests."
    )
    min_requests: int = Field(
        200, gt=0, description="Requests per model before any verdict: no verdict from a dozen requests."
    )
    min_labeled: int = Field(100, gt=0, description="Feedback labels per model before accuracy is compared.")
    approval_timeout_seconds: int = Field(
        86_400, gt=0, description="A manual approval not given in this time counts as a rejection."
    )
    poll_seconds: float = Field(1.0, gt=0, description="How often a paused promotion checks for an answer.")
    lease_seconds: float = Field(
        30.0,
        ge=3,
        description="A promotion renews its lease on the model every third of this; a promotion whose process "
        "died is taken over by the next one at the latest this long after its last renewal.",
    )
    progress_seconds: float = Field(
        15.0, gt=0, description="How often a promotion step waiting for traffic prints how far it is."
    )
    alpha: float = Field(
        0.01,
        gt=0,
        lt=1,
        description="Chance that a canary no worse than Production is rolled back (split over its tests).",
    )
    min_agreement: float = Field(
        0.8, ge=0, le=1, description="Shadow: least share of predictions equal to Production's."
    )
    max_error_rate: float = Field(
        0.01, ge=0, le=1, description="Shadow: highest share of failed predictions (its own failures, not refusals)."
    )
    max_shadow_refused: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Shadow: highest share of the requests Production answered that Shadow refuses as bad input "
        "(a stricter input contract, which would break those clients); unset: reported to the reviewer, not gated.",
    )
    max_error_rate_increase: float = Field(
        0.01, ge=0, le=1, description="Canary: error + fallback rate may exceed Production's by at most this."
    )
    max_latency_ratio: float = Field(1.5, ge=1, description="Canary: p99 at most this times Production's ...")
    latency_slack_ms: float = Field(2.0, ge=0, description="... or Production's plus this, whichever is larger.")
    max_prediction_shift: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Canary: largest allowed change in any predicted class's share (regression: the "
        "two-sample KS distance between the prediction distributions).",
    )
    max_accuracy_drop: float = Field(0.02, ge=0, le=1, description="Canary: largest allowed drop in accuracy.")
    regression_tolerance: float = Field(
        0.05,
        ge=0,
        description="Shadow, regression: two predictions agree when they differ by at most this "
        "(a share of Production's prediction, or an absolute amount: regression_tolerance_mode).",
    )
    regression_tolerance_mode: Literal["relative", "absolute"] = Field(
        "relative",
        description="relative: |shadow - production| <= tolerance x |production|; absolute: <= tolerance "
        "in the target's units (use it for targets near zero).",
    )
    max_mae_increase: float = Field(
        0.05,
        ge=0,
        description="Canary, regression: largest allowed growth of the mean absolute error on feedback "
        "labels, as a share of Production's (0.05: 5 %).",
    )

    @field_validator("canary_steps")
    @classmethod
    def _growing_shares(cls, steps: list[float]) -> list[float]:
        if not steps or any(not 0 < s <= 1 for s in steps) or steps != sorted(set(steps)):
            raise ValueError("must be growing shares in (0, 1], e.g. [0.05, 0.25, 0.5]")
        return steps


class MonitoringSettings(_Section):
    window: str = Field("1h", description="Default window of the prediction log per monitoring run (30m, 1h, 1d).")
    min_requests: int = Field(100, gt=0, description="Requests in a window before its rates can breach a limit.")
    max_fallback_rate: float = Field(0.02, ge=0, le=1, description="Highest share of answers from the fallback chain.")
    max_error_rate: float = Field(
        0.005, ge=0, le=1, description="Highest share of requests every fallback failed (503)."
    )
    max_rejected_rate: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Highest share of requests refused as bad input (4xx): clients sending skewed data.",
    )
    min_accuracy: float | None = Field(
        None, ge=0, le=1, description="Lowest accuracy on feedback labels; empty: not checked."
    )
    max_mae: float | None = Field(
        None, ge=0, description="Highest mean absolute error on feedback labels (regression); empty: not checked."
    )
    max_estimated_drop: float | None = Field(
        0.05,
        ge=0,
        le=1,
        description="Largest drop of a performance figure estimated without labels (CBPE: accuracy, ROC AUC; "
        "versions served with predict_proba) below its holdout value at registration; empty: not checked.",
    )
    max_prediction_psi: float = Field(
        0.2,
        gt=0,
        description="Population stability index above which the served class shares or scores drift from the "
        "version's holdout predictions (a breach when the chi-square test also rejects at gate.alpha).",
    )
    breach_windows: int = Field(3, gt=0, description="Windows in a row that must breach before retraining starts.")
    experiment: str = Field("shipway-monitoring", description="MLflow experiment holding one run per window.")
    retrain_deployment: str = Field(
        "training/retrain", description="Prefect deployment (flow/deployment) triggered on a sustained breach."
    )


class GateSettings(_Section):
    """The skew gate. A check fails when its effect passes the contract's bound AND sampling noise
    cannot explain it (a test at `alpha`, Bonferroni-split over all tests of the batch), so a
    200-row batch does not fail on noise and a 100k-row batch does not fail on trivia."""

    alpha: float = Field(
        0.001, gt=0, lt=1, description="Chance that a clean batch fails the gate (split over all tests)."
    )
    warn_alpha: float = Field(0.05, gt=0, lt=1, description="Significance level of a warning (split over all tests).")
    warn_fraction: float = Field(
        0.5, gt=0, le=1, description="A check warns when its effect passes this fraction of the fail bound."
    )
    null_tolerance: float = Field(0.05, ge=0, le=1, description="Null rate allowed above training, absolute.")
    range_tolerance: float = Field(0.01, ge=0, le=1, description="Share of values allowed outside the training range.")
    date_horizon: float = Field(
        1.0,
        ge=0,
        description="How far past training's latest date a batch's dates may lie, as a multiple of training's date "
        "span (latest minus earliest): a model's recency. 1: a model trained on a year of data accepts dates up to "
        "a year past its last.",
    )
    mean_shift_sd: float = Field(0.2, gt=0, description="Mean shift allowed, in training standard deviations.")
    stdev_ratio: float = Field(1.2, gt=1, description="Factor the standard deviation may grow or shrink by.")
    quantile_band: float = Field(
        0.05, gt=0, lt=0.5, description="Quantile bands: a batch quantile q may sit between training q-band and q+band."
    )
    bins: int = Field(24, ge=4, le=200, description="Training-quantile bins of the divergence check.")
    kl_threshold: float = Field(0.05, gt=0, description="KL divergence (batch || training) allowed on those bins.")
    unseen_tolerance: float = Field(0.02, ge=0, le=1, description="Share of unseen categories allowed.")
    text_coverage_drop: float = Field(
        0.1,
        gt=0,
        le=1,
        description="Free text: drop allowed in the share of a value's tokens found in the training vocabulary, "
        "below training's own held-out share (absolute).",
    )
    text_vocabulary: int = Field(
        5000, gt=0, description="Free text: the most frequent training tokens a contract keeps per text column."
    )
    point_mass_share: float = Field(
        0.03,
        gt=0,
        le=1,
        description="Share by which one value may be more frequent than in training (stuck), and share of "
        "training values that may lie beyond a batch's largest or smallest value (clipped, tail cut off).",
    )
    max_categories: int = Field(
        1000, gt=0, description="Categories a contract lists per column; rarer ones count as other."
    )
    joint_sample_rows: int = Field(
        2000,
        ge=0,
        le=20_000,
        description="Training rows the contract keeps for the joint check (relations between columns), and "
        "the most batch rows that check compares with them; 0 leaves the joint check out of new contracts.",
    )
    joint_min_auc: float = Field(
        0.55,
        gt=0.5,
        lt=1,
        description="Joint check: held-out AUC of the training-vs-batch classifier at which rows count as "
        "changed (0.5: indistinguishable); a fail also needs its p-value below the split alpha.",
    )
    report_dir: str = Field(".shipway/reports", description="Where drift reports go when --report is not given.")
    expectations_dir: str = Field(
        "expectations", description="Folder of the user's own GX suites (*.json); the gate runs them too."
    )


class ScoringSettings(_Section):
    """`shipway score`: batch scoring of a dataset's partitions on Dask (docs/scoring.md)."""

    on_failed_partition: Literal["stop", "quarantine"] = Field(
        "stop",
        description="A partition failing the version's contract: stop (exit 1, nothing written to --out) or "
        "quarantine (its rows and gate report go to --out/_quarantine/, the other partitions are scored).",
    )
    scheduler: str | None = Field(
        None,
        description="Address of a Dask scheduler (tcp://host:8786) whose workers have shipway installed; "
        "empty starts a local cluster on this machine.",
    )
    workers: int = Field(0, ge=0, description="Local cluster: worker processes (0: one per core).")
    threads_per_worker: int = Field(1, ge=1, description="Local cluster: partitions each worker scores at once.")
    experiment: str = Field("shipway-scoring", description="MLflow experiment that holds one run per scoring.")


class QualitySettings(_Section):
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


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_DELIMITER, extra="forbid")

    mlflow: MlflowSettings = Field(default_factory=MlflowSettings)
    s3: S3Settings = Field(default_factory=S3Settings)
    snapshots: SnapshotSettings = Field(default_factory=SnapshotSettings)
    prefect: PrefectSettings = Field(default_factory=PrefectSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    prediction_log: PredictionLogSettings = Field(default_factory=PredictionLogSettings)
    promotion: PromotionSettings = Field(default_factory=PromotionSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)
    gate: GateSettings = Field(default_factory=GateSettings)
    quality: QualitySettings = Field(default_factory=QualitySettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    scoring: ScoringSettings = Field(default_factory=ScoringSettings)

    @model_validator(mode="before")
    @classmethod
    def _one_latency_budget(cls, values: Any) -> Any:
        """An old per-stage key still counts, with a warning, as the one budget; one that disagrees with
        the budget (or with the other old key) is an error: either way it cannot silently do nothing."""
        if not isinstance(values, dict):
            return values
        sections = {name: dict(part) if isinstance(part, dict) else part for name, part in values.items()}
        given = {
            f"{section}.{key}": sections[section][key]
            for section, key in (LATENCY_BUDGET, *RENAMED_LATENCY_KEYS)
            if isinstance(sections.get(section), dict) and key in sections[section]
        }
        old = [f"{section}.{key}" for section, key in RENAMED_LATENCY_KEYS if f"{section}.{key}" in given]
        if not old:
            return values
        if len({_number(value) for value in given.values()}) > 1:
            stated = ", ".join(f"{key}: {value}" for key, value in given.items())
            raise ValueError(
                f"serving.latency_budget_p99_ms, the one latency budget, replaces {' and '.join(old)} and they "
                f"disagree ({stated}): keep serving.latency_budget_p99_ms only"
            )
        warnings.warn(
            f"{' and '.join(old)} is now serving.latency_budget_p99_ms, the one latency budget of the benchmark, "
            "the shadow analysis and monitoring: rename it",
            RenamedSetting,
            stacklevel=2,
        )
        for section, key in RENAMED_LATENCY_KEYS:
            budget = sections[section].pop(key, None) if isinstance(sections.get(section), dict) else None
            if budget is not None:
                sections["serving"] = {**(sections.get("serving") or {}), LATENCY_BUDGET[1]: budget}
        return sections

    @model_validator(mode="after")
    def _no_slice_on_a_sensitive_column(self) -> Settings:
        """A slice is named by its values ("email=a@b.org") in the quality report and the release card."""
        named = sorted(set(self.quality.slices) & set(self.serving.sensitive_columns))
        if named:
            raise ValueError(
                f"quality.slices names {', '.join(map(repr, named))}, which serving.sensitive_columns redacts: a "
                "slice is named by its values in the quality report; remove it from quality.slices"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The profile arrives as init kwargs; environment variables must win over it.
        return env_settings, init_settings

    def resolved(self, cwd: Path) -> Settings:
        """A copy with relative local paths made absolute against `cwd`."""
        update = {
            "mlflow": self.mlflow.model_copy(
                update={
                    "tracking_uri": _absolute_sqlite(self.mlflow.tracking_uri, cwd),
                    "artifact_location": _absolute_path(self.mlflow.artifact_location, cwd),
                }
            ),
            "prediction_log": self.prediction_log.model_copy(
                update={"url": _absolute_sqlite(self.prediction_log.url, cwd)}
            ),
            "snapshots": self.snapshots.model_copy(update={"store": _absolute_path(self.snapshots.store, cwd)}),
            "serving": self.serving.model_copy(update={"state_dir": _absolute_path(self.serving.state_dir, cwd)}),
            "training": self.training.model_copy(
                update={"code_path": [_absolute_path(p, cwd) for p in self.training.code_path]}
            ),
            "gate": self.gate.model_copy(
                update={
                    "report_dir": _absolute_path(self.gate.report_dir, cwd),
                    "expectations_dir": _absolute_path(self.gate.expectations_dir, cwd),
                }
            ),
        }
        return self.model_copy(update=update)


def load_settings(path: Path | str | None = None, cwd: Path | None = None) -> Settings:
    """Load a profile (default: SHIPWAY_CONFIG, else the embedded default) with env overrides."""
    path = Path(path or os.environ.get(f"{ENV_PREFIX}CONFIG") or DEFAULT_PROFILE)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, not {type(values).__name__}")
    try:
        settings = Settings(**values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from None
    return settings.resolved(cwd or Path.cwd())


def _describe(exc: ValidationError, path: Path) -> str:
    """One line naming the first bad key, and the environment variable if that is where it came from."""
    error = exc.errors()[0]
    if not error["loc"]:  # a check across sections: its message names the keys
        return f"config file {path}: {error['msg'].removeprefix('Value error, ')}"
    loc = error["loc"][:-2] if error["loc"][-1] == "[key]" else error["loc"]  # a mapping's bad key: name the mapping
    key = ".".join(str(part) for part in loc)
    env_var = ENV_PREFIX + ENV_DELIMITER.join(str(p) for p in loc).upper()
    origin = f"environment variable {env_var}" if env_var in os.environ else f"config file {path}"
    if error["type"] == "extra_forbidden":
        return f"{origin}: unknown key '{key}'"
    value = error.get("input")
    message = error["msg"].removeprefix("Value error, ")  # pydantic's wording, not the user's
    if error["type"] in ("literal_error", "enum"):
        message = f"unknown value {value!r} (expected {error['ctx']['expected']})"
    if isinstance(value, dict) or repr(value) in message:  # a section's values may hold secrets; or said already
        return f"{origin}: key '{key}': {message}"
    return f"{origin}: key '{key}': {message} (got {value!r})"


def _number(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def _absolute_path(location: str, cwd: Path) -> str:
    if not location or "://" in location:
        return location
    return str((cwd / location).resolve())


def _absolute_sqlite(uri: str, cwd: Path) -> str:
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri.startswith(prefix + "/"):
        return uri
    return prefix + str((cwd / uri[len(prefix) :]).resolve())
