"""What `shipway status` shows, read without MLflow where the store is a database: serving's
RegistryReader reads MLflow's tables and the release record's file itself, so a command that only
looks starts in about a second instead of paying MLflow's import and its SQL store's set-up."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from configs.settings import Settings
from core.vocabulary import Tag

if TYPE_CHECKING:
    from serving import VersionRow

TRANSITIONS = "transitions.json"  # the release record's table of alias moves (tasks/release/record.py)


@dataclass(frozen=True)
class Transition:
    alias: str  # an Alias value, or the canary share's pseudo-alias
    version: str | None  # None: the alias was removed (for the share: the share as a string)
    previous: str | None
    at: str  # ISO 8601, UTC, microseconds: orders the history
    actor: str
    reason: str
    evidence: str = ""


def transitions_of(rows: Sequence[Mapping[str, str | None]]) -> list[Transition]:
    """The rows of a release record's transitions table, oldest first."""
    found = [
        Transition(
            r.get("alias") or "",
            r.get("version"),
            r.get("previous"),
            r.get("at") or "",
            r.get("actor") or "",
            r.get("reason") or "",
            r.get("evidence") or "",
        )
        for r in rows
    ]
    return sorted(found, key=lambda t: t.at)


@dataclass(frozen=True)
class ModelStatus:
    aliases: dict[str, str]  # {alias: version}
    tags: dict[str, str]  # the registered model's
    versions: list[VersionRow]  # newest first
    history: list[Transition]  # oldest first


def model_status(settings: Settings, name: str) -> ModelStatus:
    """Versions, aliases, tags and the alias history of `name` (RegistryError: no such model or store)."""
    from serving import RegistryReader  # here: the alias moves import this module's Transition, not the gateway

    reader = RegistryReader(settings)
    state = reader.state(name)
    found = reader.versions(name)
    record = state.tags.get(Tag.RELEASE_RECORD)
    table = reader.run_file(record, TRANSITIONS) if record else None
    rows = []
    if table is not None:
        logged = json.loads(table)
        rows = [dict(zip(logged["columns"], row, strict=False)) for row in logged["data"]]
    return ModelStatus(state.aliases, state.tags, found, transitions_of(rows))
