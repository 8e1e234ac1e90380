"""Which loaded model answers a request, kept in step with the registry's aliases.

A `Routes` value is immutable; the router builds a new one off the request path (initial load,
then one poll every `poll_interval_s`) and swaps it in with one assignment, so a request sees
either the old routes or the new ones, never a mix. A version that fails to load is never
served: Production keeps its last good version, the other roles go without until it loads.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from core.integrity import IntegrityError
from core.vocabulary import Alias
from serving.local_state import LocalState
from serving.metrics import Metrics
from serving.models import Servable, baseline_servable, servable, warm_up
from serving.registry_reader import LoadedVersion, ModelState, parse_canary_share, unknown_sensitive_columns
from serving.schema import Schema
from serving.storage_errors import cause

log = logging.getLogger("shipway.serving")
SERVED_ALIASES = (Alias.PRODUCTION, Alias.CANARY, Alias.SHADOW, Alias.PREVIOUS)
PATH = re.compile(r"(?:[a-z][a-z0-9+.-]*:/)?/[^\s'\"]+")
RETRY_FAILED_AFTER_POLLS = 10  # a version that failed to load is tried again after this many polls
SLOW_READ_S = 10.0  # a registry read under way longer than this is reported (a store that does not answer)


@dataclass(frozen=True)
class Routes:
    by_alias: dict[str, Servable] = field(default_factory=dict)
    baseline: Servable | None = None  # the heuristic baseline of the serving Production version
    canary_share: float = 0.0
    registry_aliases: dict[str, str] = field(default_factory=dict)  # what the registry says
    problems: dict[str, str] = field(default_factory=dict)  # alias -> why it is not served as asked

    @property
    def production(self) -> Servable | None:
        return self.by_alias.get(Alias.PRODUCTION)

    @property
    def canary(self) -> Servable | None:
        return self.by_alias.get(Alias.CANARY)

    @property
    def shadow(self) -> Servable | None:
        return self.by_alias.get(Alias.SHADOW)

    @property
    def previous(self) -> Servable | None:
        return self.by_alias.get(Alias.PREVIOUS)

    def use_canary(self, key: str | None) -> bool:
        """Sticky when a request key is given: the same key always gets the same answer."""
        if self.canary is None or self.canary_share <= 0.0:
            return False
        if key is None:
            return random.random() < self.canary_share
        return zlib.crc32(key.encode()) / 2**32 < self.canary_share


class Router:
    """Loads the versions the aliases name and swaps in new Routes when they change."""

    def __init__(
        self,
        name: str,
        read_state: Callable[[], ModelState],
        load: Callable[[str], LoadedVersion],
        load_baseline: Callable[[LoadedVersion], Any],
        metrics: Metrics,
        poll_interval_s: float,
        pinned: str | None = None,
        local_state: LocalState | None = None,
        sensitive_columns: Iterable[str] = (),
        read_version_tags: Callable[[str], dict[str, str]] | None = None,
    ):
        self.name = name
        self.read_state = read_state
        self.load = load
        self.load_baseline = load_baseline
        self.metrics = metrics
        self.poll_interval_s = poll_interval_s
        self.pinned = pinned  # serve this one version as Production, never poll
        self.local_state = local_state  # what to serve at the next start, before the registry answers
        self.sensitive_columns = list(sensitive_columns)
        self.read_version_tags = read_version_tags  # Production's monitoring figures, exported at each poll
        self.routes = Routes()
        self.last_poll: float | None = None
        self.last_poll_error: str | None = None
        self.routes_changed: float | None = None  # when a version or the canary share last changed (epoch s)
        self.poll_failing_since: float | None = None  # time.monotonic() of the first failed poll, while failing
        self._reading_since: float | None = None  # time.monotonic() a registry read began, while under way
        self._loaded: dict[str, tuple[Servable, Servable | None]] = {}
        self._failed: dict[str, tuple[str, int]] = {}  # version -> (error, polls since)
        self._baselines_due: dict[str, LoadedVersion] = {}  # loaded at a first start without their baselines
        self._baseline_problems: dict[str, str] = {}  # version -> why its baseline is not served (integrity)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Serve the local state at once when there is one, and read the registry in the background;
        else read the registry first (a first start, or a pinned version). The baselines follow in the
        background, but a pinned version's: importing sklearn for them would be most of a start."""
        if self.pinned is not None:
            self.refresh()
            return
        if not self._start_from_local_state():
            self.refresh(baselines=False)
        self._thread = threading.Thread(target=self._poll, args=(True,), name="registry-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _poll(self, at_once: bool = False) -> None:
        if at_once:
            self._load_baselines()
            self.refresh(force=True)
        took = 0.0
        # Start to start, so a move is seen within one interval and the read that finds it; a tenth
        # of it at least between reads, so a registry slower than the interval is not read nonstop.
        while not self._stop.wait(max(self.poll_interval_s - took, self.poll_interval_s / 10)):
            began = time.monotonic()
            self.refresh()
            took = time.monotonic() - began

    def _start_from_local_state(self) -> bool:
        state = self.local_state
        kept = state.aliases() if state is not None else None
        if state is None or kept is None:
            return False
        aliases, share = kept
        by_alias: dict[str, Servable] = {}
        try:
            for version in set(aliases.values()):  # every kept file checked before any is served
                self._verify_kept(version)
            for alias, version in aliases.items():
                if version not in self._loaded:  # the baselines follow in the background: sklearn is slow to import
                    loaded = state.load(version)
                    model = servable(loaded)
                    warm_up(model, loaded.example)
                    self._loaded[version] = (model, None)
                by_alias[alias] = self._loaded[version][0]
        except Exception as exc:  # damaged or from an older shipway: the registry decides, as on a first start
            log.warning("local state %s not usable (%s: %s); reading the registry", state.dir,
                        type(exc).__name__, exc)  # fmt: skip
            self._loaded.clear()
            return False
        problems = {"registry": "not read yet since the start: serving the local state (last good versions)"}
        self.routes = Routes(by_alias, None, share, {}, problems)
        self._publish(self.routes, Routes())
        log.info("%s serving its local state %s until the registry answers", self.name, state.dir)
        return True

    def _load_baselines(self) -> None:
        """The baselines a start left out: from the local state, or on a first start from the registry
        (the version is then kept with its baseline)."""
        due_now, self._baselines_due = self._baselines_due, {}
        for version, (model, baseline) in list(self._loaded.items()):
            if baseline is not None:
                continue
            due = due_now.get(version)
            refused = False
            try:
                if due is not None:
                    found = self.load_baseline(due)
                else:
                    found = self.local_state.baseline(version) if self.local_state is not None else None
            except Exception as exc:
                log.warning("baseline of version %s not loaded: %s: %s", version, type(exc).__name__, exc)
                if isinstance(exc, IntegrityError):  # never served; /health says so while it lasts
                    self.metrics.integrity_failure(version, exc.file)
                    self._baseline_problems[version] = public_error(exc)
                    refused = True
                found = None
            if due is not None and self.local_state is not None and not refused:  # kept whole, or not at all
                self.local_state.save_version(due, found)
            if found is not None:
                kept_baseline = baseline_servable(version, model.schema, found, model.predict_fn)
                example = (
                    due.example if due is not None else self.local_state.example(version) if self.local_state else None
                )
                warm_up(kept_baseline, example)  # before anyone is routed to it: see warm_up
                self._loaded[version] = (model, kept_baseline)

    def refresh(self, baselines: bool = True, force: bool = False) -> None:
        """One poll: read aliases and tags, load what is new (`baselines`: with their baselines), swap
        the routes if anything changed (`force`: rebuild them anyway, e.g. with baselines loaded since)."""
        try:
            if self.pinned is not None:
                state = ModelState({Alias.PRODUCTION.value: self.pinned}, {})
            else:
                self._reading_since = time.monotonic()
                try:
                    state = self.read_state()
                finally:
                    self._reading_since = None
            share, share_problem = _share(state.tags)
        except Exception as exc:  # registry unreachable: keep serving what is loaded
            self.metrics.poll_errors.inc()
            self.last_poll_error = public_error(exc)
            self.poll_failing_since = self.poll_failing_since or time.monotonic()
            log.warning("registry poll failed, still serving the loaded versions: %s: %s", type(exc).__name__, exc)
            return
        self.last_poll, self.last_poll_error, self.poll_failing_since = time.time(), None, None
        wanted: dict[str, str] = {a.value: state.aliases[a.value] for a in SERVED_ALIASES if a.value in state.aliases}
        self._publish_monitoring(wanted.get(Alias.PRODUCTION.value))
        current = self.routes
        if not force and wanted == current.registry_aliases and share == current.canary_share and not self._failed:
            return
        by_alias: dict[str, Servable] = {}
        problems: dict[str, str] = {}
        baseline = None
        for alias, version in wanted.items():
            entry = self._get(version, baselines)
            if entry is None:
                problems[alias] = f"version {version} failed to load: {self._failed[version][0]}"
                kept = current.by_alias.get(alias) if alias == Alias.PRODUCTION else None
                if kept is not None:  # someone must answer: keep the last good Production
                    by_alias[alias] = kept
                    baseline = current.baseline
                    problems[alias] += f"; still serving version {kept.version}"
                continue
            by_alias[alias] = entry[0]
            if alias == Alias.PRODUCTION:
                baseline = entry[1]
        if share_problem:
            problems["canary_share"] = share_problem
        production = by_alias.get(Alias.PRODUCTION)
        if production is not None and production.version in self._baseline_problems:
            problems["baseline"] = f"not served: {self._baseline_problems[production.version]}"
        unknown = self._unknown_sensitive(by_alias)
        if unknown:
            problems["sensitive_columns"] = unknown
            log.error("%s: %s", self.name, unknown)
        routes = Routes(by_alias, baseline, share, wanted, problems)
        self.routes = routes  # the atomic swap
        self._forget_unused(routes)
        self._publish(routes, current)
        if self.local_state is not None and self.pinned is None and not self._baselines_due:  # kept versions first
            self.local_state.save_aliases({a: m.version for a, m in by_alias.items()}, share)

    def _publish_monitoring(self, version: str | None) -> None:
        """The monitoring flow's figures of the Production version (its tags, which change without an
        alias move, so they are read at every poll); a failed read keeps the last ones."""
        if self.read_version_tags is None:
            return
        try:
            tags = self.read_version_tags(version) if version is not None else {}
        except Exception as exc:  # the next poll tries again; serving does not depend on it
            log.warning("monitoring tags of version %s not read: %s: %s", version, type(exc).__name__, exc)
            return
        for unreadable in self.metrics.monitoring(self.name, version, tags):
            log.warning("version %s: tag %s is not what the monitoring flow writes; not exported", version, unreadable)

    def registry_problem(self) -> str | None:
        """Why what is served may not be what the registry says now: it cannot be read, or a read hangs."""
        now = time.monotonic()
        if self.poll_failing_since is not None:
            return (
                f"registry: not readable for {now - self.poll_failing_since:.0f} s ({self.last_poll_error}); "
                "serving the versions loaded before"
            )
        reading = self._reading_since
        if reading is not None and now - reading > SLOW_READ_S:
            return f"registry: a read has waited {now - reading:.0f} s; serving the versions loaded before"
        return None

    def _unknown_sensitive(self, by_alias: dict[str, Servable]) -> str | None:
        found = {
            f"{alias} (version {model.version})": unknown_sensitive_columns(self.sensitive_columns, model.schema.names)
            for alias, model in by_alias.items()
        }
        found = {k: v for k, v in found.items() if v}
        if not found:
            return None
        return "serving.sensitive_columns names columns a served version does not have (nothing redacted there): " + (
            "; ".join(f"{where}: {', '.join(map(repr, names))}" for where, names in found.items())
        )

    def _get(self, version: str, with_baseline: bool = True) -> tuple[Servable, Servable | None] | None:
        if version in self._loaded:
            return self._loaded[version]
        if version in self._failed:
            error, polls = self._failed[version]
            if polls < RETRY_FAILED_AFTER_POLLS:
                self._failed[version] = (error, polls + 1)
                return None
        started = time.perf_counter()
        try:
            kept = self._kept(version)
            if kept is None:
                loaded = self.load(version)
                model = servable(loaded)
                baseline_model = self.load_baseline(loaded) if with_baseline else None
            else:
                loaded, model, baseline_model = kept
            baseline = (
                baseline_servable(version, Schema(loaded.columns), baseline_model, loaded.predict_fn)
                if baseline_model is not None
                else None
            )
            for ready in (model, baseline):  # before anyone is routed to them: see warm_up
                if ready is not None:
                    warm_up(ready, loaded.example)
        except Exception as exc:
            self._failed[version] = (public_error(exc), 0)
            self.metrics.load_failures.labels(version).inc()
            if isinstance(exc, IntegrityError):
                self.metrics.integrity_failure(version, exc.file)
            log.error("%s version %s failed to load and will not be served: %s: %s", self.name, version,
                      type(exc).__name__, exc)  # fmt: skip
            return None
        self._failed.pop(version, None)
        self._loaded[version] = (model, baseline)
        if not kept and not with_baseline:
            self._baselines_due[version] = loaded  # loaded, and the version kept, by _load_baselines
        elif self.local_state is not None and self.pinned is None and not kept:
            self.local_state.save_version(loaded, baseline_model)
        source = "the local state" if kept else "the registry"
        log.info("%s version %s loaded as %s from %s in %.2fs", self.name, version, model.flavor, source,
                 time.perf_counter() - started)  # fmt: skip
        return self._loaded[version]

    def _kept(self, version: str) -> tuple[LoadedVersion, Servable, Any] | None:
        """The version, ready to serve, and its baseline from the local state when it keeps them: versions
        are immutable, so the kept copy is the registry's, without MLflow's import or a registry trip."""
        if self.local_state is None or not self.local_state.has(version):
            return None
        try:
            self._verify_kept(version)
            loaded = self.local_state.load(version)
            return loaded, servable(loaded), self.local_state.baseline(version)
        except Exception as exc:  # damaged: the registry has the original
            log.warning("version %s in the local state %s not usable (%s: %s); reading the registry", version,
                        self.local_state.dir, type(exc).__name__, exc)  # fmt: skip
            return None

    def _verify_kept(self, version: str) -> None:
        """The local state's files of `version` as they were kept; a copy that is not is counted, removed
        (the registry's is loaded and kept in its place) and raised."""
        assert self.local_state is not None
        try:
            self.local_state.verify(version)
        except IntegrityError as exc:
            self.metrics.integrity_failure(version, exc.file)
            self.local_state.forget(version)
            raise

    def _forget_unused(self, routes: Routes) -> None:
        used = {s.version for s in routes.by_alias.values()}
        for version in [v for v in self._loaded if v not in used]:
            del self._loaded[version]
        for version in [v for v in self._failed if v not in routes.registry_aliases.values()]:
            del self._failed[version]
        for version in [v for v in self._baseline_problems if v not in used]:
            del self._baseline_problems[version]

    def _publish(self, routes: Routes, before: Routes) -> None:
        self.metrics.serve_only({(alias, m.version, m.flavor) for alias, m in routes.by_alias.items()})
        self.metrics.canary_share.set(routes.canary_share if routes.canary else 0.0)
        served = {a: s.version for a, s in routes.by_alias.items()}
        if served != {a: s.version for a, s in before.by_alias.items()} or routes.canary_share != before.canary_share:
            self.routes_changed = time.time()
            log.info("%s now serving %s, canary share %.3g", self.name, served or "nothing", routes.canary_share)


def _share(tags: dict[str, str]) -> tuple[float, str | None]:
    """A malformed canary_share sends no traffic to Canary, and says so in /health."""
    try:
        return parse_canary_share(tags), None
    except Exception as exc:
        return 0.0, str(exc)


class ResponseCache:
    """The last good answer per input, bounded in size and age: a fallback, never a shortcut."""

    def __init__(self, size: int, max_age_s: float):
        self.size = size
        self.max_age_s = max_age_s
        self._entries: OrderedDict[bytes, tuple[float, str, list]] = OrderedDict()

    def put(self, key: bytes, version: str, predictions: list) -> None:
        if self.size <= 0:
            return
        self._entries[key] = (time.monotonic(), version, predictions)
        self._entries.move_to_end(key)
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def get(self, key: bytes) -> tuple[str, list] | None:
        entry = self._entries.get(key)
        if entry is None or time.monotonic() - entry[0] > self.max_age_s:
            return None
        return entry[1], entry[2]

    def __len__(self) -> int:
        return len(self._entries)


def public_error(exc: BaseException) -> str:
    """An error as /health shows it to anyone who asks: its type and, for a database's error, its cause
    (serving/storage_errors.py), else its first line without file paths or addresses (the SQL and the
    rest of the text stay in the gateway's log)."""
    name = type(getattr(exc, "orig", None) or exc).__name__
    found = cause(exc)
    if found is not None:
        return name if found == name else f"{name}: {found}"
    first = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {PATH.sub('<path>', first)[:200]}"
