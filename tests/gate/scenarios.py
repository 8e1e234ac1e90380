"""The skew-gate scenario catalogue: what breaks models, on generated churn data.

Each scenario turns a clean serving batch (drawn from the training distribution) into a broken one
and names the column(s) the gate must fail. `run()` scores the gate on a scenario; the tests run a
few repetitions, tests/benchmarks/bench_gate_scenarios.py many, and prints the rates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from configs.settings import GateSettings
from core.vocabulary import Verdict
from expectations.contract import build_contract
from tasks.data.demo_data import CATEGORIES, NUMERIC, Drift, generate
from tasks.data.snapshot import canonicalize
from tasks.gate.contract_checks import validate
from tasks.gate.verdict import GateReport

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
    bystander: int = 0  # a column nothing changed named (fail or warn)

    def add(self, report: GateReport, expected: set[str]) -> None:
        self.runs += 1
        failed = report.verdict == Verdict.FAIL
        self.failed += failed
        self.right += failed and set(report.columns_with(Verdict.FAIL)) == expected
        named = {*report.columns_with(Verdict.FAIL), *report.columns_with(Verdict.WARN)}
        self.bystander += bool(named - expected)


def run(
    scenario: Scenario, rows: int, repetitions: int, ref: Reference, settings: GateSettings, seed: int = 0
) -> Score:
    score = Score()
    for rep in range(repetitions):
        batch, expected = scenario.make(rows, 10_000 + seed + rep * 7919 + rows, rep, ref)
        score.add(validate(batch, ref.suite, settings), expected)
    return score


# --- joint skews: every column's distribution kept, the rows broken ----------------------------------
# On generated credit data whose columns relate to each other (income with age, loans with income, ...).


def credit(rows: int, seed: int) -> pd.DataFrame:
    """Credit applications: numeric, binary and text columns, related as real ones are."""
    rng = np.random.default_rng(seed)
    age = np.clip(rng.normal(42, 12, rows), 18, 80).round()
    region = rng.choice(["north", "south", "east", "west"], rows, p=[0.3, 0.3, 0.2, 0.2])
    employment = np.where(rng.random(rows) < 0.15 + 0.004 * (age - 18), "self_employed", "employee")
    log_income = 3.7 + 0.012 * (age - 42) + 0.25 * (region == "north") + 0.2 * (employment == "self_employed")
    income = np.exp(log_income + rng.normal(0, 0.35, rows)).round(1)
    years_employed = np.clip((age - 18) * rng.beta(4, 3, rows), 0, None).round()
    loan = (income * rng.lognormal(0.9, 0.35, rows)).round(1)
    mortgage = (rng.random(rows) < 1 / (1 + np.exp(-(-4 + 0.05 * (age - 18) + 0.025 * income)))).astype("int64")
    score = np.clip(560 + 2.0 * years_employed + 0.9 * income - 0.3 * loan + rng.normal(0, 35, rows), 300, 850)
    utilization = np.clip(0.9 - (score - 300) / 700 + rng.normal(0, 0.12, rows), 0, 1).round(3)
    accounts = rng.poisson(1 + 0.06 * (age - 18) + 0.8 * mortgage)
    debt = (loan / 60 + 1.2 * mortgage + rng.gamma(2, 0.2, rows)).round(2)
    return pd.DataFrame(
        {
            "age": age.astype("int64"),
            "income": income,
            "years_employed": years_employed.astype("int64"),
            "loan_amount_k": loan,
            "has_mortgage": mortgage,
            "credit_score": score.round().astype("int64"),
            "credit_utilization": utilization,
            "open_accounts": accounts.astype("int64"),
            "monthly_debt_k": debt,
            "region": pd.Series(region, dtype="str"),
            "employment": pd.Series(employment, dtype="str"),
            "channel": pd.Series(rng.choice(["web", "branch", "phone"], rows, p=[0.6, 0.3, 0.1]), dtype="str"),
        }
    )


BLOCKS = [
    ["income", "loan_amount_k", "has_mortgage"],
    ["credit_score", "credit_utilization"],
    ["loan_amount_k", "monthly_debt_k"],
    ["years_employed", "open_accounts", "credit_score"],
]
STALE = ["income", "age", "credit_score", "monthly_debt_k", "loan_amount_k"]


def credit_reference(settings: GateSettings | None = None) -> Reference:
    frame = canonicalize(credit(TRAINING_ROWS, TRAINING_SEED))
    suite = build_contract(frame, settings or GateSettings(), name="credit", target=None, snapshot_id=None)
    return Reference(frame, suite)


def _from_other_rows(columns_of: Callable[[int], list[str]], table: Callable[[int, int], pd.DataFrame] = credit):
    """The columns come from other rows of the same batch: a join on the wrong key, a stale column."""

    def make(rows, seed, rep, ref):
        batch = table(rows, seed)
        columns = columns_of(rep)
        other = np.random.default_rng(seed + 1).permutation(rows)
        batch[columns] = batch[columns].iloc[other].to_numpy()
        return canonicalize(batch), set(columns)

    return make


JOINT_SCENARIOS: list[Scenario] = [
    Scenario("wrong join key (2-3 columns)", _from_other_rows(lambda rep: BLOCKS[rep % len(BLOCKS)])),
    Scenario("stale feature column", _from_other_rows(lambda rep: [STALE[rep % len(STALE)]])),
    Scenario("clean credit rows", lambda rows, seed, rep, ref: (canonicalize(credit(rows, seed)), set()), drift=False),
]


# --- small real tables: clean random splits of scikit-learn's bundled datasets ------------------------

SMALL_TABLES = ("wine", "iris", "breast_cancer", "diabetes")


def small_split(name: str, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A random split of a bundled dataset (target kept): 100 to 500 training rows, the rest the batch."""
    from sklearn import datasets

    frame = getattr(datasets, f"load_{name}")(as_frame=True).frame
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(frame))
    training = int(np.clip(len(frame) * rng.uniform(0.5, 0.8), 100, 500))
    pick = lambda rows: canonicalize(frame.iloc[np.sort(rows)].reset_index(drop=True))
    return pick(order[:training]), pick(order[training:])


