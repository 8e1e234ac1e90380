"""Parts of serving without a server: ONNX compilation and parity, the prediction log on
PostgreSQL, the app factory through Starlette's TestClient, and the latency benchmark."""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, datetime, timedelta

import mlflow
import numpy as np
import orjson
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from configs.settings import TrainingSettings
from core.errors import GateError
from core.vocabulary import Alias, Task
from flows.cli import cli
from serving import request_ids
from serving.prediction_log import Label, Prediction, PredictionLog, Redactor, read_feedback, read_window
from serving.schema import BadInput
from tasks.data.demo_data import TARGET, generate
from tasks.data.snapshot import take_snapshot
from tasks.release.lineage import GitLineage
from tasks.release.registration import register
from tasks.release.registry import set_alias
from tasks.training.baseline import build_baseline
from tasks.training.compile import compile_pipeline
from tasks.training.pipeline import train
from tests.conftest import PG_SERVER, postgres_databases, tuned, wait_for


@pytest.fixture(scope="module")
def frame():
    return generate(3000, seed=5)


def test_logistic_pipeline_compiles_with_exact_parity(frame):
    trained = train(frame, TARGET, TrainingSettings())
    compiled = compile_pipeline(trained.model, trained.X_holdout)
    assert compiled.ok and compiled.status.startswith("passed: 600 holdout rows")
    import onnxruntime as ort

    from serving import frame_feeds

    labels, proba = ort.InferenceSession(compiled.onnx).run(None, frame_feeds(trained.X_holdout))
    assert labels.tolist() == trained.model.predict(trained.X_holdout).tolist()
    assert np.abs(proba - trained.model.predict_proba(trained.X_holdout)).max() <= 1e-6


@pytest.mark.parametrize(
    ("labels", "predict_fn"),
    [(labels, fn) for labels in ("integers", "strings", "booleans") for fn in ("predict", "predict_proba")]
    + [("values", "predict")],
)
def test_the_baseline_rule_compiles_exactly_whatever_its_labels_and_nulls(frame, labels, predict_fn):
    """onnxruntime's tree operators answer in float32 only: the one-split baseline gets a float64
    graph of its own, compared as sklearn compares (the value as float32), nulls sent where sklearn
    sends them. Rows at and next to the threshold, and nulls, must answer exactly as sklearn."""
    X, y = frame.drop(columns=[TARGET]), frame[TARGET]
    task = Task.REGRESSION if labels == "values" else Task.BINARY
    y = {"integers": y, "strings": y.map({0: "stays", 1: "leaves"}), "booleans": y.astype(bool),
         "values": X["monthly_charges"] * 2 + y}[labels]  # fmt: skip
    X = (X.drop(columns=["monthly_charges"]) if labels == "values" else X).select_dtypes("number")  # a threshold
    baseline = build_baseline(X, y, task, seed=1)
    column, threshold = baseline.rule.split(" <= ")
    edge = X.head(40).copy()
    edge[column] = [float(threshold) + d for d in (-1e-9, 0.0, 1e-9, 1e-4) * 10]
    edge.loc[edge.index[::3], column] = np.nan
    rows = pd.concat([X, edge])
    compiled = compile_pipeline(baseline.model, rows, predict_fn)
    assert compiled.ok, compiled.status
    assert re.search(r"within 0 relative|max \|dp\| 0$", compiled.status), compiled.status


UNCOMPILED = "sklearn.ensemble:AdaBoostClassifier"  # skl2onnx's AdaBoost graph mixes float32 and float64


def test_unsupported_or_inexact_models_are_served_by_sklearn_and_say_why(frame):
    boosted = train(frame, TARGET, TrainingSettings(estimator=UNCOMPILED, params={"n_estimators": 10}))
    compiled = compile_pipeline(boosted.model, boosted.X_holdout)
    assert compiled.onnx is None
    assert compiled.status.startswith("unsupported: Fail: [ONNXRuntimeError]"), compiled.status


