"""One latency budget (serving.latency_budget_p99_ms) read by the benchmark, the shadow analysis and
monitoring; the old per-stage keys; the benchmark's verdict as a plain function of its measurements."""

import gc
import warnings

import numpy as np
import pytest

from configs.settings import MonitoringSettings, PromotionSettings, RenamedSetting, ServingSettings, load_settings
from core.errors import ConfigError
from tasks.benchmark.latency import ATTEMPTS, MIN_REQUESTS, Attempt, _frozen_heap, judge, measure_again, rounds
from tasks.monitoring.window import summarize
from tasks.promotion.analysis import shadow_analysis
from tests.conftest import run_shipway
from tests.monitoring.test_monitoring import NO_FEEDBACK, log_rows
from tests.promotion.test_analysis import breached as breached_checks
from tests.promotion.test_analysis import shadow_log

OLD_KEYS = ("promotion", "monitoring")


def profile(tmp_path, text: str):
    path = tmp_path / "shipway.yaml"
    path.write_text(text)
    return path


# ---- the setting ------------------------------------------------------------------------------


def test_no_stage_has_a_latency_budget_of_its_own():
    for section in (PromotionSettings, MonitoringSettings):
        assert not [key for key in section.model_fields if key.startswith("latency_p99")]


@pytest.mark.parametrize("section", OLD_KEYS)
def test_an_old_key_is_read_as_the_one_budget_with_a_warning_naming_both(tmp_path, section):
    with pytest.warns(RenamedSetting, match=rf"{section}\.latency_p99_ms is now serving\.latency_budget_p99_ms"):
        settings = load_settings(profile(tmp_path, f"{section}:\n  latency_p99_ms: 120\n"), cwd=tmp_path)
    assert settings.serving.latency_budget_p99_ms == 120


def test_old_keys_that_agree_with_the_budget_are_read_as_it(tmp_path):
    text = (
        "promotion:\n  latency_p99_ms: 80\nmonitoring:\n  latency_p99_ms: 80.0\nserving:\n  latency_budget_p99_ms: 80\n"
    )
    with pytest.warns(RenamedSetting, match="promotion.latency_p99_ms and monitoring.latency_p99_ms"):
        assert load_settings(profile(tmp_path, text), cwd=tmp_path).serving.latency_budget_p99_ms == 80


def test_an_old_key_from_the_environment_counts_too(tmp_path, monkeypatch):
    monkeypatch.setenv("SHIPWAY_MONITORING__LATENCY_P99_MS", "90")
    with pytest.warns(RenamedSetting):
        assert load_settings(profile(tmp_path, "{}\n"), cwd=tmp_path).serving.latency_budget_p99_ms == 90


@pytest.mark.parametrize(
    "text",
    [
        "serving:\n  latency_budget_p99_ms: 100\nmonitoring:\n  latency_p99_ms: 50\n",  # the issue's profile
        "promotion:\n  latency_p99_ms: 60\nmonitoring:\n  latency_p99_ms: 70\n",
    ],
)
def test_an_old_key_that_disagrees_is_a_one_line_error_naming_the_keys(tmp_path, text):
    with pytest.raises(ConfigError) as caught:
        load_settings(profile(tmp_path, text), cwd=tmp_path)
    message = str(caught.value)
    assert "\n" not in message and "keep serving.latency_budget_p99_ms only" in message
    assert "latency_p99_ms" in message and "disagree" in message


def test_a_profile_without_old_keys_warns_of_nothing(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RenamedSetting)
        assert load_settings(profile(tmp_path, "serving:\n  latency_budget_p99_ms: 75\n"), cwd=tmp_path)


