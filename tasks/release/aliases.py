"""Alias moves as recorded, recoverable steps: the history MLflow does not keep.

Alias moves of one model are serialized (tasks/release/steps.py: a compare-and-set in the store, so two
processes never interleave their writes). Every step that moves aliases (and the canary share)
is journaled first in a registered-model tag with its owner, applied, recorded in the model's
release record (tasks/release/record.py: the table transitions.json, which answers "which version was
Production at time T"), and only then un-journaled. A step cut short by a crash is found by the
next step of that model and undone, so the aliases are as they were before it; a journal whose
owner still lives is never touched. A caller that decided on an earlier read passes `expect`:
if an alias moved since, it is told who moved it, and nothing moves.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from datetime import UTC, datetime

from configs.settings import Settings
from core.errors import RegistryError
from core.owner import Owner
from core.vocabulary import Alias, Tag
from tasks.release import record, registry
from tasks.release.status import Transition, transitions_of
from tasks.release.steps import serialized

SHARE = Tag.CANARY_SHARE.value  # pseudo-alias under which share changes are journaled and recorded


class AliasMoved(RegistryError):
    """An alias the caller expected in one place was moved by someone else meanwhile."""


def move(
    settings: Settings,
    name: str,
    changes: Mapping[Alias, str | None],
    *,
    actor: str,
    reason: str,
    evidence: str = "",
    canary_share: float | None = None,
    expect: Mapping[Alias, str | None] | None = None,
) -> list[Transition]:
    """Move aliases (version None removes one) and optionally set the canary share, as one step.

    A version gains an alias only if it passed its gates and its model loads. With `expect`
    ({alias: version the caller saw}), nothing moves if one of them moved since: AliasMoved
    names the alias, where it went, who moved it and when.
    """
    checked: set[str] = set()
    aliases, _ = registry.model_state(settings, name)
    for alias, version in changes.items():  # loading a model takes seconds: not while holding the lock
        if version is not None and aliases.get(alias.value) != version and version not in checked:
            check_servable(settings, name, version)
            checked.add(version)
    with serialized(settings, name, f"{actor}: {reason}"):
        recover(settings, name, actor=actor)
        aliases, tags = registry.model_state(settings, name)
        for alias, seen in (expect or {}).items():
            if aliases.get(alias.value) != seen:
                raise _moved(settings, name, alias, seen, aliases.get(alias.value), changes.get(alias))
        for alias, version in changes.items():
            if version is not None and aliases.get(alias.value) != version and version not in checked:
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
            "owner": Owner.current().to_dict(),
        }
        registry.set_model_tag(settings, name, Tag.PROMOTION_PENDING, json.dumps(journal))
        _apply(settings, name, wanted)
        done = [Transition(k, v, before[k], at.isoformat(), actor, reason, evidence) for k, v in wanted.items()]
        _record(settings, name, done)
        registry.delete_model_tag(settings, name, Tag.PROMOTION_PENDING)
        return done


def recover(settings: Settings, name: str, *, actor: str) -> list[Transition]:
    """Undo a step that was journaled but not finished (a crash, a kill): aliases as before it.

    Only the holder of the model's step lock looks, so a journal it finds belongs to a step that
    is over: its owner died in it, or failed in it and let the lock go. A step in progress holds
    the lock, so its journal is never touched."""
    with serialized(settings, name, f"{actor}: recover"):
        _, tags = registry.model_state(settings, name)
        if Tag.PROMOTION_PENDING not in tags:
            return []
        journal = json.loads(tags[Tag.PROMOTION_PENDING])
        owner = f" ({Owner.from_dict(journal['owner'])})" if "owner" in journal else ""
        _apply(settings, name, journal["before"])
        at = datetime.now(UTC).isoformat()
        reason = (
            f"restored: the step '{journal['reason']}' by {journal['actor']}{owner} at {journal['at']} did not finish"
        )
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
    """Every recorded transition of `name`, oldest first (from its release record)."""
    return transitions_of(record.read(settings, name, record.TRANSITIONS))


def alias_at(transitions: list[Transition], alias: Alias, when: datetime) -> str | None:
    """The version that held `alias` at `when` (None if none did), from the recorded history."""
    holder = None
    for t in transitions:
        if t.alias == alias.value and datetime.fromisoformat(t.at) <= when:
            holder = t.version
    return holder


def check_servable(settings: Settings, name: str, version: str) -> None:
    """Refuse a version whose training did not finish, whose gate failed, that has no latency result or
    quality verdict, or that the gateway could not load."""
    found = registry.get_version(settings, name, version)
    if found.tags.get(Tag.UNFINISHED):
        raise RegistryError(f"version {version} of '{name}' did not finish training: {found.tags[Tag.UNFINISHED]}")
    if found.tags.get(Tag.VALIDATION_STATUS) == "fail":
        raise RegistryError(f"version {version} of '{name}' failed its data gate (validation_status=fail)")
    quality = found.tags.get(Tag.QUALITY_GATE)
    if quality == "failed":
        raise RegistryError(f"version {version} of '{name}' failed its quality gate (quality_gate=failed)")
    if quality not in ("passed", "overridden"):  # never judged is not a pass either
        raise RegistryError(
            f"version {version} of '{name}' has no quality verdict (tag quality_gate is "
            f"{'missing' if quality is None else repr(quality)}): train it with `shipway train`, whose quality "
            "gate judges it against its baseline and Production"
        )
    latency = found.tags.get(Tag.LATENCY_GATE)
    if latency == "failed":
        raise RegistryError(f"version {version} of '{name}' failed its latency budget (latency_gate=failed)")
    if latency != "passed":  # no result is not a pass: an unmeasured version must not take traffic
        raise RegistryError(
            f"version {version} of '{name}' has no recorded latency result (tag latency_gate is "
            f"{'missing' if latency is None else repr(latency)}): run `shipway bench --model {name}/{version}` first"
        )
    from serving import RegistryReader, servable  # the gateway's loader: only a version gaining an alias needs it

    try:
        reader = RegistryReader(settings)
        loaded = reader.load(name, str(version))
        servable(loaded)
        reader.baseline(loaded)  # its file checked too (IntegrityError): the gateway would refuse the version
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
    record.append(settings, name, record.TRANSITIONS, [asdict(t) for t in transitions])


def _moved(
    settings: Settings, name: str, alias: Alias, seen: str | None, now: str | None, wanted: str | None
) -> AliasMoved:
    last = next((t for t in reversed(history(settings, name)) if t.alias == alias.value), None)
    who = f" by {last.actor} at {last.at[:19]} UTC ({last.reason})" if last else ""
    target = f"to version {wanted}" if wanted else "away"
    return AliasMoved(
        f"{alias.value} of '{name}' moved from {seen or 'nowhere'} to {now or 'nowhere'}{who}; not moving it {target}"
    )
