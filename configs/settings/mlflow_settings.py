"""`mlflow:` where runs, models and their artifacts are kept."""

from __future__ import annotations

from pydantic import Field

from configs.settings.base import LocalPath, Section, SqliteUrl


class MlflowSettings(Section):
    tracking_uri: SqliteUrl = Field(
        "sqlite:///.shipway/mlflow.db",
        description="MLflow tracking and registry store: sqlite:///PATH or http(s)://server.",
    )
    artifact_location: LocalPath = Field(
        ".shipway/artifacts",
        description="Artifact root of experiments shipway creates: a folder or s3://bucket/prefix. "
        "Leave empty to use the tracking server's proxied artifact store.",
    )
    experiment: str = Field("shipway", description="Experiment that holds the training runs.")
