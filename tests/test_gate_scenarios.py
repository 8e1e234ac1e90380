"""The scenario catalogue: each breakage fails the gate naming exactly the broken column(s);
clean batches pass at every size. Rates over many repetitions: tests/benchmarks/bench_gate_scenarios.py."""

import pytest

from configs.settings import GateSettings
from core.vocabulary import Verdict
from tasks.contract_checks import validate
from tasks.demo_data import Drift, generate
from tests.gate_scenarios import CONTINUOUS, SCENARIOS, reference

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
