"""Property tests of the gateway's request reading, with MLflow's own scoring code as the oracle.

Hypothesis builds request bodies for the demo churn model (every JSON layout and CSV; values of
every JSON type, numbers as text, nulls, non-finite numbers, nested values; columns missing,
repeated or extra) and sends each to a real gateway and to `mlflow.pyfunc.scoring_server.
invocations`, the function `mlflow models serve` answers `/invocations` with, on the same
registered version loaded by `mlflow.pyfunc`. The gateway never answers 5xx; where MLflow answers
200 the gateway answers 200 with the same predictions; where MLflow refuses, so does the gateway.
The deliberate differences (docs/compatibility.md) concern boolean columns, which the demo model
has none of, lists and objects as values (MLflow may read one as its text in a string column; the
gateway refuses it, naming the column), and MLflow's 500s, which the gateway answers with a 4xx. Parse time against body size is tests/benchmarks/bench_parser.py's subject.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import ExitStack
from typing import Any

import httpx
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from configs.settings import load_settings
from serving.server import running
from tests.serving.conformance import DEMO, DEMO_ROWS, DEMO_TYPES, register_models

CATEGORIES = {
    name: sorted({row[name] for row in DEMO_ROWS} - {None}) for name, kind in DEMO_TYPES.items() if kind == "string"
}
pytestmark = pytest.mark.slow  # a registered model and a gateway, then 300 requests: ~30 s on a quiet machine
EXAMPLES = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The demo model as version 1 in a fresh registry: a gateway's URL, and MLflow's pyfunc of it."""
    import mlflow

    root = tmp_path_factory.mktemp("properties")
    with pytest.MonkeyPatch.context() as mp:
        for var in [v for v in os.environ if v.startswith("SHIPWAY_")]:
            mp.delenv(var)
        mp.chdir(root)
        base = load_settings(cwd=root)
    base = base.model_copy(
        update={
            "data": base.data.model_copy(update={"demo_rows": 3000}),
            "serving": base.serving.model_copy(update={"timeout_ms": 30_000}),  # no fallback answers here
        }
    )
    models = register_models(base, root, names=(DEMO,))
    settings_ = models.for_model(DEMO)
    mlflow.set_tracking_uri(settings_.mlflow.tracking_uri)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{DEMO}/1")
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        log = settings_.prediction_log.model_copy(update={"url": f"sqlite:///{tmp}/log.db"})
        url = stack.enter_context(running(settings_.model_copy(update={"prediction_log": log})))
        client = stack.enter_context(httpx.Client(base_url=url, timeout=60))
        yield client, pyfunc


def mlflow_answer(pyfunc, body: bytes, content_type: str) -> tuple[int, Any]:
    """What `mlflow models serve` answers: its `invocations` function, its exceptions as its server
    maps them (an MlflowException to its HTTP status, anything else to 500)."""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    try:
        response = scoring_server.invocations(body, content_type, pyfunc, pyfunc.metadata.get_input_schema())
    except MlflowException as exc:
        return exc.get_http_status_code(), None
    except Exception:
        return 500, None
    text = response.response
    return response.status, json.loads(text) if response.status == 200 else None


def number_text(draw_from: st.SearchStrategy) -> st.SearchStrategy[str]:
    return draw_from.map(str)


INTEGER = st.one_of(
    st.integers(-100, 200),
    st.integers(-(2**70), 2**70),
    st.floats(-1e3, 1e3, allow_nan=False).map(lambda v: round(v, 2)),
    number_text(st.integers(-100, 200)),
)
DOUBLE = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False),
    st.integers(-1000, 1000),
    number_text(st.floats(-1e3, 1e3, allow_nan=False)),
    st.just("NaN"),
)
ODD = st.one_of(  # values any column may get: the client's mistakes
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
)