@pytest.fixture
def sklearn_registered(settings):
    """A version served by its sklearn pipeline (no compiled form)."""
    settings = tuned(
        settings,
        data={"demo_rows": 2000},
        training={"estimator": UNCOMPILED, "params": {"n_estimators": 10}},
        serving={"bench_requests": 100, "latency_budget_p99_ms": 60_000},
    )
    snapshot = take_snapshot("demo", settings, TARGET)
    trained = train(snapshot.frame, TARGET, settings.training)
    reg = register.fn(trained, snapshot, GitLineage("d" * 40, "main", False), settings)
    set_alias(settings, reg.name, Alias.PRODUCTION, reg.version)
    return settings, reg, trained


def test_app_factory_serves_the_sklearn_form_like_pyfunc(sklearn_registered):
    from starlette.testclient import TestClient

    from serving.app import create_app

    settings, reg, trained = sklearn_registered
    tags = MlflowClient().get_model_version(reg.name, reg.version).tags
    assert tags["serving_format"] == "sklearn" and "onnx_model_uri" not in tags
    rows = trained.X_holdout.head(30)
    expected = mlflow.pyfunc.load_model(f"models:/{reg.name}@Production").predict(rows).tolist()
    body = {
        "dataframe_split": {
            "columns": list(rows.columns),
            "data": rows.astype(object).where(rows.notna(), None).values.tolist(),
        }
    }
    with TestClient(create_app(settings)) as client:
        answer = client.post("/invocations", json=body)
        assert answer.json() == {"predictions": expected}
        assert client.get("/health").json()["serving"]["Production"] == {"version": reg.version, "format": "sklearn"}
        assert client.get("/nope").status_code == 404
        assert client.get("/invocations").status_code == 405


def test_an_unexpected_failure_is_a_json_500_with_a_request_id_and_counted(sklearn_registered):
    from starlette.testclient import TestClient

    from serving.app import create_app

    settings, _, _ = sklearn_registered
    app = create_app(settings)

    async def broken(scope, receive, send):
        raise RecursionError("a bug the gateway did not foresee")

    app._endpoints[("GET", "/version")] = broken  # fault injection: the one way to reach the catch-all
    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.get("/version")
        metrics = client.get("/metrics").text
    assert answer.status_code == 500 and answer.json()["error_code"] == "INTERNAL_ERROR"
    assert answer.headers["x-request-id"] and "a bug" not in answer.text
    assert 'shipway_errors_total{kind="internal",model_version="none",role="gateway"} 1.0' in metrics


def test_a_column_with_rare_nulls_is_optional_though_the_signature_sample_has_none(settings, tmp_path):
    """Required columns come from the whole training data: `region` has 2% nulls, none of them in
    the 50 holdout rows MLflow infers the signature from, and is still optional; so a request with
    `region` unknown gets an answer from this version as from one whose sample had a null."""
    from starlette.testclient import TestClient

    from serving.app import create_app
    from tasks.features import holdout_split

    frame = generate(2000, seed=5)
    training = settings.training
    _, holdout = holdout_split(frame, training.test_size, training.seed, frame[TARGET], None)
    frame.loc[holdout[:50], "region"] = "north"  # no null where the signature is inferred from
    assert frame["region"].isna().mean() > 0.01
    frame.to_parquet(tmp_path / "rare-nulls.parquet", index=False)
    snapshot = take_snapshot(str(tmp_path / "rare-nulls.parquet"), settings, TARGET)
    trained = train(snapshot.frame, TARGET, training)
    assert trained.X_holdout.head(50)["region"].notna().all()
    reg = register.fn(trained, snapshot, GitLineage("d" * 40, "main", False), settings)
    set_alias(settings, reg.name, Alias.PRODUCTION, reg.version)
    inputs = mlflow.models.get_model_info(reg.model_uri).signature.inputs.inputs
    assert {c.name for c in inputs if not c.required} == {"region", "total_charges", "data_usage_gb"}
    assert all(c.required for c in inputs if c.name in ("age", "plan", "contract"))  # no nulls: required

    rows = trained.X_holdout.head(2).astype(object).where(trained.X_holdout.head(2).notna(), None)
    records = rows.to_dict("records")
    del records[0]["region"]  # a record without the key: region unknown
    records[1]["region"] = None
    without = rows.drop(columns="region")
    split = {"dataframe_split": {"columns": list(without.columns), "data": without.values.tolist()}}
    with TestClient(create_app(settings)) as client:
        unknown = client.post("/invocations", json={"dataframe_records": records})
        missing = client.post("/invocations", json=split)
    assert unknown.status_code == 200 and len(unknown.json()["predictions"]) == 2
    # a sklearn pipeline needs the column itself (as with mlflow models serve): refused, told it may be null
    assert missing.status_code == 400
    assert "missing column 'region' (string, optional: send null where a value is unknown)" in missing.json()["message"]


