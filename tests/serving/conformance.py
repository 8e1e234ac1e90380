"""Three registered models and the payloads a drop-in for `mlflow models serve` must answer as MLflow does.

`register_models` registers, each as version 1 of its own name on the given settings' store: the
demo churn pipeline (ONNX-served by the gateway; long, double and string columns), `flags`, a
pipeline over a boolean, an integer, an optional double and a string column (no ONNX form: the
gateway serves its sklearn pipeline), and `dates`, a regression over a datetime column (its date
parts) and a double: every instant the model is given moves its answer, so equal answers mean the
gateway read the same instants as MLflow. `corpus()` builds the payloads; each records what
MLflow's scoring server answers (`mlflow`: "ok" or "refused"), which the oracle test checks
against a real `mlflow models serve` and the fast tests hold the gateway to.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from configs.settings import Settings
from tasks.release.lineage import GitLineage

DEMO, FLAGS, DATES = "churn-classifier", "flags", "dates"
MODELS = (DEMO, FLAGS, DATES)
LINEAGE = GitLineage("e" * 40, "main", False)
JSON, CSV, PARQUET = "application/json", "text/csv", "application/vnd.apache.parquet"

# Fixed rows (not drawn from a model's holdout) so that every payload reads the same in every run.
DEMO_ROWS: list[dict[str, Any]] = [
    {"age": 45, "tenure_months": 3, "monthly_charges": 99.5, "total_charges": 300.25, "support_calls": 4,
     "data_usage_gb": 12.3, "contract": "month_to_month", "payment_method": "electronic_check", "plan": "premium",
     "region": "north"},
    {"age": 62, "tenure_months": 60, "monthly_charges": 25.0, "total_charges": 1500.0, "support_calls": 0,
     "data_usage_gb": 3.1, "contract": "two_year", "payment_method": "credit_card", "plan": "basic",
     "region": "south"},
    {"age": 30, "tenure_months": 14, "monthly_charges": 70.0, "total_charges": None, "support_calls": 2,
     "data_usage_gb": None, "contract": "one_year", "payment_method": "bank_transfer", "plan": "standard",
     "region": None},
]  # fmt: skip
DEMO_TYPES = {"age": "long", "tenure_months": "long", "monthly_charges": "double", "total_charges": "double",
              "support_calls": "long", "data_usage_gb": "double", "contract": "string", "payment_method": "string",
              "plan": "string", "region": "string"}  # fmt: skip
FLAGS_ROWS: list[dict[str, Any]] = [
    {"active": True, "visits": 12, "spend": 40.5, "segment": "retail"},
    {"active": False, "visits": 1, "spend": None, "segment": "online"},
    {"active": True, "visits": 0, "spend": 3.0, "segment": "partner"},
]
DATES_ROWS: list[dict[str, Any]] = [
    {"when": "2024-05-31T14:00:00", "amount": 40.5},
    {"when": "2023-11-02T08:30:00", "amount": 12.0},
    {"when": "2024-02-29T23:59:00", "amount": 80.25},
]


@dataclass(frozen=True)
class Models:
    settings: Settings  # the store both models live in
    optional: dict[str, list[str]]  # model -> its optional columns (nulls seen at registration)

    def for_model(self, name: str) -> Settings:
        """The settings of a gateway serving `name`."""
        return self.settings.model_copy(
            update={"training": self.settings.training.model_copy(update={"model_name": name})}
        )


def flags_frame(rows: int = 3000, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    active = rng.random(rows) < 0.6
    visits = rng.poisson(4, rows).astype("int64")
    spend = rng.gamma(2.0, 20.0, rows).round(2)
    segment = rng.choice(["retail", "online", "partner"], rows)
    logit = -1.0 + 1.2 * active + 0.25 * visits - 0.01 * spend + 0.5 * (segment == "online")
    label = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype("int64")
    frame = pd.DataFrame(
        {"active": active, "visits": visits, "spend": spend, "segment": pd.Series(segment, dtype="str"), "label": label}
    )
    frame.loc[rng.random(rows) < 0.3, "spend"] = None  # surely in the 50-row signature sample: optional
    return frame


def dates_frame(rows: int = 1500, seed: int = 5) -> pd.DataFrame:
    """A target made of every date part (and an amount): a model of it answers each instant apart."""
    rng = np.random.default_rng(seed)
    when = pd.Series(pd.Timestamp("2023-01-01") + pd.to_timedelta(rng.integers(0, 600 * 24 * 60, rows), unit="min"))
    amount = rng.gamma(2.0, 20.0, rows).round(2)
    parts = when.dt
    target = (3 * parts.month + 0.5 * parts.hour + 2 * parts.weekday + 0.1 * parts.day + 0.02 * parts.minute
              + 4 * (parts.year - 2023) + 0.05 * amount + rng.normal(0, 0.5, rows))  # fmt: skip
    return pd.DataFrame({"when": when.astype("datetime64[us]"), "amount": amount, "target": target})


def register_models(settings: Settings, tmp, names: tuple[str, ...] | None = None) -> Models:
    """The models (all by default) as version 1 of their names, each with its Production alias on version 1."""
    from mlflow import MlflowClient

    from core.vocabulary import Alias, Task
    from tasks.data.demo_data import TARGET
    from tasks.data.snapshot import take_snapshot
    from tasks.release.registration import register
    from tasks.release.registry import set_alias
    from tasks.training.pipeline import train

    optional = {}
    sources = ((DEMO, "demo", TARGET, {}), (FLAGS, _write(flags_frame(), tmp, FLAGS), "label", {}),
               (DATES, _write(dates_frame(), tmp, DATES), "target", {"task": Task.REGRESSION, "estimator": "ridge"}))  # fmt: skip
    for name, source, target, training in sources:
        if names is not None and name not in names:
            continue
        model_settings = settings.model_copy(
            update={"training": settings.training.model_copy(update={"model_name": name, **training})}
        )
        snapshot = take_snapshot(source, model_settings, target)
        trained = train(snapshot.frame, target, model_settings.training)
        registered = register.fn(trained, snapshot, LINEAGE, model_settings)
        assert registered.version == "1", f"{name} is not new in this store"
        set_alias(model_settings, name, Alias.PRODUCTION, "1")
        optional[name] = _optional_columns(MlflowClient(settings.mlflow.tracking_uri), name)
    return Models(settings, optional)


def _write(frame: pd.DataFrame, tmp, name: str) -> str:
    path = tmp / f"{name}.parquet"
    frame.to_parquet(path, index=False)
    return str(path)


def _optional_columns(client, name: str) -> list[str]:
    import mlflow

    info = mlflow.models.get_model_info(f"models:/{name}/1")
    return [c.name for c in info.signature.inputs.inputs if not c.required]


@dataclass(frozen=True)
class Payload:
    name: str
    model: str
    body: bytes
    content_type: str | None = JSON
    mlflow: str = "ok"  # what `mlflow models serve` answers: ok (200) or refused (4xx, or 500)
    message: str = ""  # for a gateway refusal: what its message must name
    differs: str = ""  # why shipway deliberately answers otherwise (docs/compatibility.md)
    gateway: str = ""  # what the gateway answers when it differs: ok (other predictions) or refused

    @property
    def expected(self) -> str:
        """What the gateway answers: as MLflow, unless a documented difference says otherwise."""
        return self.gateway or self.mlflow

    @property
    def headers(self) -> dict[str, str]:
        return {"Content-Type": self.content_type} if self.content_type else {}


def _json(doc: Any) -> bytes:
    """As Python's json writes it (and MLflow's client sends it): NaN and Infinity as bare literals."""
    return json.dumps(doc).encode()


def _split(rows: list[dict], columns: list[str] | None = None) -> dict:
    columns = columns or list(rows[0])
    return {"columns": columns, "data": [[row.get(c) for c in columns] for row in rows]}


def _columnar(rows: list[dict]) -> dict[str, list]:
    return {c: [row[c] for row in rows] for c in rows[0]}


def _edit(rows: list[dict], index: int = 0, drop: tuple[str, ...] = (), **values) -> list[dict]:
    edited = [dict(r) for r in rows]
    edited[index].update(values)
    for name in drop:
        for row in edited:
            row.pop(name, None)
    return edited


def _csv(rows: list[dict]) -> bytes:
    return pd.DataFrame(rows).to_csv(index=False).encode()


def parquet(frame: pd.DataFrame) -> bytes:
    out = io.BytesIO()
    frame.to_parquet(out, index=False)
    return out.getvalue()


def demo_frame(rows: list[dict] = DEMO_ROWS) -> pd.DataFrame:
    """The rows with the dtypes the model was trained on (int64, float64, str)."""
    frame = pd.DataFrame(rows)
    for column in ("age", "tenure_months", "support_calls"):
        frame[column] = frame[column].astype("int64")
    for column in ("monthly_charges", "total_charges", "data_usage_gb"):
        frame[column] = frame[column].astype("float64")
    return frame


def mlflow_client_body(frame: pd.DataFrame, params: dict | None = None) -> bytes:
    """The body MLflow's own client (`ScoringServerClient.invoke(df)`) sends for a DataFrame."""
    from mlflow.utils.proto_json_utils import dump_input_data

    return dump_input_data(frame, params=params).encode()


