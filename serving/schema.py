"""Request bodies in MLflow's scoring formats, checked against a model's input signature.

Two steps: `parse` turns a body (JSON in any of MLflow's four layouts, or CSV) into plain
columns; `Schema.coerce` checks them against the signature logged at registration and types
every value. Both raise BadInput with a message naming the column, the row and the problem,
which the gateway answers as a 4xx in MLflow's error format, never a 500.

Rules follow `mlflow models serve` where it has one: a required column must be present, an
optional one (nulls seen at training) may be absent and is then all null; integer and boolean
columns cannot hold nulls. Stricter where MLflow would fail deep inside the model: extra
columns, infinite numbers and wrong types are rejected up front.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import orjson
import pandas as pd

from serving.onnx import NULL_TOKEN
from serving.registry import Column

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
CONTENT_TYPES = ("application/json", "text/csv")
INT64 = (-(2**63), 2**63 - 1)
INTEGER_TYPES = {"long", "integer"}
FLOAT_TYPES = {"double", "float"}
TEXT_TRUE = {"true", "1"}
TEXT_FALSE = {"false", "0"}


class BadInput(Exception):
    """A client's mistake: answered with `status` and MLflow's `error_code`, never retried."""

    def __init__(
        self, message: str, status: int = 400, error_code: str = "INVALID_PARAMETER_VALUE", logged: str | None = None
    ):
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_code = error_code
        self.logged = message if logged is None else logged  # what the prediction log keeps: never a sent value


@dataclass(frozen=True)
class Raw:
    """Columns as sent: name -> values, all of length `rows`. `text` when they came from CSV."""

    columns: dict[str, list[Any]]
    rows: int
    text: bool = False


@dataclass(frozen=True)
class Batch:
    """Columns checked and typed against one schema; nulls are None."""

    columns: dict[str, list[Any]]
    rows: int

    def records(self) -> list[dict[str, Any]]:
        names = list(self.columns)
        return [dict(zip(names, values, strict=False)) for values in zip(*self.columns.values(), strict=False)]


def parse(body: bytes, content_type: str | None) -> Raw:
    mime, charset = _content_type(content_type)
    if charset not in ("utf-8", "utf8"):
        raise BadInput(f"only UTF-8 bodies are accepted, got charset={charset}", 415, "BAD_REQUEST")
    if mime == "text/csv":
        return _parse_csv(body)
    if mime != "application/json":
        raise BadInput(
            f"content type '{mime}' is not accepted; send one of {', '.join(CONTENT_TYPES)}", 415, "BAD_REQUEST"
        )
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadInput(f"malformed JSON: {exc}", 400, "BAD_REQUEST") from None
    if not isinstance(doc, dict):
        raise BadInput(f"the body must be a JSON object with one of the keys {', '.join(FORMATS)}", 400, "BAD_REQUEST")
    given = [k for k in FORMATS if k in doc]
    unknown = sorted(set(doc) - set(FORMATS) - {"params"})
    if unknown:
        raise BadInput(f"unknown key(s) {', '.join(map(repr, unknown))}: send one of {', '.join(FORMATS)}")
    if len(given) != 1:
        found = f"got {', '.join(given)}" if given else "got none"
        raise BadInput(f"send exactly one of {', '.join(FORMATS)} ({found})")
    key = given[0]
    data = doc[key]
    if key == "dataframe_split":
        return _from_split(data)
    if isinstance(data, dict) and key != "dataframe_records":
        return _from_columns(data, key)
    return _from_records(data, key)


def _content_type(header: str | None) -> tuple[str, str]:
    if not header:
        return "application/json", "utf-8"
    mime, *params = (part.strip() for part in header.split(";"))
    charset = "utf-8"
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
    return mime.lower(), charset


def _from_split(data: Any) -> Raw:
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("columns"), list)
        or not isinstance(data.get("data"), list)
    ):
        raise BadInput("dataframe_split must be an object with a 'columns' list and a 'data' list of rows")
    names = data["columns"]
    _check_names(names, "dataframe_split.columns")
    rows = data["data"]
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != len(names):
            got = f"{len(row)} values" if isinstance(row, list) else type(row).__name__
            raise BadInput(f"dataframe_split row {i} has {got}, expected {len(names)} (one per column)")
    columns = {name: [row[j] for row in rows] for j, name in enumerate(names)}
    return Raw(columns, len(rows))


def _from_records(data: Any, key: str) -> Raw:
    if not isinstance(data, list):
        raise BadInput(f"{key} must be a list of records (objects of column -> value)")
    names: dict[str, None] = {}
    for i, record in enumerate(data):
        if not isinstance(record, dict):
            raise BadInput(
                f"{key}[{i}] is a {_json_type(record)}, not a record: send objects of column -> value "
                "(a list of lists has no column names)"
            )
        names.update(dict.fromkeys(record))
    # A key absent from a record is a null there, as when pandas builds a frame from records.
    return Raw({name: [record.get(name) for record in data] for name in names}, len(data))


def _from_columns(data: dict, key: str) -> Raw:
    """`{"col": [v, ...]}` (one list per column) or `{"col": v}` (one row)."""
    _check_names(list(data), key)
    lists = [isinstance(v, list) for v in data.values()]
    if data and not any(lists):
        return Raw({name: [value] for name, value in data.items()}, 1)
    if not all(lists):
        raise BadInput(f"{key} must map every column to a list of values, or every column to one value")
    lengths = {name: len(values) for name, values in data.items()}
    if len(set(lengths.values())) > 1:
        raise BadInput(f"{key}: columns have different lengths ({', '.join(f'{k}: {v}' for k, v in lengths.items())})")
    return Raw(dict(data), next(iter(lengths.values()), 0))


def _parse_csv(body: bytes) -> Raw:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(f"the CSV body is not valid UTF-8: {exc}", 400, "BAD_REQUEST") from None
    try:
        table = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        raise BadInput(f"malformed CSV: {exc}", 400, "BAD_REQUEST") from None
    table = [row for row in table if row]
    if not table:
        raise BadInput("the CSV body is empty: send a header line and at least one row", 400, "BAD_REQUEST")
    names, rows = table[0], table[1:]
    _check_names(names, "the CSV header")
    for i, row in enumerate(rows):
        if len(row) != len(names):
            raise BadInput(f"CSV row {i} has {len(row)} values, expected {len(names)} (one per header column)")
    return Raw({name: [row[j] for row in rows] for j, name in enumerate(names)}, len(rows), text=True)


def _check_names(names: Sequence[Any], where: str) -> None:
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise BadInput(f"{where}: column names must be strings, got {bad[0]!r}")
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise BadInput(f"{where}: column(s) {', '.join(map(repr, repeated))} given more than once")


class Schema:
    """A model's input columns: checks and types what `parse` produced."""

    def __init__(self, columns: list[Column]):
        self.columns = columns
        self.names = [c.name for c in columns]
        self._coercers = {c.name: _coercer(c) for c in columns}
        # Plain tuples compare in C: two versions' schemas are compared on every mirrored request.
        self._key = tuple((c.name, c.type, c.required) for c in columns)
        self._hash = hash(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schema) and self._key == other._key

    def __hash__(self) -> int:
        return self._hash

    def coerce(self, raw: Raw) -> Batch:
        sent = raw.columns
        extra = [name for name in sent if name not in self._coercers]
        if extra:
            raise BadInput(
                f"unexpected column(s) {', '.join(map(repr, extra))}; the model takes {', '.join(self.names)}"
            )
        columns = {}
        for column in self.columns:
            values = sent.get(column.name)
            if values is None:
                if column.required:
                    raise BadInput(
                        f"missing column '{column.name}' ({column.type}); the model takes {', '.join(self.names)}"
                    )
                values = [None] * raw.rows
            coerce = self._coercers[column.name]
            columns[column.name] = [coerce(v, i, raw.text) for i, v in enumerate(values)]
        return Batch(columns, raw.rows)

    def frame(self, batch: Batch) -> pd.DataFrame:
        """The batch as the DataFrame the sklearn pipeline was trained on (int64, float64, str)."""
        data = {}
        for column in self.columns:
            values = batch.columns[column.name]
            if column.type in INTEGER_TYPES:
                data[column.name] = pd.Series(values, dtype="int64")
            elif column.type in FLOAT_TYPES:
                data[column.name] = pd.Series([np.nan if v is None else v for v in values], dtype="float64")
            elif column.type == "string":
                data[column.name] = pd.Series(values, dtype="str")
            elif column.type == "boolean":
                data[column.name] = pd.Series(values, dtype="bool")
            elif column.type == "datetime":
                # as the model's date parts read them: times with a zone in UTC, then without one
                stamps = pd.to_datetime(pd.Series(values, dtype=object), format="ISO8601", utc=True)
                data[column.name] = stamps.dt.tz_localize(None).astype("datetime64[us]")
            else:
                data[column.name] = pd.Series(values)
        return pd.DataFrame(data)

    def feeds(self, batch: Batch) -> dict[str, np.ndarray]:
        """ONNX inputs: float64 for numbers (null -> NaN), strings with nulls as NULL_TOKEN."""
        feeds = {}
        for column in self.columns:
            values = batch.columns[column.name]
            if column.type == "string":
                feeds[column.name] = np.array([NULL_TOKEN if v is None else v for v in values], dtype=object).reshape(
                    -1, 1
                )
            else:
                feeds[column.name] = np.array([math.nan if v is None else v for v in values], dtype=np.float64).reshape(
                    -1, 1
                )
        return feeds