@pytest.mark.slow
def test_bench_records_figures_tags_and_histogram_and_gates_on_the_budget(sklearn_registered):
    from tasks.benchmark.latency import bench, check_budget, judge

    settings, reg, _ = sklearn_registered
    result = bench(settings, f"{reg.name}@Production")
    assert set(result.in_process) == {"cpu", "prepare", "forward", "finish", "total"}
    assert result.http["c1"]["p50_ms"] <= result.http["c1"]["p99_ms"]
    assert result.http["c1"]["requests"] == 100  # serving.bench_requests, the most a measurement takes
    assert 32 <= result.http["c16"]["requests"] <= 100  # as many as serving.bench_seconds allow
    tags = MlflowClient().get_model_version(reg.name, reg.version).tags
    assert float(tags["latency_p99_ms"]) == pytest.approx(result.http["c1"]["p99_ms"], rel=1e-3)
    assert tags["latency_gate"] == "passed"  # a budget of a minute: this checks the recording, not the speed
    judged = result.verdict.judged
    assert 0 < judged.cpu_p99_ms == result.in_process["cpu"]["p99_ms"] and judged.overhead_ms >= 0
    assert float(tags["latency_cpu_p99_ms"]) == pytest.approx(judged.quiet_p99_ms, rel=1e-3)
    assert tags["latency_load"] == f"{judged.load:.2f} on {judged.cores} cores"
    assert tags["latency_verdict"] == result.verdict.text() and "within the latency budget" in tags["latency_verdict"]
    run = mlflow.get_run(result.run_id)
    assert run.data.metrics["bench_http_c1_p99_ms"] == pytest.approx(result.http["c1"]["p99_ms"])
    artifacts = {a.path for a in MlflowClient().list_artifacts(result.run_id, "benchmark")}
    assert artifacts == {"benchmark/latency_histogram.png", "benchmark/benchmark.json"}
    check_budget(result)
    result.verdict = judge([judged], 1e-6)
    with pytest.raises(GateError, match=r"HTTP p99 .* is over the latency budget of 1e-06 ms"):
        check_budget(result)


@pytest.mark.parametrize(("ref", "message"), [("churn-classifier", "--model must be NAME@ALIAS or NAME/VERSION"),
                                              ("churn-classifier@Canary", "has no alias 'Canary'")])  # fmt: skip
def test_bench_cli_names_a_bad_model_reference(sklearn_registered, ref, message):
    result = CliRunner().invoke(cli, ["bench", "--model", ref])
    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.parametrize(
    ("tags", "label", "logged", "problem"),
    [
        ({"task": "binary", "classes": "[0, 1]"}, 1, 1, None),
        ({"task": "binary", "classes": "[0, 1]"}, 1.0, 1, None),  # the class as the model names it
        ({"task": "binary", "classes": "[0, 1]"}, True, None, "label true is not one of the model's classes: 0, 1"),
        ({"task": "multiclass", "classes": '["a", "b", "c"]'}, "c", "c", None),
        (
            {"task": "multiclass", "classes": '["a", "b", "c"]'},
            "d",
            None,
            'not one of the model\'s classes: "a", "b", "c"',
        ),
        ({"task": "binary", "classes": "[false, true]"}, False, False, None),
        ({"task": "regression"}, 3.25, 3.25, None),
        ({"task": "regression"}, "3.25", None, 'label "3.25" is not a finite number, as a regression model\'s'),
        ({"task": "regression"}, True, None, "label true is not a finite number"),
        ({}, "anything", "anything", None),  # a version registered outside shipway: no task, no check
    ],
)
def test_feedback_labels_are_checked_against_the_task_and_classes(tags, label, logged, problem):
    from serving.feedback import Item, LabelRule, check_labels

    rules = [rule] if (rule := LabelRule.of(tags)) is not None else []
    items = [Item("feedback", "r1", label)]
    if problem is None:
        assert check_labels(items, rules)[0].label == logged
        assert type(check_labels(items, rules)[0].label) is type(logged)
    else:
        with pytest.raises(BadInput, match=re.escape(problem)) as refused:
            check_labels(items, rules)
        assert refused.value.message.startswith(f"feedback: label {orjson.dumps(label).decode()} is not")


