"""Compile a fitted sklearn Pipeline to ONNX and prove it answers like the original.

sklearn's `Pipeline.predict` on one row costs milliseconds, nearly all of it input validation
and column handling; the same pipeline in onnxruntime answers in tens of microseconds. A
compiled form is only kept when it matches sklearn on the holdout set: predictions identical
(compared as the JSON the gateway would send) and probabilities within PROBA_TOLERANCE.

Numbers travel as float64 end to end: skl2onnx's own imputer casts medians to float32 (and
onnxruntime has no float64 Imputer), so numeric SimpleImputers get a float64 IsNaN/Where graph
here. String nulls reach ONNX as NULL_TOKEN, which the compiled string imputers replace. A
decision threshold (training.threshold) is converted as what it is: the estimator's graph, then
the label taken from its probabilities with FixedThresholdClassifier's own >= comparison. Tree
ensembles (random forests, extra trees, gradient boosting, HistGradientBoosting) are converted by
tasks/training/compile_trees.py into float64 TreeEnsemble nodes, in the same graph as their preprocessing.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import pandas as pd

from serving import NULL_TOKEN, frame_feeds, session
from tasks.training import compile_trees

if TYPE_CHECKING:
    from onnx import ModelProto
    from skl2onnx.common._container import ModelComponentContainer
    from skl2onnx.common._topology import Operator, Scope, Variable
    from sklearn.pipeline import Pipeline

PROBA_TOLERANCE = 1e-6  # probabilities behind a label answer (ANSWER_TOLERANCE for tree ensembles)
ANSWER_TOLERANCE = 1e-9  # numbers that are the answer (regression values, probability rows), relative
ONNX_OPSET = {"": 17, "ai.onnx.ml": 3}


@dataclass(frozen=True)
class Compiled:
    onnx: bytes | None  # None: serve the sklearn pipeline
    status: str  # "passed (...)", "unsupported: ...", "parity failed: ..."

    @property
    def ok(self) -> bool:
        return self.onnx is not None


def compile_pipeline(model: Pipeline, X_holdout: pd.DataFrame, predict_fn: str = "predict") -> Compiled:
    """ONNX bytes of `model` when the converter supports it and parity holds on `X_holdout`.

    The gateway answers the graph's first output (labels or values) for `predict`, its second
    (probabilities) for `predict_proba`; what it answers must match sklearn's answer.
    """
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import DoubleTensorType, StringTensorType

    text = _text_vectorizers(model)
    if text:
        return Compiled(None, f"unsupported: free text ({text}): ONNX Runtime's tokenizer is not scikit-learn's")
    kinds = (_is_number, _is_text, _is_date)
    unsupported = [c for c in X_holdout.columns if not any(kind(X_holdout[c]) for kind in kinds)]
    if unsupported:
        return Compiled(
            None, f"unsupported: column types {', '.join(f'{c}:{X_holdout[c].dtype}' for c in unsupported)}"
        )
    _register_float64_imputer()
    _register_float64_stumps()
    _register_in_set()
    _register_date_parts()
    compile_trees.register()
    plain, threshold = _without_threshold(model)
    graph = _with_null_token(plain)
    types = [
        (c, StringTensorType([None, 1]) if _is_text(X_holdout[c]) else DoubleTensorType([None, 1]))
        for c in X_holdout.columns
    ]
    final = _final_estimator(graph)
    classifier = hasattr(final, "classes_")
    trees = compile_trees.has_trees(plain)
    try:
        onx = convert_sklearn(
            graph,
            initial_types=types,
            options={id(final): {"zipmap": False}} if classifier else None,
            target_opset=compile_trees.TREE_OPSET if trees else ONNX_OPSET,
        )
        if trees:
            onx = compile_trees.with_tree_opset(onx)
        onx = _named_like_columns(onx, list(X_holdout.columns))
        if threshold is not None:
            onx = _labels_at_threshold(onx, threshold, np.asarray(final.classes_))
        if classifier and np.asarray(final.classes_).dtype == bool:
            onx = _labels_as_booleans(onx)
        onx = onx.SerializeToString()
        outputs = session(onx).run(None, frame_feeds(X_holdout))
    except Exception as exc:  # the converter or runtime lacks an operator for this model
        return Compiled(None, f"unsupported: {type(exc).__name__}: {_first_line(exc)}")
    if not classifier:
        return _float_parity(onx, outputs[0].reshape(-1), model.predict(X_holdout), "predictions")
    labels, proba = outputs[0], outputs[1]
    expected_proba = model.predict_proba(X_holdout)
    if predict_fn == "predict_proba":
        return _float_parity(onx, proba, expected_proba, "probabilities")
    expected = model.predict(X_holdout)
    if orjson.dumps(labels.tolist()) != orjson.dumps(expected.tolist()):
        differ = int(np.sum(labels.reshape(-1) != np.asarray(expected)))
        return Compiled(None, f"parity failed: {differ} of {len(expected)} holdout predictions differ")
    delta = float(np.max(np.abs(proba - expected_proba)))
    tolerance = ANSWER_TOLERANCE if trees else PROBA_TOLERANCE  # float64 trees: as exact as the answers
    if not delta <= tolerance:
        return Compiled(None, f"parity failed: probabilities differ by up to {delta:.3g} (> {tolerance:g})")
    return Compiled(onx, f"passed: {len(expected)} holdout rows, predictions equal, max |dp| {delta:.2g}")


def _float_parity(onx: bytes, got: np.ndarray, expected: np.ndarray, what: str) -> Compiled:
    """Numbers the gateway answers: equal to sklearn's to ANSWER_TOLERANCE, relative."""
    expected = np.asarray(expected, dtype=np.float64)
    if got.shape != expected.shape:
        return Compiled(None, f"parity failed: {what} of shape {got.shape}, sklearn's {expected.shape}")
    delta = float(np.max(np.abs(got - expected) / np.maximum(1.0, np.abs(expected)), initial=0.0))
    if not delta <= ANSWER_TOLERANCE:
        return Compiled(None, f"parity failed: {what} differ by up to {delta:.3g} relative (> {ANSWER_TOLERANCE:g})")
    return Compiled(onx, f"passed: {len(expected)} holdout rows, {what} within {delta:.2g} relative")


