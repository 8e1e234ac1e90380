"""The gateway on real uvicorn over loopback, against a real MLflow registry on SQLite.

One registry per module (training and registering take seconds); each test points the aliases
where it needs them and starts its own gateway. Misbehaving versions are real MLflow pyfunc
models that raise or sleep.
"""

from __future__ import annotations

import os
import sqlite3
import time
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.models import infer_signature

from configs.settings import Settings, load_settings
from serving.prediction_log import read_feedback, read_window
from serving.server import running
from tasks.demo_data import TARGET
from tasks.lineage import GitLineage
from tasks.registry import Alias, connect, register, set_alias, set_canary_share
from tasks.snapshot import take_snapshot
from tasks.training import TrainedModel, train

LINEAGE = GitLineage("c" * 40, "main", False)
ROLES = (Alias.PRODUCTION, Alias.CANARY, Alias.SHADOW, Alias.PREVIOUS)


class Misbehaving(mlflow.pyfunc.PythonModel):
    """A deliberately bad model version: raises, or answers after `delay_s`."""

    def __init__(self, mode: str, delay_s: float = 0.0):
        self.mode = mode
        self.delay_s = delay_s

    def predict(self, context, model_input, params=None):
        if self.mode == "raise":
            raise RuntimeError("deliberately broken")
        time.sleep(self.delay_s)
        return np.zeros(len(model_input), dtype=np.int64)


@dataclass
class Registry:
    settings: Settings
    trained: TrainedModel
    other: TrainedModel
    good: str  # ONNX, parity-checked
    other_good: str  # another good version (different regularisation)
    raising: str  # raises; its baseline is the good version's
    slow: str  # sleeps 1 s
    raising_no_baseline: str
    shadow_slow: str  # sleeps 0.3 s

    @property
    def name(self) -> str:
        return self.settings.training.model_name


def register_misbehaving(settings: Settings, trained: TrainedModel, model: Misbehaving, baseline_uri: str | None) -> str:
    client, experiment_id = connect(settings)
    sample = trained.X_holdout.head(20)
    with mlflow.start_run(experiment_id=experiment_id) as run, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # no type hints, no input example: not needed here
        info = mlflow.pyfunc.log_model(
            name="model", python_model=model, signature=infer_signature(sample, np.zeros(20, dtype=np.int64)),
            pip_requirements=["mlflow"],
        )  # fmt: skip
    tags = {"baseline_model_uri": baseline_uri} if baseline_uri else {}
    name = settings.training.model_name
    created = client.create_model_version(name, info.model_uri, run.info.run_id, tags=tags, model_id=info.model_id)
    return str(created.version)


@pytest.fixture(scope="module")
def reg(tmp_path_factory) -> Registry:
    root = tmp_path_factory.mktemp("serving")
    with pytest.MonkeyPatch.context() as mp:
        for var in [v for v in os.environ if v.startswith("SHIPWAY_")]:
            mp.delenv(var)
        settings = load_settings(cwd=root)
    serving = settings.serving.model_copy(
        update={"poll_interval_s": 0.1, "timeout_ms": 300, "log_flush_interval_s": 0.05, "bench_requests": 200}
    )
    settings = settings.model_copy(
        update={"data": settings.data.model_copy(update={"demo_rows": 3000}), "serving": serving}
    )
    snapshot = take_snapshot("demo", settings, TARGET)
    trained = train(snapshot.frame, TARGET, settings.training)
    other = train(snapshot.frame, TARGET, settings.training.model_copy(update={"params": {"C": 0.002}}))
    good = register(trained, snapshot, LINEAGE, settings)
    other_good = register(other, snapshot, LINEAGE, settings)
    baseline_uri = MlflowClient().get_model_version(good.name, good.version).tags["baseline_model_uri"]
    return Registry(
        settings,
        trained,
        other,
        good.version,
        other_good.version,
        register_misbehaving(settings, trained, Misbehaving("raise"), baseline_uri),
        register_misbehaving(settings, trained, Misbehaving("sleep", 1.0), baseline_uri),
        register_misbehaving(settings, trained, Misbehaving("raise"), None),
        register_misbehaving(settings, trained, Misbehaving("sleep", 0.3), baseline_uri),
    )


