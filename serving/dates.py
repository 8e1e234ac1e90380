"""A request's datetime column, read as MLflow 3's scoring server reads it.

MLflow types a `datetime` column of the signature in one of four ways, by where the values came
from (mlflow/utils/proto_json_utils.py; mlflow/models/utils.py `_enforce_mlflow_datatype`):

- `dataframe_split`, `dataframe_records`: pandas builds the column and `pd.to_datetime` reads it
  whole: text in the format of the column's first text (ISO 8601, or another pandas recognises),
  numbers as nanoseconds since 1970, null, NaN and "" as no time; a column that reads with a UTC
  offset is refused (the signature's datetime takes times without a zone).
- `instances`, `inputs`: numpy reads each value (`np.array(values, "datetime64[ns]")`): ISO 8601
  text (an offset converted to UTC), integers as nanoseconds since 1970, null as no time.
- CSV: refused whole (pandas' `read_csv` takes no datetime dtype).
- Parquet: timestamp columns without a zone, and dates; anything else refused.

The gateway makes the same calls, so the model is given the same instants (datetime64[ns]
without a zone, `Schema.frame`). A typed value is ISO 8601 text without an offset (nanoseconds
where the instant has them): the cache key, the prediction log and monitoring carry that text.
Where MLflow answers junk with a made-up instant, the gateway refuses (docs/compatibility.md):
a number past datetime64[ns]'s range (pandas makes it no time), a year past it in instances or
inputs (numpy wraps it around: 3000-01-01 becomes 1830-11-23), a boolean there (numpy: 1 ns).
"""

from __future__ import annotations

import re
from typing import Any, Literal

import numpy as np
import pandas as pd

NS = "datetime64[ns]"
RANGE = "out of the range of datetime64[ns] (1677-09-21 to 2262-04-11)"
SEND = "send ISO 8601 text such as 2024-05-31T14:00:00"
OFFSET = (
    "has a UTC offset; a datetime column takes times without one (as MLflow reads dataframe_split and "
    "dataframe_records): send it in UTC without the offset"
)
NO_FORMAT = {"", "now", "today", "NaT", "nat", "NAT", "NaN", "nan", "NAN"}  # pandas infers no format from these
LEADING_YEAR = re.compile(r"\s*([+-]?\d+)")
PLAIN_ROWS = 128  # past this, pandas' reading of a column costs less than checking each value's shape
PLAIN_ISO = re.compile(
    r"\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])"
    r"(?:(?P<sep>[T ])(?:[01]\d|2[0-3])(?P<minute>:[0-5]\d(?P<second>:[0-5]\d(?:\.(?P<fraction>\d{1,9}))?)?)?)?",
    re.ASCII,
)


class DateProblem(Exception):
    """Row `row`'s value cannot be a datetime: `problem` shows it where it says {value}, as
    `shown` says (repr: its Python text; json: its JSON type and text)."""

    def __init__(self, row: int, problem: str, value: Any, shown: str = "repr"):
        super().__init__(problem)
        self.row, self.problem, self.value, self.shown = row, problem, value, shown


def from_frame(values: list[Any]) -> list[str | None]:
    """`dataframe_split` and `dataframe_records`: the column as pandas reads it whole."""
    plain = _plain_iso(values) if len(values) <= PLAIN_ROWS else None
    if plain is not None:
        return texts(plain)
    try:
        stamps = _pandas(values)
    except Exception:  # pandas' errors for what it cannot read; MLflow answers them all 400
        past = next((i for i, v in enumerate(values) if _past_range(v)), None)  # refused alone or beside text
        if past is not None:
            raise DateProblem(past, f"{{value}} is {RANGE}", values[past]) from None
        raise _frame_problem(values, _first_failing(values)) from None
    if stamps.dt.tz is not None:
        row = next(i for i, v in enumerate(values) if _has_offset(v))
        raise DateProblem(row, f"{{value}} {OFFSET}", values[row])
    numbers = np.array([type(v) in (int, float) and v == v for v in values])
    lost = numbers & stamps.isna().to_numpy()  # a number pandas made no time of: past the range
    if lost.any():
        row = int(lost.argmax())
        raise DateProblem(row, f"{{value}} is {RANGE}", values[row])
    return texts(stamps.to_numpy())


def from_tensor(values: list[Any]) -> list[str | None]:
    """`instances` and `inputs`: each value as numpy reads it."""
    written = []  # (row, the year a text starts with) where numpy could wrap the year around
    for row, v in enumerate(values):
        kind = type(v)
        if kind is str:
            if not (v[4:5] == "-" and v[:4].isascii() and v[:4].isdigit() and 1677 < int(v[:4]) < 2262):
                leading = LEADING_YEAR.match(v)
                if leading:
                    written.append((row, int(leading.group(1))))
        elif kind is bool or kind is list or kind is dict:
            raise DateProblem(row, f"expected a date and time, got {{value}}: {SEND}", v, "json")
        elif kind is float and v != v:
            raise DateProblem(row, "NaN is not a date and time: send null for no time", v)
    try:
        stamps = np.array(values, NS)
    except Exception:
        raise _tensor_problem(values) from None
    read = stamps.astype("datetime64[Y]").astype(np.int64) + 1970
    for row, year in written:  # a year numpy wrapped around lands centuries away; an offset moves one by one
        if not np.isnat(stamps[row]) and abs(year - int(read[row])) > 1:
            raise DateProblem(row, f"{{value}} is {RANGE}", values[row])
    return texts(stamps)