def _named_like_columns(proto: ModelProto, columns: list[str]):
    """Graph inputs named exactly as the columns: skl2onnx rewrites names with spaces or non-ASCII
    letters ('mean radius' -> 'mean_radius'), while the gateway feeds tensors by column name."""
    renamed = {i.name: c for i, c in zip(proto.graph.input, columns, strict=True) if i.name != c}
    if not renamed:
        return proto
    for value in proto.graph.input:
        value.name = renamed.get(value.name, value.name)
    for node in proto.graph.node:
        for k, name in enumerate(node.input):
            if name in renamed:
                node.input[k] = renamed[name]
    return proto


def _without_threshold(model: Pipeline) -> tuple[Pipeline, float | None]:
    """The pipeline with a FixedThresholdClassifier last step (training.threshold) unwrapped to the
    fitted estimator it holds, and its threshold: skl2onnx converts the estimator, and
    _labels_at_threshold then answers labels from its probabilities as the wrapper does."""
    from sklearn.model_selection import FixedThresholdClassifier
    from sklearn.pipeline import Pipeline

    *head, (name, last) = model.steps
    if not isinstance(last, FixedThresholdClassifier):
        return model, None
    inner = last.estimator_
    return Pipeline([*head, (name, getattr(inner, "estimator", inner))]), float(last.threshold)


