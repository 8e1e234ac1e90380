"""A table's canonical form and its content hash: what a snapshot's id is a function of.

The id must not depend on how pandas or a file format happened to store the data (CSV or
Parquet, numpy or nullable or Arrow dtypes, a zone's name, column order, the process's memory
addresses or hash seed): `canonicalize` reduces every dtype to a few, and `content_hash` hashes
their bytes. Kept apart from tasks/data/snapshot.py so that the gate and the seen-rows keys can use it
without the snapshot store (and Prefect).
"""

from __future__ import annotations

import hashlib
import json
from datetime import date, datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from core.errors import DataError

FORMAT = "shipway.snapshot/v1"


def canonicalize(df: pd.DataFrame) -> pd.DataFrame:
    """Columns sorted by name; dtypes reduced to int64, float64, bool, datetime64[us],
    datetime64[us, UTC] and str (see `canonical_column`).

    Integers with nulls become float64 (as a CSV reader would make them), so a dataset gets the
    same id whatever file format it arrived in.
    """
    if df.shape[1] == 0:
        raise DataError("data has no columns")
    if len(df) == 0:
        raise DataError("data has no rows")
    names = [str(c) for c in df.columns]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(f"data has repeated column names: {', '.join(repeated)}")
    df = df.set_axis(names, axis=1)
    return pd.DataFrame({name: canonical_column(df[name]) for name in sorted(names)})


def canonical_column(s: pd.Series) -> pd.Series:
    """One column in its canonical dtype, a function of its values only (never of how pandas or a
    file format happened to store them):

    - booleans and integers (numpy or nullable) as bool / int64, or float64 when they hold nulls;
      floats (numpy or nullable) as float64, every null a NaN;
    - naive datetimes as datetime64[us] (wall-clock times, no zone; finer digits are cut);
      zone-aware ones as the same instants in UTC, datetime64[us, UTC]: the zone's name is not part
      of the identity, since an offset in a CSV cannot carry one, mixed offsets have none, and
      the model's date parts read UTC anyway (tasks/features.py);
    - durations as float64 seconds: a number to the model;
    - text as str; object and categorical columns by what they hold: numbers, booleans, dates,
      durations as above, anything else as text, nested values (lists, dicts, arrays: what
      Parquet's list and struct columns give back) as canonical JSON text (see `_text`). A
      categorical of numbers is numbers: Parquet gives it back as numbers, and a CSV has no
      categories.
    """
    s = s.reset_index(drop=True)
    dtype = s.dtype
    if isinstance(dtype, pd.ArrowDtype):  # pandas' Arrow-backed columns: as pyarrow reads them into numpy
        return canonical_column(pa.array(s).to_pandas().rename(s.name))
    if isinstance(dtype, pd.SparseDtype):
        return canonical_column(s.sparse.to_dense())
    if pd.api.types.is_bool_dtype(dtype):
        return s.astype("float64") if s.hasnans else s.astype("bool")
    if pd.api.types.is_integer_dtype(dtype):
        return s.astype("float64") if s.hasnans else s.astype("int64")
    if pd.api.types.is_float_dtype(dtype):
        return s.astype("float64")
    if pd.api.types.is_datetime64_any_dtype(dtype):
        try:
            if isinstance(dtype, pd.DatetimeTZDtype):
                return s.dt.tz_convert("UTC").dt.as_unit("us")
            return s.dt.as_unit("us")
        except (OverflowError, pd.errors.OutOfBoundsDatetime):
            raise DataError(f"column '{s.name}' has dates beyond what microseconds can hold") from None
    if pd.api.types.is_timedelta64_dtype(dtype):
        return s.dt.total_seconds()
    if isinstance(dtype, pd.CategoricalDtype):
        if s.isna().all():  # no values: the type of its categories, as Parquet keeps such a column
            return canonical_column(pd.Series(dtype.categories)).iloc[:0].reindex(range(len(s))).rename(s.name)
        return _canonical_objects(s.astype("object"))
    if pd.api.types.is_string_dtype(dtype) or dtype == np.dtype(object):
        return _canonical_objects(s)
    if isinstance(dtype, pd.PeriodDtype | pd.IntervalDtype) or dtype.kind == "c":
        return _texts(s.astype("object"))
    raise DataError(f"column '{s.name}' has unsupported dtype {dtype}")


