"""The scenario catalogue: each breakage fails the gate naming exactly the broken column(s);
clean batches pass at every size. Rates over many repetitions: tests/benchmarks/bench_gate_scenarios.py."""

import copy

import pytest

from configs.settings import GateSettings
from core.vocabulary import Verdict
from tasks.data.demo_data import Drift, generate
from tasks.gate.contract_checks import validate
from tests.gate.scenarios import CONTINUOUS, SCENARIOS, reference

DRIFTS = [s for s in SCENARIOS if s.drift and not s.separate]
CLEAN = [s for s in SCENARIOS if not s.drift]


@pytest.fixture(scope="module")
def ref():
    return reference()


@pytest.mark.parametrize("rows", [200, 10_000])
@pytest.mark.parametrize("scenario", DRIFTS, ids=lambda s: s.name)
def test_each_breakage_fails_naming_the_broken_columns(ref, scenario, rows):
    settings = GateSettings()
    for rep in range(3):  # rotates over the columns the scenario can break
        batch, broken = scenario.make(rows, 500 + rep, rep, ref)
        report = validate(batch, ref.suite, settings)
        assert report.verdict == Verdict.FAIL, (scenario.name, rep, report.reason)
        assert set(report.columns_with(Verdict.FAIL)) == broken, (scenario.name, rep, report.reason)
        assert report.columns[0].verdict == Verdict.FAIL  # failing columns come first


@pytest.mark.parametrize("rows", [200, 2_000, 100_000])
@pytest.mark.parametrize("scenario", CLEAN, ids=lambda s: s.name)
def test_clean_batches_pass_at_every_size(ref, scenario, rows):
    for rep in range(3):
        batch, _ = scenario.make(rows, 900 + rep, rep, ref)
        report = validate(batch, ref.suite, GateSettings())
        assert report.verdict != Verdict.FAIL, (rows, rep, report.reason)


@pytest.mark.parametrize("column", CONTINUOUS)
def test_a_quarter_sd_shift_fails_on_a_large_batch_and_passes_on_a_small_one(ref, column):
    drift = Drift(shift={column: 0.25})
    large = validate(generate(100_000, seed=3, drift=drift, with_label=False), ref.suite, GateSettings())
    assert large.columns_with(Verdict.FAIL) == [column]
    small = validate(generate(200, seed=3, drift=drift, with_label=False), ref.suite, GateSettings())
    assert column not in small.columns_with(Verdict.FAIL) or small.columns_with(Verdict.FAIL) == [column]


def test_the_label_may_be_there_or_not(ref):
    with_label = generate(1_000, seed=4)
    assert validate(with_label, ref.suite, GateSettings()).verdict != Verdict.FAIL
    assert validate(with_label.drop(columns=["churned"]), ref.suite, GateSettings()).verdict != Verdict.FAIL


CLIPPED = next(s for s in SCENARIOS if s.name == "clipped at training q95")


def test_a_clipped_200_row_batch_fails_naming_the_column_even_with_a_small_pile(ref):
    """The pile at the clip value holds ~5% of 200 values, sometimes under 3% (the stuck check's bound);
    the empty tail beyond it, where training had 5%, is what fails then. The bench's 60 seeds."""
    settings = GateSettings()
    for rep in range(60):
        batch, broken = CLIPPED.make(200, 10_000 + rep * 7919 + 200, rep, ref)
        report = validate(batch, ref.suite, settings)
        assert report.columns_with(Verdict.FAIL) == sorted(broken), (rep, report.reason)
        (column,) = broken
        clip = float(ref.frame[column].quantile(0.95))
        reason = report.columns[0].reason
        assert f"none of {batch[column].notna().sum()} values above" in reason, (rep, reason)
        assert "(training q0.95: 5.0% of training values above it)" in reason or "stuck or clipped" in reason
        assert f"{clip:.4g}" in reason, (rep, reason)


def test_clean_200_row_batches_do_not_fail_as_clipped(ref):
    settings = GateSettings()
    for rep in range(60):
        report = validate(generate(200, seed=30_000 + rep, with_label=False), ref.suite, settings)
        assert report.verdict != Verdict.FAIL, (rep, report.reason)
        assert not any("clipped" in c.reason or "tail cut off" in c.reason for c in report.columns), rep


def test_a_clip_value_the_user_declares_is_accepted(ref):
    """Values added to the most-common expectation's value_set are fine as a pile and as a bound."""
    batch, (column,) = CLIPPED.make(10_000, 7, 0, ref)
    clip = float(ref.frame[column].quantile(0.95))
    edited = copy.deepcopy(ref.suite)
    most_common = next(
        e
        for e in edited["expectations"]
        if e["type"] == "expect_column_most_common_value_to_be_in_set" and e["kwargs"]["column"] == column
    )
    assert "clipped: none of" in validate(batch, ref.suite, GateSettings()).columns[0].reason
    most_common["kwargs"]["value_set"].append(clip)
    report = validate(batch, edited, GateSettings())
    assert not any("clipped" in c.reason for c in report.columns)  # other checks may still see the changed shape