def _labels_at_threshold(proto: ModelProto, threshold: float, classes: np.ndarray):
    """The label output as FixedThresholdClassifier.predict answers: the second class where its
    probability is >= `threshold` (compared in the probabilities' own type), else the first."""
    from onnx import TensorProto, helper, numpy_helper

    label, proba = proto.graph.output[0], proto.graph.output[1]
    argmax = f"{label.name}_argmax"  # skl2onnx's own labels, left unused
    for node in proto.graph.node:
        for k, name in enumerate(node.output):
            if name == label.name:
                node.output[k] = argmax
    if classes.dtype.kind in "biu":
        labels = classes.astype(np.int64)
    elif classes.dtype.kind in "OUS":
        labels = classes.astype(str).astype(object)
    else:
        raise TypeError(f"classes of dtype {classes.dtype} cannot be answered at a threshold")
    kind = helper.tensor_dtype_to_np_dtype(proba.type.tensor_type.elem_type)
    # shipway's names: skl2onnx's are its operators' ("probabilities", "label", "variable1", ...)
    proto.graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(1, dtype=np.int64), "positive_column"),
            numpy_helper.from_array(np.array(threshold, dtype=kind), "decision_threshold"),
            numpy_helper.from_array(labels, "threshold_classes"),
        ]
    )
    proto.graph.node.extend(
        [
            helper.make_node("Gather", [proba.name, "positive_column"], ["positive_proba"], axis=1),
            helper.make_node("GreaterOrEqual", ["positive_proba", "decision_threshold"], ["is_positive"]),
            helper.make_node("Cast", ["is_positive"], ["class_index"], to=TensorProto.INT64),
            helper.make_node("Gather", ["threshold_classes", "class_index"], [label.name], axis=0),
        ]
    )
    return proto


def _labels_as_booleans(proto: ModelProto):
    """skl2onnx answers boolean classes as 0/1 integers; cast its label output back to booleans."""
    from onnx import TensorProto, helper

    label = proto.graph.output[0]
    raw = f"{label.name}_int"
    for node in proto.graph.node:
        for k, name in enumerate(node.output):
            if name == label.name:
                node.output[k] = raw
    proto.graph.node.append(helper.make_node("Cast", [raw], [label.name], to=TensorProto.BOOL, name="labels_as_bool"))
    label.type.tensor_type.elem_type = TensorProto.BOOL
    return proto


def _text_vectorizers(model: Any) -> str:
    """The text vectorizers (TF-IDF, counts, hashing) in a pipeline, by class, or "". skl2onnx would
    convert them with ONNX Runtime's Tokenizer and StringNormalizer, whose regular expressions and
    case folding are not Python's (and which need the machine's locales): parity is not exact."""
    from sklearn.feature_extraction.text import HashingVectorizer, _VectorizerMixin

    plain, _ = _without_threshold(model)  # a user's whole Pipeline may sit behind the threshold
    found = {type(s).__name__ for s in _walk(plain) if isinstance(s, (_VectorizerMixin, HashingVectorizer))}
    return ", ".join(sorted(found))


def _final_estimator(pipeline: Any):
    """The last step of a Pipeline, looking inside nested Pipelines (a user's own, say)."""
    while hasattr(pipeline, "steps"):
        pipeline = pipeline.steps[-1][1]
    return pipeline


def _is_number(s: pd.Series) -> bool:
    """Numbers and booleans travel as float64 tensors (booleans as 0/1, as the scaler sees them)."""
    return pd.api.types.is_numeric_dtype(s.dtype)


def _is_date(s: pd.Series) -> bool:
    """Datetimes travel as float64 microseconds since 1970 in UTC (serving.onnx.frame_feeds)."""
    return pd.api.types.is_datetime64_any_dtype(s.dtype)


def _is_text(s: pd.Series) -> bool:
    """Text, and categories of text (as pandas' category dtype holds them: served as strings)."""
    if isinstance(s.dtype, pd.CategoricalDtype):
        return _is_text(pd.Series(s.dtype.categories))
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


def _walk(estimator: Any):
    yield estimator
    children = []
    if hasattr(estimator, "steps"):
        children = [s for _, s in estimator.steps]
    elif hasattr(estimator, "transformers_"):
        children = [t for _, t, _ in estimator.transformers_]
    for child in children:
        if not isinstance(child, str):
            yield from _walk(child)


