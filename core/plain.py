"""Values as plain Python and JSON data: numpy scalars as the Python value they hold, nested
containers as dicts and lists. One rule for every report, message and table that shows a value.

(tasks/data/canonical.py has its own `_canonical_value`: the form a snapshot's hash reads,
stricter on purpose, e.g. whole floats as ints.)
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Any

import numpy as np


def plain(value: Any) -> Any:
    """A numpy scalar as the Python value it holds (so messages read 2, not np.int64(2)); any
    other value as it is."""
    return value.item() if isinstance(value, np.generic) else value


def plain_list(values: Any) -> list[Any]:
    return [plain(v) for v in values]


def plain_or_repr(value: Any) -> Any:
    """A JSON scalar as it is (numpy scalars as theirs), anything else as its repr: a table cell
    that never fails to serialise."""
    value = plain(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def jsonable(value: Any) -> Any:
    """Nested dicts, lists and tuples as JSON data: keys as strings, enums as their values, numpy
    scalars as Python's, NaN and infinities as null (JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, StrEnum):
        return value.value
    value = plain(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
