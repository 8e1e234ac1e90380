"""What keeps the answer path and the log cheap: a request's columns are typed and turned into
ONNX tensors once per schema (a failing Canary hands Production the very arrays), shadow rows
are logged and redacted like any other, and the log writer is woken per batch, not per row.
Real ONNX sessions and SQLite, no server. And the Shadow's process: its CPU priority and its
clock (its life beside a gateway, crashes and shutdown included, is in test_serving)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import orjson
import pandas as pd
import pytest

from configs.settings import TrainingSettings
from serving import Column, session
from serving.models import Inputs, Servable
from serving.prediction_log import Prediction, PredictionLog, Redactor, read_window
from serving.schema import Batch, Schema, parse
from tasks.data.demo_data import TARGET, generate
from tasks.training.compile import compile_pipeline
from tasks.training.pipeline import train
from tests.conftest import wait_for


@pytest.fixture(scope="module")
def compiled():
    trained = train(generate(2000, seed=11), TARGET, TrainingSettings())
    onnx = compile_pipeline(trained.model, trained.X_holdout).onnx
    assert onnx is not None
    return trained, onnx


def columns_of(X, optional: set[str] = frozenset()) -> list[Column]:
    return [
        Column(
            c,
            "double" if pd.api.types.is_numeric_dtype(X[c].dtype) else "string",
            c not in optional and not X[c].isna().any(),
        )
        for c in X.columns
    ]


def body_of(rows) -> bytes:
    data = rows.astype(object).where(rows.notna(), None).values.tolist()
    return orjson.dumps({"dataframe_split": {"columns": list(rows.columns), "data": data}})


def test_a_version_with_the_same_columns_runs_on_the_same_batch_and_tensors(compiled):
    trained, onnx = compiled
    rows = trained.X_holdout.head(5)
    production = Servable("1", "onnx", Schema(columns_of(rows)), session(onnx))
    canary = Servable("2", "onnx", Schema(columns_of(rows)), session(onnx))  # equal, not the same object
    inputs = Inputs(parse(body_of(rows), "application/json"))

    expected = trained.model.predict(rows).tolist()
    assert inputs.predict(production) == expected
    assert inputs.predict(canary) == expected
    assert inputs.for_model(canary) is inputs.for_model(production)
    assert len(inputs._feeds) == 1


def test_a_version_with_other_columns_gets_its_own_batch_and_tensors(compiled):
    trained, onnx = compiled
    rows = trained.X_holdout.head(5)
    first = next(c for c in rows.columns if not rows[c].isna().any())
    production = Servable("1", "onnx", Schema(columns_of(rows)), session(onnx))
    other = Servable("2", "onnx", Schema(columns_of(rows, optional={first})), session(onnx))
    inputs = Inputs(parse(body_of(rows), "application/json"))

    assert inputs.predict(production) == inputs.predict(other) == trained.model.predict(rows).tolist()
    assert inputs.for_model(other) is not inputs.for_model(production)
    assert len(inputs._feeds) == 2


def test_shadow_rows_log_their_inputs_redacted_like_productions(tmp_path):
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


def test_a_shadow_refusal_is_logged_as_the_gateways_with_its_status_and_without_the_value(compiled, settings):
    """The shadow analysis tells a refusal (a stricter contract) from a failure by its status."""
    from serving import shadow

    trained, onnx = compiled
    models = shadow._Models(settings)
    models.loaded = {"2": Servable("2", "onnx", Schema(columns_of(trained.X_holdout)), session(onnx))}
    raw = parse(body_of(trained.X_holdout.head(2).astype(object).assign(age="SSN-123-45-6789")), "application/json")
    item = ["2", "r1", datetime(2026, 3, 1, tzinfo=UTC).isoformat(), raw.columns, raw.rows, raw.source, raw.types]
    row = shadow._predict(item, models, shadow._ModelClock())
    assert row.prediction is None and row.role == "shadow"
    assert row.error.startswith("400 INVALID_PARAMETER_VALUE: column 'age' row 0: ")
    assert "not logged" in row.error and "SSN" not in row.error


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
        wait_for(lambda: plog.written == 4, what="the full batch to be written")
    finally:
        plog.close()
    assert len(read_window(url, ts, ts + timedelta(seconds=1))) == 4


CLOCK_SCRIPT = """
import json, os, time
from serving.shadow import _ModelClock

