"""`prediction_log:` the database of the gateway's answers, read by monitoring and the promotion."""

from __future__ import annotations

from pydantic import Field

from configs.settings.base import Section, SqliteUrl


class PredictionLogSettings(Section):
    url: SqliteUrl = Field(
        "sqlite:///.shipway/predictions.db",
        description="SQLAlchemy URL of the gateway's prediction log (SQLite or PostgreSQL).",
    )
