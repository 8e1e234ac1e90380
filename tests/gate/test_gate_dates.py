"""Datetime features in the contract and the gate: range and recency (naive and zone-aware), the
null rate, no false alarms on clean batches, and dates as the serving log keeps them (ISO text)."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pandas as pd
import pytest

from configs.settings import GateSettings
from core.vocabulary import Verdict
from expectations.contract import build_contract, check
from tasks.data.canonical import canonicalize
from tasks.gate.contract_checks import _run_in_gx, validate
from tasks.gate.drift_report import write_report
from tasks.monitoring.window import served_inputs

ZONES = [None, "Europe/Berlin"]
BETWEEN = "expect_column_values_to_be_between"


def table(rows: int, seed: int, zone: str | None, days: float = 365.0) -> pd.DataFrame:
    """A year of events (hourly, skewed to its start) with a naive signup day, a number and nulls."""
    rng = np.random.default_rng(seed)
    hours = np.minimum(rng.gamma(2.0, days * 24 / 6, rows), days * 24 - 1).astype(int)
    when = pd.Timestamp("2013-01-01") + pd.to_timedelta(hours, unit="h")
    frame = pd.DataFrame(
        {
            "when": when.tz_localize(zone, nonexistent="shift_forward", ambiguous=False) if zone else when,
            "signed_up": pd.Timestamp("2010-01-01") + pd.to_timedelta(rng.integers(0, 1000, rows), unit="D"),
            "amount": rng.gamma(2.0, 10.0, rows),
        }
    )
    frame.loc[rng.random(rows) < 0.02, "signed_up"] = pd.NaT
    return frame


@pytest.fixture(scope="module", params=ZONES, ids=["naive", "zone-aware"])
def reference(request) -> tuple[pd.DataFrame, dict, str | None]:
    training = canonicalize(table(3_000, 1, request.param))
    suite = build_contract(training, GateSettings(), name="dates", target=None, snapshot_id=None)
    return training, check(suite, "dates"), request.param


def date_check(suite: dict, column: str) -> dict:
    return next(e for e in suite["expectations"] if e["type"] == BETWEEN and e["kwargs"]["column"] == column)


def test_a_datetime_column_gets_its_range_and_recency_and_gx_agrees(reference):
    training, suite, zone = reference
    e = date_check(suite, "when")
    earliest, latest = training["when"].min(), training["when"].max()
    assert e["meta"]["training"] | {"rows": 0} == {
        "rows": 0,
        "earliest": earliest.isoformat(),
        "latest": latest.isoformat(),
    }
    assert e["kwargs"]["min_value"] == earliest.isoformat()
    assert pd.Timestamp(e["kwargs"]["max_value"]) == latest + (latest - earliest) * GateSettings().date_horizon
    assert ("+00:00" in e["kwargs"]["max_value"]) == (zone is not None)  # zone-aware: UTC instants
    kinds = {x["type"] for x in suite["expectations"] if x["kwargs"].get("column") == "when"}
    assert kinds == {"expect_column_values_to_be_in_type_list", "expect_column_values_to_not_be_null", BETWEEN}
    # Great Expectations itself reads the ISO bounds as datetimes and passes the training data. (GX
    # cannot name a zone-aware dtype in a type list: that one check is the gate's alone.)
    ran = _run_in_gx(
        training,
        [
            x
            for x in suite["expectations"]
            if x["kwargs"].get("column") in ("when", "signed_up")
            and not (zone and x["kwargs"]["column"] == "when" and "type_list" in x["kwargs"])
        ],
    )
    assert len(ran) == (5 if zone else 6) and not any(o.fail for o in ran), [o.reason for o in ran if o.fail]


def test_clean_batches_of_any_size_pass(reference):
    _, suite, zone = reference
    for seed, rows in enumerate([3, 20, 200, 2_000] * 3):
        report = validate(table(rows, 100 + seed, zone), suite, GateSettings())
        assert report.verdict is not Verdict.FAIL, (rows, report.reason)


@pytest.mark.parametrize(
    ("shift_days", "side"),
    [(-800, "before"), (365 * 2 + 100, "after")],
    ids=["two years older", "past the horizon"],
)
def test_dates_older_than_training_or_past_the_horizon_fail_naming_the_column_and_range(
    reference, shift_days, side, tmp_path
):
    training, suite, zone = reference
    batch = table(500, 7, zone)
    batch["when"] = batch["when"] + pd.Timedelta(days=shift_days)
    report = validate(batch, suite, GateSettings())
    assert report.verdict is Verdict.FAIL and report.columns_with(Verdict.FAIL) == ["when"], report.reason
    e = date_check(suite, "when")
    low, high = (pd.Timestamp(e["kwargs"][k]) for k in ("min_value", "max_value"))
    assert f"when (dates: 100.0% of values outside [{_day(low)}, {_day(high)}] (" in report.causes()
    when = report.columns[0]
    assert f"100.0% {side}" in when.reason
    assert when.measures["recency_days"] == pytest.approx(
        (batch["when"].max() - training["when"].max()) / pd.Timedelta(days=1)
    )
    files = write_report(report, tmp_path / "report.json")  # the report files take a date column
    assert json.loads(files.json.read_text())["columns"][0]["measures"][f"dates_{side}"] == 1.0


def test_a_month_older_fails_on_the_dates_it_pushes_before_training_and_later_ones_are_recent(reference):
    _, suite, zone = reference
    older, later = table(500, 7, zone), table(500, 7, zone)
    older["when"] -= pd.Timedelta(days=30)  # the year's first month holds ~9% of its events
    later["when"] += pd.Timedelta(days=300)  # within one training span past training's last date
    report = validate(older, suite, GateSettings())
    assert report.columns_with(Verdict.FAIL) == ["when"]
    assert 0.03 < report.columns[0].measures["dates_before"] < 0.2
    assert validate(later, suite, GateSettings()).verdict is not Verdict.FAIL


def _day(stamp: pd.Timestamp) -> str:
    stamp = stamp.tz_convert("UTC").tz_localize(None) if stamp.tzinfo else stamp
    return stamp.strftime("%Y-%m-%d") if stamp == stamp.normalize() else stamp.isoformat(sep=" ", timespec="seconds")


def test_a_batch_with_more_missing_dates_fails_the_null_rate(reference):
    _, suite, zone = reference
    batch = table(500, 8, zone)
    batch.loc[::4, "signed_up"] = pd.NaT
    report = validate(batch, suite, GateSettings())
    assert report.columns_with(Verdict.FAIL) == ["signed_up"]
    assert "nulls: 2" in report.causes()


def log_of(batch: pd.DataFrame) -> pd.DataFrame:
    """A prediction log window as the gateway writes it: each request's inputs as JSON records, dates
    as the ISO text clients sent (with an offset, with Z, or without)."""
    texts = batch.astype(object).where(batch.notna(), None)
    for column in ("when", "signed_up"):
        stamps = batch[column]
        if stamps.dt.tz is not None:  # as a client in Berlin sends them, or in UTC with a Z
            texts[column] = [
                None if pd.isna(v) else v.isoformat() if i % 2 else v.tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%SZ")
                for i, v in enumerate(stamps)
            ]
        else:
            texts[column] = [None if pd.isna(v) else v.isoformat() for v in stamps]
    records = texts.to_dict("records")
    requests = [orjson.dumps(records[i : i + 10]).decode() for i in range(0, len(records), 10)]
    return pd.DataFrame({"role": "production", "inputs": requests})


def test_dates_as_the_serving_log_keeps_them_are_checked_as_dates(reference):
    _, suite, zone = reference
    clean = served_inputs(log_of(table(400, 9, zone)))
    assert clean["when"].map(type).eq(str).all()  # the log holds text, not datetimes
    assert validate(clean, suite, GateSettings()).verdict is not Verdict.FAIL
    old = table(400, 9, zone)
    old["when"] = old["when"] - pd.Timedelta(days=3 * 365)
    report = validate(served_inputs(log_of(old)), suite, GateSettings())
    assert report.columns_with(Verdict.FAIL) == ["when"], report.reason


def test_text_that_is_not_dates_fails_the_type_naming_a_value(reference):
    _, suite, zone = reference
    batch = log_of(table(100, 10, zone))
    junk = served_inputs(batch).assign(when=lambda f: f["when"].where(f.index != 3, "next tuesday"))
    report = validate(junk, suite, GateSettings())
    assert report.columns_with(Verdict.FAIL) == ["when"]
    assert "(text that is not an ISO 8601 date, e.g. 'next tuesday')" in report.causes()