def point(reg: Registry, share: float = 0.0, **aliases: str) -> None:
    """Set exactly these aliases (others removed) and the canary share."""
    client = MlflowClient(reg.settings.mlflow.tracking_uri)
    for alias in ROLES:
        version = aliases.get(alias.value)
        if version:
            set_alias(reg.settings, reg.name, alias, version)
        elif alias.value in client.get_registered_model(reg.name).aliases:
            client.delete_registered_model_alias(reg.name, alias.value)
    set_canary_share(reg.settings, reg.name, share)


def logged(reg: Registry, tmp_path: Path, **serving) -> Settings:
    """The module's settings with a prediction log of this test's own, and serving overrides."""
    url = f"sqlite:///{tmp_path}/predictions.db"
    return reg.settings.model_copy(
        update={
            "prediction_log": reg.settings.prediction_log.model_copy(update={"url": url}),
            "serving": reg.settings.serving.model_copy(update=serving),
        }
    )


def rows(reg: Registry, n: int, start: int = 0) -> pd.DataFrame:
    return reg.trained.X_holdout.iloc[start : start + n]


def records(frame: pd.DataFrame) -> list[dict]:
    return frame.astype(object).where(frame.notna(), None).to_dict(orient="records")


def invoke(client: httpx.Client, frame: pd.DataFrame, **headers) -> httpx.Response:
    return client.post("/invocations", json={"dataframe_records": records(frame)}, headers=headers)