def from_parquet(values: list[str | None]) -> list[str | None]:
    """Parquet timestamps without a zone and dates (their types checked already), as Arrow's text of
    them (serving.schema reads them so: JSON text the Shadow's process is sent too)."""
    plain = _plain_iso(values) if len(values) <= PLAIN_ROWS else None
    if plain is not None:
        return texts(plain)
    stamps = pd.to_datetime(pd.Series(values, dtype=object), format="ISO8601")
    try:
        return texts(stamps.dt.as_unit("ns").to_numpy())
    except (ValueError, OverflowError):
        row = next(i for i, v in enumerate(values) if v is not None and not _in_range(pd.Timestamp(v)))
        raise DateProblem(row, f"{{value}} is {RANGE}", values[row]) from None


def texts(stamps: np.ndarray) -> list[str | None]:
    """datetime64 values as ISO 8601 text, in whole seconds unless an instant has a fraction."""
    missing = np.isnat(stamps)
    present = stamps[~missing]
    unit: Literal["s", "us", "ns"] = next(
        (u for u in ("s", "us") if (present.astype(f"datetime64[{u}]") == present).all()), "ns"
    )
    text = np.datetime_as_string(stamps, unit).tolist()
    if not len(present) < len(stamps):
        return text
    return [None if gone else t for t, gone in zip(text, missing.tolist(), strict=True)]


def wire(stamps: pd.Series) -> list[str | None]:
    """A frame's datetime column as a client sends it to the model: ISO 8601 text without an offset,
    a zone-aware column's in UTC (the signature's datetime takes no zone)."""
    if stamps.dt.tz is not None:
        stamps = stamps.dt.tz_convert("UTC").dt.tz_localize(None)
    return texts(stamps.to_numpy())


def frame_column(values: list[str | None]) -> np.ndarray:
    """Typed values (ISO text without offset, None) as the datetime64[ns] column MLflow gives the model."""
    return np.array(values, NS)


def _plain_iso(values: list[Any]) -> np.ndarray | None:
    """The common case of a few rows at numpy's speed (pandas' reading has a fixed cost far above
    a one-row request's typing otherwise): text in one ISO 8601 shape without an offset (as the
    column's first text sets pandas' format), of years well inside datetime64[ns]'s range, or
    null. It reads the instants pandas would; None for anything else, which pandas then reads."""
    shape = None
    for v in values:
        if v is None:
            continue
        found = PLAIN_ISO.fullmatch(v) if type(v) is str else None
        if found is None or not 1677 < int(v[:4]) < 2262:  # years wholly inside the range: numpy wraps others
            return None
        seen = (found["sep"], found["minute"] is None, found["second"] is None, len(found["fraction"] or ""))
        if shape is None:
            shape = seen
        elif seen != shape:
            return None
    try:  # a day that does not exist (2023-02-30) is refused here and by pandas
        return np.array(values, NS if shape and shape[3] > 6 else "datetime64[us]")
    except ValueError:
        return None


def _pandas(values: list[Any]) -> pd.Series:
    """MLflow's reading of a dataframe column: `pd.to_datetime` of the whole column, in nanoseconds."""
    return pd.to_datetime(pd.Series(values)).dt.as_unit("ns")


def _first_failing(values: list[Any]) -> int:
    """The row where reading the column's first rows starts to fail (reading them all fails)."""
    low, high = 0, len(values) - 1
    while low < high:
        middle = (low + high) // 2
        try:
            _pandas(values[: middle + 1])
            low = middle + 1
        except Exception:
            high = middle
    return low


def _frame_problem(values: list[Any], row: int) -> DateProblem:
    v = values[row]
    if type(v) is bool or not isinstance(v, (str, int, float)):
        return DateProblem(row, f"expected a date and time, got {{value}}: {SEND}", v, "json")
    try:
        alone = _pandas([v])
    except (pd.errors.OutOfBoundsDatetime, OverflowError):
        return DateProblem(row, f"{{value}} is {RANGE}", v)
    except Exception:
        return DateProblem(row, f"expected a date and time, got {{value}}: {SEND}", v, "json")
    if alone.dt.tz is not None:  # the column's first time with an offset
        first = next(i for i, x in enumerate(values) if _has_offset(x))
        return DateProblem(first, f"{{value}} {OFFSET}", values[first])
    first = next((i for i, x in enumerate(values) if type(x) is str and x.strip() not in NO_FORMAT), row)
    if first >= row:
        return DateProblem(row, f"expected a date and time, got {{value}}: {SEND}", v, "json")
    return DateProblem(
        row,
        f"{{value}} is not in the format of row {first}: pandas reads a column in the format of its first "
        f"date, so send every date of a column in one format ({SEND})",
        v,
    )


def _past_range(v: Any) -> bool:
    """A number pandas reads as no time, or refuses, for want of range."""
    if type(v) not in (int, float) or v != v:
        return False
    try:
        return bool(_pandas([v]).isna().all())
    except Exception:
        return True


def _has_offset(v: Any) -> bool:
    if type(v) is not str:
        return False
    try:
        return _pandas([v]).dt.tz is not None
    except Exception:
        return False


def _tensor_problem(values: list[Any]) -> DateProblem:
    for row, v in enumerate(values):
        try:
            np.array([v], NS)
        except OverflowError:
            return DateProblem(row, f"{{value}} is {RANGE}", v)
        except Exception:
            return DateProblem(row, f"expected a date and time, got {{value}}: {SEND}", v, "json")
    return DateProblem(0, f"expected dates and times: {SEND}", None)


def _in_range(stamp: pd.Timestamp) -> bool:
    return pd.Timestamp.min <= stamp <= pd.Timestamp.max
