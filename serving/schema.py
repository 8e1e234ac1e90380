"""Request bodies in MLflow's scoring formats, checked against a model's input signature.

Two steps: `parse` turns a body (JSON in any of MLflow's four layouts, CSV or Parquet) into plain
columns; `Schema.coerce` checks them against the signature logged at registration and types
every value. Both raise BadInput with a message naming the column, the row and the problem,
which the gateway answers as a 4xx in MLflow's error format, never a 500.

The rules are `mlflow models serve`'s, checked against it payload by payload (the corpus in
tests/serving/conformance.py): JSON as Python's json reads it (bare NaN and Infinity too), CSV as pandas
reads it (its NA markers are nulls), Parquet columns converted only where MLflow's schema
enforcement converts them, and JSON values converted as pandas' `astype` does ("45" and 45.5 in
an integer column are 45, 3 in a string column is "3"), and datetime columns as MLflow reads them in
each layout (serving/dates.py). Extra columns are ignored; a missing
column is refused, optional or not, as the model would refuse it (a pyfunc model may go without
an optional one). Deliberate differences (docs/compatibility.md): a boolean column reads what a
value says ("false" is false, where MLflow's cast makes every non-empty string true) and refuses
nulls; infinite numbers are refused here, not by the model; every message names column and row.
"""

from __future__ import annotations

import io
import json
import math
import re
import reprlib
from collections import Counter
from collections.abc import Callable, Sequence, Sized
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pandas as pd

from core.redaction import scrub
from serving import dates
from serving.onnx import NULL_TOKEN, epoch_us
from serving.registry_reader import Column

if TYPE_CHECKING:
    import pyarrow as pa

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
LLM_KEYS = ("messages", "prompt", "input")  # MLflow reads a body with these as an LLM request
JSON_TYPE, CSV_TYPE, PARQUET_TYPE = "application/json", "text/csv", "application/vnd.apache.parquet"
CONTENT_TYPES = (JSON_TYPE, CSV_TYPE, PARQUET_TYPE)
INTEGER_RANGES = {"long": (-(2**63), 2**63 - 1), "integer": (-(2**31), 2**31 - 1)}
FLOAT_TYPES = {"double", "float"}
TEXT_TRUE = {"true", "1"}  # a JSON string in a boolean column, in any case
TEXT_FALSE = {"false", "0"}
CSV_TRUE = {"true", "True", "TRUE"}  # the words pandas reads in a boolean CSV column
CSV_FALSE = {"false", "False", "FALSE"}
PLACEHOLDERS = {"long": 0, "integer": 0, "double": 0.0, "float": 0.0, "string": "", "boolean": False,
                "datetime": "2000-01-01T00:00:00"}  # fmt: skip
SURROGATE = re.compile("[\ud800-\udfff]")


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
    """Columns as sent: name -> values, all of length `rows`.

    `source` says how to read the values: "json" (JSON values of dataframe_split or
    dataframe_records), "tensors" (JSON values of instances or inputs, which MLflow reads through
    numpy: a datetime column reads otherwise), "csv" (text, None for pandas' NA markers) or
    "parquet" (typed as `types` says: each column's Arrow type; timestamps and dates as Arrow's
    ISO text of them, so that a Raw is JSON).
    """

    columns: dict[str, list[Any]]
    rows: int
    source: str = "json"
    types: dict[str, str] | None = None


@dataclass(frozen=True)
class Batch:
    """Columns checked and typed against one schema; nulls are None."""

    columns: dict[str, list[Any]]
    rows: int

    def records(self) -> list[dict[str, Any]]:
        names = list(self.columns)
        return [dict(zip(names, values, strict=False)) for values in zip(*self.columns.values(), strict=False)]


def parse(body: bytes, content_type: str | None, max_rows: int | None = None) -> Raw:
    """The body's columns; a batch without rows is refused, one over `max_rows` gets 413."""
    mime = _content_type(content_type)
    if mime == CSV_TYPE:
        raw = _parse_csv(body)
    elif mime == PARQUET_TYPE:
        raw = _parse_parquet(body)
    else:
        raw = _parse_json(body)
    if raw.rows == 0:
        raise BadInput("the batch has no rows: send at least one row")
    if max_rows is not None and raw.rows > max_rows:
        raise BadInput(
            f"the batch has {raw.rows} rows, more than the limit of {max_rows} (serving.max_rows): "
            "send it in smaller batches",
            413,
            "REQUEST_LIMIT_EXCEEDED",
        )
    return raw