def _canonical_objects(s: pd.Series) -> pd.Series:
    """A text or object column by what it holds (Python lists and records build such columns)."""
    inferred = pd.api.types.infer_dtype(s, skipna=True)
    if inferred in ("string", "empty"):
        return s.astype("str")
    if inferred == "boolean":
        return canonical_column(s.astype("boolean"))
    if inferred in ("integer", "floating", "mixed-integer-float", "decimal"):
        return canonical_column(pd.to_numeric(s.astype("object")))
    if inferred == "timedelta":
        return canonical_column(pd.to_timedelta(s))
    if inferred in ("datetime", "datetime64", "date"):
        zoned = {getattr(v, "tzinfo", None) is not None for v in s.dropna()}
        if len(zoned) == 1:  # all naive or all zone-aware (any zones: as UTC); a mix stays text
            try:
                return canonical_column(pd.to_datetime(s, utc=zoned == {True}))
            except (ValueError, TypeError, OverflowError):
                pass  # dates pandas cannot hold: kept as their text
    return _texts(s)


def _texts(s: pd.Series) -> pd.Series:
    return s.map(_text, na_action="ignore").astype("str")


def _text(value: Any) -> str:
    """A value as text: strings as they are, nested values as JSON with sorted keys, other values as str()."""
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple | dict | set | frozenset | np.ndarray):
        return json.dumps(_canonical_value(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return str(value)


def _canonical_value(value: Any) -> Any:
    """A nested value as plain JSON data, the same before and after a Parquet round trip: Parquet
    gives lists back as arrays (of floats when they held a null), and structs back with every key of
    the column, null where a record had none. So whole floats are ints, NaN is null, a dict's null
    entries are left out, and sets are sorted."""
    if isinstance(value, dict):
        return {str(k): _canonical_value(v) for k, v in value.items() if not _is_null(v)}
    if isinstance(value, set | frozenset):
        return sorted((_canonical_value(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(value, list | tuple | np.ndarray):
        return [_canonical_value(v) for v in value]
    if isinstance(value, np.datetime64):
        value = None if np.isnat(value) else pd.Timestamp(value)
    elif isinstance(value, np.generic):
        value = value.item()
    if _is_null(value):
        return None
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) < 2**53 else value
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def _is_null(value: Any) -> bool:
    return value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and value != value)


def content_hash(df: pd.DataFrame) -> str:
    """sha256 over the canonical frame: row count, then each column's name, dtype and values."""
    h = hashlib.sha256(f"{FORMAT}\n{len(df)}\n".encode())
    for name in df.columns:
        s = df[name]
        h.update(f"{name}\0{s.dtype}\0".encode())
        if s.dtype == "str":
            _hash_strings(h, s)
            continue
        if isinstance(s.dtype, pd.DatetimeTZDtype):  # its numpy form is Timestamp objects: hash the instants
            s = s.dt.tz_convert("UTC").dt.tz_localize(None)
        values = s.to_numpy()
        if values.dtype.kind == "M":
            values = values.view("int64")
        elif values.dtype.kind == "f" and np.isnan(values).any():
            values = np.where(np.isnan(values), np.nan, values)  # one NaN bit pattern
        elif values.dtype.kind not in "biuf":
            raise DataError(f"column '{name}' is not canonical ({s.dtype}): canonicalize the frame first")
        h.update(np.ascontiguousarray(values).tobytes())
    return h.hexdigest()


def _hash_strings(h: Any, s: pd.Series) -> None:
    array = pa.array(s, type=pa.large_string(), from_pandas=True)
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    h.update(np.packbits(s.isna().to_numpy()).tobytes())
    _, offsets_buf, data_buf = array.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[array.offset : array.offset + len(array) + 1]
    h.update((offsets - offsets[0]).tobytes())
    h.update(memoryview(data_buf)[offsets[0] : offsets[-1]])
