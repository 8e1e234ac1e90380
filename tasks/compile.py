"""Compile a fitted sklearn Pipeline to ONNX and prove it answers like the original.

sklearn's `Pipeline.predict` on one row costs milliseconds, nearly all of it input validation
and column handling; the same pipeline in onnxruntime answers in tens of microseconds. A
compiled form is only kept when it matches sklearn on the holdout set: predictions identical
(compared as the JSON the gateway would send) and probabilities within PROBA_TOLERANCE.

Numbers travel as float64 end to end: skl2onnx's own imputer casts medians to float32 (and
onnxruntime has no float64 Imputer), so numeric SimpleImputers get a float64 IsNaN/Where graph
here. String nulls reach ONNX as NULL_TOKEN, which the compiled string imputers replace.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import orjson
import pandas as pd

from serving import NULL_TOKEN, frame_feeds, is_numeric, session

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline

PROBA_TOLERANCE = 1e-6
ONNX_OPSET = {"": 17, "ai.onnx.ml": 3}


@dataclass(frozen=True)
class Compiled:
    onnx: bytes | None  # None: serve the sklearn pipeline
    status: str  # "passed (...)", "unsupported: ...", "parity failed: ..."

    @property
    def ok(self) -> bool:
        return self.onnx is not None


def compile_pipeline(model: Pipeline, X_holdout: pd.DataFrame) -> Compiled:
    """ONNX bytes of `model` when the converter supports it and parity holds on `X_holdout`."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType, StringTensorType

    unsupported = [c for c in X_holdout.columns if not (is_numeric(X_holdout[c].dtype) or _is_text(X_holdout[c]))]
    if unsupported:
        return Compiled(
            None, f"unsupported: column types {', '.join(f'{c}:{X_holdout[c].dtype}' for c in unsupported)}"
        )
    _register_float64_imputer()
    graph = _with_null_token(model)
    types = [
        (c, DoubleTensorType([None, 1]) if is_numeric(X_holdout[c].dtype) else StringTensorType([None, 1]))
        for c in X_holdout.columns
    ]
    try:
        onx = convert_sklearn(
            graph, initial_types=types, options={id(graph.steps[-1][1]): {"zipmap": False}}, target_opset=ONNX_OPSET
        ).SerializeToString()
        labels, proba = session(onx).run(None, frame_feeds(X_holdout))
    except Exception as exc:  # the converter or runtime lacks an operator for this model
        return Compiled(None, f"unsupported: {type(exc).__name__}: {_first_line(exc)}")
    expected = model.predict(X_holdout)
    if orjson.dumps(labels.tolist()) != orjson.dumps(expected.tolist()):
        differ = int(np.sum(labels.reshape(-1) != np.asarray(expected)))
        return Compiled(None, f"parity failed: {differ} of {len(expected)} holdout predictions differ")
    delta = float(np.max(np.abs(proba - model.predict_proba(X_holdout))))
    if not delta <= PROBA_TOLERANCE:
        return Compiled(None, f"parity failed: probabilities differ by up to {delta:.3g} (> {PROBA_TOLERANCE:g})")
    return Compiled(onx, f"passed: {len(expected)} holdout rows, predictions equal, max |dp| {delta:.2g}")


def _is_text(s: pd.Series) -> bool:
    return pd.api.types.is_string_dtype(s.dtype) or (s.dtype == object and s.dropna().map(type).eq(str).all())


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:160]


def _with_null_token(model: Pipeline) -> Pipeline:
    """A copy whose string imputers look for NULL_TOKEN (skl2onnx needs a string marker, not NaN)."""
    from sklearn.impute import SimpleImputer

    graph = copy.deepcopy(model)
    for step in _walk(graph):
        if isinstance(step, SimpleImputer) and step.statistics_.dtype == object:
            step.missing_values = NULL_TOKEN
    return graph


def _walk(estimator):
    yield estimator
    children = []
    if hasattr(estimator, "steps"):
        children = [s for _, s in estimator.steps]
    elif hasattr(estimator, "transformers_"):
        children = [t for _, t, _ in estimator.transformers_]
    for child in children:
        if not isinstance(child, str):
            yield from _walk(child)


def _register_float64_imputer() -> None:
    """Numeric SimpleImputer as IsNaN/Where on float64, so medians keep every bit."""
    from skl2onnx import update_registered_converter
    from skl2onnx.common._registration import get_converter, get_shape_calculator
    from skl2onnx.common.data_types import StringTensorType
    from skl2onnx.operator_converters.common import concatenate_variables
    from skl2onnx.proto import onnx_proto
    from sklearn.impute import SimpleImputer

    original = get_converter("SklearnSimpleImputer")
    if getattr(getattr(original, "_fct", original), "shipway", False):
        return

    def convert(scope, operator, container):
        imputer = operator.raw_operator
        nan_marker = isinstance(imputer.missing_values, float) and np.isnan(imputer.missing_values)
        if isinstance(operator.inputs[0].type, StringTensorType) or not nan_marker:
            return original(scope, operator, container)
        x = concatenate_variables(scope, operator.inputs, container)
        fill = scope.get_unique_variable_name("impute_values")
        values = imputer.statistics_.astype(np.float64)
        container.add_initializer(fill, onnx_proto.TensorProto.DOUBLE, [1, values.size], values.tolist())
        missing = scope.get_unique_variable_name("is_missing")
        container.add_node("IsNaN", [x], [missing], name=scope.get_unique_operator_name("IsNaN"))
        container.add_node(
            "Where", [missing, fill, x], [operator.outputs[0].full_name], name=scope.get_unique_operator_name("Where")
        )

    convert.shipway = True
    update_registered_converter(
        SimpleImputer, "SklearnSimpleImputer", get_shape_calculator("SklearnSimpleImputer"), convert
    )