def test_the_command_says_the_rename_in_one_line_and_refuses_a_disagreement(tmp_path):
    renamed = run_shipway("status", "churn", "--config", str(profile(tmp_path, "monitoring:\n  latency_p99_ms: 80\n")),
                          cwd=tmp_path)  # fmt: skip
    assert "shipway: warning: monitoring.latency_p99_ms is now serving.latency_budget_p99_ms" in renamed.stderr
    assert "Traceback" not in renamed.stderr and "FutureWarning" not in renamed.stderr
    bad = profile(tmp_path, "monitoring:\n  latency_p99_ms: 80\nserving:\n  latency_budget_p99_ms: 50\n")
    refused = run_shipway("status", "churn", "--config", str(bad), cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.startswith(f"shipway: error: config file {bad}: serving.latency_budget_p99_ms")


def test_raising_the_one_budget_raises_it_for_monitoring_and_the_shadow_analysis(tmp_path):
    """The issue's case: the budget raised to 100 ms, a window and a shadow with p99 ~75-80 ms breach nothing."""
    slow_window = log_rows(200, latency=80.0)
    slow_shadow = shadow_log(1_000, latency=30.0)  # gamma-distributed: p99 ~75 ms
    for budget, breached in ((50, True), (100, False)):
        text = f"serving:\n  latency_budget_p99_ms: {budget}\n"
        settings = load_settings(profile(tmp_path, text), cwd=tmp_path)
        one = settings.serving.latency_budget_p99_ms
        window = summarize(slow_window, NO_FEEDBACK, settings.monitoring, latency_budget_ms=one)
        assert any(b.startswith("latency_p99_ms") for b in window.breaches) is breached
        shadow = shadow_analysis(slow_shadow, settings.promotion, latency_budget_ms=one)
        assert ("latency p99" in breached_checks(shadow)) is breached


# ---- the verdict ------------------------------------------------------------------------------

BUDGET = 50.0


def quiet(http: float, cpu: float) -> Attempt:
    return Attempt(http_p99_ms=http, cpu_p99_ms=cpu, overhead_ms=0.3, load=1.0, cores=2)


def loaded(http: float, cpu: float) -> Attempt:
    return Attempt(http_p99_ms=http, cpu_p99_ms=cpu, overhead_ms=0.3, load=8.0, cores=2)


def test_the_issues_random_forest_gets_the_same_verdict_at_load_1_and_8():
    """Titanic's random forest: p99 40 ms on a quiet machine, 111 ms at load 8, ~36 ms of CPU a request."""
    at_rest, busy = judge([quiet(40.0, 36.0)], BUDGET), judge([loaded(111.0, 36.0)], BUDGET)
    assert at_rest.passed and busy.passed
    assert not at_rest.on_cpu and busy.on_cpu
    assert "load 8.0 on 2 cores" in busy.text() and "judged on CPU time" in busy.text()
    assert "CPU-time estimate of the quiet p99 36.3 ms" in busy.text()


def test_a_truly_slow_model_fails_at_every_load():
    at_rest, busy = judge([quiet(150.0, 140.0)], BUDGET), judge([loaded(600.0, 150.0)], BUDGET)
    assert not at_rest.passed and not busy.passed
    assert "is over the latency budget of 50 ms" in at_rest.text()
    assert "150 ms is over the latency budget" in busy.text()  # the estimate is over it too


def test_a_quiet_machine_is_judged_on_the_wall_time_whatever_the_cpu_says():
    """A model that waits (I/O, a lock) rather than computes: CPU time would hide it."""
    verdict = judge([quiet(80.0, 5.0)], BUDGET)
    assert not verdict.passed and not verdict.on_cpu


def test_a_loaded_machine_keeps_the_wall_time_when_it_is_the_lower():
    verdict = judge([loaded(20.0, 30.0)], BUDGET)
    assert verdict.passed and verdict.judged.judged_ms == 20.0 and not verdict.on_cpu


def test_the_best_attempt_counts_and_the_text_says_how_many():
    verdict = judge([quiet(70.0, 40.0), quiet(45.0, 40.0)], BUDGET)
    assert verdict.passed and verdict.judged.http_p99_ms == 45.0
    assert "best of 2 measurements" in verdict.text()


@pytest.mark.parametrize(
    ("attempts", "again"),
    [
        ([quiet(20.0, 15.0)], False),  # passed
        ([quiet(70.0, 60.0)], True),  # failed near the budget: measured again
        ([quiet(70.0, 60.0)] * (ATTEMPTS - 1), True),
        ([quiet(70.0, 60.0)] * ATTEMPTS, False),  # enough attempts: the verdict stands
        ([quiet(250.0, 240.0)], False),  # clearly over: another measurement would not change it
        ([loaded(400.0, 70.0)], True),  # judged on its CPU estimate, near the budget
    ],
)
def test_a_failing_verdict_is_measured_again_unless_it_is_clear(attempts, again):
    assert measure_again(attempts, BUDGET) is again


# ---- the sequential measurement ----------------------------------------------------------------


def fixed(ms: float):
    """A take(n) whose requests all last `ms`."""
    return lambda n: np.full((n, 1), ms / 1000)


PATIENT = ServingSettings(bench_requests=1_000, bench_seconds=1e6)  # the time cap never ends a run here


@pytest.mark.parametrize(("ms", "taken"), [(5.0, MIN_REQUESTS), (200.0, MIN_REQUESTS), (45.0, 1_000)])
def test_a_measurement_stops_once_its_answer_is_clear(ms, taken):
    """5 ms is far within a 50 ms budget and 200 ms far over it; 45 ms takes every request allowed."""
    assert len(rounds(fixed(ms), BUDGET, PATIENT)) == taken


def test_a_measurement_without_a_budget_takes_every_request_and_never_more():
    assert len(rounds(fixed(1.0), None, PATIENT)) == 1_000
    assert len(rounds(fixed(1.0), BUDGET, ServingSettings(bench_requests=30))) == 30


def test_a_measurement_past_its_time_judges_on_the_requests_it_has():
    assert len(rounds(fixed(45.0), BUDGET, ServingSettings(bench_requests=1_000, bench_seconds=1e-9))) == MIN_REQUESTS


def test_the_in_process_measurement_runs_with_the_heap_frozen_as_the_gateway_does():
    with _frozen_heap():
        assert gc.get_freeze_count() > 0  # a full collection would not scan the flow's heap
    assert gc.get_freeze_count() == 0
