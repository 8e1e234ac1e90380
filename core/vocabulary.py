"""The words of a release, defined once: registry aliases, serving roles, gate verdicts, tasks and
the tag names a person reads on an MLflow version page."""

from __future__ import annotations

from enum import StrEnum


class Alias(StrEnum):
    """Registry aliases: the only way shipway marks a version's role (stages are never used)."""

    SHADOW = "Shadow"
    CANARY = "Canary"
    PRODUCTION = "Production"
    PREVIOUS = "Previous"


class Role(StrEnum):
    """Who answered a request, as the prediction log and the X-Model-Role header say."""

    PRODUCTION = "production"
    CANARY = "canary"
    SHADOW = "shadow"
    FALLBACK = "fallback"


class Verdict(StrEnum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Verdict.PASS: 0, Verdict.WARN: 1, Verdict.FAIL: 2}


class Task(StrEnum):
    """What a model predicts (`training.task`); AUTO is resolved from the target before training."""

    AUTO = "auto"
    BINARY = "binary"
    MULTICLASS = "multiclass"
    REGRESSION = "regression"

    @property
    def is_classification(self) -> bool:
        return self in (Task.BINARY, Task.MULTICLASS)


class Tag(StrEnum):
    """Model version tags (and the registered-model tags the gateway and promotions read)."""

    GIT_COMMIT = "git_commit"
    GIT_BRANCH = "git_branch"
    GIT_DIRTY = "git_dirty"
    SHIPWAY_VERSION = "shipway_version"
    CONFIG_HASH = "config_hash"
    DATA_SNAPSHOT_ID = "data_snapshot_id"
    DATA_SNAPSHOT_URI = "data_snapshot_uri"
    DATA_ROWS = "data_rows"
    TARGET = "target"
    TASK = "task"
    PREDICT_FN = "predict_fn"
    CLASSES = "classes"  # JSON list, the order of a predict_proba row
    ESTIMATOR = "estimator"
    EXPECTATION_SUITE = "expectation_suite"
    VALIDATION_STATUS = "validation_status"  # the training gate's verdict only
    LAST_CHECK_STATUS = "last_check_status"  # `shipway validate --record`: a batch check, never a gate
    LAST_SCORING_RUN = "last_scoring_run"  # `shipway score`: the MLflow run of the last batch scored
    QUALITY_GATE = "quality_gate"
    LATENCY_P50_MS = "latency_p50_ms"
    LATENCY_P95_MS = "latency_p95_ms"
    LATENCY_P99_MS = "latency_p99_ms"
    LATENCY_BUDGET_P99_MS = "latency_budget_p99_ms"
    LATENCY_GATE = "latency_gate"
    LATENCY_CPU_P99_MS = "latency_cpu_p99_ms"  # the CPU-time estimate of the quiet p99
    LATENCY_LOAD = "latency_load"  # the machine's load average while measured, and its cores
    LATENCY_VERDICT = "latency_verdict"  # the verdict in words: what was judged, at which load
    BASELINE_MODEL_URI = "baseline_model_uri"
    BASELINE_RULE = "baseline_rule"
    BASELINE_TRAINING_METRIC = "baseline_training_metric"  # the metric that chose the rule, on training
    BASELINE_ONNX_URI = "baseline_onnx_uri"
    # sha256 of each file a version is loaded from, beside its URI's tag (core/integrity.py)
    MODEL_SHA256 = "model_sha256"  # the scikit-learn model file (model.skops)
    ONNX_MODEL_SHA256 = "onnx_model_sha256"
    BASELINE_MODEL_SHA256 = "baseline_model_sha256"
    BASELINE_ONNX_SHA256 = "baseline_onnx_sha256"
    EXPECTATION_SUITE_SHA256 = "expectation_suite_sha256"
    PREDICTION_REFERENCE_SHA256 = "prediction_reference_sha256"  # holdout predictions (monitoring)
    SERVING_FORMAT = "serving_format"
    ONNX_PARITY = "onnx_parity"
    ONNX_MODEL_URI = "onnx_model_uri"
    DECISION_THRESHOLD = "decision_threshold"  # binary: the threshold served and how it was chosen
    TRAINING_POSITIVE_RATE = "training_positive_rate"  # binary: the training split's share of the positive class
    POSITIVE_RATE_WARNING = "positive_rate_warning"  # the quality gate: served positive rate far from it
    RELEASE_RECORD = "release_record"  # the run id of the model's release record (also a model tag)
    UNFINISHED = "unfinished"  # the training flow has not reached its gates' verdicts: since when, or how it stopped
    # the monitoring flow's last window of the Production version (the gateway exports them to Prometheus)
    MONITORING_ESTIMATE = "monitoring_estimate"  # JSON {metric: {estimated, holdout, drop}}
    MONITORING_PREDICTION_PSI = "monitoring_prediction_psi"  # the largest PSI of its outputs vs the holdout's
    MONITORING_WINDOW_END = "monitoring_window_end"  # ISO time the window ended
    # registered-model tags
    CANARY_SHARE = "canary_share"
    PROMOTION_PENDING = "promotion_pending"
    AWAITING_APPROVAL = "awaiting_approval"
    PROMOTION_LEASE = "promotion_lease"
