"""The promotion lease: one promotion per model at a time, and a dead one found and undone.

A running promotion holds a lease on its model, a registered-model tag (`promotion_lease`) naming
its flow run, its process (core/owner.py), the aliases and canary share it started from, and an
expiry that a thread of the promotion pushes forward every third of `promotion.lease_seconds`
(it keeps running while the flow is paused for approval). The lease lives in the model's own
tracking store, so it is keyed by store and model: two projects never block each other.

The next promotion of the model judges the lease it finds: its owner process is alive (same
machine) or it was renewed recently (another machine): busy, and the message names the run.
The owner is gone (same machine), or the lease expired: the run is declared crashed (a callback
the flow gives, to mark it in Prefect), the half-done alias step is undone (tasks/release/aliases.py
recovers its journal) and what the dead promotion had moved is put back as it was before it,
then the new promotion takes the lease. A lease that has stopped being renewed but has not
expired yet is waited for, so a promotion killed on another machine is taken over within one
lease period, without a manual step.

`shipway promote` takes the lease (`claimed`) before Prefect and the flow's modules load, which
is most of its start-up: a dead promotion is undone, and a second promotion refused, within the
registry client's start-up; the flow run adopts that lease when it starts (`held`).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from configs.settings import Settings
from core.errors import GateError
from core.owner import Owner
from core.vocabulary import Alias, Tag
from tasks.release import registry
from tasks.release.aliases import SHARE, move
from tasks.release.steps import serialized

RESTORED = (Alias.SHADOW, Alias.CANARY)  # what a promotion moves before its last step
STARTING = ""  # the run id of a lease taken before its flow run exists (claimed)


class PromotionBusy(GateError):
    """Another promotion of the model is running (or paused for approval). Exit 1."""


@dataclass(frozen=True)
class Lease:
    run_id: str
    run_name: str
    owner: Owner
    since: datetime
    renewed: datetime
    expires: datetime
    before: dict[str, str | None] = field(default_factory=dict)  # Shadow, Canary and the share at the start
    version: str | None = None  # the version being promoted, once known

    def to_json(self) -> str:
        return json.dumps(
            {
                "run_id": self.run_id,
                "run_name": self.run_name,
                "owner": self.owner.to_dict(),
                "since": self.since.isoformat(timespec="seconds"),
                "renewed": self.renewed.isoformat(timespec="seconds"),
                "expires": self.expires.isoformat(timespec="seconds"),
                "before": self.before,
                "version": self.version,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> Lease:
        data = json.loads(text)
        times = {k: datetime.fromisoformat(data[k]) for k in ("since", "renewed", "expires")}
        return cls(
            data["run_id"],
            data["run_name"],
            Owner.from_dict(data["owner"]),
            **times,
            before=data["before"],
            version=data["version"],
        )

    def judge(self, now: datetime, renew_s: float) -> str:
        """'live', 'dead', or 'silent' (not renewed lately, not expired yet: probably dead)."""
        alive = self.owner.alive()
        if alive is not None:
            return "live" if alive else "dead"
        if now >= self.expires:
            return "dead"
        return "silent" if (now - self.renewed).total_seconds() > 2 * renew_s else "live"

    def describe(self) -> str:
        run = f"flow run {self.run_id} ({self.run_name})" if self.run_id else "a promotion starting up"
        return f"{run}, {self.owner}, since {self.since:%Y-%m-%d %H:%M:%S} UTC" + (
            f", promoting version {self.version}" if self.version else ""
        )


Say = Callable[[str], None]  # how a promotion's steps are told (print, or the flow's logger)
Crashed = Callable[[Lease, str], None]  # told of each dead promotion taken over, to mark its flow run crashed


@dataclass
class Held:
    """The lease this promotion holds, renewed by a thread; `promoting(version)` records the version
    once it is known. Every write of the lease goes through `lock`, so a renewal never writes back
    an older copy."""

    settings: Settings
    name: str
    lease: Lease
    lost: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _renewer: threading.Thread | None = field(default=None, repr=False)

    def promoting(self, version: str) -> None:
        self._write(version=version)

    def adopt(self, run_id: str, run_name: str) -> None:
        """The lease claimed before the flow run existed, now under the run's id and name."""
        self._write(run_id=run_id, run_name=run_name)

    def start_renewal(self) -> None:
        seconds = self.settings.promotion.lease_seconds
        self._renewer = threading.Thread(target=_renew, args=(self, self._stop, seconds), name="lease-renewal")
        self._renewer.daemon = True
        self._renewer.start()

    def stop_renewal(self) -> None:
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join(timeout=10)

    def _write(self, **changes: Any) -> None:
        with self.lock:
            self.lease = replace(self.lease, **changes)
            registry.set_model_tag(self.settings, self.name, Tag.PROMOTION_LEASE, self.lease.to_json())