def _content_type(header: str | None) -> str:
    """The MIME type; as MLflow reads it: as written, with no parameter but charset=utf-8."""
    if header is None:
        raise BadInput(f"send a Content-Type header: one of {', '.join(CONTENT_TYPES)}", 415, "BAD_REQUEST")
    mime, *params = (part.strip() for part in header.split(";"))
    for param in params:
        name, _, value = param.partition("=")
        name = name.strip()
        if name != "charset":
            raise BadInput(
                f"content type parameter '{name}' is not accepted: the only parameter is charset=utf-8",
                415,
                "BAD_REQUEST",
            )
        charset = value.strip().strip('"').lower()
        if charset != "utf-8":
            raise BadInput(f"only UTF-8 bodies are accepted, got charset={charset}", 415, "BAD_REQUEST")
    if mime not in CONTENT_TYPES:
        raise BadInput(
            f"content type '{mime}' is not accepted; send one of {', '.join(CONTENT_TYPES)}", 415, "BAD_REQUEST"
        )
    return mime


def json_rows(frame: pd.DataFrame) -> list[list[Any]]:
    """`frame`'s rows as a client sends them in `dataframe_split`: JSON values, nulls as None,
    datetimes as ISO 8601 text without an offset (serving/dates.py)."""
    values = frame.astype(object).where(frame.notna(), None)
    for name, column in frame.items():
        if pd.api.types.is_datetime64_any_dtype(column.dtype):
            values[name] = pd.Series(dates.wire(column), index=frame.index, dtype=object)
    return values.to_numpy().tolist()


def _parse_json(body: bytes) -> Raw:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = _lenient_json(body)
    if not isinstance(doc, dict):
        raise BadInput(
            f"the body must be a JSON object with one of the keys {', '.join(FORMATS)}, got a {_json_type(doc)}",
            400,
            "BAD_REQUEST",
        )
    given = [k for k in FORMATS if k in doc]
    if len(given) != 1:
        if given:
            raise BadInput(f"send exactly one of {', '.join(FORMATS)} (got {', '.join(given)})", 400, "BAD_REQUEST")
        keys = ", ".join(map(repr, list(doc)[:10])) or "none"
        raise BadInput(
            f"send one of {', '.join(FORMATS)} (the body's keys: {keys})",
            400,
            "BAD_REQUEST",
            logged=f"send one of {', '.join(FORMATS)} (the body has {_count(doc, 'key')}, not logged)",
        )
    llm = [k for k in LLM_KEYS if k in doc]
    if llm:
        keys = ", ".join(map(repr, llm))
        raise BadInput(f"key(s) {keys} make the body an LLM request, which this model does not take")
    # Other keys ("params" among them: shipway's models take none) are ignored, as by MLflow.
    key = given[0]
    data = doc[key]
    if key == "dataframe_split":
        return _from_split(data)
    if key == "dataframe_records":
        return _from_records(data, key)
    raw = _from_columns(data, key) if isinstance(data, dict) else _from_records(data, key)
    return Raw(raw.columns, raw.rows, "tensors")