def _ours(converter: Any) -> bool:
    """Whether skl2onnx's registered converter is already this module's (registration is per process)."""
    return getattr(getattr(converter, "_fct", converter), "shipway", False)


def _register_float64_imputer() -> None:
    """Numeric SimpleImputer as IsNaN/Where on float64, so medians keep every bit."""
    from skl2onnx import update_registered_converter
    from skl2onnx.common._registration import get_converter, get_shape_calculator
    from skl2onnx.common.data_types import StringTensorType
    from skl2onnx.operator_converters.common import concatenate_variables
    from skl2onnx.proto import onnx_proto
    from sklearn.impute import SimpleImputer

    original = get_converter("SklearnSimpleImputer")
    if _ours(original):
        return

    def convert(scope: Scope, operator: Operator, container: ModelComponentContainer):
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

    convert.shipway = True  # type: ignore[attr-defined]
    update_registered_converter(
        SimpleImputer, "SklearnSimpleImputer", get_shape_calculator("SklearnSimpleImputer"), convert
    )


def _register_in_set() -> None:
    """The baseline's category rule (tasks.features.InSet) as a LabelEncoder from each member (a
    missing value as NULL_TOKEN, as the gateway feeds it) to 1.0, anything else to 0.0, in float64."""
    from skl2onnx import update_registered_converter
    from skl2onnx.common.data_types import DoubleTensorType, StringTensorType
    from skl2onnx.proto import onnx_proto

    from tasks.features import InSet

    def parse(scope: Scope, model: Any, inputs: list[Variable], custom_parsers: Any = None):
        # declared float64 here: the stump after it takes its types from this declaration
        operator = scope.declare_local_operator("ShipwayInSet", model)
        operator.inputs = inputs
        operator.outputs.append(scope.declare_local_variable("in_set", DoubleTensorType()))
        return operator.outputs

    def shape(operator: Operator):
        operator.outputs[0].type = DoubleTensorType([operator.inputs[0].get_first_dimension(), 1])

    def convert(scope: Scope, operator: Operator, container: ModelComponentContainer):
        rule = operator.raw_operator
        if not isinstance(operator.inputs[0].type, StringTensorType):
            raise NotImplementedError(f"a category rule on {operator.inputs[0].type} (text only)")
        keys = [str(m) for m in rule.members] + ([NULL_TOKEN] if rule.missing else [])
        inside = scope.get_unique_variable_name("in_set")
        container.add_node(
            "LabelEncoder",
            [operator.inputs[0].full_name],
            [inside],
            op_domain="ai.onnx.ml",
            op_version=2,
            name=scope.get_unique_operator_name("LabelEncoder"),
            keys_strings=keys,
            values_floats=[1.0] * len(keys),
            default_float=0.0,
        )
        container.add_node(
            "Cast",
            [inside],
            [operator.outputs[0].full_name],
            to=onnx_proto.TensorProto.DOUBLE,
            name=scope.get_unique_operator_name("Cast"),
        )

    update_registered_converter(InSet, "ShipwayInSet", shape, convert, parser=parse)


