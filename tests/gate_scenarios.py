"""The skew-gate scenario catalogue: what breaks models, on generated churn data.

Each scenario turns a clean serving batch (drawn from the training distribution) into a broken one
and names the column(s) the gate must fail. `run()` scores the gate on a scenario; the tests run a
few repetitions, tests/benchmarks/bench_gate_scenarios.py many, and prints the rates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from configs.settings import GateSettings
from core.vocabulary import Verdict
from expectations.contract import build_contract
from tasks.contract_checks import validate
from tasks.demo_data import CATEGORIES, NUMERIC, Drift, generate
from tasks.snapshot import canonicalize
from tasks.verdict import GateReport

TRAINING_ROWS = 30_000
TRAINING_SEED = 1
CONTINUOUS = ["monthly_charges", "total_charges", "data_usage_gb"]
INTEGER = ["age", "tenure_months", "support_calls"]
CATEGORICAL = list(CATEGORIES)


@dataclass(frozen=True)
class Reference:
    frame: pd.DataFrame
    suite: dict


def reference(settings: GateSettings | None = None) -> Reference:
    frame = canonicalize(generate(TRAINING_ROWS, seed=TRAINING_SEED))
    suite = build_contract(frame, settings or GateSettings(), name="churn", target="churned", snapshot_id=None)
    return Reference(frame, suite)


@dataclass(frozen=True)
class Scenario:
    name: str
    # (rows, seed, repetition, reference) -> (batch, columns the gate must fail)
    make: Callable[[int, int, int, Reference], tuple[pd.DataFrame, set[str]]]
    drift: bool = True
    separate: bool = False  # reported apart from the detection rate (0.25 sd shifts)


def _clean(rows: int, seed: int) -> pd.DataFrame:
    return generate(rows, seed=seed, with_label=False)


def _pick(columns: list[str], repetition: int) -> str:
    return columns[repetition % len(columns)]


def _drifted(drift: Callable[[str], Drift], columns: list[str]):
    def make(rows, seed, rep, ref):
        column = _pick(columns, rep)
        return generate(rows, seed=seed, drift=drift(column), with_label=False), {column}

    return make


def _transformed(change: Callable[[pd.DataFrame, str, Reference], None], columns: list[str]):
    def make(rows, seed, rep, ref):
        column = _pick(columns, rep)
        batch = _clean(rows, seed)
        change(batch, column, ref)
        return batch, {column}

    return make


def _standardized(rows, seed, rep, ref):
    batch = _clean(rows, seed)
    for column in NUMERIC:
        values = batch[column].astype("float64")
        batch[column] = (values - values.mean()) / values.std()
    return batch, set(NUMERIC)


def _swapped(rows, seed, rep, ref):
    a, b = [
        ("age", "tenure_months"),
        ("monthly_charges", "total_charges"),
        ("plan", "region"),
        ("support_calls", "contract"),
    ][rep % 4]
    batch = _clean(rows, seed)
    batch[a], batch[b] = batch[b].copy(), batch[a].copy()
    return batch, {a, b}


def _unseen(column: str) -> Drift:
    shares = {k: v * 0.7 for k, v in CATEGORIES[column].items()}
    return Drift(categories={column: shares | {"unknown_new": 0.3}})


def _clip(batch: pd.DataFrame, column: str, ref: Reference) -> None:
    batch[column] = batch[column].clip(upper=float(ref.frame[column].quantile(0.95)))


def _stuck(batch: pd.DataFrame, column: str, ref: Reference) -> None:
    batch[column] = ref.frame[column].mode().iloc[0] if column in CATEGORICAL else ref.frame[column].median()


def _ints_as_floats(rows, seed, rep, ref):
    batch = _clean(rows, seed)
    for column in INTEGER:
        batch[column] = batch[column].astype("float64")
    return batch, set()


SCENARIOS: list[Scenario] = [
    Scenario("standardized with own stats", _standardized),
    Scenario("unit x1000", _transformed(lambda b, c, r: b.__setitem__(c, b[c] * 1000), NUMERIC)),
    Scenario("unit /100", _transformed(lambda b, c, r: b.__setitem__(c, b[c] / 100), NUMERIC)),
    Scenario("mean shift 0.5 sd", _drifted(lambda c: Drift(shift={c: 0.5}), NUMERIC)),
    Scenario("scale x1.5", _drifted(lambda c: Drift(scale={c: 1.5}), NUMERIC)),
    Scenario(
        "null burst 40%",
        _drifted(lambda c: Drift(null_rate={c: 0.4}), ["age", "data_usage_gb", "region", "monthly_charges"]),
    ),
    Scenario("unseen category 30%", _drifted(_unseen, CATEGORICAL)),
    Scenario("labels re-cased", _transformed(lambda b, c, r: b.__setitem__(c, b[c].str.upper()), CATEGORICAL)),
    Scenario("two columns swapped", _swapped),
    Scenario("clipped at training q95", _transformed(_clip, CONTINUOUS)),
    Scenario("stuck at one value", _transformed(_stuck, [*NUMERIC, "contract"])),
    Scenario("numbers as strings", _transformed(lambda b, c, r: b.__setitem__(c, b[c].astype("str")), NUMERIC)),
    Scenario(
        "missing column", _transformed(lambda b, c, r: b.drop(columns=[c], inplace=True), [*NUMERIC, *CATEGORICAL])
    ),
    Scenario("extra column", lambda rows, seed, rep, ref: (_clean(rows, seed).assign(promo="x"), {"promo"})),
    Scenario("mean shift 0.25 sd", _drifted(lambda c: Drift(shift={c: 0.25}), NUMERIC), separate=True),
    Scenario("clean", lambda rows, seed, rep, ref: (_clean(rows, seed), set()), drift=False),
    Scenario("clean, integers as floats", _ints_as_floats, drift=False),
]


@dataclass
class Score:
    runs: int = 0
    failed: int = 0  # drift: detected; clean: false alarms
    right: int = 0  # drift: exactly the broken columns failed

    def add(self, report: GateReport, expected: set[str]) -> None:
        self.runs += 1
        failed = report.verdict == Verdict.FAIL
        self.failed += failed
        self.right += failed and set(report.columns_with(Verdict.FAIL)) == expected


def run(
    scenario: Scenario, rows: int, repetitions: int, ref: Reference, settings: GateSettings, seed: int = 0
) -> Score:
    score = Score()
    for rep in range(repetitions):
        batch, expected = scenario.make(rows, 10_000 + seed + rep * 7919 + rows, rep, ref)
        score.add(validate(batch, ref.suite, settings), expected)
    return score
