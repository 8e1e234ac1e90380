"""The gateway as a drop-in for `mlflow models serve`, with MLflow itself as the oracle.

Two models registered as version 1 of their names in a real MLflow registry on SQLite (the demo
churn pipeline, served by the gateway as ONNX; and one with a boolean and an integer column,
served from its sklearn pipeline). The corpus (tests/serving/conformance.py) records, per payload, what
MLflow answers. The fast test holds the gateway to that record; the slow one starts the real
`mlflow models serve -m models:/NAME/1 --env-manager local` beside the gateway, sends every
payload to both and checks the record against MLflow, then the gateway against MLflow: what
MLflow answers 200 the gateway answers 200 with equal predictions, what MLflow refuses the
gateway refuses with a 4xx, and the gateway never answers 5xx to a client's input. The
deliberate differences are the payloads marked `differs` (docs/compatibility.md lists them).
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import httpx
import orjson
import pandas as pd
import pytest

from configs.settings import load_settings
from serving.registry_reader import Column
from serving.schema import BadInput, Schema, parse
from serving.server import running
from tests.conftest import REPO, mlflow_models_serve
from tests.serving.conformance import (
    CSV,
    DATES,
    DEMO_ROWS,
    DEMO_TYPES,
    JSON,
    MODELS,
    PARQUET,
    Models,
    Payload,
    corpus,
    parquet,
    register_models,
)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Models:
    root = tmp_path_factory.mktemp("conformance")
    with pytest.MonkeyPatch.context() as mp:
        for var in [v for v in os.environ if v.startswith("SHIPWAY_")]:
            mp.delenv(var)
        mp.chdir(root)
        settings = load_settings(cwd=root)
    # A model's first calls (imports, caches) may be slow on a loaded machine: no fallback answers here.
    settings = settings.model_copy(
        update={
            "data": settings.data.model_copy(update={"demo_rows": 3000}),
            "serving": settings.serving.model_copy(update={"timeout_ms": 30_000}),
        }
    )
    return register_models(settings, root)


@contextmanager
def gateways(models: Models) -> Iterator[dict[str, str]]:
    """A gateway per model, each with its own prediction log: {model name: base URL}."""
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        urls = {}
        for name in MODELS:
            settings = models.for_model(name)
            settings = settings.model_copy(
                update={
                    "prediction_log": settings.prediction_log.model_copy(update={"url": f"sqlite:///{tmp}/{name}.db"})
                }
            )
            urls[name] = stack.enter_context(running(settings))
        yield urls


def send(client: httpx.Client, url: str, payload: Payload) -> httpx.Response:
    return client.post(f"{url}/invocations", content=payload.body, headers=payload.headers, timeout=60)


def outcome(answer: httpx.Response) -> str:
    return "ok" if answer.status_code == 200 else "refused"


def same_answer(ours: dict, theirs: dict) -> bool:
    """Equal answers; numbers to 1e-9 relative, as compile.py holds a compiled form to sklearn's
    (a compiled regression's last digit may differ from the sklearn pipeline MLflow serves)."""
    numbers = all(isinstance(v, float) for v in theirs.get("predictions", [None]))
    if numbers and set(ours) == set(theirs) == {"predictions"}:
        return ours["predictions"] == pytest.approx(theirs["predictions"], rel=1e-9)
    return ours == theirs


def check_gateway(payload: Payload, answer: httpx.Response) -> None:
    """The gateway's answer as the corpus records it: never a 5xx; a refusal names what is wrong."""
    assert answer.status_code < 500, f"{payload.name}: {answer.status_code} {answer.text}"
    assert outcome(answer) == payload.expected, f"{payload.name}: {answer.status_code} {answer.text}"
    if payload.expected == "refused":
        assert set(answer.json()) == {"error_code", "message"}, payload.name
        assert payload.message in answer.json()["message"], f"{payload.name}: {answer.json()['message']}"


def test_the_corpus_covers_what_a_drop_in_must_take(models):
    payloads = corpus(models)
    names = " ".join(p.name for p in payloads)
    assert len(payloads) >= 40
    for needed in ("dataframe_split", "dataframe_records", "instances", "inputs", "csv", "parquet", "NaN",
                   "Infinity", "'45'", "45.5", "3 for a string", "extra column", "missing optional",
                   "reordered", "params", "empty", "truncated JSON", "content type", "mlflow client"):  # fmt: skip
        assert needed.lower() in names.lower(), needed
    assert {p.model for p in payloads} == set(MODELS)
    dated = " ".join(p.name for p in payloads if p.model == DATES)
    assert sum(p.model == DATES for p in payloads) >= 20
    for needed in ("ISO naive", "+02:00", "Z", "date only", "epoch seconds", "epoch milliseconds", "microseconds",
                   "nanoseconds", "as text", "csv", "parquet timestamp[us]", "parquet timestamp in UTC", "null",
                   "junk", "boolean", "past 2262", "inputs", "instances"):  # fmt: skip
        assert needed in dated, needed
    assert all(p.message for p in payloads if p.expected == "refused")  # every refusal names its problem
    assert all(p.differs for p in payloads if p.expected != p.mlflow)  # every difference says why
    documented = (REPO / "docs" / "compatibility.md").read_text()
    assert all(f"`{p.name}`" in documented for p in payloads if p.differs)  # and is in the compatibility table


def test_the_gateway_answers_the_corpus_as_recorded(models):
    with gateways(models) as urls, httpx.Client() as client:
        for payload in corpus(models):
            check_gateway(payload, send(client, urls[payload.model], payload))


@pytest.mark.slow
def test_the_gateway_answers_as_mlflow_models_serve(models, capsys):
    payloads = corpus(models)
    table: Counter[tuple[str, str, str]] = Counter()
    # MLflow drops a connection after its 500 (no Content-Type): a new connection for every request to it.
    fresh = httpx.Limits(max_keepalive_connections=0)
    with ExitStack() as stack, httpx.Client() as client, httpx.Client(limits=fresh) as to_mlflow:
        urls = stack.enter_context(gateways(models))
        mlflow = {
            name: stack.enter_context(mlflow_models_serve(models.settings.mlflow.tracking_uri, f"models:/{name}/1"))
            for name in MODELS
        }
        for payload in payloads:
            theirs = send(to_mlflow, mlflow[payload.model], payload)
            ours = send(client, urls[payload.model], payload)
            assert outcome(theirs) == payload.mlflow, f"the record of {payload.name} is wrong: {theirs.text[:300]}"
            check_gateway(payload, ours)
            if theirs.status_code == ours.status_code == 200 and not payload.differs:
                assert same_answer(ours.json(), theirs.json()), payload.name
            agreement = "differs (documented)" if payload.differs else "agrees"
            table[(outcome(theirs), outcome(ours), agreement)] += 1
        for name in MODELS:
            for path in ("/ping", "/version"):
                theirs, ours = client.get(f"{mlflow[name]}{path}"), client.get(f"{urls[name]}{path}")
                assert (ours.status_code, ours.text) == (theirs.status_code, theirs.text), path
                assert ours.headers["content-type"] == theirs.headers["content-type"], path
    with capsys.disabled():
        print(f"\n{len(payloads)} payloads; mlflow -> gateway:")
        for (theirs, ours, agreement), count in sorted(table.items()):
            print(f"  {theirs:8} -> {ours:8} {agreement:22} {count}")


def test_no_body_however_broken_gets_past_parsing_as_anything_but_bad_input():
    """What can become a 5xx: an exception other than BadInput from parsing or typing a client's body.
    Bodies of every format, damaged at random bytes, cut short, or given hostile values."""
    tensors = [Column(name, kind, name not in ("total_charges", "data_usage_gb")) for name, kind in DEMO_TYPES.items()]
    tensors += [Column("flag", "boolean", True), Column("small", "integer", True)]
    schema = Schema([*tensors, Column("when", "datetime", False)])
    onnx = Schema(tensors)  # an ONNX graph takes no datetime column
    rng = random.Random(0)
    rows = [
        dict(r, flag=True, small=1, when=w)
        for r, w in zip(DEMO_ROWS, ["2024-05-31T14:00", None, "2023-01-02"], strict=True)
    ]
    bases = [
        (json.dumps({"dataframe_split": {"columns": list(rows[0]), "data": [list(r.values()) for r in rows]}}), JSON),
        (json.dumps({"dataframe_records": rows}), JSON),
        (pd.DataFrame(rows).to_csv(index=False), CSV),
        (parquet(pd.DataFrame(rows)), PARQUET),
    ]
    hostile = [None, True, 0, -1, 2**63, 2**64, 1e308, 1e-320, float("nan"), float("inf"), "", " ", "NaN", "inf",
               "1e400", "4_5", "\x00", "\ud800", "é", [], {}, [[1]], {"a": [1]}, "TRUE", "0x10", "١٢", "9" * 5000,
               -(2**63), 1e20, "2024-05-31T14:00+02:00", "2024-05-31Z", "3000-01-01", "-2024-01-01", "now", "NaT",
               "99999999999999999999-01-01", "2024-02-30", "24:00", "2024-05-31T14:00:00.1234567891234"]  # fmt: skip
    bodies = [(b"[" * 100_000, JSON), (b'{"inputs": {"age": ' + b"1" * 5000 + b"}}", JSON)]
    for _ in range(800):
        body, mime = rng.choice(bases)
        body = bytearray(body.encode("utf-8") if isinstance(body, str) else body)
        damage = rng.randrange(3)
        if damage == 0:
            for _ in range(rng.randint(1, 5)):
                body[rng.randrange(len(body))] = rng.randrange(256)
        elif damage == 1:
            del body[rng.randrange(len(body)) :]
        else:
            row = dict(rng.choice(rows), **{rng.choice(list(rows[0])): rng.choice(hostile)})
            body = bytearray(json.dumps({rng.choice(["dataframe_records", "instances", "inputs"]): [row]}).encode())
            mime = JSON
        bodies.append((bytes(body), mime))
    escaped = []
    for body, mime in bodies:
        try:
            batch = schema.coerce(parse(body, mime))
            onnx.feeds(batch), schema.frame(batch), orjson.dumps(batch.columns)
        except BadInput:
            pass
        except Exception as exc:
            escaped.append(f"{type(exc).__name__}: {exc} <- {body[:80]!r}")
    assert not escaped, escaped[:5]
