"""What keeps a Shadow cheap: it runs on Production's typed inputs and ONNX tensors when their
columns match, its log row reuses Production's serialized inputs, and the log writer is woken
per batch, not per row. Real ONNX sessions and SQLite, no server."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from configs.settings import TrainingSettings
from serving.app import Inputs
from serving.models import Servable
from serving.prediction_log import Prediction, PredictionLog, Redactor, read_window
from serving.schema import Batch, Schema, parse
from tasks.compile import compile_pipeline, is_numeric, session
from tasks.demo_data import TARGET, generate
from tasks.registry import Column
from tasks.training import train


@pytest.fixture(scope="module")
def compiled():
    trained = train(generate(2000, seed=11), TARGET, TrainingSettings())
    onnx = compile_pipeline(trained.model, trained.X_holdout).onnx
    assert onnx is not None
    return trained, onnx


def columns_of(X, optional: set[str] = frozenset()) -> list[Column]:
    return [
        Column(c, "double" if is_numeric(X[c].dtype) else "string", c not in optional and not X[c].isna().any())
        for c in X.columns
    ]


def body_of(rows) -> bytes:
    data = rows.astype(object).where(rows.notna(), None).values.tolist()
    return orjson.dumps({"dataframe_split": {"columns": list(rows.columns), "data": data}})


def test_a_shadow_with_productions_columns_runs_on_the_same_batch_and_tensors(compiled):
    trained, onnx = compiled
    rows = trained.X_holdout.head(5)
    production = Servable("1", "onnx", Schema(columns_of(rows)), session(onnx))
    shadow = Servable("2", "onnx", Schema(columns_of(rows)), session(onnx))  # equal, not the same object
    inputs = Inputs(parse(body_of(rows), "application/json"))

    expected = trained.model.predict(rows).tolist()
    assert inputs.predict(production) == expected
    assert inputs.predict(shadow) == expected
    assert inputs.for_model(shadow) is inputs.for_model(production)
    assert len(inputs._feeds) == 1


def test_a_shadow_with_other_columns_gets_its_own_batch_and_tensors(compiled):
    trained, onnx = compiled
    rows = trained.X_holdout.head(5)
    first = next(c for c in rows.columns if not rows[c].isna().any())
    production = Servable("1", "onnx", Schema(columns_of(rows)), session(onnx))
    shadow = Servable("2", "onnx", Schema(columns_of(rows, optional={first})), session(onnx))
    inputs = Inputs(parse(body_of(rows), "application/json"))

    assert inputs.predict(production) == inputs.predict(shadow) == trained.model.predict(rows).tolist()
    assert inputs.for_model(shadow) is not inputs.for_model(production)
    assert len(inputs._feeds) == 2


def test_shadow_rows_sharing_productions_inputs_log_them_like_their_own(tmp_path):
    url = f"sqlite:///{tmp_path}/log.db"
    plog = PredictionLog(url, queue_size=100, batch_size=100, flush_interval_s=0.05,
                         redact=Redactor({"email": "hash", "region": "drop"}, "salt"))  # fmt: skip
    plog.start()
    ts = datetime(2026, 3, 1, tzinfo=UTC)
    shared = Batch({"age": [30, 41], "email": ["a@b", "c@d"], "region": ["north", "south"]}, 2)
    own = Batch({"age": [7], "email": ["e@f"], "region": ["east"]}, 1)
    plog.add(Prediction("r1", ts, "m", "1", "production", None, shared, [0, 1], 0.2, None, "production"))
    plog.add(Prediction("r1", ts, "m", "2", "shadow", None, shared, [1, 1], 0.1, None))
    plog.add(Prediction("r2", ts, "m", "1", "production", None, own, [0], 0.2, None, "production"))
    plog.add(Prediction("r2", ts, "m", "2", "shadow", None, own, [0], 0.1, None))
    plog.close()

    log = read_window(url, ts, ts + timedelta(seconds=1)).set_index(["request_id", "role"])
    assert log.loc[("r1", "shadow"), "inputs"] == log.loc[("r1", "production"), "inputs"]
    assert log.loc[("r2", "shadow"), "inputs"] == log.loc[("r2", "production"), "inputs"]
    first = orjson.loads(log.loc[("r1", "shadow"), "inputs"])
    assert [r["age"] for r in first] == [30, 41]
    assert all("region" not in r and len(r["email"]) == 64 for r in first)
    assert [r["age"] for r in orjson.loads(log.loc[("r2", "shadow"), "inputs"])] == [7]
    assert log.loc[("r1", "shadow"), "prediction"] == "[1,1]"


def test_a_full_batch_is_written_before_the_flush_interval(tmp_path):
    url = f"sqlite:///{tmp_path}/log.db"
    plog = PredictionLog(url, queue_size=100, batch_size=4, flush_interval_s=600.0, redact=Redactor({}, ""))
    plog.start()
    ts = datetime(2026, 3, 1, tzinfo=UTC)
    try:
        for i in range(3):
            plog.add(Prediction(f"r{i}", ts, "m", "1", "production", None, [{"x": i}], [0], 0.1, None))
        time.sleep(0.3)
        assert plog.written == 0  # three rows wait for the interval (or close)
        plog.add(Prediction("r3", ts, "m", "1", "production", None, [{"x": 3}], [0], 0.1, None))
        deadline = time.monotonic() + 15
        while plog.written < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert plog.written == 4
    finally:
        plog.close()
    assert len(read_window(url, ts, ts + timedelta(seconds=1))) == 4
