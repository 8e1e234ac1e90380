"""The monitoring flow's last window reaches Prometheus: its figures, written as the Production
version's tags, are exported at /metrics by a real gateway polling a real registry."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
from prometheus_client.parser import text_string_to_metric_families

from core.vocabulary import Alias, Tag
from serving.server import running
from tasks.monitoring.estimate import Assessment
from tasks.release.registry import set_alias, set_version_tags
from tests.conftest import register_versions, tuned, wait_for

END = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)


def _samples(url: str) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith(("shipway_estimated", "shipway_prediction_psi", "shipway_monitoring"))
    }


def _window(estimated: float, holdout: float, psi: float) -> dict[str, str]:
    """The tags `shipway monitor` writes for a window (flows/monitor.py)."""
    figures = {"estimated": estimated, "low": estimated - 0.02, "high": estimated + 0.02}
    figures |= {"holdout": holdout, "drop": holdout - estimated, "breach": holdout - estimated > 0.05}
    return Assessment(metrics={"prediction_psi": psi}, estimate={"roc_auc": figures}).version_tags(END)


def test_the_gateway_exports_the_last_windows_estimate_and_follows_the_next(small):
    settings = tuned(small, serving={"poll_interval_s": 0.2})
    [(version, _, _)] = register_versions(settings, 1)
    name, number = version.name, version.version
    set_alias(settings, name, Alias.PRODUCTION, number)
    labels = (("metric", "roc_auc"), ("model", name), ("model_version", number))
    with running(settings) as url:
        assert _samples(url) == {}  # no window yet: no figure, rather than a made-up 0
        set_version_tags(settings, name, number, _window(0.71, 0.79, 0.31))
        wait_for(lambda: _samples(url), 30, "the monitoring figures at /metrics")
        got = _samples(url)
        assert abs(got[("shipway_estimated_performance_drop", labels)] - 0.08) < 1e-9
        assert got[("shipway_estimated_performance", labels)] == 0.71
        assert got[("shipway_estimated_performance_reference", labels)] == 0.79
        assert got[("shipway_prediction_psi", labels[1:])] == 0.31
        assert got[("shipway_monitoring_window_end_timestamp_seconds", labels[1:])] == END.timestamp()

        set_version_tags(settings, name, number, _window(0.78, 0.79, 0.05))  # the next window: recovered
        drop = ("shipway_estimated_performance_drop", labels)
        wait_for(lambda: abs(_samples(url).get(drop, 1) - 0.01) < 1e-9, 30, "the next window's drop")


def test_a_hand_edited_tag_is_left_out_and_serving_goes_on(small):
    settings = tuned(small, serving={"poll_interval_s": 0.2})
    [(version, _, _)] = register_versions(settings, 1)
    name, number = version.name, version.version
    set_alias(settings, name, Alias.PRODUCTION, number)
    tags = _window(0.71, 0.79, 0.31) | {Tag.MONITORING_ESTIMATE: "not json"}
    set_version_tags(settings, name, number, tags)
    with running(settings) as url:
        wait_for(lambda: _samples(url), 30, "the readable monitoring figures at /metrics")
        names = {n for n, _ in _samples(url)}
        assert names == {"shipway_prediction_psi", "shipway_monitoring_window_end_timestamp_seconds"}
        assert httpx.get(f"{url}/health", timeout=30).status_code == 200