def test_feedback_calls_are_bounded_and_checked_whole():
    from serving.feedback import parse, unknown_ids

    body = orjson.dumps([{"request_id": f"r{i}", "label": 1} for i in range(4)])
    assert [item.request_id for item in parse(body, max_labels=4)] == ["r0", "r1", "r2", "r3"]
    with pytest.raises(BadInput, match=r"4 labels in one call, more than the limit of 3") as refused:
        parse(body, max_labels=3)
    assert (refused.value.status, refused.value.error_code) == (413, "REQUEST_LIMIT_EXCEEDED")
    many = parse(orjson.dumps([{"request_id": f"r{i}", "label": 1} for i in range(9)]), max_labels=9)
    message = unknown_ids(many, {f"r{i}" for i in range(1, 9)}).message
    assert message.startswith("no request was answered under the id(s) 'r1' (feedback[1]), 'r2' (feedback[2])")
    assert "'r5' (feedback[5]) and 3 more:" in message and "'r0'" not in message


@pytest.mark.parametrize("depth", [256, 1_000])
def test_deeply_nested_values_are_refused_as_bad_input(depth):
    from serving.feedback import parse as parse_feedback
    from serving.schema import Column, Schema, parse

    nested = "[" * depth + "1" + "]" * depth
    raw = parse(f'{{"dataframe_records": [{{"x": {nested}}}]}}'.encode(), "application/json")
    with pytest.raises(BadInput, match=r"column 'x' row 0: expected a number \(double\), got list \[\[") as refused:
        Schema([Column("x", "double", False)]).coerce(raw)
    assert refused.value.status == 400
    with pytest.raises(BadInput, match=r"feedback: 'label' must be a string, number or boolean, got \[\["):
        parse_feedback(f'{{"request_id": "r1", "label": {nested}}}'.encode(), max_labels=1)


def test_repeated_column_names_are_found_in_linear_time():
    from serving.schema import parse

    names = [f"c{i}" for i in range(40_000)]
    body = orjson.dumps({"dataframe_split": {"columns": [*names, "c7", "c3"], "data": [[0] * 40_002]}})
    with pytest.raises(BadInput, match=r"dataframe_split.columns: column\(s\) 'c3', 'c7' given more than once"):
        parse(body, "application/json")