def _lenient_json(body: bytes) -> Any:
    """What Python's json reads and orjson does not: bare NaN, Infinity and -Infinity (MLflow's own
    client writes missing floats so), integers past 64 bits. Unpaired surrogate escapes, which
    are not Unicode text, are refused (as by MLflow: pandas refuses them)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(f"the body is not valid UTF-8: {exc}", 400, "BAD_REQUEST") from None
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise BadInput(
            f"malformed JSON: {exc}", 400, "BAD_REQUEST", logged=f"malformed JSON: {scrub(str(exc))}"
        ) from None
    if "\\ud" in text.lower():
        _check_surrogates(doc)
    return doc


def _check_surrogates(value: Any) -> None:
    if isinstance(value, str):
        found = SURROGATE.search(value)
        if found:
            raise BadInput(
                f"the body holds an unpaired surrogate escape (\\u{ord(found.group()):04x}), which is not Unicode text",
                400,
                "BAD_REQUEST",
            )
    elif isinstance(value, list):
        for v in value:
            _check_surrogates(v)
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_surrogates(k)
            _check_surrogates(v)


def _from_split(data: Any) -> Raw:
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise BadInput("dataframe_split must be an object with a 'data' list of rows and a 'columns' list")
    unknown = sorted(set(data) - {"columns", "data", "index"})
    if unknown:
        raise BadInput(
            f"dataframe_split: unknown key(s) {', '.join(map(repr, unknown))}; it takes 'columns', 'data' and 'index'",
            logged=f"dataframe_split: {_count(unknown, 'unknown key')} (not logged); it takes 'columns', 'data' and "
            "'index'",
        )
    names = data.get("columns")
    if not isinstance(names, list):
        raise BadInput("dataframe_split has no 'columns' list: the model's inputs are found by column name")
    _check_names(names, "dataframe_split.columns")
    rows = data["data"]
    width = len(names)
    short = None  # the first row with fewer values than columns
    for i, row in enumerate(rows):
        if type(row) is not list or len(row) != width:
            if not isinstance(row, list) or len(row) > width:
                got = f"{len(row)} values" if isinstance(row, list) else f"a {_json_type(row)}"
                raise BadInput(f"dataframe_split row {i} has {got}, expected {width} (one per column)")
            short = i if short is None else short
    if short is not None:
        if max(map(len, rows)) < width:
            raise BadInput(
                f"dataframe_split row {short} has {len(rows[short])} values, expected {width} (one per column)"
            )
        # As pandas builds the frame: short rows padded with nulls.
        rows = [row + [None] * (width - len(row)) for row in rows]
    index = data.get("index")
    if index is not None and (not isinstance(index, list) or len(index) != len(rows)):
        raise BadInput(f"dataframe_split: 'index' must be a list with one entry per row ({len(rows)})")
    columns = {name: [row[j] for row in rows] for j, name in enumerate(names)}
    return Raw(columns, len(rows))


def _from_records(data: Any, key: str) -> Raw:
    if not isinstance(data, list):
        raise BadInput(f"{key} must be a list of records (objects of column -> value), got a {_json_type(data)}")
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
        raise BadInput(
            f"{key}: columns have different lengths ({', '.join(f'{k}: {v}' for k, v in lengths.items())})",
            logged=f"{key}: columns have different lengths ({', '.join(map(str, lengths.values()))}; names not logged)",
        )
    return Raw(dict(data), next(iter(lengths.values()), 0))


def _parse_csv(body: bytes) -> Raw:
    """As MLflow reads CSV (pandas): quoting, blank lines skipped, NA markers ("", NA, null, ...) as nulls."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(f"the CSV body is not valid UTF-8: {exc}", 400, "BAD_REQUEST") from None
    try:
        frame = pd.read_csv(io.StringIO(text), dtype=object)
    except pd.errors.EmptyDataError:
        raise BadInput("the CSV body is empty: send a header line and at least one row", 400, "BAD_REQUEST") from None
    except (pd.errors.ParserError, ValueError) as exc:
        raise BadInput(
            f"malformed CSV: {exc}", 400, "BAD_REQUEST", logged=f"malformed CSV: {scrub(str(exc))}"
        ) from None
    if not isinstance(frame.index, pd.RangeIndex):  # pandas took the first column for an index
        raise BadInput("CSV row 0 has more values than the header has columns", 400, "BAD_REQUEST")
    columns = {str(name): [None if v is None or v != v else v for v in frame[name].tolist()] for name in frame.columns}
    return Raw(columns, len(frame), "csv")


def _parse_parquet(body: bytes) -> Raw:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(pa.BufferReader(body))
        _check_names(table.column_names, "the Parquet file's columns")
        columns = {name: _arrow_values(table.column(name)) for name in table.column_names}
    except BadInput:
        raise
    except Exception as exc:  # Arrow's errors, and a damaged file's text that is not UTF-8: the client's
        problem = f"{type(exc).__name__}: {exc}"
        raise BadInput(
            f"the body is not a readable Parquet file: {problem}",
            400,
            "BAD_REQUEST",
            logged=f"the body is not a readable Parquet file: {scrub(problem)}",
        ) from None
    types = {field.name: str(field.type) for field in table.schema}
    return Raw(columns, table.num_rows, "parquet", types)


def _arrow_values(column: pa.ChunkedArray) -> list[Any]:
    """Timestamps and dates as Arrow's ISO text of them (exact, JSON), the rest as Python values."""
    import pyarrow as pa

    kind = column.type
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        return column.cast(pa.string()).to_pylist()
    return column.to_pylist()


