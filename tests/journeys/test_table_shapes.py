"""Every table shape trains, registers, gates and serves through the real gateway: numeric-only
tables that ship with scikit-learn, text-only, booleans, nullable integers, categories, dates,
column names with spaces and unicode, and columns that are not features (IDs, free text)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import httpx
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris, load_wine

from configs.settings import Settings, load_settings
from core.vocabulary import Alias, Task, Verdict
from serving import RegistryReader, running
from tasks.data.snapshot import take_snapshot
from tasks.gate.skew import gate, publish_contract, reference_for_model
from tasks.release.lineage import GitLineage
from tasks.release.registration import register
from tasks.release.registry import set_alias, versions
from tasks.training.pipeline import train


@dataclass(frozen=True)
class Shape:
    name: str
    build: Callable[[], tuple[pd.DataFrame, str]]
    task: Task
    data: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    serving_format: str | None = None  # None: either is right


def sklearn_table(loader, **kwargs) -> Callable[[], tuple[pd.DataFrame, str]]:
    return lambda: (loader(as_frame=True, **kwargs).frame, "target")


def customers(rows: int = 400, seed: int = 0) -> pd.DataFrame:
    """A table as users have them: an ID, free text, booleans, nullable integers, categories,
    dates, names with spaces and unicode."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "customer id": [f"C{i:05d}" for i in range(rows)],
            "âge": rng.integers(18, 80, rows),
            "monthly spend €": rng.gamma(2.0, 30.0, rows).round(2),
            "plan": rng.choice(["basic", "plus", "pro"], rows),
            "paperless": rng.random(rows) < 0.5,
            "tickets": pd.array(rng.integers(0, 6, rows), dtype="Int64"),
            "segment": pd.Categorical(rng.choice(["retail", "smb", "enterprise"], rows)),
            "signed_up": pd.Timestamp("2023-01-01") + pd.to_timedelta(rng.integers(0, 600, rows), unit="D"),
            "note": [f"called about invoice {rng.integers(1e6)}" for _ in range(rows)],
        }
    )
    frame.loc[frame.index % 9 == 0, "tickets"] = pd.NA
    score = (frame["âge"] > 45).astype(int) + (frame["plan"] == "pro") + frame["paperless"] + rng.random(rows)
    frame["churned"] = score > 1.8
    return frame


def text_only() -> tuple[pd.DataFrame, str]:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"plan": rng.choice(["a", "b", "c"], 300), "city": rng.choice(["Zürich", "Köln"], 300)})
    frame["label"] = np.where((frame["plan"] == "a") ^ (rng.random(300) < 0.1), "yes", "no")
    return frame, "label"


def booleans_only() -> tuple[pd.DataFrame, str]:
    rng = np.random.default_rng(2)
    frame = pd.DataFrame({f"flag {i}": rng.random(300) < 0.5 for i in range(3)})
    frame["label"] = frame["flag 0"] ^ (rng.random(300) < 0.1)
    return frame, "label"


