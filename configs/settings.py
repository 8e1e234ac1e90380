"""Typed settings. A YAML profile gives the values, SHIPWAY_* environment variables override them.

`SHIPWAY_TRAINING__SEED=7` overrides `training.seed`: the prefix, then the keys joined by `__`.
Relative paths are resolved against the working directory when the profile is loaded, so the
embedded default keeps all of its state under `./.shipway/`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from tasks.errors import ConfigError

PROFILES = Path(__file__).parent
DEFAULT_PROFILE = PROFILES / "default.yaml"
ENV_PREFIX = "SHIPWAY_"
ENV_DELIMITER = "__"

Estimator = Literal[
    "logistic_regression", "random_forest", "hist_gradient_boosting", "gradient_boosting"
]


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
    endpoint_url: str | None = Field(
        None, description="S3 endpoint for boto3 (MinIO, moto); empty means AWS itself."
    )
    region: str = Field("us-east-1", description="Region for the S3 client.")


class SnapshotSettings(_Section):
    store: str = Field(
        ".shipway/snapshots", description="Snapshot store: a folder or s3://bucket/prefix."
    )


class PrefectSettings(_Section):
    api_url: str | None = Field(
        None, description="Prefect server API; empty runs flows in Prefect's ephemeral mode."
    )


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
        250.0, gt=0, description="A model slower than this is treated as failed and the fallback chain answers."
    )
    cache_size: int = Field(10_000, ge=0, description="Last good answers kept for the fallback chain (0: no cache).")
    cache_max_age_s: float = Field(600.0, gt=0, description="A cached answer older than this is not served.")
    max_body_bytes: int = Field(1_048_576, gt=0, description="Larger request bodies get 413.")
    sensitive_columns: dict[str, Literal["hash", "drop"]] = Field(
        default_factory=dict, description="Input columns hashed (salted sha256) or dropped before they are logged."
    )
    hash_salt: str = Field("", description="Salt of the sensitive-column hash; set it per deployment.")
    log_queue_size: int = Field(
        50_000, gt=0, description="Prediction-log rows waiting to be written; beyond it rows are dropped and counted."
    )
    log_batch_size: int = Field(500, gt=0, description="Prediction-log rows written per transaction.")
    log_flush_interval_s: float = Field(0.5, gt=0, description="Longest time a logged row waits to be written.")
    shadow_queue_size: int = Field(
        1_000, gt=0, description="Requests waiting for the Shadow model; beyond it they are skipped and counted."
    )
    latency_budget_p99_ms: float = Field(
        50.0, gt=0, description="The training flow's latency gate: HTTP p99 of one-row requests through the gateway."
    )
    bench_requests: int = Field(1_000, gt=0, description="Requests per measurement of `shipway bench`.")


class DataSettings(_Section):
    source: str = Field(
        "demo", description="Training data: a CSV or Parquet file, s3://bucket/key, or 'demo'."
    )
    target: str = Field("churned", description="The label column.")
    demo_rows: int = Field(30_000, gt=0, description="Rows of the generated demo dataset.")


class TrainingSettings(_Section):
    model_name: str = Field("churn-classifier", description="Registered model name.")
    estimator: Estimator = Field("logistic_regression", description="Model family.")
    params: dict[str, Any] = Field(
        default_factory=dict, description="Hyperparameters passed to the estimator."
    )
    test_size: float = Field(0.2, gt=0, lt=1, description="Holdout share of the snapshot.")
    seed: int = Field(42, description="Seed of the split and the estimator: same seed, same model.")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_DELIMITER, extra="forbid"
    )

    mlflow: MlflowSettings = Field(default_factory=MlflowSettings)
    s3: S3Settings = Field(default_factory=S3Settings)
    snapshots: SnapshotSettings = Field(default_factory=SnapshotSettings)
    prefect: PrefectSettings = Field(default_factory=PrefectSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    prediction_log: PredictionLogSettings = Field(default_factory=PredictionLogSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)

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
            "snapshots": self.snapshots.model_copy(
                update={"store": _absolute_path(self.snapshots.store, cwd)}
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
    key = ".".join(str(part) for part in error["loc"])
    env_var = ENV_PREFIX + ENV_DELIMITER.join(str(p) for p in error["loc"]).upper()
    origin = f"environment variable {env_var}" if env_var in os.environ else f"config file {path}"
    if error["type"] == "extra_forbidden":
        return f"{origin}: unknown key '{key}'"
    return f"{origin}: key '{key}': {error['msg']} (got {error.get('input')!r})"


def _absolute_path(location: str, cwd: Path) -> str:
    if not location or "://" in location:
        return location
    return str((cwd / location).resolve())


def _absolute_sqlite(uri: str, cwd: Path) -> str:
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri.startswith(prefix + "/"):
        return uri
    return prefix + str((cwd / uri[len(prefix) :]).resolve())
