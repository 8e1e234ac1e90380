"""Which rows a version trained on, as content keys, so that a later candidate's holdout can leave
them out: a nightly retrain on a fresh sample of the same source shares most of its holdout rows
with Production's training rows, and Production scores the rows it learned better than it will
score tomorrow's.

A key is a 64-bit hash of one row's values over named columns (the features and the target) in a
canonical form: columns by name; every number (integer, float, boolean) as a single-precision
float, so that the same row read from a CSV or a Parquet file, as 3 or as 3.0, gets the same key
(a CSV parser may differ from the binary value in the last bit of a double); text as text; times
as UTC instants. Rows that agree on every column to about seven significant digits share a key:
the gate then leaves out a row too many, never compares on a row Production saw.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from tasks.data.canonical import canonical_column

FORMAT = "shipway.training_rows/v1"
ARTIFACT = "quality/training_rows.npz"


@dataclass(frozen=True)
class Seen:
    """Rows a Production version trained on, as keys over `columns`; `keys` None: not known, so
    every row counts as seen."""

    columns: tuple[str, ...]
    keys: np.ndarray | None  # sorted, unique uint64
    source: str  # where they come from, in words for the report

    def unseen(self, frame: pd.DataFrame) -> tuple[np.ndarray, str]:
        """Which rows of `frame` are not among these (a boolean mask), and why none can be told
        apart when that is so."""
        if self.keys is None:
            return np.zeros(len(frame), dtype=bool), self.source
        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            return np.zeros(len(frame), dtype=bool), (
                f"{self.source} are keyed on columns this holdout lacks ({', '.join(missing[:5])})"
            )
        return ~np.isin(row_keys(frame[list(self.columns)]), self.keys), ""


def row_keys(frame: pd.DataFrame) -> np.ndarray:
    """One uint64 per row over every column of `frame`, the same for the same values (module doc)."""
    names = sorted(map(str, frame.columns))
    canonical = frame.set_axis(list(map(str, frame.columns)), axis=1)
    keyed = pd.DataFrame({name: _key_column(canonical[name]) for name in names})
    return pd.util.hash_pandas_object(keyed, index=False).to_numpy(dtype=np.uint64)


def _key_column(s: pd.Series) -> pd.Series:
    s = canonical_column(s)
    if pd.api.types.is_datetime64_any_dtype(s.dtype):
        instants = s.dt.tz_convert(None) if getattr(s.dtype, "tz", None) else s
        return instants.dt.as_unit("us").astype("int64")
    if pd.api.types.is_bool_dtype(s.dtype) or pd.api.types.is_numeric_dtype(s.dtype):
        values = s.to_numpy(dtype=np.float64).astype(np.float32) + np.float32(0)  # -0.0 is 0.0
        return pd.Series(np.where(np.isnan(values), np.float32("nan"), values))  # one NaN
    return s


def keys_of(frame: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """The sorted unique keys of `frame`'s rows over `columns`."""
    return np.unique(row_keys(frame[list(columns)]))


def dumps(keys: np.ndarray, columns: Sequence[str]) -> bytes:
    """The artifact: keys and the columns they cover (8 bytes a row, uncompressed: hashes do not compress)."""
    out = io.BytesIO()
    np.savez(out, format=np.array(FORMAT), columns=np.array(list(columns), dtype=str), keys=keys.astype(np.uint64))
    return out.getvalue()


def loads(data: bytes, source: str) -> Seen:
    with np.load(io.BytesIO(data), allow_pickle=False) as stored:
        if str(stored["format"]) != FORMAT:
            raise ValueError(f"{ARTIFACT} is {stored['format']}, not {FORMAT}")
        return Seen(tuple(str(c) for c in stored["columns"]), np.unique(stored["keys"]), source)
