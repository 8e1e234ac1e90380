"""A snapshot's id is a function of its data alone, for every dtype (property tests, Hypothesis).

Random frames of every column kind a user's table can hold (numbers and nullable numbers,
booleans, text, categories, naive datetimes of every unit, zone-aware ones in several zones,
durations, mixed objects, dates as Python objects, nested lists and records), with nulls, get
the same id hashed twice, in another Python process, after the project's own snapshot write and
read, and after a Parquet file round trip through the project's reader; a changed value changes it.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from configs.settings import Settings
from tasks.data.snapshot import canonicalize, content_hash, read_snapshot, read_source, write_snapshot
from tasks.data.storage import LocalStore
from tests.conftest import embedded

MICROS = (-(2**31) * 10**6, 2**32 * 10**6)  # 1901..2106: within every datetime unit's range
ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata")
QUICK = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass(frozen=True)
class Kind:
    element: st.SearchStrategy
    build: Callable[[list], pd.Series]
    nulls: bool = True
    parquet: bool = True  # pandas can write it to a Parquet file


def _nullable(values: list, dtype: str) -> pd.Series:
    return pd.Series(pd.array(values, dtype=dtype))


def _times(values: list, unit: str) -> pd.Series:
    return pd.Series(pd.to_datetime(values, unit="us")).astype(f"datetime64[{unit}]")


def _zoned(zone: str, unit: str) -> Callable[[list], pd.Series]:
    return lambda values: _times(values, unit).dt.tz_localize("UTC").dt.tz_convert(zone)


def _objects(values: list) -> pd.Series:
    return pd.Series(values, dtype=object)


KINDS: dict[str, Kind] = {
    "int64": Kind(st.integers(-(2**62), 2**62), lambda v: pd.Series(v, dtype="int64"), nulls=False),
    "Int64": Kind(st.integers(-(2**40), 2**40), lambda v: _nullable(v, "Int64")),
    "float64": Kind(st.floats(width=64), lambda v: pd.Series([np.nan if x is None else x for x in v], dtype="float64")),
    "Float64": Kind(st.floats(-1e9, 1e9), lambda v: _nullable(v, "Float64")),
    "bool": Kind(st.booleans(), lambda v: pd.Series(v, dtype="bool"), nulls=False),
    "boolean": Kind(st.booleans(), lambda v: _nullable(v, "boolean")),
    "str": Kind(st.text(max_size=6), lambda v: pd.Series(v, dtype="str")),
    "string": Kind(st.text(max_size=6), lambda v: _nullable(v, "string")),
    "category": Kind(st.sampled_from(["a", "b", "", "Zürich"]), lambda v: pd.Series(pd.Categorical(v))),
    "category of numbers": Kind(st.integers(0, 3), lambda v: pd.Series(pd.Categorical(v))),
    **{f"datetime64[{u}]": Kind(st.integers(*MICROS), lambda v, u=u: _times(v, u)) for u in ("s", "ms", "us", "ns")},
    **{f"datetime64[{u}, {zone}]": Kind(st.integers(*MICROS), _zoned(zone, u)) for zone in ZONES for u in ("us", "ns")},
    "timedelta": Kind(st.integers(-(10**15), 10**15), lambda v: pd.Series(pd.to_timedelta(v, unit="us"))),
    "mixed": Kind(
        st.one_of(st.integers(-5, 5), st.text(max_size=3), st.floats(-1e3, 1e3), st.booleans()), _objects, parquet=False
    ),
    "date objects": Kind(st.dates(dt.date(1901, 1, 1), dt.date(2100, 12, 31)), _objects),
    "zone-aware objects": Kind(
        st.datetimes(dt.datetime(1901, 1, 1), dt.datetime(2100, 1, 1), timezones=st.sampled_from([dt.UTC])),
        _objects,
        parquet=False,  # pyarrow writes Python datetimes of a zone; the reader gives them back as Timestamps
    ),
    "lists": Kind(st.lists(st.one_of(st.none(), st.integers(-100, 100)), max_size=3), _objects),
    "records": Kind(
        st.fixed_dictionaries({"a": st.one_of(st.none(), st.integers(-100, 100))}, optional={"b": st.text(max_size=3)}),
        _objects,
    ),
}


@st.composite
def frames(draw, parquet: bool = False) -> pd.DataFrame:
    """A frame of 1-12 rows and 1-5 columns of random kinds (with nulls where the kind has them)."""
    rows = draw(st.integers(1, 12))
    names = [n for n, k in KINDS.items() if k.parquet or not parquet]
    chosen = draw(st.lists(st.sampled_from(names), min_size=1, max_size=5, unique=True))
    columns = {}
    for name in chosen:
        kind = KINDS[name]
        element = st.one_of(st.none(), kind.element) if kind.nulls else kind.element
        columns[name] = kind.build(draw(st.lists(element, min_size=rows, max_size=rows)))
    return pd.DataFrame(columns)


def snapshot_id(frame: pd.DataFrame) -> str:
    return content_hash(canonicalize(frame))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> tuple[Settings, Path]:
    root = tmp_path_factory.mktemp("properties")
    return embedded(root), root


@QUICK
@given(frames())
def test_the_same_frame_hashes_to_the_same_id_whatever_its_column_order(frame):
    first = snapshot_id(frame)
    assert snapshot_id(frame) == first
    assert snapshot_id(frame.copy(deep=True)) == first
    assert snapshot_id(frame[frame.columns[::-1]]) == first


@QUICK
@given(frames(), st.data())
def test_a_changed_value_changes_the_id(frame, data):
    column = data.draw(st.sampled_from(list(frame.columns)))
    row = data.draw(st.integers(0, len(frame) - 1))
    changed = frame.copy()
    changed[column] = _with_changed_value(frame[column], row)
    assert snapshot_id(changed) != snapshot_id(frame), (column, frame[column].iloc[row], changed[column].iloc[row])


def _with_changed_value(s: pd.Series, row: int) -> pd.Series:
    """`s` with one value changed to one that differs in the canonical form too (a nanosecond would not)."""
    values = s.astype(object).tolist()
    present = [v for v in values if not _null(v)]
    values[row] = _other(values[row], present)
    if isinstance(s.dtype, pd.CategoricalDtype):
        return pd.Series(pd.Categorical(values))
    if s.dtype == object or not present:  # a column of nulls only gets a text value: as objects
        return pd.Series(values, dtype=object)
    return pd.Series(values, dtype=s.dtype)


def _other(value: object, present: list) -> object:
    if _null(value):
        return present[0] if present else "x"
    if isinstance(value, bool):
        return not value
    if isinstance(value, pd.Timestamp | pd.Timedelta):
        return value + pd.Timedelta(seconds=1)
    if isinstance(value, dt.date):
        return value + dt.timedelta(days=1)
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 1 if math.isfinite(value) and abs(value) < 1e15 else 0.0
    if isinstance(value, str):
        return value + "!"
    if isinstance(value, list):
        return [*value, 7]
    if isinstance(value, dict):
        return {**value, "a": (value.get("a") or 0) + 1}
    raise AssertionError(f"no change for {value!r}")


def _null(value: object) -> bool:
    return value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and math.isnan(value))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames())
def test_a_snapshot_written_and_read_back_verifies_and_keeps_its_id(workspace, frame):
    _, root = workspace
    store = LocalStore(root / "snapshots")
    written = write_snapshot(frame, "test", store)
    assert written.id == snapshot_id(frame)
    again = read_snapshot(store, written.id)  # re-hashes the stored file: refuses it if the id moved
    assert again.id == written.id
    pd.testing.assert_frame_equal(again.frame, written.frame)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames(parquet=True))
def test_a_parquet_file_of_the_frame_read_as_a_source_has_the_frame_s_id(workspace, frame):
    s, root = workspace
    path = root / "table.parquet"
    frame.to_parquet(path)
    assert snapshot_id(read_source(str(path), s)) == snapshot_id(frame)


def test_ids_are_the_same_in_another_process(tmp_path):
    """Another interpreter (another hash seed, other memory addresses) computes the same ids."""
    found: list[pd.DataFrame] = []

    @settings(max_examples=12, deadline=None, database=None)
    @given(frames())
    def collect(frame):
        found.append(frame)

    collect()
    (tmp_path / "frames.pkl").write_bytes(pickle.dumps(found))
    script = (
        "import pickle, sys; from tasks.data.canonical import canonicalize, content_hash; "
        "print('\\n'.join(content_hash(canonicalize(f)) for f in pickle.load(open(sys.argv[1], 'rb'))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "frames.pkl")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[2],
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [snapshot_id(f) for f in found]
