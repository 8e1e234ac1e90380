"""Promotion and monitoring evidence for regression models, on generated prediction-log rows:
agreement within a tolerance, prediction distributions, absolute error on feedback labels."""

import json

import numpy as np
import pandas as pd
import pytest

from configs.settings import MonitoringSettings, PromotionSettings
from core.vocabulary import Task
from tasks.monitoring.window import summarize
from tasks.promotion.analysis import canary_analysis, shadow_analysis

SETTINGS = PromotionSettings()
BUDGET_MS = 50.0  # serving.latency_budget_p99_ms
NO_FEEDBACK = pd.DataFrame({"request_id": [], "label": []})


def rows(route: str, values: np.ndarray, *, role: str | None = None, start: int = 0) -> pd.DataFrame:
    """Logged requests of one route answering `values` (as the gateway logs them: JSON lists)."""
    n = len(values)
    return pd.DataFrame(
        {
            "request_id": [f"r{start + i}" for i in range(n)],
            "route": route,
            "role": role or route,
            "model_version": "2" if route == "canary" else "1",
            "prediction": [json.dumps([float(v)]) for v in values],
            "latency_ms": np.full(n, 0.5),
            "error": [None] * n,
        }
    )


def shadow_log(n: int, relative_noise: float, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    production = rng.normal(150, 40, n)
    shadow = production * (1 + rng.normal(0, relative_noise, n))
    return pd.concat([rows("production", production), rows("production", shadow, role="shadow")])


def agreement(analysis) -> str:
    check = next(c for c in analysis.checks if c.name == "agreement with production")
    return ("ok" if check.ok else "BREACH") + " " + check.value


def test_shadow_agreement_is_the_share_within_the_tolerance():
    close = shadow_analysis(shadow_log(1_000, 0.01), SETTINGS, task=Task.REGRESSION, latency_budget_ms=BUDGET_MS)
    assert close.passed and agreement(close) == "ok 100.0% within ±5.0%"
    apart = shadow_analysis(shadow_log(1_000, 0.2), SETTINGS, task=Task.REGRESSION, latency_budget_ms=BUDGET_MS)
    assert not apart.passed and agreement(apart).startswith("BREACH 1") and apart.breaches[0].endswith("(limit >= 80%)")
    absolute = SETTINGS.model_copy(update={"regression_tolerance": 20.0, "regression_tolerance_mode": "absolute"})
    within = agreement(
        shadow_analysis(shadow_log(1_000, 0.05), absolute, task=Task.REGRESSION, latency_budget_ms=BUDGET_MS)
    )
    assert within.startswith("ok 9") and within.endswith("% within ±20")
    # as a classifier, values that differ in the fifth digit would never agree
    assert not shadow_analysis(shadow_log(1_000, 0.0001), SETTINGS, latency_budget_ms=BUDGET_MS).passed


def canary(n_canary: int, n_prod: int, seed: int = 0, shift: float = 0.0, scale: float = 1.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    production = rows("production", rng.normal(150, 40, n_prod))
    mine = rows("canary", 150 + shift + rng.normal(0, 40 * scale, n_canary), start=10**7)
    return pd.concat([production, mine])


def breached(analysis) -> set[str]:
    return {c.name for c in analysis.checks if not c.ok}


@pytest.mark.parametrize("n", [300, 3_000, pytest.param(100_000, marks=pytest.mark.slow)])  # 100k: ~16 s
def test_a_canary_like_production_passes_at_every_size(n):
    false_alarms = [
        breached(canary_analysis(canary(n, n, seed=s), NO_FEEDBACK, SETTINGS, "c", Task.REGRESSION)) for s in range(10)
    ]
    assert false_alarms == [set()] * 10


def test_a_shifted_prediction_distribution_breaches_and_a_trivial_one_does_not():
    shifted = canary_analysis(canary(400, 2_000, shift=20), NO_FEEDBACK, SETTINGS, "canary 5%", Task.REGRESSION)
    assert breached(shifted) == {"prediction distribution"}
    check = next(c for c in shifted.checks if c.name == "prediction distribution")
    assert check.value.startswith("KS distance 0.") and check.limit.startswith("not shifted by > 10% at p < ")
    huge = canary_analysis(canary(200_000, 200_000, shift=2), NO_FEEDBACK, SETTINGS, "c", Task.REGRESSION)
    assert "p=" in next(c for c in huge.checks if c.name == "prediction distribution").value and huge.passed


def labelled(log: pd.DataFrame, seed: int, canary_error: float) -> pd.DataFrame:
    """A feedback label per request: the truth the model missed by N(0, 10), or by `canary_error`."""
    rng = np.random.default_rng(seed)
    predicted = np.array([json.loads(p)[0] for p in log["prediction"]])
    spread = np.where(log["route"] == "canary", canary_error, 10.0)
    return pd.DataFrame({"request_id": log["request_id"], "label": predicted + rng.normal(0, 1, len(log)) * spread})


def test_a_canary_with_larger_errors_on_labels_breaches_one_as_good_does_not():
    log = canary(1_000, 3_000)
    worse = canary_analysis(log, labelled(log, 1, 14.0), SETTINGS, "canary 25%", Task.REGRESSION)
    assert breached(worse) == {"absolute error on feedback labels"}
    check = next(c for c in worse.checks if c.name == "absolute error on feedback labels")
    assert check.value.startswith("MAE 1") and "one-sided Welch p=" in check.value
    assert check.limit.startswith("not higher by > 5% at p < ")
    same = canary_analysis(log, labelled(log, 2, 10.0), SETTINGS, "canary 25%", Task.REGRESSION)
    assert same.passed and "absolute error on feedback labels" in {c.name for c in same.checks}


def test_monitoring_reports_the_mean_absolute_error_on_labels():
    log = rows("production", np.full(300, 100.0)).drop(columns=["route"]).assign(inputs=None)
    feedback = pd.DataFrame({"request_id": log["request_id"], "label": [100.0 + (i % 2) * 8 for i in range(300)]})
    loose = summarize(log, feedback, MonitoringSettings(), Task.REGRESSION, latency_budget_ms=BUDGET_MS)
    assert loose.metrics["mae"] == pytest.approx(4.0) and loose.metrics["labeled"] == 300
    assert "accuracy" not in loose.metrics and not loose.breached
    strict = summarize(log, feedback, MonitoringSettings(max_mae=3.0), Task.REGRESSION, latency_budget_ms=BUDGET_MS)
    assert strict.breaches == ["mae 4 > 3"]
    few = summarize(
        log.iloc[:50], feedback, MonitoringSettings(max_mae=3.0), Task.REGRESSION, latency_budget_ms=BUDGET_MS
    )
    assert not few.breached  # fewer labels than monitoring.min_requests: no verdict