def _check_names(names: Sequence[Any], where: str) -> None:
    bad = [n for n in names if not isinstance(n, str)]
    if bad:  # a name that is not a string is most likely a value in the wrong place: the log keeps its type
        raise BadInput(
            f"{where}: column names must be strings, got {bad[0]!r}",
            logged=f"{where}: column names must be strings, got a {_json_type(bad[0])} (not logged)",
        )
    if len(set(names)) != len(names):
        repeated = sorted(n for n, k in Counter(names).items() if k > 1)  # linear: a body may name 40,000 columns
        raise BadInput(
            f"{where}: column(s) {', '.join(map(repr, repeated))} given more than once",
            logged=f"{where}: {_count(repeated, 'column')} given more than once (names not logged)",
        )


class Schema:
    """A model's input columns: checks and types what `parse` produced.

    `complete`: the model needs every column (a pipeline or an ONNX graph does); a pyfunc model
    may go without an optional one, which is then left out, as MLflow leaves it out.
    """

    def __init__(self, columns: list[Column], complete: bool = True):
        self.columns = columns
        self.complete = complete
        self.names = [c.name for c in columns]
        self._coercers = {source: [_coercer(c, source) for c in columns] for source in _SOURCES}
        # Plain tuples compare in C: two versions' schemas are compared on every mirrored request.
        self._key = (complete, *((c.name, c.type, c.required) for c in columns))
        self._hash = hash(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schema) and self._key == other._key

    def __hash__(self) -> int:
        return self._hash

    def placeholder(self) -> Raw:
        """One row of neutral values of the columns' types (0, "", false): a model's warm-up call
        when it has no input example."""
        return Raw({c.name: [PLACEHOLDERS.get(c.type)] for c in self.columns}, 1)

    def coerce(self, raw: Raw) -> Batch:
        sent = raw.columns
        columns = {}
        for column, coerce in zip(self.columns, self._coercers[raw.source], strict=True):
            values = sent.get(column.name)
            if values is None:
                if column.required or self.complete:
                    kind = "" if column.required else ", optional: send null where a value is unknown"
                    raise BadInput(
                        f"missing column '{column.name}' ({column.type}{kind}); the model takes {', '.join(self.names)}"
                    )
                continue
            if raw.types is not None:
                _check_parquet_type(column, raw.types[column.name], values)
            elif raw.source == "csv" and column.type == "boolean":
                _check_csv_booleans(column, values)
            if column.type == "datetime":
                columns[column.name] = _datetimes(column, values, raw.source)
            else:
                columns[column.name] = [coerce(v, i) for i, v in enumerate(values)]
        return Batch(columns, raw.rows)

    def frame(self, batch: Batch) -> pd.DataFrame:
        """The batch as the DataFrame the sklearn pipeline was trained on (int64, float64, str)."""
        data = {}
        for column in self.columns:
            values = batch.columns.get(column.name)
            if values is None:  # an optional column a pyfunc model goes without
                continue
            if column.type in INTEGER_RANGES:
                data[column.name] = pd.Series(values, dtype="int64" if column.type == "long" else "int32")
            elif column.type in FLOAT_TYPES:
                data[column.name] = pd.Series([np.nan if v is None else v for v in values], dtype="float64")
            elif column.type == "string":
                data[column.name] = pd.Series(values, dtype="str")
            elif column.type == "boolean":
                data[column.name] = pd.Series(values, dtype="bool")
            elif column.type == "datetime":
                data[column.name] = pd.Series(dates.frame_column(values))
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
            elif column.type == "datetime":  # the frame's datetimes, as the compiled date parts read them
                stamps = self.frame(Batch({column.name: values}, batch.rows))[column.name]
                feeds[column.name] = epoch_us(stamps).reshape(-1, 1)
            else:  # numpy reads None as NaN in a float64 array
                feeds[column.name] = np.array(values, dtype=np.float64).reshape(-1, 1)
        return feeds


_SOURCES = ("json", "tensors", "csv", "parquet")
Coercer = Callable[[Any, int], Any]


