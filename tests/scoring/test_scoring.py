"""`shipway score`: a batch's partitions gated and scored on a real Dask cluster (in-process here),
against a version registered in MLflow on SQLite, from and to local folders and moto's S3."""

import json

import boto3
import numpy as np
import pandas as pd
import pytest
from distributed import Client, LocalCluster

from core.errors import DataError, GateError, RegistryError
from core.vocabulary import Alias
from tasks.data.demo_data import Drift, generate
from tasks.data.snapshot import write_snapshot
from tasks.data.storage import open_store
from tasks.gate.skew import contract_for_snapshot
from tasks.release.lineage import GitLineage
from tasks.release.registration import register
from tasks.release.registry import get_version, log_contract, set_alias
from tasks.scoring import batch
from tasks.scoring.batch import score
from tasks.training.pipeline import train
from tests.conftest import embedded, run_shipway, tuned, write_profile

pytestmark = pytest.mark.slow

MODEL = "churn-classifier@Production"
DRIFT = Drift(shift={"tenure_months": 0.8})


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """Version 1 of churn-classifier with its contract, as Production; built once: training takes seconds."""
    home = tmp_path_factory.mktemp("scoring")
    settings = embedded(home)
    snapshot = write_snapshot(generate(4_000, seed=1), "demo", open_store(settings.snapshots.store, settings.s3))
    trained = train(snapshot.frame, "churned", settings.training)
    registered = register(trained, snapshot, GitLineage(commit="a" * 40, branch="main", dirty=False), settings)
    log_contract(settings, registered.name, registered.version, contract_for_snapshot(settings, snapshot, "churned"))
    set_alias(settings, registered.name, Alias.PRODUCTION, registered.version)
    return home, settings, trained, snapshot


@pytest.fixture(scope="module")
def dask():
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster:
        with Client(cluster) as client:
            yield client


def batch_folder(root, drifted=()):
    """Three partitions: Parquet at the top, CSV and Parquet in Hive-style subfolders; `drifted` ones shifted."""
    files = ["a.parquet", "day=2/b.csv", "day=3/c.parquet"]
    for i, name in enumerate(files):
        frame = generate(600 + 100 * i, seed=10 + i, drift=DRIFT if i in drifted else None, with_label=False)
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False) if name.endswith(".csv") else frame.to_parquet(path)
    (root / "_SUCCESS").write_text("")  # a writer's marker: not a partition
    return [root / f for f in files]


def test_answers_equal_the_models_own_predictions_row_for_row(home, dask, tmp_path, monkeypatch):
    _, settings, trained, snapshot = home
    files = batch_folder(tmp_path / "in")
    (tmp_path / "in" / "day=4").mkdir()
    generate(10, seed=4, with_label=False).iloc[:0].to_parquet(tmp_path / "in" / "day=4" / "empty.parquet")
    monkeypatch.setattr(batch, "PREDICT_ROWS", 256)  # every partition in several ONNX calls (the worker is in-process)
    result = score(settings, MODEL, str(tmp_path / "in"), str(tmp_path / "out"), client=dask)

    assert (result.rows, result.partitions, result.failed) == (2_100, 4, [])  # the empty one has no file
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"part-0000{i}.parquet" for i in range(3)]
    for i, source in enumerate(files):
        scored = pd.read_parquet(tmp_path / "out" / f"part-0000{i}.parquet")
        given = pd.read_csv(source) if source.suffix == ".csv" else pd.read_parquet(source)
        X = given[trained.X_holdout.columns]
        assert scored["prediction"].tolist() == trained.model.predict(X).tolist()
        proba = trained.model.predict_proba(X)
        for k, label in enumerate(trained.model.classes_):
            np.testing.assert_allclose(scored[f"probability_{label}"], proba[:, k], atol=1e-6)
        assert scored[given.columns].astype(str).equals(given.astype(str))  # the partition's columns as read
        assert set(scored["model_name"]) == {"churn-classifier"} and set(scored["model_version"]) == {"1"}
        assert set(scored["snapshot_id"]) == {snapshot.id}
    ids = pd.read_parquet(tmp_path / "out")["request_id"]
    assert ids.is_unique and ids.str.startswith(ids.iloc[0].split("-")[0]).all()

    import mlflow

    run = mlflow.MlflowClient(settings.mlflow.tracking_uri).get_run(result.run_id)
    assert run.data.metrics["rows"] == 2_100 and run.data.metrics["partitions"] == 4
    assert run.data.metrics["failed_partitions"] == 0 and run.data.metrics["rows_per_s"] > 0
    assert run.data.tags["model_uri"] == "models:/churn-classifier/1"
    assert get_version(settings, "churn-classifier", "1").tags["last_scoring_run"] == result.run_id


def test_a_failing_partition_stops_the_run_and_nothing_is_written(home, dask, tmp_path):
    settings = home[1]
    files = batch_folder(tmp_path / "in", drifted=[1])
    with pytest.raises(GateError) as caught:
        score(settings, MODEL, str(tmp_path / "in"), str(tmp_path / "out"), client=dask)
    message = str(caught.value)
    assert f"partition {files[1]} failed the gate" in message and "tenure_months" in message
    assert not (tmp_path / "out").exists()  # not even the folder: the run made it, and takes it back


def test_a_failing_partition_is_quarantined_with_its_report_and_the_rest_scored(home, dask, tmp_path):
    settings = tuned(home[1], scoring={"on_failed_partition": "quarantine"})
    files = batch_folder(tmp_path / "in", drifted=[1])
    result = score(settings, MODEL, str(tmp_path / "in"), str(tmp_path / "out"), client=dask)

    assert result.rows == 600 + 800 and [f.source for f in result.failed] == [str(files[1])]
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("*.parquet")) == ["part-00000.parquet", "part-00002.parquet"]
    held = pd.read_parquet(out / "_quarantine" / "part-00001.parquet")
    assert held.astype(str).equals(pd.read_csv(files[1]).astype(str))  # the rows as they came, unscored
    report = json.loads((out / "_quarantine" / "part-00001.json").read_text())
    assert report["verdict"] == "fail" and report["batch"] == str(files[1])
    assert len(pd.read_parquet(out)) == 1_400  # a reader of the folder skips the quarantine