def wait_for(check, timeout: float = 15.0):
    """Poll until `check()` is truthy (the gateway polls the registry on its own schedule)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout} s")


def serving_version(client: httpx.Client, alias: str = "Production") -> str | None:
    return client.get("/health").json()["serving"].get(alias, {}).get("version")


def log_of(settings: Settings) -> pd.DataFrame:
    now = datetime.now(UTC)
    return read_window(settings.prediction_log.url, now - timedelta(hours=1), now + timedelta(minutes=1))


# ---- the scoring protocol ------------------------------------------------------------------


def test_every_mlflow_format_answers_like_mlflow_pyfunc(reg, tmp_path):
    point(reg, Production=reg.good)
    frame = rows(reg, 20)
    expected = mlflow.pyfunc.load_model(f"models:/{reg.name}/{reg.good}").predict(frame).tolist()
    assert len(set(expected)) == 2  # both classes appear, so equality means something
    split = {"columns": list(frame.columns), "data": [list(r.values()) for r in records(frame)]}
    columnar = {c: [r[c] for r in records(frame)] for c in frame.columns}
    bodies = [
        {"json": {"dataframe_split": split}},
        {"json": {"dataframe_records": records(frame)}},
        {"json": {"instances": records(frame)}},
        {"json": {"inputs": columnar}},
        {"content": frame.to_csv(index=False), "headers": {"Content-Type": "text/csv"}},
    ]
    with running(logged(reg, tmp_path)) as url, httpx.Client(base_url=url) as client:
        for body in bodies:
            answer = client.post("/invocations", **body)
            assert answer.status_code == 200, answer.text
            assert answer.json() == {"predictions": expected}
            assert answer.headers["x-model-version"] == reg.good
            assert answer.headers["x-model-role"] == "production"
            assert len(answer.headers["x-request-id"]) == 32
        one = client.post("/invocations", json={"inputs": records(frame)[0]}, headers={"X-Request-Id": "order-17"})
        assert one.json() == {"predictions": expected[:1]}
        assert one.headers["x-request-id"] == "order-17"
        health = client.get("/health").json()
        assert health["serving"] == {"Production": {"version": reg.good, "format": "onnx"}}
        assert client.get("/ping").status_code == 200
        assert client.get("/version").json()["production_version"] == reg.good
        metrics = client.get("/metrics").text
    assert f'shipway_requests_total{{model_version="{reg.good}",role="production",status="200"}} 6.0' in metrics
    assert "shipway_request_latency_seconds_bucket" in metrics


DROP = object()  # an edit that removes the column from the row


@pytest.mark.parametrize(
    ("edit", "body", "status", "code", "message"),
    [
        ({"contract": DROP}, None, 400, "INVALID_PARAMETER_VALUE",
         "missing column 'contract' (string)"),
        ({"coupon": "x"}, None, 400, "INVALID_PARAMETER_VALUE", "unexpected column(s) 'coupon'"),
        ({"age": "thirty"}, None, 400, "INVALID_PARAMETER_VALUE",
         "column 'age' row 0: expected an integer (long), got string \"thirty\""),
        ({"age": None}, None, 400, "INVALID_PARAMETER_VALUE", "column 'age' row 0: null, but 'age' is an integer (long) column"),
        ({"age": 30.5}, None, 400, "INVALID_PARAMETER_VALUE", "column 'age' row 0: expected an integer (long), got number 30.5"),
        ({"plan": 7}, None, 400, "INVALID_PARAMETER_VALUE", "column 'plan' row 0: expected a string, got number 7"),
        ({"monthly_charges": "inf"}, "csv", 400, "INVALID_PARAMETER_VALUE", "column 'monthly_charges' row 0: inf is not a finite number"),
        ({"tenure_months": "ten"}, "csv", 400, "INVALID_PARAMETER_VALUE", "column 'tenure_months' row 0: expected an integer, got 'ten'"),
        (None, {"content": b'{"dataframe_records": ['}, 400, "BAD_REQUEST", "malformed JSON"),
        (None, {"content": b"NaN"}, 400, "BAD_REQUEST", "malformed JSON"),
        (None, {"json": {"inputs": [[1, 2, 3]]}}, 400, "INVALID_PARAMETER_VALUE", "inputs[0] is a list, not a record"),
        (None, {"json": {"dataframe_split": {"columns": ["age", "plan"], "data": [[1]]}}}, 400, "INVALID_PARAMETER_VALUE",
         "dataframe_split row 0 has 1 values, expected 2"),
        (None, {"json": {"rows": []}}, 400, "INVALID_PARAMETER_VALUE", "unknown key(s) 'rows'"),
        (None, {"json": {"dataframe_records": [], "inputs": []}}, 400, "INVALID_PARAMETER_VALUE",
         "send exactly one of dataframe_split, dataframe_records, instances, inputs"),
        (None, {"content": b"age,plan\n1", "headers": {"Content-Type": "text/csv"}}, 400, "INVALID_PARAMETER_VALUE",
         "CSV row 0 has 1 values, expected 2"),
        (None, {"content": b"a=1", "headers": {"Content-Type": "application/x-www-form-urlencoded"}}, 415, "BAD_REQUEST",
         "content type 'application/x-www-form-urlencoded' is not accepted"),
        (None, {"content": b"x" * 5000}, 413, "REQUEST_LIMIT_EXCEEDED", "more than the limit of 4096"),
    ],
)  # fmt: skip
def test_bad_input_is_a_4xx_in_mlflow_error_format_naming_the_problem(reg, tmp_path, edit, body, status, code, message):
    point(reg, Production=reg.good)
    good = records(rows(reg, 1))[0]
    if edit is not None:
        row = {k: v for k, v in {**good, **edit}.items() if v is not DROP}
        if body == "csv":
            body = {"content": pd.DataFrame([row]).to_csv(index=False), "headers": {"Content-Type": "text/csv"}}
        else:
            body = {"json": {"dataframe_records": [row]}}
    with running(logged(reg, tmp_path, max_body_bytes=4096)) as url, httpx.Client(base_url=url) as client:
        answer = client.post("/invocations", **body)
        assert answer.status_code == status, answer.text
        assert answer.json()["error_code"] == code
        assert message in answer.json()["message"]
        assert client.post("/invocations", json={"dataframe_records": [good]}).status_code == 200  # still serving
        assert 'kind="bad_input"' in client.get("/metrics").text