os.sched_setaffinity(0, {CPU})
os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
print("ready", flush=True)
input()  # the competitor runs on the same CPU now
clock = _ModelClock()
mark, wall, cpu = clock.mark(), time.perf_counter(), time.thread_time()
while time.thread_time() - cpu < 0.005:  # 5 ms of CPU work, preempted again and again
    pass
print(json.dumps({"clock": clock.since(mark), "wall": time.perf_counter() - wall, "cpu": time.thread_time() - cpu}))
"""


@pytest.mark.skipif(
    not hasattr(os, "SCHED_IDLE") or not os.path.exists("/proc/thread-self/schedstat"), reason="Linux scheduler stats"
)
def test_the_shadow_clock_leaves_out_the_time_its_idle_priority_spent_waiting_for_a_cpu():
    cpu = sorted(os.sched_getaffinity(0))[0]
    measured = subprocess.Popen([sys.executable, "-c", CLOCK_SCRIPT.replace("CPU", str(cpu))],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    competitor = subprocess.Popen(
        [sys.executable, "-c", f"import os\nos.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"]
    )
    try:
        assert measured.stdout.readline().strip() == "ready"
        time.sleep(0.2)
        measured.stdin.write("\n")
        measured.stdin.flush()
        figures = json.loads(measured.stdout.readline())
    finally:
        competitor.kill()
        measured.kill()
    assert figures["wall"] > 5 * figures["cpu"]  # it did wait for the CPU
    assert 0.9 * figures["cpu"] <= figures["clock"] < 2 * figures["cpu"] + 0.002  # and the clock left that out


PRIORITY_SCRIPT = """
import contextlib, json, os
from serving import shadow

def forbidden(*args):
    raise PermissionError(1, "Operation not permitted")

before = sorted(os.sched_getaffinity(0))
shadow._yield_to_the_answers([4096])  # no such CPU: logged, the affinity stays
unpinned = sorted(os.sched_getaffinity(0))
idle = os.sched_getscheduler(0) == os.SCHED_IDLE
# Back to a fair share (root may; elsewhere it stays idle): at load 8 the idle class had this
# script's last lines and its interpreter's teardown wait past the test's two minutes.
with contextlib.suppress(PermissionError):
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
os.sched_setscheduler = forbidden  # as in a sandbox that forbids the idle class
shadow._yield_to_the_answers([before[0]])
print(json.dumps({"before": before, "unpinned": unpinned, "idle": idle, "nice": os.nice(0),
                  "pinned": sorted(os.sched_getaffinity(0))}), flush=True)
os._exit(0)  # at nice 19 on a busy machine the teardown alone takes seconds
"""


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="Linux scheduler classes")
def test_the_shadow_process_yields_the_cpu_even_where_the_idle_class_or_its_cpus_are_refused():
    done = subprocess.run([sys.executable, "-c", PRIORITY_SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["idle"] and figures["unpinned"] == figures["before"]
    assert "serving.shadow_cpus [4096]: not CPUs this process may use" in done.stderr
    assert figures["nice"] == 19 and figures["pinned"] == figures["before"][:1]
    assert "the idle CPU class is not allowed here" in done.stderr


def test_the_shadow_module_runs_as_the_only_copy_of_itself():
    """`python -m serving.shadow` (how the gateway starts it): importing the package must not import
    serving.shadow first, or runpy warns and a second copy of the module runs."""
    done = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "serving.shadow", "--help"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "--fd" in done.stdout