SHAPES = [
    Shape("breast_cancer", sklearn_table(load_breast_cancer), Task.BINARY, serving_format="onnx"),
    Shape("wine", sklearn_table(load_wine), Task.MULTICLASS, serving_format="onnx"),
    Shape("iris", sklearn_table(load_iris), Task.MULTICLASS, serving_format="onnx"),
    Shape("diabetes", sklearn_table(load_diabetes, scaled=False), Task.REGRESSION, training={"estimator": "ridge"}),
    Shape("text_only", text_only, Task.BINARY, serving_format="onnx"),
    Shape("booleans_only", booleans_only, Task.BINARY, serving_format="onnx"),
    Shape(
        "mixed_with_dates",
        lambda: (customers(), "churned"),
        Task.BINARY,
        data={"exclude": ["customer id", "note"]},
        serving_format="onnx",  # a datetime feature: its date parts are compiled too
    ),
    Shape(
        "mixed_out_of_time",
        lambda: (customers(), "churned"),
        Task.BINARY,
        data={"exclude": ["customer id", "note"], "time_column": "signed_up"},
        serving_format="onnx",  # the time column is no feature: the rest converts
    ),
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Iterator[Settings]:
    """One embedded profile for the module: one MLflow database (creating one takes seconds), a
    registered model per shape."""
    home = tmp_path_factory.mktemp("shapes")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(home)
        for var in [v for v in os.environ if v.startswith("SHIPWAY_")]:
            patch.delenv(var)
        yield load_settings(cwd=home)


def configured(settings: Settings, shape: Shape, target: str) -> Settings:
    return settings.model_copy(
        update={
            "data": settings.data.model_copy(update={"target": target, **shape.data}),
            "training": settings.training.model_copy(
                update={"model_name": f"shape-{shape.name}".replace("_", "-"), "params": {}, **shape.training}
            ),
        }
    )


def json_rows(frame: pd.DataFrame) -> dict:
    """A dataframe_split body as a client sends it: dates as ISO text, nulls as null."""
    values = frame.astype(object).where(frame.notna(), None)
    for column in frame.columns:
        if pd.api.types.is_datetime64_any_dtype(frame[column].dtype):
            values[column] = [v.isoformat() if v is not None else None for v in values[column]]
    return {"dataframe_split": {"columns": list(frame.columns), "data": values.to_numpy().tolist()}}


@pytest.mark.parametrize("shape", SHAPES, ids=[s.name for s in SHAPES])
def test_every_table_shape_trains_registers_gates_and_serves(workspace, tmp_path, shape):
    frame, target = shape.build()
    s = configured(workspace, shape, target)
    frame.to_parquet(tmp_path / "data.parquet")
    snapshot = take_snapshot(str(tmp_path / "data.parquet"), s, target)
    trained = train(snapshot.frame, target, s.training, s.data)
    assert trained.task is shape.task
    assert target not in trained.features and not set(s.data.exclude) & set(trained.features)
    assert list(trained.X_holdout.columns) == trained.features
    if s.data.time_column:  # the holdout is the latest share by time, and time is no feature
        assert s.data.time_column not in trained.features
        times = snapshot.frame[s.data.time_column]
        assert times.loc[trained.holdout_index].min() >= times.drop(trained.holdout_index).max()

    registered = register.fn(trained, snapshot, GitLineage("a" * 40, "main", False), s)
    publish_contract(s, snapshot, target, registered, trained.features)
    set_alias(s, registered.name, Alias.PRODUCTION, registered.version)
    tags = versions(s, registered.name)[0][0].tags
    assert tags["task"] == shape.task.value
    if shape.serving_format:
        assert tags["serving_format"] == shape.serving_format, tags["onnx_parity"]
    # The gateway's own read of the registry (without MLflow, serving/registry_tables.py) sees every
    # column type as MLflow's client does: text, booleans, nullable integers, dates, unicode names.
    reader = RegistryReader(s)
    by_mlflow = reader._load_with_mlflow(registered.name, registered.version)
    assert reader.columns(registered.name, registered.version) == by_mlflow.columns
    if tags["serving_format"] == "onnx":
        assert asdict(reader.load(registered.name, registered.version)) == asdict(by_mlflow)

    # The gate checks the features only: the snapshot's other columns are neither checked nor refused.
    reference = reference_for_model(s, f"{registered.name}@Production")
    report = gate(snapshot.frame.loc[trained.holdout_index], reference, s, "holdout")
    assert report.verdict is not Verdict.FAIL, report.reason
    assert {c.name for c in report.columns} <= {*trained.features, target}

    rows = trained.X_holdout.head(8)
    with running(s) as url:
        answer = httpx.post(f"{url}/invocations", json=json_rows(rows), timeout=30)
        with_id = httpx.post(
            f"{url}/invocations", json=json_rows(snapshot.frame.loc[rows.index, list(frame.columns)]), timeout=30
        )
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-model-role"] == "production"
    expected = trained.serve(rows)
    got = answer.json()["predictions"]
    if shape.task is Task.REGRESSION:
        np.testing.assert_allclose(got, expected, rtol=1e-9)
    else:
        assert got == expected.tolist()
    # columns the model does not take (IDs, excluded ones) are ignored, as `mlflow models serve` does
    assert with_id.status_code == 200 and with_id.json()["predictions"] == got
