"""Typed settings. A YAML profile gives the values, SHIPWAY_* environment variables override them.

`SHIPWAY_TRAINING__SEED=7` overrides `training.seed`: the prefix, then the keys joined by `__`.
Each section is a model in a module of its own, named after it (`training.seed`: training_settings.py);
this one puts them under their keys and reads the profile with pydantic-settings' YAML source.
Relative paths are resolved against the working directory when the profile is loaded, so the
embedded default keeps all of its state under `./.shipway/`.
"""

from __future__ import annotations

import os
import warnings
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, YamlConfigSettingsSource

from configs.settings.data_settings import DataSettings
from configs.settings.gate_settings import GateSettings
from configs.settings.mlflow_settings import MlflowSettings
from configs.settings.monitoring_settings import MonitoringSettings
from configs.settings.prediction_log_settings import PredictionLogSettings
from configs.settings.prefect_settings import PrefectSettings
from configs.settings.promotion_settings import PromotionSettings
from configs.settings.quality_settings import (
    DEFAULT_METRIC,
    ERROR_METRICS,
    METRIC_SPELLINGS,
    QUALITY_METRICS,
    QualityMetric,
    QualitySettings,
)
from configs.settings.s3_settings import S3Settings
from configs.settings.scoring_settings import ScoringSettings
from configs.settings.serving_settings import ServingSettings
from configs.settings.snapshot_settings import SnapshotSettings
from configs.settings.training_settings import BUILT_IN_ESTIMATORS, SearchSettings, TrainingSettings, is_import_path
from core.errors import ConfigError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = [
    "BUILT_IN_ESTIMATORS",
    "DEFAULT_METRIC",
    "DEFAULT_PROFILE",
    "ENV_DELIMITER",
    "ENV_PREFIX",
    "ERROR_METRICS",
    "METRIC_SPELLINGS",
    "PROFILES",
    "QUALITY_METRICS",
    "DataSettings",
    "GateSettings",
    "MlflowSettings",
    "MonitoringSettings",
    "PredictionLogSettings",
    "PrefectSettings",
    "PromotionSettings",
    "QualityMetric",
    "QualitySettings",
    "RenamedSetting",
    "S3Settings",
    "ScoringSettings",
    "SearchSettings",
    "ServingSettings",
    "Settings",
    "SnapshotSettings",
    "TrainingSettings",
    "is_import_path",
    "load_settings",
]

PROFILES = Path(__file__).parents[1]
DEFAULT_PROFILE = PROFILES / "default.yaml"
ENV_PREFIX = "SHIPWAY_"
ENV_DELIMITER = "__"
# Keys that said the latency budget per stage before there was one: read as serving.latency_budget_p99_ms.
LATENCY_BUDGET = ("serving", "latency_budget_p99_ms")
RENAMED_LATENCY_KEYS = (("promotion", "latency_p99_ms"), ("monitoring", "latency_p99_ms"))

# The profile that load_settings is reading; none for a Settings built in code (defaults and environment).
_profile: ContextVar[Path | None] = ContextVar("shipway_profile", default=None)


class RenamedSetting(FutureWarning):
    """A profile key read under its new name; the warning says which to rename."""


class ProfileSource(YamlConfigSettingsSource):
    """pydantic-settings' YAML source, with a file it cannot use said in one line naming it."""

    def _read_file(self, file_path: Path | Traversable) -> dict[str, Any]:
        try:
            values: Any = super()._read_file(file_path)
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {file_path} cannot be read: {exc}") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(f"config file {file_path} is not valid YAML{where}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"config file {file_path} must hold a mapping of keys, not {type(values).__name__}")
        return values


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
        # Environment variables win over values given in code, and those over the profile.
        return env_settings, init_settings, ProfileSource(settings_cls, yaml_file=_profile.get())

    def resolved(self, cwd: Path) -> Settings:
        """A copy with relative local paths made absolute against `cwd`."""
        return self.model_copy(update={name: getattr(self, name).resolved(cwd) for name in type(self).model_fields})


def load_settings(path: Path | str | None = None, cwd: Path | None = None) -> Settings:
    """Load a profile (default: SHIPWAY_CONFIG, else the embedded default) with env overrides."""
    path = Path(path or os.environ.get(f"{ENV_PREFIX}CONFIG") or DEFAULT_PROFILE)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    reading = _profile.set(path)
    try:
        settings = Settings()
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from None
    finally:
        _profile.reset(reading)
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