def corpus(models: Models) -> list[Payload]:
    """Every payload: formats, MLflow's client, coercions, column sets, params, empty and malformed bodies."""
    rows, one = DEMO_ROWS, DEMO_ROWS[:1]
    split = _split(rows)
    p: list[Payload] = []

    def add(name: str, body: bytes, **kw) -> None:
        p.append(Payload(name, kw.pop("model", DEMO), body, **kw))

    def refused(name: str, body: bytes, message: str, **kw) -> None:
        add(name, body, mlflow="refused", message=message, **kw)

    # -- every format
    add("dataframe_split", _json({"dataframe_split": split}))
    add("dataframe_split with index", _json({"dataframe_split": {"index": [7, 8, 9], **split}}))
    add("dataframe_records", _json({"dataframe_records": rows}))
    add("instances (records)", _json({"instances": rows}))
    add("instances (columns)", _json({"instances": _columnar(rows)}))
    add("inputs (columns)", _json({"inputs": _columnar(rows)}))
    add("inputs (one record)", _json({"inputs": one[0]}))
    add("inputs (records)", _json({"inputs": rows}))
    add("csv", _csv(rows), content_type=CSV)
    add("csv with charset", _csv(rows), content_type="text/csv; charset=utf-8")
    add("json with charset", _json({"dataframe_split": split}), content_type="application/json; charset=UTF-8")
    add("parquet", parquet(demo_frame()), content_type=PARQUET)
    add("parquet with int32 for a long column", parquet(demo_frame().astype({"age": "int32"})), content_type=PARQUET)
    # -- MLflow's own client: missing floats as bare NaN
    add("mlflow client, NaN for missing values", mlflow_client_body(demo_frame()))
    add("mlflow client with params", mlflow_client_body(demo_frame(), params={"threshold": 0.4}))
    add("bare NaN in a double column", _json({"dataframe_records": _edit(rows, monthly_charges=float("nan"))}))
    add("bare NaN in a string column", _json({"dataframe_split": _split(_edit(rows, region=float("nan")))}))
    refused("bare Infinity in a double column",
            _json({"dataframe_split": _split(_edit(rows, monthly_charges=float("inf")))}),
            "column 'monthly_charges' row 0: inf is not a finite number")  # fmt: skip
    refused("bare -Infinity in a double column", _json({"dataframe_records": _edit(rows, 1, data_usage_gb=float("-inf"))}),
            "column 'data_usage_gb' row 1: -inf is not a finite number")  # fmt: skip
    refused("NaN in an integer column", _json({"dataframe_split": _split(_edit(rows, age=float("nan")))}),
            "column 'age' row 0: null")  # fmt: skip
    # -- coercions MLflow's schema enforcement makes
    add("'45' for an integer column", _json({"dataframe_split": _split(_edit(rows, age="45"))}))
    add("45.5 for an integer column", _json({"dataframe_records": _edit(rows, age=45.5)}))
    add("45.0 for an integer column", _json({"dataframe_split": _split(_edit(rows, age=45.0))}))
    add("true for an integer column", _json({"dataframe_split": _split(_edit(rows, support_calls=True))}))
    add("'70.5' for a double column", _json({"dataframe_split": _split(_edit(rows, monthly_charges="70.5"))}))
    add("'NaN' for a double column", _json({"dataframe_records": _edit(rows, total_charges="NaN")}))
    add("integer for a double column", _json({"dataframe_records": _edit(rows, monthly_charges=70)}))
    add("3 for a string column", _json({"dataframe_split": _split(_edit(rows, plan=3))}))
    add("true for a string column", _json({"dataframe_records": _edit(rows, region=True)}))
    add("'45' for an integer column in inputs", _json({"inputs": _columnar(_edit(rows, age="45"))}))
    refused("'thirty' for an integer column", _json({"dataframe_split": _split(_edit(rows, 1, age="thirty"))}),
            "column 'age' row 1: expected an integer (long), got string \"thirty\"")  # fmt: skip
    refused("'45.5' for an integer column", _json({"dataframe_records": _edit(rows, age="45.5")}),
            "column 'age' row 0")  # fmt: skip
    refused("null in an integer column", _json({"dataframe_records": _edit(rows, 2, age=None)}),
            "column 'age' row 2: null, but 'age' is an integer (long) column")  # fmt: skip
    refused("'ten' for a double column", _json({"dataframe_split": _split(_edit(rows, monthly_charges="ten"))}),
            "column 'monthly_charges' row 0: expected a number (double), got string \"ten\"")  # fmt: skip
    refused("a list for a double column", _json({"dataframe_records": _edit(rows, monthly_charges=[1, 2])}),
            "column 'monthly_charges' row 0: expected a number (double), got list")  # fmt: skip
    refused("an object for a string column", _json({"dataframe_records": _edit(rows, plan={"a": 1})}),
            "column 'plan' row 0: expected a string, got object")  # fmt: skip
    refused("an integer past 64 bits", _json({"dataframe_records": _edit(rows, 1, age=2**70)}),
            "column 'age' row 1: 1180591620717411303424 is out of the 64-bit integer range")  # fmt: skip
    # -- CSV: pandas' reading (its NA markers, numbers as text)
    add("csv with NA markers in a string column", _csv(_edit(rows, 1, region="NA")), content_type=CSV)
    add("csv with '45.0' for an integer", _csv(_edit(rows, age="45.0")), content_type=CSV)
    refused("csv with an empty integer", _csv(_edit(rows, 1, support_calls=None)),
            "column 'support_calls' row 1: null", content_type=CSV)  # fmt: skip
    refused("csv with 'x' for an integer", _csv(_edit(rows, 1, age="x")), "column 'age' row 1: expected an integer",
            content_type=CSV)  # fmt: skip
    refused("csv row too long", b"age,plan\n1,basic,extra\n", "CSV row 0 has more values than the header",
            content_type=CSV)  # fmt: skip
    # -- Parquet: typed columns, converted only where MLflow's schema enforcement allows
    refused("parquet with float for a long column", parquet(demo_frame().astype({"age": "float64"})),
            "column 'age': Parquet type double", content_type=PARQUET)  # fmt: skip
    refused("parquet with int64 for a double column", parquet(demo_frame().astype({"monthly_charges": "int64"})),
            "column 'monthly_charges': Parquet type int64", content_type=PARQUET)  # fmt: skip
    refused("parquet with strings for a long column", parquet(demo_frame().astype({"age": "str"})),
            "column 'age': Parquet type large_string cannot be read as long; send int64", content_type=PARQUET)  # fmt: skip
    # -- column sets
    add("extra column", _json({"dataframe_records": _edit(rows, coupon="SAVE10")}))
    add("extra column in split", _json({"dataframe_split": _split(_edit(rows, 0, coupon="x"), [*rows[0], "coupon"])}))
    add("extra column in csv", _csv(_edit(rows, coupon="x")), content_type=CSV)
    add("reordered columns", _json({"dataframe_split": _split(rows, list(reversed(list(rows[0]))))}))
    add("reordered csv", pd.DataFrame(rows)[list(reversed(list(rows[0])))].to_csv(index=False).encode(),
        content_type=CSV)  # fmt: skip
    add("a key absent from one record", _json({"dataframe_records": [*rows[:2], _edit(rows[2:], drop=("plan",))[0]]}))
    for column in models.optional[DEMO]:
        refused(f"missing optional column {column}", _json({"dataframe_records": _edit(rows, drop=(column,))}),
                f"missing column '{column}'")  # fmt: skip
    refused("missing required column", _json({"dataframe_split": _split(_edit(rows, drop=("contract",)))}),
            "missing column 'contract'")  # fmt: skip
    refused(
        "missing required column in csv", _csv(_edit(rows, drop=("age",))), "missing column 'age'", content_type=CSV
    )
    refused("split without columns", _json({"dataframe_split": {"data": split["data"]}}), "no 'columns' list")
    refused("a column given twice", _json({"dataframe_split": {"columns": [*split["columns"], "age"],
            "data": [[*r, 1] for r in split["data"]]}}), "'age' given more than once")  # fmt: skip
    # -- params and unknown top-level keys
    add("params", _json({"dataframe_split": split, "params": {"threshold": 0.5}}))
    add("params null", _json({"dataframe_split": split, "params": None}))
    add("unknown top-level key", _json({"dataframe_records": rows, "client": "web"}))
    add("params not an object", _json({"dataframe_records": rows, "params": [1, 2]}))
    refused("an LLM key beside a format", _json({"dataframe_records": rows, "input": "hello"}), "'input'")
    # -- text MLflow's json reads and a strict parser would not
    refused("lone surrogate in a string column", _json({"dataframe_records": _edit(rows, plan="\ud800")}),
            "unpaired surrogate escape (\\ud800)")  # fmt: skip
    add("an integer past 64 bits in a double column", _json({"dataframe_records": _edit(rows, total_charges=2**70)}))
    # -- empty batches
    refused("empty dataframe_split", _json({"dataframe_split": {"columns": list(rows[0]), "data": []}}), "no rows")
    refused("empty dataframe_records", _json({"dataframe_records": []}), "no rows")
    refused("empty instances", _json({"instances": []}), "no rows")
    refused("empty inputs columns", _json({"inputs": {c: [] for c in rows[0]}}), "no rows")
    refused("header-only csv", ",".join(rows[0]).encode() + b"\n", "no rows", content_type=CSV)
    refused("empty parquet", parquet(demo_frame().head(0)), "no rows", content_type=PARQUET)
    # -- malformed bodies
    refused("truncated JSON", b'{"dataframe_records": [', "malformed JSON")
    refused("bare NaN body", b"NaN", "JSON object")
    refused("a JSON list", _json(rows), "JSON object")
    refused("no format key", _json({"rows": rows}), "send one of dataframe_split")
    refused("two format keys", _json({"dataframe_records": rows, "instances": rows}), "exactly one")
    refused("split without data", _json({"dataframe_split": {"columns": list(rows[0])}}), "'data'")
    refused("split with an unknown key", _json({"dataframe_split": {**split, "dtypes": {}}}), "'dtypes'")
    refused("split row too short", _json({"dataframe_split": {"columns": list(rows[0]), "data": [[1]]}}),
            "dataframe_split row 0 has 1 values, expected 10")  # fmt: skip
    add("split with a short row (padded with nulls, as pandas does)", _json({"dataframe_split": {"columns":
        list(rows[0]), "data": [split["data"][0], split["data"][1][:-1], split["data"][2]]}}))  # fmt: skip
    refused("split with every row short", _json({"dataframe_split": {"columns": list(rows[0]),
            "data": [r[:-1] for r in split["data"]]}}), "dataframe_split row 0 has 9 values, expected 10")  # fmt: skip
    refused("split data not rows", _json({"dataframe_split": {"columns": list(rows[0]), "data": [1, 2]}}),
            "dataframe_split row 0")  # fmt: skip
    refused("records as lists", _json({"dataframe_records": [list(r.values()) for r in rows]}),
            "dataframe_records[0] is a list")  # fmt: skip
    refused("inputs as a list of lists", _json({"inputs": [list(r.values()) for r in rows]}), "inputs[0] is a list")
    refused("inputs as a number", _json({"inputs": 5}), "inputs must be")
    refused("inputs columns of unequal length", _json({"inputs": {**_columnar(rows), "age": [1]}}),
            "different lengths")  # fmt: skip
    refused("invalid UTF-8", b'{"dataframe_records": [{"plan": "\xff"}]}', "UTF-8")
    refused("empty body", b"", "malformed JSON")
    refused("not parquet", b"PAR1 nothing", "Parquet", content_type=PARQUET)
    # -- content types
    refused("MIME type in capitals", _json({"dataframe_split": split}), "content type 'Application/JSON'",
            content_type="Application/JSON")  # fmt: skip
    refused("JSON sent as text/csv", _json({"dataframe_split": split}), "no rows", content_type=CSV)
    refused("no content type", _json({"dataframe_split": split}), "Content-Type", content_type=None)
    refused("form content type", b"a=1", "content type 'application/x-www-form-urlencoded'",
            content_type="application/x-www-form-urlencoded")  # fmt: skip
    refused("text/plain", _json({"dataframe_split": split}), "content type 'text/plain'", content_type="text/plain")
    refused("latin-1 charset", _json({"dataframe_split": split}), "UTF-8",
            content_type="application/json; charset=latin-1")  # fmt: skip
    refused("unknown content-type parameter", _json({"dataframe_split": split}), "'format'",
            content_type="application/json; format=pandas-split")  # fmt: skip

    # -- the model with a boolean and an integer column (served from its sklearn pipeline)
    frows = FLAGS_ROWS

    def flag(name: str, body: bytes, **kw) -> None:
        add(f"flags: {name}", body, model=FLAGS, **kw)

    flag("dataframe_split", _json({"dataframe_split": _split(frows)}))
    flag("dataframe_records", _json({"dataframe_records": frows}))
    flag("inputs", _json({"inputs": _columnar(frows)}))
    flag("instances", _json({"instances": frows}))
    flag("csv", _csv(frows), content_type=CSV)
    flag("csv with TRUE and FALSE", _csv(_edit(_edit(frows, active="TRUE"), 1, active="FALSE")), content_type=CSV)
    flag("csv with 1 and 0", _csv(_edit(_edit(_edit(frows, active=1), 1, active=0), 2, active=1)), content_type=CSV)
    flag("csv mixing TRUE and 0", _csv(_edit(_edit(frows, active="TRUE"), 1, active="0")), content_type=CSV,
         mlflow="refused", message="column 'active': mixes the words true/false with the numbers 1/0")  # fmt: skip
    flag("parquet", parquet(pd.DataFrame(frows)), content_type=PARQUET)
    flag("mlflow client", mlflow_client_body(pd.DataFrame(frows)))
    flag("'1' for a boolean", _json({"dataframe_records": _edit(frows, active="1")}))
    flag("1 and 0 for a boolean", _json({"dataframe_split": _split(_edit(_edit(frows, active=1), 1, active=0))}))
    flag("'12' for an integer", _json({"dataframe_split": _split(_edit(frows, visits="12"))}))
    flag("12.7 for an integer", _json({"dataframe_records": _edit(frows, visits=12.7)}))
    flag("7 for a string", _json({"dataframe_records": _edit(frows, segment=7)}))
    flag("extra column", _json({"dataframe_records": _edit(frows, coupon=1)}))
    flag("missing optional spend", _json({"dataframe_records": _edit(frows, drop=("spend",))}),
         mlflow="refused", message="missing column 'spend'")  # fmt: skip
    flag("null for a boolean", _json({"dataframe_records": _edit(frows, 1, active=None)}), gateway="refused",
         message="column 'active' row 1: null, but 'active' is a boolean column",
         differs="MLflow reads null in a boolean column as false")  # fmt: skip
    flag("'maybe' for a boolean", _json({"dataframe_split": _split(_edit(frows, 1, active="maybe"))}),
         gateway="refused", message="column 'active' row 1: expected true or false, got string \"maybe\"",
         differs="MLflow reads every non-empty string in a boolean column as true")  # fmt: skip
    flag("'false' for a boolean", _json({"dataframe_records": _edit(frows, active="false")}),
         differs="MLflow reads every non-empty string in a boolean column as true, 'false' and '0' too")  # fmt: skip
    flag("2 for a boolean", _json({"dataframe_records": _edit(frows, active=2)}), gateway="refused",
         message="column 'active' row 0: expected true or false, got number 2",
         differs="MLflow reads every non-zero number in a boolean column as true")  # fmt: skip
    flag("empty", _json({"inputs": {"active": [], "visits": [], "spend": [], "segment": []}}), mlflow="refused",
         message="no rows")  # fmt: skip
    return p + date_corpus()


