"""Alias moves as recorded, recoverable steps: the history MLflow does not keep.

Every step that moves aliases (and the canary share) is journaled first in a registered-model
tag, applied, recorded, and only then un-journaled. A step cut short by a crash is found by the
next promotion, rollback or `recover()` call and undone, so the aliases are as they were before
it. Each transition is recorded twice: as a tag on the registered model (the model's history,
which answers "which version was Production at time T") and as a tag on the version it concerns.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from configs.settings import Settings
from core.errors import RegistryError
from core.vocabulary import Alias, Tag
from serving import RegistryReader, servable
from tasks import registry
from tasks.retries import retry_on_io

TRANSITION_PREFIX = "transition."
SHARE = Tag.CANARY_SHARE.value  # pseudo-alias under which share changes are journaled and recorded


@dataclass(frozen=True)
class Transition:
    alias: str  # an Alias value, or SHARE
    version: str | None  # None: the alias was removed (for SHARE: the share as a string)
    previous: str | None
    at: str  # ISO 8601, UTC, microseconds: orders the history
    actor: str
    reason: str
    evidence: str = ""

    @property
    def key(self) -> str:
        stamp = datetime.fromisoformat(self.at).strftime("%Y%m%dT%H%M%S%fZ")
        return f"{TRANSITION_PREFIX}{stamp}.{self.alias}"


def move(
    settings: Settings,
    name: str,
    changes: Mapping[Alias, str | None],
    *,
    actor: str,
    reason: str,
    evidence: str = "",
    canary_share: float | None = None,
) -> list[Transition]:
    """Move aliases (version None removes one) and optionally set the canary share, as one step.

    A version gains an alias only if it passed its gates and its model loads.
    """
    recover(settings, name, actor=actor)
    aliases, tags = registry.model_state(settings, name)
    for alias, version in changes.items():
        if version is not None and aliases.get(alias.value) != version:
            check_servable(settings, name, version)
    wanted: dict[str, str | None] = {alias.value: version for alias, version in changes.items()}
    before: dict[str, str | None] = {alias: aliases.get(alias) for alias in wanted}
    if canary_share is not None:
        wanted[SHARE] = f"{canary_share:g}"
        before[SHARE] = tags.get(Tag.CANARY_SHARE)
    wanted = {k: v for k, v in wanted.items() if before[k] != v}
    if not wanted:
        return []
    at = datetime.now(UTC)
    journal = {
        "before": {k: before[k] for k in wanted},
        "after": wanted,
        "actor": actor,
        "reason": reason,
        "at": at.isoformat(),
    }
    registry.set_model_tag(settings, name, Tag.PROMOTION_PENDING, json.dumps(journal))
    _apply(settings, name, wanted)
    done = [Transition(k, v, before[k], at.isoformat(), actor, reason, evidence) for k, v in wanted.items()]
    _record(settings, name, done)
    registry.delete_model_tag(settings, name, Tag.PROMOTION_PENDING)
    return done


@task(name="set-alias", retries=2, retry_delay_seconds=[1, 5], retry_condition_fn=retry_on_io, cache_policy=NO_CACHE)
def alias_task(settings: Settings, name: str, alias: Alias, version: str, *, actor: str, reason: str) -> None:
    """One alias move of a flow, recorded and checked like every other (the gateway can load it)."""
    move(settings, name, {alias: version}, actor=actor, reason=reason)
    get_run_logger().info("%s@%s -> version %s", name, alias.value, version)


def recover(settings: Settings, name: str, *, actor: str) -> list[Transition]:
    """Undo a step that was journaled but not finished (a crash, a kill): aliases as before it."""
    _, tags = registry.model_state(settings, name)
    if Tag.PROMOTION_PENDING not in tags:
        return []
    journal = json.loads(tags[Tag.PROMOTION_PENDING])
    _apply(settings, name, journal["before"])
    at = datetime.now(UTC).isoformat()
    reason = f"restored: the step '{journal['reason']}' by {journal['actor']} at {journal['at']} did not finish"
    done = [Transition(k, v, journal["after"].get(k), at, actor, reason) for k, v in journal["before"].items()]
    _record(settings, name, done)
    registry.delete_model_tag(settings, name, Tag.PROMOTION_PENDING)
    return done


def rollback(settings: Settings, name: str, *, actor: str, reason: str) -> list[Transition]:
    """Production <- Previous in one recorded step; an ongoing canary is stopped with it."""
    aliases, _ = registry.model_state(settings, name)
    previous = aliases.get(Alias.PREVIOUS.value)
    if previous is None:
        raise RegistryError(f"'{name}' has no Previous version to roll back to")
    return move(
        settings,
        name,
        {Alias.PRODUCTION: previous, Alias.PREVIOUS: None, Alias.CANARY: None},
        actor=actor,
        reason=reason,
        canary_share=0.0,
    )


def history(settings: Settings, name: str) -> list[Transition]:
    """Every recorded transition of `name`, oldest first."""
    _, tags = registry.model_state(settings, name)
    found = [Transition(**json.loads(v)) for k, v in tags.items() if k.startswith(TRANSITION_PREFIX)]
    return sorted(found, key=lambda t: t.at)


def alias_at(transitions: list[Transition], alias: Alias, when: datetime) -> str | None:
    """The version that held `alias` at `when` (None if none did), from the recorded history."""
    holder = None
    for t in transitions:
        if t.alias == alias.value and datetime.fromisoformat(t.at) <= when:
            holder = t.version
    return holder


def check_servable(settings: Settings, name: str, version: str) -> None:
    """Refuse a version whose gate failed, that has no latency result, or that the gateway could not load."""
    found = registry.get_version(settings, name, version)
    if found.tags.get(Tag.VALIDATION_STATUS) == "fail":
        raise RegistryError(f"version {version} of '{name}' failed its data gate (validation_status=fail)")
    latency = found.tags.get(Tag.LATENCY_GATE)
    if latency == "failed":
        raise RegistryError(f"version {version} of '{name}' failed its latency budget (latency_gate=failed)")
    if latency != "passed":  # no result is not a pass: an unmeasured version must not take traffic
        raise RegistryError(
            f"version {version} of '{name}' has no recorded latency result (tag latency_gate is "
            f"{'missing' if latency is None else repr(latency)}): run `shipway bench --model {name}/{version}` first"
        )
    try:
        servable(RegistryReader(settings).load(name, str(version)))
    except RegistryError:
        raise
    except Exception as exc:  # any failure to load means the version must not serve
        raise RegistryError(f"version {version} of '{name}' cannot load: {type(exc).__name__}: {exc}") from None


def _apply(settings: Settings, name: str, values: Mapping[str, str | None]) -> None:
    for key, value in values.items():
        if key == SHARE:
            registry.set_canary_share(settings, name, float(value or 0))
        elif value is None:
            registry.delete_alias(settings, name, Alias(key))
        else:
            registry.set_alias(settings, name, Alias(key), value)


def _record(settings: Settings, name: str, transitions: list[Transition]) -> None:
    for t in transitions:
        value = json.dumps(asdict(t))
        registry.set_model_tag(settings, name, t.key, value)
        for version in {t.version, t.previous} - {None} if t.alias != SHARE else ():
            registry.set_version_tags(settings, name, version, {t.key: value})
