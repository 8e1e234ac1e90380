"""Datetime features after training: the flow's later steps (benchmark, Shadow), the gateway, the
Shadow's process and monitoring, on a table with a naive and a zone-aware datetime column.

The wire carries a datetime as MLflow's signature takes it, ISO 8601 text without an offset (a
zone-aware column's in UTC); the model's date parts read the same instants either way."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import orjson
import pandas as pd
import pytest

from configs.settings import Settings
from core.vocabulary import Alias, Verdict
from flows.monitor import monitoring_flow
from flows.train import training_flow
from serving import RegistryReader, json_rows, running, servable
from serving.models import Inputs
from serving.prediction_log import read_window
from serving.schema import parse
from tasks.data.snapshot import take_snapshot
from tasks.gate.skew import gate, publish_contract, reference_for_model
from tasks.monitoring.window import datetime_columns, served_inputs
from tasks.release.lineage import GitLineage
from tasks.release.registration import register
from tasks.release.registry import set_alias, versions
from tasks.training.pipeline import train
from tests.conftest import tuned, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

DATES = ["signed_up", "last_seen"]
SHADOW_READY_S = 120  # the Shadow's process starts in ~16 s on a loaded 2-core machine


def dated_table(rows: int = 900, seed: int = 0) -> pd.DataFrame:
    """Customers with a naive sign-up time and a last-seen time in UTC (some unknown)."""
    rng = pd.Series(range(rows)).sample(frac=1.0, random_state=seed).to_numpy()  # a fixed shuffle
    signed_up = pd.Timestamp("2023-01-01") + pd.to_timedelta(rng * 16 % (600 * 24), unit="h")
    last_seen = pd.Timestamp("2024-01-01", tz="UTC") + pd.to_timedelta(rng * 997 % (300 * 24 * 60), unit="min")
    amount = (rng * 37 % 100) + 0.5
    frame = pd.DataFrame(
        {
            "signed_up": signed_up.astype("datetime64[us]"),
            "last_seen": last_seen.astype("datetime64[us, UTC]"),
            "amount": amount.astype("float64"),
            "plan": pd.Series(["basic", "plus", "pro"])[rng % 3].to_numpy(),
        }
    )
    frame.loc[frame.index % 11 == 0, "last_seen"] = pd.NaT
    score = (frame["signed_up"].dt.month > 6).astype(int) + (frame["last_seen"].dt.hour.fillna(0) > 12) + (amount > 50)
    frame["churned"] = ((score + (rng % 7) / 7) > 1.6).astype("int64")
    return frame


@pytest.fixture
def table(tmp_path: Path) -> str:
    path = tmp_path / "customers.parquet"
    dated_table().to_parquet(path, index=False)
    return str(path)


def configured(settings: Settings, name: str) -> Settings:
    return tuned(
        settings,
        data={"target": "churned"},
        training={"model_name": name},
        serving={"bench_requests": 100, "poll_interval_s": 0.1, "log_flush_interval_s": 0.05, "timeout_ms": 5000},
    )


@pytest.mark.parametrize(
    "dates",
    [
        pytest.param(["signed_up"], id="naive"),
        pytest.param(DATES, id="naive-and-zone-aware"),
    ],
)
def test_a_table_with_naive_and_zone_aware_dates_trains_through_every_step_to_shadow(settings, tmp_path, dates):
    s = configured(settings, "dated")
    table = str(tmp_path / "customers.parquet")
    dated_table().drop(columns=[c for c in DATES if c not in dates]).to_parquet(table, index=False)
    result = training_flow(data=table, settings=s)
    assert result.version == "1"
    found, aliases = versions(s, "dated")
    assert aliases == {Alias.SHADOW.value: "1"}
    tags = found[0].tags
    assert {"latency_p50_ms", "latency_p99_ms", "latency_gate"} <= set(tags)
    reader = RegistryReader(s)
    assert {c.name: c.type for c in reader.columns("dated", "1") if c.name in DATES} == dict.fromkeys(dates, "datetime")
    # MLflow's serving input example holds UTC times without an offset, which MLflow and the gateway take
    loaded = reader.load("dated", "1")
    assert loaded.example is not None and b"+00:00" not in loaded.example
    assert len(Inputs(parse(loaded.example, "application/json")).predict(servable(loaded))) == 3


def test_a_dated_model_serves_shadows_and_its_logged_dates_read_back_as_datetimes(settings, table, tmp_path):
    s = configured(settings, "dated-serving")
    snapshot = take_snapshot(table, s, "churned")
    production = train(snapshot.frame, "churned", s.training, s.data)
    shadow = train(snapshot.frame, "churned", s.training.model_copy(update={"params": {"C": 0.01}}), s.data)
    lineage = GitLineage("d" * 40, "main", False)
    first = register.fn(production, snapshot, lineage, s)
    publish_contract(s, snapshot, "churned", first, production.features)
    second = register.fn(shadow, snapshot, lineage, s)
    set_alias(s, first.name, Alias.PRODUCTION, first.version)
    set_alias(s, first.name, Alias.SHADOW, second.version)
    logged = tuned(s, prediction_log={"url": f"sqlite:///{tmp_path}/predictions.db"})

    rows = production.X_holdout.head(40)
    utc = rows.assign(last_seen=rows["last_seen"].dt.tz_convert("UTC").dt.tz_localize(None))
    columns = list(rows.columns)
    with running(logged) as url, httpx.Client(base_url=url, timeout=30) as client:
        answers = [
            client.post("/invocations", json={"dataframe_split": {"columns": columns, "data": [row]}})
            for row in json_rows(rows)
        ]
        # Parquet as pandas writes it by default (timestamp[ns]), and with a zone, which MLflow refuses too
        as_parquet = client.post("/invocations", content=_parquet(utc.astype({c: "datetime64[ns]" for c in DATES})),
                                 headers={"Content-Type": "application/vnd.apache.parquet"})  # fmt: skip
        zoned = client.post("/invocations", content=_parquet(rows),
                            headers={"Content-Type": "application/vnd.apache.parquet"})  # fmt: skip
        wait_for(lambda: _settled(client), SHADOW_READY_S, "the Shadow's process to report every mirrored request")

    assert [a.status_code for a in answers] == [200] * len(rows), answers[0].text
    assert [a.json()["predictions"][0] for a in answers] == production.serve(rows).tolist()
    assert as_parquet.status_code == 200 and as_parquet.json()["predictions"] == production.serve(rows).tolist()
    assert zoned.status_code == 400
    assert zoned.json()["message"].startswith("column 'last_seen': Parquet type timestamp[us, tz=UTC] cannot be read")

    log = read_window(logged.prediction_log.url, pd.Timestamp.now("UTC") - pd.Timedelta(hours=1),
                      pd.Timestamp.now("UTC") + pd.Timedelta(minutes=1))  # fmt: skip
    answered = log[(log["role"] == "production") & log["prediction"].notna()].set_index("request_id")
    mirrored = log[log["role"] == "shadow"].set_index("request_id")
    assert len(answered) == len(mirrored) == len(rows) + 1  # the Shadow got every answered request, Parquet too
    expected = dict(zip([a.headers["x-request-id"] for a in answers], shadow.serve(rows).tolist(), strict=True))
    assert {i: orjson.loads(mirrored.loc[i, "prediction"])[0] for i in expected} == expected
    assert (
        mirrored.loc[as_parquet.headers["x-request-id"], "inputs"]
        == answered.loc[as_parquet.headers["x-request-id"], "inputs"]
    )

    # Monitoring reads the logged dates back as datetimes (naive, UTC), which the contract checks
    assert sorted(datetime_columns(s, first.name, first.version)) == sorted(DATES)
    inputs = served_inputs(log, DATES)
    assert all(pd.api.types.is_datetime64_any_dtype(inputs[c].dtype) for c in DATES)
    sent = pd.concat([utc, utc], ignore_index=True)[DATES]
    pd.testing.assert_frame_equal(inputs[DATES].astype("datetime64[ns]"), sent.astype("datetime64[ns]"))
    reference = reference_for_model(s, f"{first.name}@{Alias.PRODUCTION.value}")
    assert gate(inputs, reference, s, "window").verdict is not Verdict.FAIL
    as_text = gate(served_inputs(log), reference, s, "window")  # the same rows with dates left as ISO text
    assert as_text.verdict is not Verdict.FAIL, as_text.reason  # the gate reads ISO text as dates
    watched = monitoring_flow(first.name, window="1h", settings=logged)
    assert watched.requests == len(rows) + 2 and watched.drift != Verdict.FAIL.value, watched.breaches


def _parquet(frame: pd.DataFrame) -> bytes:
    out = io.BytesIO()
    frame.to_parquet(out, index=False)
    return out.getvalue()


def _settled(client: httpx.Client) -> dict | None:
    status = client.get("/health").json()["shadow_process"]
    return status if status["state"] == "running" and status["backlog"] == 0 else None
