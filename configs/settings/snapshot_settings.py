"""`snapshots:` where training snapshots are kept."""

from __future__ import annotations

from pydantic import Field

from configs.settings.base import LocalPath, Section


class SnapshotSettings(Section):
    store: LocalPath = Field(".shipway/snapshots", description="Snapshot store: a folder or s3://bucket/prefix.")