def _coercer(column: Column, source: str) -> Coercer:
    """One value -> its typed form, or BadInput naming column and row. Parquet values arrive typed
    (their column's type was checked), so they convert as JSON values do."""
    name, kind = column.name, column.type
    text = source == "csv"

    def fail(row: int, problem: str, value: Any = _NOT_SHOWN) -> BadInput:
        """The client is told the value it sent; the log keeps only the column, the row and the problem."""
        where = f"column '{name}' row {row}: "
        if value is _NOT_SHOWN:
            return BadInput(where + problem)
        raw = value.v if isinstance(value, _Shown) else value
        return BadInput(
            where + problem.format(value=value), logged=where + problem.format(value=f"<{_json_type(raw)}, not logged>")
        )

    if kind in INTEGER_RANGES:
        low, high = INTEGER_RANGES[kind]

        def to_int(v: Any, row: int) -> int:
            t = type(v)
            if t is str:
                converted = _text_int(v) if text else _int_of_str(v)
                if converted is None:
                    raise fail(row, f"expected an integer ({kind}), got {{value}}", _Shown(v))
                v = converted
            elif t is float:
                if v != v:
                    v = None
                elif math.isinf(v):
                    raise fail(row, "{value} is not a finite number", v)
                else:
                    v = int(v)  # truncated toward zero, as pandas' astype does
            elif t is bool:
                v = int(v)
            elif t is not int and v is not None:
                raise fail(row, f"expected an integer ({kind}), got {{value}}", _Shown(v))
            if v is None:
                raise fail(row, f"null, but '{name}' is an integer ({kind}) column, which cannot hold nulls")
            if not low <= v <= high:
                raise fail(row, f"{{value}} is out of the {64 if kind == 'long' else 32}-bit integer range", v)
            return v

        return to_int
    if kind in FLOAT_TYPES:

        def to_float(v: Any, row: int) -> float | None:
            t = type(v)
            if t is float:
                pass
            elif v is None:
                return None
            elif t is int or t is bool:
                try:
                    v = float(v)
                except OverflowError:
                    raise fail(row, f"{{value}} is out of the range of a {kind}", v) from None
            elif t is str:
                converted = _float_of_str(v, text)
                if converted is None:
                    raise fail(row, f"expected a number ({kind}), got {{value}}", _Shown(v))
                v = converted
            else:
                raise fail(row, f"expected a number ({kind}), got {{value}}", _Shown(v))
            if v != v:
                return None
            if math.isinf(v):
                raise fail(row, "{value} is not a finite number", v)
            return v

        return to_float
    if kind == "string":

        def to_str(v: Any, row: int) -> str | None:
            t = type(v)
            if t is str or v is None:
                return v
            if t is float and v != v:
                return None
            if t in (int, float, bool):
                return str(v)  # read as its text (MLflow hands the number itself to the model)
            raise fail(row, "expected a string, got {value}", _Shown(v))

        return to_str
    if kind == "boolean":

        def to_bool(v: Any, row: int) -> bool:
            t = type(v)
            if t is bool:
                return v
            if t is str and text:
                word = v.strip()
                if word in CSV_TRUE or word in CSV_FALSE:
                    return word in CSV_TRUE
                number = _float_of_str(word, True) if word else None
                if number in (0.0, 1.0):
                    return number == 1.0
            elif t is str:
                word = v.strip().lower()
                if word in TEXT_TRUE or word in TEXT_FALSE:
                    return word in TEXT_TRUE
            elif (t is int or t is float) and v in (0, 1):
                return v == 1
            elif v is None or (t is float and v != v):
                raise fail(row, f"null, but '{name}' is a boolean column, which cannot hold nulls")
            raise fail(row, "expected true or false, got {value}", _Shown(v))

        return to_bool
    return lambda v, row: v  # other types (bytes), and datetimes (read a column at a time), go on as sent


def _datetimes(column: Column, values: list[Any], source: str) -> list[str | None]:
    """A datetime column read as MLflow reads it from `source` (serving/dates.py): ISO text."""
    if source == "csv":
        raise BadInput(
            f"column '{column.name}' is a datetime column, which CSV cannot carry to this model (MLflow's CSV "
            "reading takes no datetime type): send JSON or Parquet"
        )
    read = {"json": dates.from_frame, "tensors": dates.from_tensor, "parquet": dates.from_parquet}[source]
    try:
        return read(values)
    except dates.DateProblem as exc:
        where = f"column '{column.name}' row {exc.row}: "
        shown = _Shown(exc.value) if exc.shown == "json" else _Repr(exc.value)
        raise BadInput(
            where + exc.problem.format(value=shown),
            logged=where + exc.problem.format(value=f"<{_json_type(exc.value)}, not logged>"),
        ) from None


