"""Values as plain data: one helper (core/plain.py) for every report, message and table."""

from __future__ import annotations

import ast
import json
import math

import numpy as np

from core.plain import jsonable, plain, plain_list, plain_or_repr
from core.vocabulary import Verdict
from tests.conftest import REPO

CODE = ["core", "configs", "expectations", "flows", "serving", "tasks"]


def test_numpy_scalars_read_as_the_python_values_they_hold():
    assert type(plain(np.int64(2))) is int and f"{plain(np.int64(2))!r}" == "2"
    assert type(plain(np.float32(0.5))) is float and plain("a") == "a"
    assert plain_list(np.array([1, 2])) == [1, 2] and all(type(v) is int for v in plain_list(np.array([1, 2])))


def test_a_table_cell_is_a_json_scalar_or_a_repr():
    assert plain_or_repr(np.float64(0.1)) == 0.1 and plain_or_repr(None) is None
    assert plain_or_repr((10, 5)) == "(10, 5)" and plain_or_repr(np.array([1, 2])) == "array([1, 2])"


def test_nested_values_become_json_with_nan_as_null():
    value = {1: [np.int64(3), (np.float64("nan"), math.inf)], "v": Verdict.FAIL}
    assert jsonable(value) == {"1": [3, [None, None]], "v": "fail"}
    json.dumps(jsonable(value), allow_nan=False)


def test_no_other_module_keeps_its_own_copy():
    copies = [
        f"{path.relative_to(REPO)}:{node.name}"
        for package in CODE
        for path in (REPO / package).rglob("*.py")
        if path != REPO / "core" / "plain.py"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef) and node.name.lstrip("_") in {"plain", "plain_list", "jsonable"}
    ]
    assert copies == [], "use core/plain.py"