_claims: dict[tuple[str, str], Held] = {}  # (store, model): the lease this process took for the flow it starts


def read(settings: Settings, name: str) -> Lease | None:
    text = registry.model_state(settings, name)[1].get(Tag.PROMOTION_LEASE)
    return Lease.from_json(text) if text else None


@contextmanager
def claimed(settings: Settings, name: str, *, actor: str, say: Say = print) -> Iterator[list[tuple[Lease, str]]]:
    """Take `name`'s promotion lease for the promotion flow this process is about to run: a dead holder
    is taken over (its moves undone) and a live one refused now, before the flow can start. The flow's
    `held` adopts the lease; if no flow adopts it, it is released at the end of the block. Yields the
    dead promotions taken over with why, for their flow runs to be marked crashed once Prefect is up."""
    dead: list[tuple[Lease, str]] = []

    def crashed(lease: Lease, why: str) -> None:
        dead.append((lease, why))

    handle = _take(settings, name, STARTING, "starting", actor, crashed, say)
    key = (settings.mlflow.tracking_uri, name)
    _claims[key] = handle
    try:
        yield dead
    finally:
        if _claims.pop(key, None) is handle:  # no flow took it over: nothing was moved under it
            handle.stop_renewal()
            _release(settings, name, handle.lease.run_id, actor)


@contextmanager
def held(
    settings: Settings,
    name: str,
    run_id: str,
    run_name: str,
    *,
    actor: str,
    crashed: Crashed,
    say: Say = print,
) -> Iterator[Held]:
    """Hold `name`'s promotion lease for the block, renewed in the background; a dead holder is
    taken over (`crashed` is told, then its moves are undone); a live one makes PromotionBusy.
    The lease this process `claimed` for this flow is adopted instead, under this run's id."""
    handle = _claims.pop((settings.mlflow.tracking_uri, name), None)
    if handle is not None:
        handle.adopt(run_id, run_name)
    else:
        handle = _take(settings, name, run_id, run_name, actor, crashed, say)
    release = True
    try:
        yield handle
    except BaseException as exc:
        if not isinstance(exc, Exception | GeneratorExit):  # SIGTERM, Ctrl-C: undone as if the promotion had died
            release = False  # unless the undo finishes, the next promotion finds the lease and undoes it
            why = f"it was stopped ({type(exc).__name__})"
            say(f"the promotion {handle.lease.describe()} ended without finishing: {why}; undoing what it moved")
            registry.free_store(settings, exc)
            with serialized(settings, name, f"{actor}: promotion {run_id} stopped"):
                _undo(settings, name, handle.lease, actor, why)
            release = True
        raise
    finally:
        handle.stop_renewal()
        if release:
            _release(settings, name, run_id, actor)


def _release(settings: Settings, name: str, run_id: str, actor: str) -> None:
    with serialized(settings, name, f"{actor}: end of promotion {run_id or '(starting)'}"):
        found = read(settings, name)
        if found is not None and found.run_id == run_id and found.owner == Owner.current():
            registry.delete_model_tag(settings, name, Tag.PROMOTION_LEASE)