def value(name: str) -> st.SearchStrategy[Any]:
    kind = DEMO_TYPES[name]
    if kind == "string":
        usual = st.sampled_from(CATEGORIES[name])
    elif kind == "long":
        usual = INTEGER
    else:
        usual = DOUBLE
    return st.one_of(usual, usual, usual, ODD)  # mostly plausible values, a client's mistake now and then


@st.composite
def rows(draw) -> list[dict[str, Any]]:
    columns = list(DEMO_TYPES)
    if draw(st.integers(0, 9)) == 0:
        columns.remove(draw(st.sampled_from(columns)))  # a missing column
    extra = draw(st.lists(st.sampled_from(["extra", "id", "AGE"]), max_size=1))
    n = draw(st.integers(1, 4))
    return [
        {**{c: draw(value(c)) for c in columns}, **{e: draw(st.integers() | st.text(max_size=3)) for e in extra}}
        for _ in range(n)
    ]


@st.composite
def bodies(draw) -> tuple[bytes, str, bool]:
    """A body in one of the formats `mlflow models serve` reads, as its clients write them, and
    whether a value in it is a list or an object (a documented difference, see below)."""
    batch = draw(rows())
    columns = list(dict.fromkeys(c for row in batch for c in row))
    nested = any(isinstance(v, list | dict) for row in batch for c, v in row.items() if c in DEMO_TYPES)
    layout = draw(st.sampled_from(["dataframe_split", "dataframe_records", "instances", "inputs", "csv"]))
    if layout == "csv":
        return pd.DataFrame(batch).to_csv(index=False).encode(), "text/csv", False
    if layout == "dataframe_split":
        doc: Any = {"columns": columns, "data": [[row.get(c) for c in columns] for row in batch]}
    elif layout == "inputs":
        doc = {c: [row.get(c) for row in batch] for c in columns}
    else:
        doc = batch
    return json.dumps({layout: doc}).encode(), "application/json", nested


@EXAMPLES
@given(body=bodies())
def test_the_gateway_answers_what_mlflow_answers(served, body):
    client, pyfunc = served
    content, content_type, nested = body
    ours = client.post("/invocations", content=content, headers={"Content-Type": content_type})
    status, predictions = mlflow_answer(pyfunc, content, content_type)
    assert ours.status_code < 500, ours.text
    if nested:  # a list or object as a value: MLflow may take its text as a category, the gateway refuses it
        assert 400 <= ours.status_code < 500, ours.text
    elif status == 200:
        assert ours.status_code == 200, f"MLflow answered 200, the gateway {ours.status_code}: {ours.text}"
        assert ours.json() == predictions
    else:  # MLflow refuses (or fails with a 500): the gateway refuses, as a client's mistake
        assert 400 <= ours.status_code < 500, f"MLflow answered {status}, the gateway {ours.text}"
        assert set(ours.json()) == {"error_code", "message"}


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=30,
)


@EXAMPLES
@given(
    doc=st.one_of(
        JSON_VALUES,
        st.dictionaries(
            st.sampled_from(["dataframe_split", "dataframe_records", "instances", "inputs", "params", "columns"]),
            JSON_VALUES,
            min_size=1,
            max_size=2,
        ),
    ),
    cut=st.integers(0, 3),
)
def test_any_json_document_gets_an_answer_never_a_server_error(served, doc, cut):
    """Any JSON, whole or cut short, in any of the keys MLflow reads: a 200 or a 4xx in MLflow's
    error format, never a 5xx."""
    client, pyfunc = served
    content = json.dumps(doc).encode()
    if cut:
        content = content[: len(content) * cut // 4]
    ours = client.post("/invocations", content=content, headers={"Content-Type": "application/json"})
    assert ours.status_code < 500, ours.text
    if ours.status_code != 200:
        assert set(ours.json()) == {"error_code", "message"}
        status, _ = mlflow_answer(pyfunc, content, "application/json")
        assert status != 200, f"MLflow took {content[:200]!r}, the gateway said {ours.text}"
