"""`scoring:` `shipway score`, batch scoring of a dataset's partitions on Dask."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from configs.settings.base import Section


class ScoringSettings(Section):
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