def _take(settings: Settings, name: str, run_id: str, run_name: str, actor: str, crashed: Crashed, say: Say) -> Held:
    """The lease for `run_id` once no live promotion holds it (a dead one is taken over), renewed from now on."""
    seconds = settings.promotion.lease_seconds
    renew_s = seconds / 3
    while True:
        found = read(settings, name)
        if found is not None and (found.run_id != run_id or run_id == STARTING):  # not this run's own
            if found.judge(datetime.now(UTC), renew_s) == "live":
                answer = f" or answer it (shipway approve {found.run_id} [--reject])" if found.run_id else ""
                raise PromotionBusy(
                    f"another promotion of '{name}' is in progress: {found.describe()}; wait for it to end{answer}"
                )
            dead = reclaim(settings, name, actor=actor, say=say)
            if dead is not None:
                crashed(*dead)
            continue
        with serialized(settings, name, f"{actor}: promotion {run_id} takes the lease"):
            if read(settings, name) != found:
                continue  # taken meanwhile: judge again
            now = datetime.now(UTC)
            aliases, tags = registry.model_state(settings, name)
            before = {alias.value: aliases.get(alias.value) for alias in (*RESTORED, Alias.PRODUCTION)}
            mine = Lease(
                run_id,
                run_name,
                Owner.current(),
                now,
                now,
                now + timedelta(seconds=seconds),
                before | {SHARE: tags.get(Tag.CANARY_SHARE)},
            )
            registry.set_model_tag(settings, name, Tag.PROMOTION_LEASE, mine.to_json())
            handle = Held(settings, name, mine)
            handle.start_renewal()
            return handle


def reclaim(settings: Settings, name: str, *, actor: str, say: Say = print) -> tuple[Lease, str] | None:
    """Free the lease of a promotion that is gone, after putting back what it had moved: returns the
    dead lease and why it is deemed dead (its flow run is then to be marked crashed), or None when the
    lease is free or held by a live promotion. A lease that stopped being renewed is waited for until
    it expires. `shipway promote` calls it before Prefect is up, so a dead canary loses its share at once."""
    renew_s = settings.promotion.lease_seconds / 3
    told = False
    while True:
        found = read(settings, name)
        if found is None:
            return None
        verdict = found.judge(datetime.now(UTC), renew_s)
        if verdict == "live":
            return None
        if verdict == "silent":  # until it is renewed again (live) or expires (dead)
            if not told:
                say(
                    f"the promotion lease of '{name}' is not being renewed ({found.describe()}): waiting until it "
                    f"expires at {found.expires:%H:%M:%S} UTC"
                )
                told = True
            time.sleep(min(1.0, renew_s))
            continue
        with serialized(settings, name, f"{actor}: reclaim the lease of promotion {found.run_id}"):
            if read(settings, name) != found:
                continue  # renewed, released or taken meanwhile: judge again
            why = (
                f"its process ({found.owner}) is gone"
                if found.owner.alive() is False
                else f"its lease expired at {found.expires:%H:%M:%S} UTC"
            )
            say(f"the promotion {found.describe()} ended without finishing: {why}; undoing what it moved")
            _undo(settings, name, found, actor, why)
            registry.delete_model_tag(settings, name, Tag.PROMOTION_LEASE)
            return found, f"shipway: {why}; its moves were undone by {actor}"


def _renew(handle: Held, stop: threading.Event, seconds: float) -> None:
    while not stop.wait(seconds / 3):
        try:
            with handle.lock:
                found = read(handle.settings, handle.name)
                if found is None or found.run_id != handle.lease.run_id:
                    handle.lost = True  # declared dead by another promotion: nothing more to renew
                    return
                now = datetime.now(UTC)
                handle.lease = replace(handle.lease, renewed=now, expires=now + timedelta(seconds=seconds))
                registry.set_model_tag(handle.settings, handle.name, Tag.PROMOTION_LEASE, handle.lease.to_json())
        except Exception:  # a store hiccup: the next renewal tries again, well within the lease
            continue


def _undo(settings: Settings, name: str, dead: Lease, actor: str, why: str) -> None:
    """Put back what the dead promotion moved (the journal of a step it was in is undone by move)."""
    aliases, tags = registry.model_state(settings, name)
    if tags.get(Tag.AWAITING_APPROVAL) and json.loads(tags[Tag.AWAITING_APPROVAL]).get("run_id") == dead.run_id:
        registry.delete_model_tag(settings, name, Tag.AWAITING_APPROVAL)
    version = dead.version
    finished = version is not None and aliases.get(Alias.PRODUCTION.value) == version != dead.before.get("Production")
    changes: dict[Alias, str | None] = {}
    if version is not None and not finished:
        changes = {
            alias: dead.before.get(alias.value)
            for alias in RESTORED
            if aliases.get(alias.value) == version and dead.before.get(alias.value) != version
        }
    move(
        settings,
        name,
        changes,
        actor=actor,
        reason=f"promotion {dead.run_id} ended without finishing ({why}): aliases and canary share as before it",
        canary_share=None if finished else float(dead.before.get(SHARE) or 0),
    )
