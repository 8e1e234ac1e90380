"""The same snapshot and registry code against a real S3 endpoint: moto's server on loopback."""

import io

import boto3
import mlflow
import numpy as np
import pandas as pd
import pytest

from configs.settings import Settings
from core import integrity
from core.errors import DataError, SnapshotError
from core.vocabulary import Tag
from tasks.data.demo_data import TARGET, generate
from tasks.data.snapshot import read_snapshot, take_snapshot, write_snapshot
from tasks.data.storage import open_store
from tasks.release import prediction_reference
from tasks.release.lineage import GitLineage
from tasks.release.registration import BASELINE_ONNX_ARTIFACT, ONNX_ARTIFACT, register
from tasks.release.registry import get_version
from tasks.training.pipeline import train
from tests.conftest import tuned


@pytest.fixture
def on_s3(settings, s3_endpoint, s3_bucket) -> Settings:
    return tuned(
        settings,
        s3={"endpoint_url": s3_endpoint},
        snapshots={"store": f"s3://{s3_bucket}/snapshots"},
        data={"demo_rows": 2_000},
    )


@pytest.fixture
def s3(s3_endpoint):
    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


def keys(s3, bucket):
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


def count_calls(store, operation: str) -> list:
    calls = []
    store.client.meta.events.register(f"before-call.s3.{operation}", lambda **kw: calls.append(operation))
    return calls


def test_snapshot_to_s3_and_back(on_s3, s3, s3_bucket):
    snap = take_snapshot("demo", on_s3, TARGET)
    assert snap.uri == f"s3://{s3_bucket}/snapshots/{snap.id}"
    assert keys(s3, s3_bucket) == [f"snapshots/{snap.id}/data.parquet", f"snapshots/{snap.id}/manifest.json"]
    loaded = read_snapshot(open_store(on_s3.snapshots.store, on_s3.s3), snap.id)
    pd.testing.assert_frame_equal(loaded.frame, snap.frame)
    assert loaded.manifest.rows == 2_000


def test_identical_data_writes_nothing_to_s3(on_s3):
    store = open_store(on_s3.snapshots.store, on_s3.s3)
    frame = generate(1_000, seed=4)
    first = write_snapshot(frame, "a.csv", store)
    puts = count_calls(store, "PutObject") + count_calls(store, "CreateMultipartUpload")
    again = write_snapshot(frame, "b.csv", store)
    assert (again.id, again.created, puts) == (first.id, False, [])


def test_changed_object_on_s3_fails_on_read(on_s3, s3, s3_bucket):
    snap = take_snapshot("demo", on_s3, TARGET)
    key = f"snapshots/{snap.id}/data.parquet"
    tampered = pd.read_parquet(io.BytesIO(s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read()))
    tampered.loc[3, "plan"] = "gold"
    buffer = io.BytesIO()
    tampered.to_parquet(buffer, index=False)
    s3.put_object(Bucket=s3_bucket, Key=key, Body=buffer.getvalue())
    with pytest.raises(SnapshotError, match="has changed since it was written"):
        read_snapshot(open_store(on_s3.snapshots.store, on_s3.s3), snap.id)


def test_failed_upload_leaves_no_snapshot(on_s3, s3, s3_bucket):
    store = open_store(on_s3.snapshots.store, on_s3.s3)

    def refuse(**kwargs):
        raise ConnectionError("connection reset")

    store.client.meta.events.register("before-call.s3.PutObject", refuse)
    with pytest.raises(ConnectionError):
        write_snapshot(generate(500, seed=2), "demo", store)
    assert keys(s3, s3_bucket) == []  # the manifest comes last, so nothing looks complete


def test_training_data_from_an_s3_object(on_s3, s3, s3_bucket):
    frame = generate(800, seed=6)
    s3.put_object(Bucket=s3_bucket, Key="raw/customers.csv", Body=frame.to_csv(index=False).encode())
    snap = take_snapshot(f"s3://{s3_bucket}/raw/customers.csv", on_s3, TARGET)
    assert snap.manifest.source == f"s3://{s3_bucket}/raw/customers.csv"
    assert snap.manifest.rows == 800
    with pytest.raises(DataError, match=f"cannot read s3://{s3_bucket}/raw/missing.csv: 404"):
        take_snapshot(f"s3://{s3_bucket}/raw/missing.csv", on_s3, TARGET)
    with pytest.raises(DataError, match="cannot read s3://no-such-bucket-here/x.csv"):
        take_snapshot("s3://no-such-bucket-here/x.csv", on_s3, TARGET)


def test_iso_dates_in_a_csv_on_s3_are_datetimes_as_in_a_local_file(on_s3, s3, s3_bucket):
    frame = generate(300, seed=7).assign(
        signed_up=pd.date_range("2024-01-01", periods=300, freq="5h", tz="Europe/Berlin").astype(str)
    )
    s3.put_object(Bucket=s3_bucket, Key="raw/dated.csv", Body=frame.to_csv(index=False).encode())
    snap = take_snapshot(f"s3://{s3_bucket}/raw/dated.csv", on_s3, TARGET)
    assert snap.manifest.columns["signed_up"] == "datetime64[us, UTC]"


def test_mlflow_artifacts_on_s3(on_s3, s3, s3_bucket):
    settings = tuned(on_s3, mlflow={"artifact_location": f"s3://{s3_bucket}/mlflow"})
    snap = take_snapshot("demo", settings, TARGET)
    trained = train(snap.frame, TARGET, settings.training)
    registered = register.fn(trained, snap, GitLineage("c" * 40, "main", False), settings)
    assert any(k.startswith("mlflow/models/") and k.endswith("MLmodel") for k in keys(s3, s3_bucket))
    loaded = mlflow.pyfunc.load_model(registered.model_uri)
    rows = trained.X_holdout.head(10)
    np.testing.assert_array_equal(loaded.predict(rows), trained.model.predict(rows))


def test_the_recorded_sha256_are_those_of_the_files_in_s3(on_s3, s3, s3_bucket):
    """Hashed before the upload, each file's tag is the sha256 of the object the store keeps."""
    settings = tuned(on_s3, mlflow={"artifact_location": f"s3://{s3_bucket}/mlflow"})
    snap = take_snapshot("demo", settings, TARGET)
    trained = train(snap.frame, TARGET, settings.training)
    registered = register.fn(trained, snap, GitLineage("c" * 40, "main", False), settings)
    version = get_version(settings, registered.name, registered.version)
    model = mlflow.get_logged_model(version.source.removeprefix("models:/")).artifact_location
    baseline = mlflow.get_logged_model(version.tags[Tag.BASELINE_MODEL_URI].removeprefix("models:/")).artifact_location
    run = mlflow.get_run(registered.run_id).info.artifact_uri
    stored = {
        integrity.MODEL_SKOPS: f"{model}/model.skops",
        integrity.BASELINE_SKOPS: f"{baseline}/model.skops",
        integrity.MODEL_ONNX: f"{run}/{ONNX_ARTIFACT}",
        integrity.BASELINE_ONNX: f"{run}/{BASELINE_ONNX_ARTIFACT}",
        integrity.PREDICTION_REFERENCE: f"{run}/{prediction_reference.ARTIFACT}",
    }
    assert set(stored) == set(integrity.TAG_OF) - {integrity.CONTRACT}  # the contract: its own step's
    for file, uri in stored.items():
        key = uri.removeprefix(f"s3://{s3_bucket}/")
        assert key != uri, uri
        body = s3.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
        assert version.tags[integrity.TAG_OF[file]] == integrity.sha256(body), file