def _coercer(column: Column):
    name, kind = column.name, column.type

    def fail(row: int, problem: str, value: Any = _NOT_SHOWN) -> BadInput:
        """The client is told the value it sent; the log keeps only the column, the row and the problem."""
        where = f"column '{name}' row {row}: "
        if value is _NOT_SHOWN:
            return BadInput(where + problem)
        raw = value.v if isinstance(value, _Shown) else value
        return BadInput(
            where + problem.format(value=value), logged=where + problem.format(value=f"<{_json_type(raw)}, not logged>")
        )

    if kind in INTEGER_TYPES:

        def to_int(v: Any, row: int, text: bool) -> int:
            if text:
                v = _from_text(v, row, fail, int, "an integer")
            if v is None:
                raise fail(row, f"null, but '{name}' is an integer ({kind}) column, which cannot hold nulls")
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            if type(v) is not int:
                raise fail(row, f"expected an integer ({kind}), got {{value}}", _Shown(v))
            if not INT64[0] <= v <= INT64[1]:
                raise fail(row, "{value} is out of the 64-bit integer range", v)
            return v

        return to_int
    if kind in FLOAT_TYPES:

        def to_float(v: Any, row: int, text: bool) -> float | None:
            if text:
                v = _from_text(v, row, fail, float, "a number")
                if v is not None and math.isnan(v):
                    return None
            if v is None:
                return None
            if type(v) not in (int, float):
                raise fail(row, f"expected a number ({kind}), got {{value}}", _Shown(v))
            if math.isinf(v) or (type(v) is int and not INT64[0] <= v <= INT64[1]):
                raise fail(row, "{value} is not a finite number", v)
            return float(v)

        return to_float
    if kind == "string":

        def to_str(v: Any, row: int, text: bool) -> str | None:
            if text and v == "":
                return None
            if v is not None and type(v) is not str:
                raise fail(row, "expected a string, got {value}", _Shown(v))
            return v

        return to_str
    if kind == "boolean":

        def to_bool(v: Any, row: int, text: bool) -> bool:
            if text and isinstance(v, str):
                lowered = v.strip().lower()
                v = True if lowered in TEXT_TRUE else False if lowered in TEXT_FALSE else (None if not lowered else v)
            if v is None:
                raise fail(row, f"null, but '{name}' is a boolean column, which cannot hold nulls")
            if type(v) is not bool:
                raise fail(row, "expected true or false, got {value}", _Shown(v))
            return v

        return to_bool
    if kind == "datetime":

        def to_datetime(v: Any, row: int, text: bool) -> str | None:
            if v is None or (text and v == ""):
                return None
            if type(v) is not str:
                raise fail(row, "expected an ISO 8601 date or time text, got {value}", _Shown(v))
            try:
                datetime.fromisoformat(v)
            except ValueError:
                raise fail(
                    row, "expected an ISO 8601 date or time (e.g. 2024-05-31T14:00:00), got {value}", _Repr(v)
                ) from None
            return v

        return to_datetime
    return lambda v, row, text: v  # other types (bytes) go to the model as sent


def _from_text(v: str, row: int, fail, convert, what: str):
    if v.strip() == "":
        return None
    try:
        return convert(v)
    except ValueError:
        raise fail(row, f"expected {what}, got {{value}}", _Repr(v)) from None


_NOT_SHOWN = object()


class _Shown:
    """A sent value as a message shows it: its JSON type and (the start of) its JSON text."""

    def __init__(self, v: Any):
        self.v = v

    def __format__(self, spec: str) -> str:
        return f"{_json_type(self.v)} {orjson.dumps(self.v).decode()[:60]}"


class _Repr(_Shown):
    def __format__(self, spec: str) -> str:
        return repr(self.v)


def _json_type(v: Any) -> str:
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "list", dict: "object"}.get(
        type(v), "null" if v is None else type(v).__name__
    )
