"""Prometheus metrics of one gateway (its own registry, so several gateways can share a process).

Label children are cached: `labels()` costs more than the increment itself on the hot path.

`shipway serve --workers N` runs N processes behind one port, and a scrape reaches any one of them.
So each worker writes its figures to files in a folder the workers share (prometheus_client's
multiprocess mode, on when PROMETHEUS_MULTIPROC_DIR is set before prometheus_client is imported:
serving/server.py sets it for its workers), and /metrics on any worker answers for all of them.
Counters and histograms are summed over the workers; each gauge says how it combines (GAUGE_MODES).
"""

from __future__ import annotations

import json
import math
import os
from datetime import datetime
from functools import cache

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from core.vocabulary import Tag

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"

# Sub-millisecond resolution where the gateway lives, up to seconds for timeouts.
LATENCY_BUCKETS = (
    0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip


class Metrics:
    def __init__(self, model_name: str):
        self.registry = CollectorRegistry()
        r = self.registry
        self._requests = Counter(
            "shipway_requests", "Answered /invocations requests", ["model_version", "role", "status"], registry=r
        )
        self._latency = Histogram(
            "shipway_request_latency_seconds",
            "Time from request to answer inside the gateway",
            ["model_version", "role"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._errors = Counter(
            "shipway_errors", "Failed requests or model calls, by kind", ["model_version", "role", "kind"], registry=r
        )
        self._fallbacks = Counter(
            "shipway_fallbacks",
            "Answers given by the fallback chain, by the version that failed and what answered",
            ["model_version", "source"],
            registry=r,
        )
        self._large_refused = Counter(
            "shipway_large_batches_refused",
            "Batches over serving.baseline_max_rows that no model answered: refused (504 or 503) rather than "
            "answered by the heuristic baseline, by the version that failed and why",
            ["model_version", "reason"],
            registry=r,
        )
        self._shadow = Counter(
            "shipway_shadow_predictions", "Shadow predictions, by outcome", ["model_version", "outcome"], registry=r
        )
        self._shadow_latency = Histogram(
            "shipway_shadow_latency_seconds",
            "Shadow model time",
            ["model_version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.shadow_skipped = Counter(
            "shipway_shadow_skipped",
            "Requests not mirrored to Shadow: its backlog was full or its process exited",
            registry=r,
        )
        self.shadow_backlog = Gauge(
            "shipway_shadow_backlog",
            "Requests mirrored to Shadow and not yet predicted (beyond serving.shadow_queue_size they are skipped)",
            registry=r,
            multiprocess_mode="livesum",  # the host's one Shadow: worker 0 holds the backlog
        )
        self.log_dropped = Counter(
            "shipway_prediction_log_dropped", "Prediction-log rows lost (queue full or refused at shutdown)", registry=r
        )
        self.log_written = Counter("shipway_prediction_log_written", "Prediction-log rows written", registry=r)
        self.log_queue = Gauge(
            "shipway_prediction_log_queue",
            "Prediction-log rows waiting to be written (summed over workers)",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.log_refusals = Counter(
            "shipway_prediction_log_write_failures",
            "Prediction-log writes the database refused (each is tried again), by cause: locked, disk full, "
            "read-only, cannot open, cannot connect, connection lost, ...",
            ["cause"],
            registry=r,
        )
        self.log_stalled = Gauge(
            "shipway_prediction_log_stalled_seconds",
            "Seconds since the prediction log last took a write, while one is refused or under way (0: writing; the "
            "longest of the workers')",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.poll_errors = Counter("shipway_registry_poll_errors", "Failed polls of the registry", registry=r)
        self.load_failures = Counter(
            "shipway_model_load_failures", "Model versions that failed to load", ["model_version"], registry=r
        )
        self.integrity_failures = Counter(
            "shipway_integrity_failures",
            "Files of a version whose sha256 is not the one recorded at registration (never served), by version and "
            "file: model.onnx, model.skops, baseline.onnx, baseline.skops (the registry's or the local state's copy)",
            ["model_version", "file"],
            registry=r,
        )
        self.served = Gauge(
            "shipway_model_served", "1 for each (alias, version, format) the gateway serves (any of its workers)",
            ["model", "alias", "model_version", "format"], registry=r, multiprocess_mode="livemax",
        )  # fmt: skip
        self.canary_share = Gauge(
            "shipway_canary_share", "Share of requests routed to Canary", registry=r, multiprocess_mode="livemax"
        )
        # the monitoring flow's last window of the Production version, read from its tags at each poll
        window = "in the monitoring flow's last window of the Production version"
        self.estimated = Gauge(
            "shipway_estimated_performance", f"Performance estimated without labels (CBPE) {window}",
            ["model", "model_version", "metric"], registry=r, multiprocess_mode="mostrecent",
        )  # fmt: skip
        self.estimated_reference = Gauge(
            "shipway_estimated_performance_reference", "The same metric on the version's holdout at registration",
            ["model", "model_version", "metric"], registry=r, multiprocess_mode="mostrecent",
        )  # fmt: skip
        self.estimated_drop = Gauge(
            "shipway_estimated_performance_drop",
            f"Holdout figure minus the estimated one {window} (monitoring.max_estimated_drop is its limit)",
            ["model", "model_version", "metric"], registry=r, multiprocess_mode="mostrecent",
        )  # fmt: skip
        self.prediction_psi = Gauge(
            "shipway_prediction_psi", f"Largest PSI of the outputs against the holdout's {window}",
            ["model", "model_version"], registry=r, multiprocess_mode="mostrecent",
        )  # fmt: skip
        self.monitoring_window_end = Gauge(
            "shipway_monitoring_window_end_timestamp_seconds", "When the monitoring flow's last window ended",
            ["model", "model_version"], registry=r, multiprocess_mode="mostrecent",
        )  # fmt: skip
        self.model_name = model_name
        self._served: set[tuple[str, str, str]] = set()
        self._labelled: dict[Gauge, set[tuple[str, ...]]] = {}
        self._exposed = r
        if MULTIPROC_DIR in os.environ:  # every worker's files, read at each scrape
            self._exposed = CollectorRegistry()
            MultiProcessCollector(self._exposed)

    @cache  # noqa: B019 - one Metrics per gateway, a handful of (version, role) pairs
    def _answer(self, version: str, role: str, status: int):
        return self._requests.labels(version, role, str(status)), self._latency.labels(version, role)

    @cache  # noqa: B019 - a handful of (version, outcome) pairs: Shadow runs on every request
    def _shadow_children(self, version: str, outcome: str):
        return self._shadow.labels(version, outcome), self._shadow_latency.labels(version)

    def answered(self, version: str, role: str, status: int, seconds: float) -> None:
        count, latency = self._answer(version, role, status)
        count.inc()
        latency.observe(seconds)

    def error(self, version: str, role: str, kind: str) -> None:
        self._errors.labels(version, role, kind).inc()

    def fallback(self, failed_version: str, source: str) -> None:
        self._fallbacks.labels(failed_version, source).inc()

    def integrity_failure(self, version: str, file: str) -> None:
        self.integrity_failures.labels(version, file).inc()

    def log_refused(self, cause: str) -> None:
        self.log_refusals.labels(cause).inc()

    def large_batch_refused(self, failed_version: str, reason: str) -> None:
        self._large_refused.labels(failed_version, reason).inc()

    def shadow(self, version: str, outcome: str, seconds: float) -> None:
        count, latency = self._shadow_children(version, outcome)
        count.inc()
        latency.observe(seconds)

    def monitoring(self, model: str, version: str | None, tags: dict[str, str]) -> list[str]:
        """The monitoring figures `version`'s tags hold (none when `version` is None), replacing the last
        ones; the tags that could not be read, each as `key=value` (a hand-edited tag: left out)."""
        gauges = (self.estimated, self.estimated_reference, self.estimated_drop)
        values: dict[Gauge, dict[tuple[str, ...], float]] = {
            g: {} for g in (*gauges, self.prediction_psi, self.monitoring_window_end)
        }
        unreadable = []
        if version is not None:
            try:
                figures = json.loads(tags.get(Tag.MONITORING_ESTIMATE) or "{}")
                read: list[dict[tuple[str, ...], float]] = [
                    {(model, version, metric): float(v[key]) for metric, v in figures.items()}
                    for key in ("estimated", "holdout", "drop")
                ]
                values.update(zip(gauges, read, strict=True))  # all three or none
            except (ValueError, TypeError, KeyError, AttributeError):
                unreadable.append(f"{Tag.MONITORING_ESTIMATE}={tags[Tag.MONITORING_ESTIMATE]!r}")
            try:
                if tags.get(Tag.MONITORING_PREDICTION_PSI):
                    psi = float(tags[Tag.MONITORING_PREDICTION_PSI])
                    values[self.prediction_psi] = {(model, version): psi}
            except ValueError:
                unreadable.append(f"{Tag.MONITORING_PREDICTION_PSI}={tags[Tag.MONITORING_PREDICTION_PSI]!r}")
            try:
                if tags.get(Tag.MONITORING_WINDOW_END):
                    end = datetime.fromisoformat(tags[Tag.MONITORING_WINDOW_END])
                    values[self.monitoring_window_end] = {(model, version): end.timestamp()}
            except ValueError:
                unreadable.append(f"{Tag.MONITORING_WINDOW_END}={tags[Tag.MONITORING_WINDOW_END]!r}")
        for gauge, now in values.items():
            self._set_only(gauge, now)
        return unreadable

    def _set_only(self, gauge: Gauge, values: dict[tuple[str, ...], float]) -> None:
        """`gauge` holds these label sets and no others: the last window's, not an earlier version's. In
        multiprocess mode a worker's file keeps a label's last value, so one gone is set to NaN, which
        no alert rule's comparison passes."""
        for gone in self._labelled.get(gauge, set()) - values.keys():
            if self._exposed is self.registry:
                gauge.remove(*gone)
            else:
                gauge.labels(*gone).set(math.nan)
        for labels, value in values.items():
            gauge.labels(*labels).set(value)
        self._labelled[gauge] = set(values)

    def serve_only(self, served: set[tuple[str, str, str]]) -> None:
        """`shipway_model_served` is 1 for these (alias, version, format) and no others (0 for those a worker
        served before, in multiprocess mode)."""
        for gone in self._served - served:
            if self._exposed is self.registry:
                self.served.remove(self.model_name, *gone)
            else:  # no removal in multiprocess mode: the worker's file would keep the label's last value
                self.served.labels(self.model_name, *gone).set(0)
        for labels in served:
            self.served.labels(self.model_name, *labels).set(1)
        self._served = set(served)

    def render(self) -> bytes:
        return generate_latest(self._exposed)
