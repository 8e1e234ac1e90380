"""`prefect:` the Prefect server flows run on, or none."""

from __future__ import annotations

from pydantic import Field

from configs.settings.base import Section


class PrefectSettings(Section):
    api_url: str | None = Field(None, description="Prefect server API; empty runs flows in Prefect's ephemeral mode.")