def _register_date_parts() -> None:
    """tasks.features.DateParts on float64 microseconds since 1970 (UTC): year, month, day,
    weekday, hour, minute per column, by whole-number arithmetic (days to a civil date as
    H. Hinnant's days_from_civil inverse); a missing date (NaN) gives NaN parts, as NaT does."""
    from skl2onnx import update_registered_converter
    from skl2onnx.common.data_types import DoubleTensorType

    from tasks.features import DATE_PARTS, DateParts

    def shape(operator: Operator):
        width = sum(i.type.shape[1] for i in operator.inputs) * len(DATE_PARTS)
        operator.outputs[0].type = DoubleTensorType([operator.inputs[0].get_first_dimension(), width])

    def convert(scope: Scope, operator: Operator, container: ModelComponentContainer):
        if not all(isinstance(i.type, DoubleTensorType) for i in operator.inputs):
            raise NotImplementedError("date parts of a column that is no datetime")

        def node(op: str, *inputs: str, **attrs) -> str:
            out = scope.get_unique_variable_name(op.lower())
            container.add_node(op, list(inputs), [out], name=scope.get_unique_operator_name(op), **attrs)
            return out

        def const(value: float) -> str:
            name = scope.get_unique_variable_name("c")
            container.add_initializer(name, onnx_proto.TensorProto.DOUBLE, [], [float(value)])
            return name

        def floor_div(a: str, b: float) -> str:
            return node("Floor", node("Div", a, const(b)))

        def minus(a: str, b: str) -> str:
            return node("Sub", a, b)

        def times(a: str, b: float) -> str:
            return node("Mul", a, const(b))

        names = [i.full_name for i in operator.inputs]
        us = names[0] if len(names) == 1 else node("Concat", *names, axis=1)
        days = floor_div(us, 86_400e6)
        in_day = minus(us, times(days, 86_400e6))
        hour = floor_div(in_day, 3_600e6)
        minute = floor_div(minus(in_day, times(hour, 3_600e6)), 60e6)
        shifted = node("Add", days, const(3.0))  # 1970-01-01 was a Thursday (Monday is 0)
        weekday = minus(shifted, times(floor_div(shifted, 7.0), 7.0))
        z = node("Add", days, const(719_468.0))
        era = floor_div(z, 146_097.0)
        doe = minus(z, times(era, 146_097.0))
        yoe = floor_div(
            minus(node("Add", minus(doe, floor_div(doe, 1460.0)), floor_div(doe, 36_524.0)), floor_div(doe, 146_096.0)),
            365.0,
        )
        doy = minus(doe, node("Add", times(yoe, 365.0), minus(floor_div(yoe, 4.0), floor_div(yoe, 100.0))))
        mp = floor_div(node("Add", times(doy, 5.0), const(2.0)), 153.0)
        day = node("Add", minus(doy, floor_div(node("Add", times(mp, 153.0), const(2.0)), 5.0)), const(1.0))
        early = node("Less", mp, const(10.0))
        month = node("Where", early, node("Add", mp, const(3.0)), node("Sub", mp, const(9.0)))
        january_or_february = node("Cast", node("LessOrEqual", month, const(2.0)), to=onnx_proto.TensorProto.DOUBLE)
        year = node("Add", node("Add", yoe, times(era, 400.0)), january_or_february)
        parts = {"year": year, "month": month, "day": day, "weekday": weekday, "hour": hour, "minute": minute}
        columns = sum(i.type.shape[1] for i in operator.inputs)
        pieces = []
        for c in range(columns):  # per column its parts, as DateParts orders them
            index = scope.get_unique_variable_name("column")
            container.add_initializer(index, onnx_proto.TensorProto.INT64, [1], [c])
            pieces += [node("Gather", parts[p], index, axis=1) for p in DATE_PARTS]
        container.add_node(
            "Concat", pieces, [operator.outputs[0].full_name], name=scope.get_unique_operator_name("Concat"), axis=1
        )

    from skl2onnx.proto import onnx_proto

    update_registered_converter(DateParts, "ShipwayDateParts", shape, convert)


def _register_float64_stumps() -> None:
    """Decision trees of depth <= 1 (the heuristic baseline's one rule) as Cast/LessOrEqual/Where on
    float64: onnxruntime's tree operators answer in float32 only, which left baselines without an
    ONNX form, and the gateway importing scikit-learn (slow) to load them. Deeper trees keep
    skl2onnx's own converter."""
    from skl2onnx import update_registered_converter
    from skl2onnx.common._registration import get_converter, get_shape_calculator
    from skl2onnx.common.data_types import DoubleTensorType
    from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

    for estimator, alias in (
        (DecisionTreeClassifier, "SklearnDecisionTreeClassifier"),
        (DecisionTreeRegressor, "SklearnDecisionTreeRegressor"),
    ):
        original = get_converter(alias)
        if _ours(original):
            continue
        update_registered_converter(
            estimator,
            alias,
            get_shape_calculator(alias),
            _stump_or(original, DoubleTensorType),
            options=original.get_allowed_options(),
        )