def test_s3_in_and_out(home, dask, tmp_path, s3_endpoint, s3_bucket):
    settings = tuned(home[1], s3={"endpoint_url": s3_endpoint})
    files = batch_folder(tmp_path / "in")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    for path in files:
        s3.upload_file(str(path), s3_bucket, f"in/{path.relative_to(tmp_path / 'in').as_posix()}")
    result = score(settings, MODEL, f"s3://{s3_bucket}/in", f"s3://{s3_bucket}/out", client=dask)

    assert (result.rows, result.partitions) == (2_100, 3)
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix="out/")["Contents"])
    assert keys == [f"out/part-0000{i}.parquet" for i in range(3)]  # the staging folder is gone
    s3.download_file(s3_bucket, "out/part-00001.parquet", str(tmp_path / "b.parquet"))
    X = pd.read_csv(files[1])[home[2].X_holdout.columns]
    assert pd.read_parquet(tmp_path / "b.parquet")["prediction"].tolist() == home[2].model.predict(X).tolist()


def test_bad_input_is_named(home, dask, tmp_path):
    settings = home[1]
    generate(300, seed=5, with_label=False).to_parquet(tmp_path / "ok.parquet")
    with pytest.raises(RegistryError, match="no alias 'Canary'"):
        score(settings, "churn-classifier@Canary", str(tmp_path / "ok.parquet"), str(tmp_path / "o1"), client=dask)
    with pytest.raises(RegistryError, match="registered model 'nope' not found"):
        score(settings, "nope@Production", str(tmp_path / "ok.parquet"), str(tmp_path / "o1"), client=dask)
    with pytest.raises(DataError, match="missing.parquet: no such file"):
        score(settings, MODEL, str(tmp_path / "missing.parquet"), str(tmp_path / "o1"), client=dask)
    (tmp_path / "in").mkdir()
    generate(300, seed=5, with_label=False).drop(columns="plan").to_parquet(tmp_path / "in" / "a.parquet")
    with pytest.raises(DataError, match=r"a.parquet: column 'plan' is missing"):
        score(settings, MODEL, str(tmp_path / "in"), str(tmp_path / "o2"), client=dask)
    assert not (tmp_path / "o2").exists() or not any((tmp_path / "o2").iterdir())
    (tmp_path / "in" / "a.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"cannot read .*a.parquet"):
        score(settings, MODEL, str(tmp_path / "in"), str(tmp_path / "o3"), client=dask)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.parquet").write_bytes(b"")
    with pytest.raises(DataError, match="already holds files"):
        score(settings, MODEL, str(tmp_path / "ok.parquet"), str(tmp_path / "full"), client=dask)


def test_the_command_exit_codes_and_one_line_errors(home, tmp_path):
    """As a user runs it: a local cluster of one worker process; 0 scored, 1 a partition failed, 2 bad input."""
    root, settings, *_ = home
    profile = write_profile(tuned(settings, scoring={"workers": 1}), tmp_path / "profile.yaml")
    batch_folder(tmp_path / "in", drifted=[2])
    generate(300, seed=5, with_label=False).to_parquet(tmp_path / "ok.parquet")

    def shipway(*args):
        return run_shipway("score", "--config", str(profile), *map(str, args), cwd=root)

    done = shipway("--model", MODEL, "--batch", tmp_path / "ok.parquet", "--out", tmp_path / "o1", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rows"] == 300 and len(pd.read_parquet(tmp_path / "o1")) == 300

    done = shipway("--model", MODEL, "--batch", tmp_path / "in", "--out", tmp_path / "o2")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"shipway: error: scoring: partition {tmp_path / 'in' / 'day=3' / 'c.parquet'} failed the gate "
        + done.stderr.split("failed the gate ", 1)[1].strip()
    ]
    assert "nothing was written" in done.stderr and not (tmp_path / "o2").exists()

    for args, says in [
        (("--model", "churn-classifier@Nope", "--batch", tmp_path / "ok.parquet"), "has no alias 'Nope'"),
        (("--model", "other@Production", "--batch", tmp_path / "ok.parquet"), "registered model 'other' not found"),
        (("--model", MODEL, "--batch", tmp_path / "gone.csv"), "gone.csv: no such file"),
        (("--model", "churn-classifier", "--batch", tmp_path / "ok.parquet"), "must be NAME@ALIAS or NAME/VERSION"),
    ]:
        done = shipway(*args, "--out", tmp_path / "o3")
        assert done.returncode == 2, (args, done.stderr)
        assert len(done.stderr.strip().splitlines()) == 1 and says in done.stderr, done.stderr


def test_a_scheduler_named_by_the_profile_runs_the_partitions(home, tmp_path):
    """scoring.scheduler: the address of a running cluster (here one on loopback TCP) instead of a local one."""
    with LocalCluster(n_workers=1, processes=False, protocol="tcp", dashboard_address=":0") as cluster:
        settings = tuned(home[1], scoring={"scheduler": cluster.scheduler_address})
        batch_folder(tmp_path / "in")
        result = score(settings, MODEL, str(tmp_path / "in"), str(tmp_path / "out"))
        with Client(cluster) as client:
            ran = client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes))
    assert "score_partition" in ran  # the partitions ran on that cluster
    assert (result.rows, result.partitions) == (2_100, 3)