def dates_frame_of(rows: list[dict], **dtypes: str) -> pd.DataFrame:
    """The rows with `when` as datetimes (naive, unless a dtype says otherwise) and `amount` as float64."""
    frame = pd.DataFrame(rows).astype({"amount": "float64"})
    frame["when"] = pd.to_datetime(frame["when"]).astype(dtypes.get("when", "datetime64[us]"))
    return frame


def date_corpus() -> list[Payload]:
    """The date payloads: a datetime column in every layout, as text, numbers, CSV and Parquet types.

    MLflow reads a datetime column with pandas (`pd.to_datetime` of the column) in dataframe_split
    and dataframe_records, with numpy (`np.array(values, "datetime64[ns]")`) in instances and
    inputs, not at all from CSV, and from Parquet's timestamp and date types; numbers are
    nanoseconds since 1970 (serving/dates.py says it in full).
    """
    rows, when = DATES_ROWS, [r["when"] for r in DATES_ROWS]
    p: list[Payload] = []

    def date(name: str, body: bytes, **kw) -> None:
        p.append(Payload(f"dates: {name}", DATES, body, **kw))

    def refused(name: str, body: bytes, message: str, **kw) -> None:
        date(name, body, mlflow="refused", message=message, **kw)

    def split(values: list) -> bytes:
        return _json({"dataframe_split": _split([dict(r, when=v) for r, v in zip(rows, values, strict=False)])})

    def records(values: list) -> bytes:
        return _json({"dataframe_records": [dict(r, when=v) for r, v in zip(rows, values, strict=False)]})

    def inputs(values: list) -> bytes:
        return _json({"inputs": _columnar([dict(r, when=v) for r, v in zip(rows, values, strict=False)])})

    def instances(values: list) -> bytes:
        return _json({"instances": [dict(r, when=v) for r, v in zip(rows, values, strict=False)]})

    seconds = [int(pd.Timestamp(w).timestamp()) for w in when]
    typed = dates_frame_of(rows)
    # -- ISO text in the pandas layouts (dataframe_split, dataframe_records)
    date("ISO naive in dataframe_split", split(when))
    date("ISO naive in dataframe_records", records(when))
    date("ISO with a space", split([w.replace("T", " ") for w in when]))
    date("ISO with nanoseconds", records([w + ".123456789" for w in when]))
    date("ISO without seconds", split([w[:16] for w in when]))
    date("date only", split([w[:10] for w in when]))
    date("US month/day/year (pandas reads it)", records(["05/31/2024", "11/02/2023", "02/29/2024"]))
    date("mlflow client", mlflow_client_body(typed))
    refused("ISO with +02:00", split([w + "+02:00" for w in when]), "column 'when' row 0: '2024-05-31T14:00:00+02:00' "
            "has a UTC offset")  # fmt: skip
    refused(
        "ISO with Z", records([w + "Z" for w in when]), "column 'when' row 0: '2024-05-31T14:00:00Z' has a UTC offset"
    )
    refused("ISO with mixed offsets", split([when[0] + "+02:00", when[1] + "-05:00", when[2] + "Z"]),
            "column 'when' row 0")  # fmt: skip
    refused("naive and Z in one column", split([when[0], when[1] + "Z", when[2]]),
            "column 'when' row 1: '2023-11-02T08:30:00Z' has a UTC offset")  # fmt: skip
    refused("two formats in one column", split([when[0], when[1][:10], when[2]]),
            "column 'when' row 1: '2023-11-02' is not in the format of row 0")  # fmt: skip
    # -- numbers: nanoseconds since 1970, as pandas and numpy read them
    date("epoch seconds (read as nanoseconds)", split(seconds))
    date("epoch milliseconds, pandas' to_json", _json({"dataframe_split": json.loads(
        typed.to_json(orient="split", index=False, date_format="epoch", date_unit="ms"))}))  # fmt: skip
    date("epoch microseconds", records([s * 10**6 for s in seconds]))
    date("epoch nanoseconds", split([s * 10**9 for s in seconds]))
    date("epoch seconds as floats", split([s + 0.5 for s in seconds]))
    date("a number and ISO text in one column", split([seconds[0] * 10**9, when[1], when[2]]))
    refused("epoch seconds as text", split([str(s) for s in seconds]), "column 'when' row 0: expected a date and time")
    refused("an integer past 64 bits", records([2**70, *when[1:]]),
            "is out of the range of datetime64[ns]")  # fmt: skip
    date("a float past the range of datetime64[ns]", split([1e20, *(s + 0.5 for s in seconds[1:])]), gateway="refused",
         message="column 'when' row 0: 1e+20 is out of the range of datetime64[ns]",
         differs="pandas reads a number past the range of datetime64[ns] as no time (NaT): MLflow answers as for a null")  # fmt: skip
    # -- nulls and junk
    date("null", split([None, *when[1:]]))
    date("every value null", records([None, None, None]))
    date("empty text (pandas reads no time)", split(["", *when[1:]]))
    refused("junk text", split([when[0], "yesterday", when[2]]), "column 'when' row 1")
    refused("a day that does not exist", records(["2023-02-30T10:00:00", *when[1:]]), "column 'when' row 0")
    refused("a boolean", split([True, *when[1:]]), "column 'when' row 0: expected a date and time, got boolean true")
    refused("a list", records([[2024, 5, 31], *when[1:]]), "column 'when' row 0: expected a date and time, got list")
    refused("a date past 2262", split(["3000-01-01T00:00:00", *when[1:]]),
            "column 'when' row 0: '3000-01-01T00:00:00' is out of the range of datetime64[ns]")  # fmt: skip
    # -- the numpy layouts (instances, inputs)
    date("ISO naive in inputs", inputs(when))
    date("ISO naive in instances", instances(when))
    date("ISO in inputs, one record", _json({"inputs": dict(rows[0])}))
    date("ISO with +02:00 in inputs (numpy reads UTC)", inputs([w + "+02:00" for w in when]))
    date("ISO with Z in instances", instances([w + "Z" for w in when]))
    date("epoch seconds in inputs", inputs(seconds))
    date("null in instances", instances([None, *when[1:]]))
    refused("epoch seconds as floats in inputs", inputs([s + 0.5 for s in seconds]), "column 'when' row 0: expected a "
            "date and time")  # fmt: skip
    refused("US month/day/year in instances", instances(["05/31/2024", *when[1:]]), "column 'when' row 0: expected a "
            "date and time")  # fmt: skip
    date("a boolean in inputs", inputs([*when[:2], False]), gateway="refused",
         message="column 'when' row 2: expected a date and time, got boolean false",
         differs="numpy reads false as 1970-01-01 and true as 1 nanosecond after it")  # fmt: skip
    date("a date past 2262 in instances", instances([when[0], "3000-01-01", when[2]]), gateway="refused",
         message="column 'when' row 1: '3000-01-01' is out of the range of datetime64[ns]",
         differs="numpy's datetime64[ns] cast wraps a date past 2262 around to another one (3000-01-01 becomes "
         "1830-11-23)")  # fmt: skip
    date("epoch seconds as text in inputs", inputs([str(s) for s in seconds]), gateway="refused",
         message="column 'when' row 0: '1717164000' is out of the range of datetime64[ns]",
         differs="numpy reads the text as the year 1717164000 and wraps it around to 1991-08-18")  # fmt: skip
    # -- CSV: MLflow reads no datetime column from CSV (pandas' read_csv takes no datetime dtype)
    refused("csv with ISO dates", _csv(rows), "column 'when' is a datetime column, which CSV cannot carry",
            content_type=CSV)  # fmt: skip
    refused("csv with epoch seconds", _csv([dict(r, when=s) for r, s in zip(rows, seconds, strict=True)]),
            "column 'when' is a datetime column", content_type=CSV)  # fmt: skip
    # -- Parquet: timestamp columns without a zone, and dates
    date("parquet timestamp[us]", parquet(typed), content_type=PARQUET)
    date("parquet timestamp[ns]", parquet(dates_frame_of(rows, when="datetime64[ns]")), content_type=PARQUET)
    date("parquet timestamp[ms]", parquet(dates_frame_of(rows, when="datetime64[ms]")), content_type=PARQUET)
    date("parquet timestamp[s]", parquet(dates_frame_of(rows, when="datetime64[s]")), content_type=PARQUET)
    date("parquet date32", parquet(typed.assign(when=typed["when"].dt.date)), content_type=PARQUET)
    date("parquet timestamp with nulls", parquet(typed.assign(when=typed["when"].where(typed.index != 1))),
         content_type=PARQUET)  # fmt: skip
    refused("parquet timestamp in UTC", parquet(typed.assign(when=typed["when"].dt.tz_localize("UTC"))),
            "column 'when': Parquet type timestamp[us, tz=UTC] cannot be read as datetime", content_type=PARQUET)  # fmt: skip
    refused("parquet timestamp in Europe/Berlin", parquet(typed.assign(when=typed["when"].dt.tz_localize("Europe/Berlin"))),
            "column 'when': Parquet type timestamp[us, tz=Europe/Berlin]", content_type=PARQUET)  # fmt: skip
    refused("parquet ISO text", parquet(typed.assign(when=when)), "column 'when': Parquet type large_string cannot be "
            "read as datetime", content_type=PARQUET)  # fmt: skip
    refused("parquet epoch integers", parquet(typed.assign(when=seconds)), "column 'when': Parquet type int64",
            content_type=PARQUET)  # fmt: skip
    refused("parquet timestamp past 2262", parquet(typed.assign(when=pd.Series(
        [pd.Timestamp("3000-01-01").to_pydatetime(), *typed["when"][1:]], dtype="datetime64[us]"))),
        "column 'when' row 0: '3000-01-01 00:00:00.000000' is out of the range of datetime64[ns]", content_type=PARQUET)  # fmt: skip
    return p