def small_false_alarm(name: str, seed: int, settings: GateSettings) -> GateReport:
    training, batch = small_split(name, seed)
    suite = build_contract(training, settings, name=name, target="target", snapshot_id=None)
    return validate(batch, suite, settings)


# --- held out: a catalogue the joint check was not tuned on --------------------------------------------
# Motor insurance policies, with an independent 25-level categorical column (`agent`) that nothing
# changes: high-cardinality sampling noise must not get it named.

AGENTS = [f"agent_{i:02d}" for i in range(25)]


def policies(rows: int, seed: int) -> pd.DataFrame:
    """Motor insurance policies: numbers and a category related only moderately (correlations of
    0.2-0.5, so that 1,000 rows sit near the check's power), and an unrelated 25-level category."""
    rng = np.random.default_rng(seed)
    age = np.clip(rng.normal(45, 14, rows), 18, 85).round()
    driving = np.clip((age - 17) * rng.beta(2, 1.5, rows), 0, None).round()
    urban = rng.random(rows) < 0.55
    vehicle = np.exp(3.0 + 0.006 * (age - 45) + 0.2 * urban + rng.normal(0, 0.5, rows)).round(1)
    mileage = np.clip(12 - 1.5 * urban + 0.03 * driving + rng.normal(0, 3.5, rows), 1, None).round(1)
    claims = rng.poisson(np.exp(-0.4 - 0.015 * driving + 0.03 * mileage))
    premium = 0.015 * vehicle + 0.12 * claims + 0.01 * mileage + 0.004 * np.maximum(30 - driving, 0) ** 1.5
    premium = (premium * rng.lognormal(0, 0.3, rows)).round(2)
    excess = np.where(rng.random(rows) < 1 / (1 + np.exp(-(vehicle - 25) / 15)), "high", "low")
    shares = 1 / np.arange(1, len(AGENTS) + 1) ** 0.7
    return pd.DataFrame(
        {
            "age": age.astype("int64"),
            "driving_years": driving.astype("int64"),
            "vehicle_value_k": vehicle,
            "annual_mileage_k": mileage,
            "claims_5y": claims.astype("int64"),
            "premium_k": premium,
            "area": pd.Series(np.where(urban, "urban", "rural"), dtype="str"),
            "excess": pd.Series(excess, dtype="str"),
            "agent": pd.Series(rng.choice(AGENTS, rows, p=shares / shares.sum()), dtype="str"),
        }
    )


POLICY_BLOCKS = [
    ["vehicle_value_k", "premium_k"],
    ["age", "driving_years"],
    ["annual_mileage_k", "area", "claims_5y"],
    ["vehicle_value_k", "excess"],
]
POLICY_STALE = ["premium_k", "driving_years", "annual_mileage_k", "vehicle_value_k"]


def policy_reference(settings: GateSettings | None = None) -> Reference:
    frame = canonicalize(policies(TRAINING_ROWS, TRAINING_SEED))
    suite = build_contract(frame, settings or GateSettings(), name="policies", target=None, snapshot_id=None)
    return Reference(frame, suite)


# the held-out catalogue: the check is measured on it, not tuned on it
HELD_OUT_SCENARIOS: list[Scenario] = [
    Scenario(
        "held out: wrong join key", _from_other_rows(lambda rep: POLICY_BLOCKS[rep % len(POLICY_BLOCKS)], policies)
    ),
    Scenario("held out: stale column", _from_other_rows(lambda rep: [POLICY_STALE[rep % len(POLICY_STALE)]], policies)),
    Scenario("held out: clean", lambda rows, seed, rep, ref: (canonicalize(policies(rows, seed)), set()), drift=False),
]