def _int_of_str(v: str) -> int | None:
    """As pandas' astype(int64) reads a string: Python's int() (sign, spaces, digit separators)."""
    try:
        return int(v)
    except ValueError:
        return None


def _text_int(v: str) -> int | None:
    """As pandas reads an integer column of a CSV: an integer, or a number with nothing after the point."""
    if "_" in v:
        return None
    try:
        return int(v)
    except ValueError:
        pass
    try:
        number = float(v)
    except ValueError:
        return None
    return int(number) if number.is_integer() else None


def _float_of_str(v: str, text: bool) -> float | None:
    """Python's float() (pandas' astype); CSV numbers without digit separators (pandas' reader)."""
    if text and "_" in v:
        return None
    try:
        return float(v)
    except ValueError:
        return None


def _check_csv_booleans(column: Column, values: list[Any]) -> None:
    """pandas reads a boolean CSV column as words (true/false) or as numbers (1/0), not a mix."""
    words = {v.strip() in CSV_TRUE or v.strip() in CSV_FALSE for v in values if isinstance(v, str)}
    if len(words) > 1:
        raise BadInput(
            f"column '{column.name}': mixes the words true/false with the numbers 1/0; "
            "a CSV boolean column holds one or the other"
        )


# Arrow types MLflow's schema enforcement converts to each column type (the safe conversions of
# mlflow.models.utils._enforce_mlflow_datatype, on the dtypes pandas reads Parquet into), and the
# one to send.
PARQUET_HINT = {"long": "int64", "integer": "int32", "double": "double", "float": "float", "string": "string",
                "boolean": "bool", "datetime": "timestamp[us] without a time zone (UTC times)"}  # fmt: skip
PARQUET_TYPES = {
    "long": {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32"},
    "integer": {"int8", "int16", "int32", "uint8", "uint16"},
    "double": {"halffloat", "float", "double", "int8", "int16", "int32", "uint8", "uint16", "uint32"},
    "float": {"halffloat", "float"},
    "string": {"string", "large_string", "string_view", "null", "dictionary<values=string, indices=int32, ordered=0>"},
    "boolean": {"bool"},
    "datetime": {
        "timestamp[s]",
        "timestamp[ms]",
        "timestamp[us]",
        "timestamp[ns]",
        "date32[day]",
        "date64[ms]",
        "null",
    },
}


def _check_parquet_type(column: Column, arrow_type: str, values: list[Any]) -> None:
    allowed = PARQUET_TYPES.get(column.type)
    if allowed is None or arrow_type in allowed:
        return
    if arrow_type in ("int64", "uint64") and column.type in FLOAT_TYPES and all(v in (0, 1) for v in values):
        return  # MLflow's one exception: 0/1 integers may be read as floats
    if arrow_type == "int64" and column.type in FLOAT_TYPES and any(v is None for v in values):
        return  # pandas reads an int64 column with nulls as float64, which MLflow accepts
    raise BadInput(
        f"column '{column.name}': Parquet type {arrow_type} cannot be read as {column.type}; "
        f"send {PARQUET_HINT[column.type]}"
    )


_NOT_SHOWN = object()


def json_text(v: Any, limit: int) -> str:
    """The start of a sent value's JSON text, for a message."""
    try:
        return orjson.dumps(v).decode()[:limit]
    except TypeError:  # not JSON, or nested deeper than orjson goes: reprlib stops at a few levels
        return reprlib.repr(v)[:limit]


def _shown(v: Any) -> str:
    return f"{_json_type(v)} {json_text(v, 60)}"


class _Shown:
    """A sent value as a message shows it (its JSON type and the start of its JSON text); the log
    keeps only its type."""

    def __init__(self, v: Any):
        self.v = v

    def __format__(self, spec: str) -> str:
        return _shown(self.v)


class _Repr(_Shown):
    def __format__(self, spec: str) -> str:
        return repr(self.v)


def _count(items: Sized, noun: str) -> str:
    """'1 key', '3 keys': what the log says of names a client sent (a name may be a value sent astray)."""
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _json_type(v: Any) -> str:
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "list", dict: "object"}.get(
        type(v), "null" if v is None else type(v).__name__
    )
