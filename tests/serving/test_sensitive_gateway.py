"""Sensitive columns at the gateway: no request value reaches the prediction log's `error` column,
the gateway's log lines or /health, and the Shadow's process hashes as the gateway does.

A user's pipeline with OneHotEncoder(handle_unknown="error") names the category it does not know in
its exception ("Found unknown categories ['...']"); the gateway used to log that text as it was.
"""

from __future__ import annotations

import logging
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import mlflow
import numpy as np
import orjson
import pandas as pd
import pytest
from mlflow.models import infer_signature
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from configs.settings import Settings
from core.redaction import hash_value
from core.vocabulary import Alias
from serving import running
from serving.prediction_log import read_window
from tasks.release.registry import connect, set_alias
from tests.conftest import embedded, mark_gated, tuned, wait_for

pytestmark = pytest.mark.slow  # a real gateway and the Shadow's process: ~45 s

PLANTED = "PLANTED-7f3a"
OTHER = "OTHER-9c1d"  # a value of a column that is not sensitive: logged as an input, but in no error text
SALT = "pepper"
SHADOW_READY_S = 120  # the Shadow's process starts in ~16 s on a loaded 2-core machine


def customers(n: int = 300) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    return pd.DataFrame(
        {
            "plan": rng.choice(["basic", "plus", "pro"], n).astype(object),
            "email": [f"user{i % 40}@example.org" for i in range(n)],
            "age": rng.integers(18, 80, n).astype("int64"),
        }
    )


@pytest.fixture(scope="module")
def strict(tmp_path_factory) -> tuple[Settings, str]:
    """A version whose pipeline refuses unknown categories (of plan and email), at Production and Shadow."""
    settings = tuned(
        embedded(tmp_path_factory.mktemp("sensitive")),
        training={"model_name": "strict"},
        serving={"poll_interval_s": 0.1, "log_flush_interval_s": 0.05, "state_dir": "", "timeout_ms": 5000},
    )
    X = customers()
    y = (X["age"] > 50).astype("int64")
    strict_encoder = OneHotEncoder(handle_unknown="error")
    pipeline = Pipeline(
        [
            ("encode", ColumnTransformer([("categories", strict_encoder, ["plan", "email"])], remainder="passthrough")),
            ("model", LogisticRegression()),
        ]
    ).fit(X, y)
    client, experiment_id = connect(settings)
    with mlflow.start_run(experiment_id=experiment_id) as run, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        info = mlflow.sklearn.log_model(
            pipeline, name="model", signature=infer_signature(X, pipeline.predict(X)), pip_requirements=["mlflow"]
        )
    name = settings.training.model_name
    client.create_registered_model(name)
    version = str(client.create_model_version(name, info.model_uri, run.info.run_id, model_id=info.model_id).version)
    mark_gated(settings, name, version)
    set_alias(settings, name, Alias.PRODUCTION, version)
    set_alias(settings, name, Alias.SHADOW, version)
    return settings, version


def logged(settings: Settings, tmp_path: Path, **serving) -> Settings:
    return tuned(settings, prediction_log={"url": f"sqlite:///{tmp_path}/predictions.db"}, serving=serving)


def log_of(settings: Settings) -> pd.DataFrame:
    now = datetime.now(UTC)
    return read_window(settings.prediction_log.url, now - timedelta(hours=1), now + timedelta(minutes=1))


def _settled(client: httpx.Client) -> dict | None:
    status = client.get("/health").json()["shadow_process"]
    return status if status["state"] == "running" and status["backlog"] == 0 else None


def test_no_request_value_reaches_the_log_the_log_lines_or_health(strict, tmp_path, caplog, capfd):
    settings, _ = strict
    s = logged(settings, tmp_path, sensitive_columns={"email": "drop", "age": "hash"}, hash_salt=SALT)
    good = {"plan": "pro", "email": "user3@example.org", "age": 61}
    hostile = [
        {"dataframe_records": [{"plan": "pro", "email": PLANTED, "age": 30}]},  # the model raises, quoting it
        {"dataframe_records": [{"plan": OTHER, "email": "user1@example.org", "age": 30}]},
        {"dataframe_split": {"columns": ["plan", "email", "age"], "data": [["pro", "x", 30]], PLANTED: 1}},
        {PLANTED: [{"plan": "pro"}]},  # a body key
        {"dataframe_split": {"columns": ["plan", "email", 7_031_977], "data": [["pro", "x", 1]]}},  # a value as a name
        {"dataframe_split": {"columns": ["plan", PLANTED, PLANTED], "data": [["pro", "x", 1]]}},
        {"inputs": {"plan": ["pro", "basic"], PLANTED: ["a"]}},
    ]
    caplog.set_level(logging.INFO, logger="shipway")
    with running(s) as url, httpx.Client(base_url=url, timeout=60) as client:
        answered = client.post("/invocations", json={"dataframe_records": [good]})
        refused = [client.post("/invocations", json=body) for body in hostile]
        wait_for(lambda: _settled(client), SHADOW_READY_S, "the Shadow's process to finish its backlog")
        health = client.get("/health").text
    assert answered.status_code == 200, answered.text
    assert [r.status_code for r in refused] == [503, 503, 400, 400, 400, 400, 400], [r.text for r in refused]
    log = log_of(s)  # the gateway writes every queued row as it stops
    errors = "\n".join(log["error"].dropna())
    assert "Found unknown categories <value>" in errors  # the model's words kept, the value not
    for text, where in ((errors, "log errors"), (caplog.text, "gateway log lines"), (capfd.readouterr().err, "stderr"),
                        (health, "/health")):  # fmt: skip
        assert PLANTED not in text and OTHER not in text, f"{where}: {text}"
        assert "7031977" not in text, where
    assert PLANTED not in "\n".join(log["inputs"].dropna())  # email is dropped before logging
    assert "column names must be strings, got a number (not logged)" in errors
    assert "the body has 1 key, not logged" in errors
    # The Shadow's process hashes with the gateway's key (a dump of the settings used to write it as '**********')
    request_id = answered.headers["x-request-id"]
    rows = log[log["request_id"] == request_id].set_index("role")
    shown = {role: orjson.loads(rows.loc[role, "inputs"])[0] for role in ("production", "shadow")}
    assert shown["production"] == shown["shadow"] == {"plan": "pro", "age": hash_value(SALT.encode(), 61)}