def _stump_or(original: Any, double: type):
    """skl2onnx's converter signature is (scope, operator, container): the fallback is closed over."""

    def convert(scope: Scope, operator: Operator, container: ModelComponentContainer):
        tree = operator.raw_operator
        if tree.tree_.node_count > 3 or tree.n_outputs_ != 1 or not isinstance(operator.inputs[0].type, double):
            return original(scope, operator, container)
        _stump(scope, operator, container, tree)

    convert.shipway = True  # type: ignore[attr-defined]  # marks our converters (_ours)
    return convert


def _stump(scope: Scope, operator: Operator, container: ModelComponentContainer, tree: Any) -> None:
    """One split: x[:, f] <= threshold picks the left leaf's answer, else the right's. As sklearn
    does, x is compared as float32 (trees cast their input), and a missing value goes where
    sklearn sends it. Each leaf's answer is sklearn's own at a point of that leaf."""
    from skl2onnx.proto import onnx_proto

    split = tree.tree_.node_count == 3
    f = int(tree.tree_.feature[0]) if split else 0
    threshold = float(tree.tree_.threshold[0]) if split else 0.0
    classifier = hasattr(tree, "classes_")

    def answer(value: float) -> np.ndarray:
        row = np.zeros((1, tree.n_features_in_))
        row[0, f] = value
        return tree.predict_proba(row) if classifier else tree.predict(row).reshape(1, 1)

    def name(what: str) -> str:
        return scope.get_unique_variable_name(what)

    def node(op: str, inputs: list[str], output: str, **attrs) -> str:
        container.add_node(op, inputs, [output], name=scope.get_unique_operator_name(op), **attrs)
        return output

    def constant(what: str, values: np.ndarray, kind: int = onnx_proto.TensorProto.DOUBLE) -> str:
        init = name(what)
        container.add_initializer(init, kind, list(values.shape), values.reshape(-1).tolist())
        return init

    step = max(1.0, abs(threshold))  # clearly on one side, even as float32
    left = answer(threshold - step)
    right = answer(threshold + step) if split else left
    column = node(
        "Gather",
        [operator.inputs[0].full_name, constant("feature", np.array([f]), onnx_proto.TensorProto.INT64)],
        name("column"),
        axis=1,
    )
    as_float = node(
        "Cast",
        [node("Cast", [column], name("float32"), to=onnx_proto.TensorProto.FLOAT)],
        name("float64"),
        to=onnx_proto.TensorProto.DOUBLE,
    )
    goes_left = node("LessOrEqual", [as_float, constant("threshold", np.array([[threshold]]))], name("goes_left"))
    if split and tree.apply(np.full((1, tree.n_features_in_), np.nan, dtype=np.float32))[0] == 1:
        goes_left = node("Or", [goes_left, node("IsNaN", [column], name("missing"))], name("goes_left"))
    # A regressor's one output is its value; a classifier's second is the probabilities, its first the label.
    answer_out = operator.outputs[1 if classifier else 0].full_name
    proba = node("Where", [goes_left, constant("left", left), constant("right", right)], answer_out)
    if not classifier:
        return
    best = node("ArgMax", [proba], name("best"), axis=1, keepdims=0)
    classes = np.asarray(tree.classes_)
    if classes.dtype.kind in "biu":
        labels = constant("classes", classes.astype(np.int64), onnx_proto.TensorProto.INT64)
    else:
        labels = constant("classes", classes.astype(str).astype(object), onnx_proto.TensorProto.STRING)
    node("Gather", [labels, best], operator.outputs[0].full_name, axis=0)