def test_generated_request_ids_grow_with_time_for_the_logs_index():
    """The prediction log's primary key starts with the request id: ids in the order they were made
    go in at the index's end (uniformly random ones cost its writer 2.5x the CPU a row)."""
    ids = [request_ids.new() for _ in range(1000)]
    time.sleep(0.002)
    ids += [request_ids.new() for _ in range(1000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(request_ids.valid(i) and len(i) == 32 for i in ids)
    assert {uuid.UUID(hex=i).version for i in ids} == {7}


@pytest.mark.postgres
def test_prediction_log_on_postgresql():
    with postgres_databases("log") as names:
        check_prediction_log(f"postgresql+psycopg://{PG_SERVER}/{names['log']}")


def test_prediction_log_writes_every_row_once_a_locked_database_clears(tmp_path, caplog):
    """A write refused by a lock is retried with the rows as they were queued: converting them for
    the driver in place made every retry fail ("SQLite DateTime type only accepts Python datetime")."""
    import sqlite3

    path = tmp_path / "log.db"
    plog = PredictionLog(f"sqlite:///{path}?timeout=0.1", queue_size=100, batch_size=10, flush_interval_s=0.05,
                         redact=Redactor({}, ""))  # fmt: skip
    plog.start()
    holder = sqlite3.connect(path, timeout=1)
    holder.execute("BEGIN EXCLUSIVE")  # another process holds the database
    base = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(10):
        plog.add(Prediction(f"r{i}", base + timedelta(seconds=i), "m", "1", "production", None, [{"x": i}], [0],
                            0.1, None))  # fmt: skip
    wait_for(lambda: "write of 10 rows refused" in caplog.text, what="a refused write")
    assert re.fullmatch(r"prediction log: writes refused for \d+ s \(locked\); 0 rows waiting",
                        plog.problem() or "")  # fmt: skip
    holder.rollback()
    holder.close()
    wait_for(lambda: plog.written == 10, what="the queued rows written once the lock cleared")
    assert plog.problem() is None
    plog.close()
    assert plog.dropped == 0
    window = read_window(f"sqlite:///{path}", base, base + timedelta(minutes=1))
    assert list(window.request_id) == [f"r{i}" for i in range(10)]
    assert list(window.ts) == [base + timedelta(seconds=i) for i in range(10)]


def test_rows_the_database_refuses_at_shutdown_are_counted_lost_at_once(tmp_path):
    """One refused try per batch (each waiting out the lock) would outlast the shutdown's wait, and the
    rows still queued when the process ends would be lost uncounted."""
    import sqlite3

    path = tmp_path / "log.db"
    plog = PredictionLog(f"sqlite:///{path}", queue_size=1000, batch_size=10, flush_interval_s=0.05,
                         redact=Redactor({}, ""))  # fmt: skip
    plog.start()
    holder = sqlite3.connect(path, timeout=1)
    holder.execute("BEGIN EXCLUSIVE")
    now = datetime.now(UTC)
    for i in range(1000):
        plog.add(Prediction(f"r{i}", now, "m", "1", "production", None, [{"x": i}], [0], 0.1, None))
    wait_for(lambda: plog.failing_since is not None, what="a refused write")
    plog.close(timeout=30)  # 100 batches, each waiting 1 s for the lock, would take 100 s
    holder.rollback()
    holder.close()
    assert plog._thread is not None and not plog._thread.is_alive()
    assert (plog.written, plog.dropped, plog.pending) == (0, 1000, 0)


def test_a_refused_writes_cause_never_shows_sql_paths_or_addresses(tmp_path):
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import OperationalError

    from serving.storage_errors import cause

    missing = tmp_path / "nowhere" / "log.db"
    with pytest.raises(OperationalError) as cannot_open:
        create_engine(f"sqlite:///{missing}").connect()
    assert cause(cannot_open.value, connecting=True, path=str(missing)) == "cannot open"
    db = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(OperationalError) as no_table, db.connect() as conn:
        conn.execute(text("INSERT INTO predictions VALUES (1)"))
    assert cause(no_table.value, connecting=False) == "SQLITE_ERROR"  # its code, not its text
    assert cause(RuntimeError("INSERT INTO x at /var/db")) is None  # not a database error: the caller says it


def check_prediction_log(url: str) -> None:
    plog = PredictionLog(url, queue_size=100, batch_size=50, flush_interval_s=0.05,
                         redact=Redactor({"email": "drop"}, ""))  # fmt: skip
    plog.start()
    base = datetime.now(UTC).replace(microsecond=0)
    for i in range(6):
        ts = base + timedelta(minutes=i)
        plog.add(
            Prediction(
                f"r{i}",
                ts,
                "churn-classifier",
                "3",
                "production",
                None,
                [{"age": i, "email": "a@b"}],
                [i % 2],
                0.4,
                None,
            )
        )
        plog.add(
            Prediction(
                f"r{i}", ts, "churn-classifier", "4", "shadow", None, [{"age": i, "email": "a@b"}], [1], 0.9, None
            )
        )
    plog.add(
        Prediction("r0", base, "churn-classifier", "3", "production", None, None, [9], 0.1, None)
    )  # a repeat: ignored
    plog.add(Label("r1", True, base))
    plog.add(Label("r2", "churned", base))
    plog.close()
    window = read_window(url, base + timedelta(minutes=1), base + timedelta(minutes=3))
    assert sorted(zip(window.request_id, window.role, strict=False)) == [
        ("r1", "production"),
        ("r1", "shadow"),
        ("r2", "production"),
        ("r2", "shadow"),
    ]
    assert "email" not in window.inputs.iloc[0]
    assert read_window(url, base, base + timedelta(minutes=1)).prediction.tolist() == ["[0]", "[1]"]
    labels = read_feedback(url, ["r1", "r2", "r5"]).set_index("request_id").label.to_dict()
    assert labels == {"r1": True, "r2": "churned"}
