"""Tree ensembles as float64 ONNX, answering as scikit-learn does to the last bit or nearly.

skl2onnx's tree converters use onnxruntime's TreeEnsembleClassifier/Regressor, whose scores are
float32: a random forest missed parity by one label in 201, gradient boosting met a type error,
and HistGradientBoosting has no converter. ONNX's newer TreeEnsemble operator (ai.onnx.ml opset 5)
computes in float64, with NaN routing per node and set membership for categories; this module
converts the fitted trees into it, node for node, and the answer around it (the trees' average or
sum, the initial score, the sigmoid or softmax, the label) as the estimator computes it. The
gateway then serves a tree model through the same ONNX path as a linear one.

What each family does, and so the graph:
- random forests and extra trees: the input as float32 (sklearn's trees compare float32 values
  with float64 thresholds), each tree's leaf fractions, their mean;
- gradient boosting: the input as float32, the initial score plus each tree's leaf times the
  learning rate, then the loss's link (sigmoid, softmax, identity); the label from the raw score
  (`>= 0` for two classes) as GradientBoostingClassifier.predict decides it;
- HistGradientBoosting: float64 input, NaN sent where each node learnt, categorical splits as set
  membership (a category unknown in training goes where missing values go), the baseline plus the
  trees, the link; `categorical_features="from_dtype"` columns are encoded as the estimator's own
  OrdinalEncoder does. Labels from the raw score (`> 0` for two classes), as its predict does.

LightGBM's scikit-learn estimators (a user's, by import path) are converted from its own dump of
the trees, in float64 as it computes. XGBoost's (XGBClassifier, XGBRegressor, their random-forest
kinds; gbtree or dart) compute in float32, and the graph does too: a float32 TreeEnsemble with
XGBoost's `x < threshold` and default sides, the intercept folded into each class's first tree so
the float32 sum runs in XGBoost's order (one TreeEnsemble node: groups summed apart would round
differently), then its sigmoid or softmax with a replica of glibc's expf, which XGBoost calls
(onnxruntime's float Exp differs in the last bit). Its answers are then XGBoost's float32 numbers
to the bit. Categorical splits, multi:softmax, gblinear and a `missing` other than NaN are refused.

A classifier's K classes are K one-target trees per fitted tree (TreeEnsemble leaves carry one
value): the probabilities are summed per class exactly as sklearn sums them (a two-class forest:
the second class's trees only). Trees are grouped
into TreeEnsemble nodes of at most GROUP_NODES split nodes: one node per tree pays onnxruntime's
per-node cost on a one-row call, one node for a forest of deep trees walks them row by row and
misses the cache on a large batch.

Registration is per process, as compile.py's own converters: `register()` before converting.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from onnx import ModelProto
    from skl2onnx.common._container import ModelComponentContainer
    from skl2onnx.common._topology import Operator, Scope, Variable

# TreeEnsemble is ai.onnx.ml 5 (onnx 1.16), which skl2onnx 1.20 refuses to write: the graph is
# converted at ml opset 3 and its import raised to ML_OPSET after (with_tree_opset), where the
# other ml operators skl2onnx wrote (LabelEncoder, OneHotEncoder, ...) mean what they meant.
TREE_OPSET = {"": 21, "ai.onnx.ml": 3}
ML_OPSET = 5
GROUP_NODES = 50_000  # split nodes per TreeEnsemble node (a few MB: its trees stay in cache on a batch)
LEQ, MEMBER = 0, 6  # TreeEnsemble's nodes_modes


@dataclass(frozen=True)
class Tree:
    """One tree's nodes as arrays (sklearn's layout): children -1 at leaves, a value per node for
    one target. A categorical split tests membership of `members[node]`; `true_right[node]` says
    the test's true branch is the right child (the left one otherwise)."""

    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    missing_left: np.ndarray
    value: np.ndarray
    target: int
    members: dict[int, list[float]]
    true_right: dict[int, bool]


def tree_families() -> dict[type, str]:
    """The sklearn estimators converted here, by skl2onnx's alias for each."""
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        ExtraTreesRegressor,
        GradientBoostingClassifier,
        GradientBoostingRegressor,
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )

    return {
        cls: f"Sklearn{cls.__name__}"
        for cls in (
            RandomForestClassifier,
            RandomForestRegressor,
            ExtraTreesClassifier,
            ExtraTreesRegressor,
            GradientBoostingClassifier,
            GradientBoostingRegressor,
            HistGradientBoostingClassifier,
            HistGradientBoostingRegressor,
        )
    }


def has_trees(model: Any) -> bool:
    """Whether a (fitted) pipeline holds an estimator this module converts."""
    families = (*tree_families(), *other_libraries())
    stack = [model]
    while stack:
        step = stack.pop()
        if isinstance(step, families):
            return True
        stack.extend(s for _, s in getattr(step, "steps", []))
        stack.extend(t for _, t, _ in getattr(step, "transformers_", []) if not isinstance(t, str))
        stack.extend(s for s in (getattr(step, "estimator_", None), getattr(step, "estimator", None)) if s is not None)
    return False


def with_tree_opset(proto: ModelProto) -> ModelProto:
    """The converted graph importing ai.onnx.ml at ML_OPSET, where TreeEnsemble is."""
    for opset in proto.opset_import:
        if opset.domain == "ai.onnx.ml":
            opset.version = ML_OPSET
    return proto


def other_libraries() -> dict[type, str]:
    """LightGBM's and XGBoost's scikit-learn estimators, when the process has imported the library
    (a model of the user's was trained with it): shipway itself never imports them."""
    found: dict[type, str] = {}
    lightgbm = sys.modules.get("lightgbm")
    if lightgbm is not None:
        found.update({lightgbm.LGBMClassifier: "ShipwayLGBMClassifier", lightgbm.LGBMRegressor: "ShipwayLGBMRegressor"})
    xgboost = sys.modules.get("xgboost")
    if xgboost is not None:
        classes = ("XGBClassifier", "XGBRegressor", "XGBRFClassifier", "XGBRFRegressor")
        found.update({getattr(xgboost, name): f"Shipway{name}" for name in classes if hasattr(xgboost, name)})
    return found


def register() -> None:
    """skl2onnx converters for every family of tree_families() (replacing its float32 ones) and of
    other_libraries()."""
    from skl2onnx import update_registered_converter
    from skl2onnx.common._registration import get_converter

    for cls, alias in {**tree_families(), **other_libraries()}.items():
        try:
            original = get_converter(alias)
        except ValueError:
            original = None
        if original is not None and getattr(getattr(original, "_fct", original), "shipway", False):
            continue
        options = original.get_allowed_options() if original is not None else None
        if options is None and hasattr(cls, "predict_proba"):
            options = {"zipmap": [True, False, "columns"], "nocl": [True, False]}  # skl2onnx's classifier parser
        update_registered_converter(cls, alias, _shape, _convert, options=options)


def _shape(operator: Operator) -> None:
    from skl2onnx.common.data_types import DoubleTensorType, Int64TensorType, StringTensorType

    model = operator.raw_operator
    n = operator.inputs[0].get_first_dimension()
    if hasattr(model, "classes_"):
        classes = np.asarray(model.classes_)
        operator.outputs[0].type = (Int64TensorType if classes.dtype.kind in "biu" else StringTensorType)([n])
        operator.outputs[1].type = DoubleTensorType([n, len(classes)])
    else:
        operator.outputs[0].type = DoubleTensorType([n, 1])


def _convert(scope: Scope, operator: Operator, container: ModelComponentContainer) -> None:
    model = operator.raw_operator
    graph = _Graph(scope, container)
    name = type(model).__name__
    if name.startswith("LGBM"):
        _convert_lightgbm(graph, operator, model)
        return
    if name.startswith("XGB"):
        _convert_xgboost(graph, operator, model)
        return
    if name.startswith("HistGradientBoosting"):
        x = graph.hist_inputs(operator.inputs, model)
        trees, targets = hist_trees(model)
        raw = graph.add(graph.ensemble(x, trees, targets), graph.const(model._baseline_prediction))
        _answer_boosting(graph, operator, model, raw, strict=True)
        return
    x = graph.float32_rounded(graph.concat(operator.inputs))
    if name.startswith("GradientBoosting"):
        trees, targets = gradient_boosting_trees(model)
        raw = graph.add(graph.ensemble(x, trees, targets), graph.const(_gb_init(model)))
        _answer_boosting(graph, operator, model, raw, strict=False)
        return
    trees, targets = forest_trees(model)
    total = graph.ensemble(x, trees, targets)
    mean = graph.node("Div", [total, graph.const(np.array(float(len(model.estimators_))))])
    if not hasattr(model, "classes_"):
        graph.node("Identity", [mean], operator.outputs[0].full_name)
        return
    if len(model.classes_) == 2:  # the positive class's mean alone, the other its complement
        mean = graph.node("Concat", [graph.node("Sub", [graph.const(np.array(1.0)), mean]), mean], axis=1)
    graph.node("Identity", [mean], operator.outputs[1].full_name)
    graph.labels(graph.node("ArgMax", [mean], axis=1, keepdims=0), model.classes_, operator.outputs[0].full_name)


_convert.shipway = True  # type: ignore[attr-defined]


def _answer_boosting(graph: _Graph, operator: Operator, model: Any, raw: str, strict: bool) -> None:
    """The boosting estimator's answer from its raw score: the link's inverse, and for a classifier
    the label as its predict takes it from the raw score (`> 0` for HGB's two classes, `>= 0` for
    GradientBoosting's: `strict`)."""
    link = type(model._loss.link).__name__ if hasattr(model, "_loss") else ""
    if not hasattr(model, "classes_"):
        if link == "LogLink":
            raw = graph.node("Exp", [raw])
        elif link not in ("IdentityLink", ""):
            raise NotImplementedError(f"{type(model).__name__} with loss link {link}")
        graph.node("Identity", [raw], operator.outputs[0].full_name)
        return
    if len(model.classes_) == 2:
        if link == "HalfLogitLink":  # GradientBoostingClassifier(loss="exponential"): expit(2 * raw)
            positive = graph.node("Sigmoid", [graph.node("Mul", [raw, graph.const(np.array(2.0))])])
        elif link == "LogitLink":
            positive = graph.node("Sigmoid", [raw])
        else:
            raise NotImplementedError(f"{type(model).__name__} with loss link {link}")
        negative = graph.node("Sub", [graph.const(np.array(1.0)), positive])
        graph.node("Concat", [negative, positive], operator.outputs[1].full_name, axis=1)
        above = graph.node("Greater" if strict else "GreaterOrEqual", [raw, graph.const(np.array(0.0))])
        index = graph.node("Reshape", [graph.node("Cast", [above], to=7), graph.const(np.array([-1]))])
        graph.labels(index, model.classes_, operator.outputs[0].full_name)
        return
    if link != "MultinomialLogit":
        raise NotImplementedError(f"{type(model).__name__} with loss link {link}")
    graph.node("Softmax", [raw], operator.outputs[1].full_name, axis=1)
    graph.labels(graph.node("ArgMax", [raw], axis=1, keepdims=0), model.classes_, operator.outputs[0].full_name)


def _convert_lightgbm(graph: _Graph, operator: Operator, model: Any) -> None:
    """LightGBM: float64 input, the trees' sum (its first tree holds the initial score), divided
    by the iterations in random-forest mode, then the objective's transform; the label as the
    argmax of the probabilities, as LGBMClassifier.predict takes it."""
    dump = model.booster_.dump_model()
    trees, targets = lightgbm_trees(dump)
    raw = graph.ensemble(graph.concat(operator.inputs), trees, targets)
    if dump.get("average_output"):
        raw = graph.node("Div", [raw, graph.const(np.array(float(len(trees) // targets)))])
    objective, *options = dump["objective"].split()
    settings = dict(o.split(":", 1) for o in options if ":" in o)
    if not hasattr(model, "classes_"):
        if objective in ("poisson", "gamma", "tweedie"):
            raw = graph.node("Exp", [raw])
        elif objective not in ("regression", "regression_l1", "huber", "fair", "quantile", "mape"):
            raise NotImplementedError(f"LightGBM objective {objective}")
        graph.node("Identity", [raw], operator.outputs[0].full_name)
        return
    if objective == "binary":
        scaled = graph.node("Mul", [raw, graph.const(np.array(float(settings.get("sigmoid", 1.0))))])
        positive = graph.node("Sigmoid", [scaled])
        negative = graph.node("Sub", [graph.const(np.array(1.0)), positive])
        proba = graph.node("Concat", [negative, positive], operator.outputs[1].full_name, axis=1)
    elif objective == "multiclass":
        proba = graph.node("Softmax", [raw], operator.outputs[1].full_name, axis=1)
    else:
        raise NotImplementedError(f"LightGBM objective {objective}")
    graph.labels(graph.node("ArgMax", [proba], axis=1, keepdims=0), model.classes_, operator.outputs[0].full_name)


def lightgbm_trees(dump: dict) -> tuple[list[Tree], int]:
    """LightGBM's dumped trees as sklearn-layout arrays. A numeric split sends x <= threshold left
    and NaN where LightGBM does: its default side (missing type NaN), or as 0.0 (missing type
    None); a categorical one sends its listed categories left, NaN as LightGBM does (category 0
    unless missing type NaN), anything else right."""
    per_iteration = dump.get("num_tree_per_iteration", 1)
    trees = []
    for index, info in enumerate(dump["tree_info"]):
        nodes: list[dict] = []
        _flatten(info["tree_structure"], nodes)
        n = len(nodes)
        feature, threshold = np.zeros(n, dtype=np.int64), np.zeros(n)
        left, right = np.full(n, -1, dtype=np.int64), np.full(n, -1, dtype=np.int64)
        missing_left, value = np.zeros(n, dtype=bool), np.zeros(n)
        members: dict[int, list[float]] = {}
        for i, node in enumerate(nodes):
            if "leaf_value" in node:
                value[i] = node["leaf_value"]
                continue
            feature[i], left[i], right[i] = node["split_feature"], node["left"], node["right"]
            missing = node.get("missing_type", "None")
            if node["decision_type"] == "==":
                categories = [float(c) for c in str(node["threshold"]).split("||")]
                members[i] = categories
                missing_left[i] = missing != "NaN" and 0.0 in categories
            elif node["decision_type"] == "<=":
                threshold[i] = float(node["threshold"])
                if missing == "NaN":
                    missing_left[i] = bool(node["default_left"])
                elif missing == "None":
                    missing_left[i] = threshold[i] >= 0.0
                else:  # Zero: zeros (and NaN, read as 0) go the default side
                    if bool(node["default_left"]) != (threshold[i] >= 0.0):
                        raise NotImplementedError("LightGBM split sending zeros against their side (zero_as_missing)")
                    missing_left[i] = bool(node["default_left"])
            else:
                raise NotImplementedError(f"LightGBM decision type {node['decision_type']}")
        trees.append(Tree(feature, threshold, left, right, missing_left, value, index % per_iteration, members, {}))
    return trees, per_iteration


def _flatten(node: dict, out: list[dict]) -> int:
    """A dumped tree (nested dicts) as a list of nodes, children after their parent, root first."""
    position = len(out)
    out.append(dict(node))
    if "leaf_value" not in node:
        out[position]["left"] = _flatten(node["left_child"], out)
        out[position]["right"] = _flatten(node["right_child"], out)
    return position


# XGBoost (>= 2.1) predicts in float32: the input cast to float32, `x < threshold` against float32
# thresholds (missing values to each split's default child), the margin accumulated in float32
# from the intercept (base_score in margin space) through the trees in order, then the objective's
# transform with glibc's expf. The graph repeats each of those operations in the same type and order.
XGB_REGRESSION = {
    "reg:squarederror": "identity",
    "reg:squaredlogerror": "identity",
    "reg:pseudohubererror": "identity",
    "reg:absoluteerror": "identity",
    "reg:quantileerror": "identity",  # one quantile: several are several targets, refused
    "reg:logistic": "sigmoid",
    "count:poisson": "exp",
    "reg:gamma": "exp",
    "reg:tweedie": "exp",
}
LT = 1  # TreeEnsemble's BRANCH_LT: XGBoost sends x < threshold left
FLOAT, DOUBLE = 1, 11  # ONNX tensor types, for Cast

# glibc's expf (2.27 and later, and musl's, from ARM's optimized routines): x / ln2 * 32 = k + r,
# exp(x) = 2^(k/32) * 2^(r/32), 2^(r/32) by a cubic, all in double, rounded once to float at the end.
# XGBoost calls expf from the machine's libm; ONNX's own float Exp is a different approximation.
EXPF_TABLE = (
    0x3FF0000000000000, 0x3FEFD9B0D3158574, 0x3FEFB5586CF9890F, 0x3FEF9301D0125B51,
    0x3FEF72B83C7D517B, 0x3FEF54873168B9AA, 0x3FEF387A6E756238, 0x3FEF1E9DF51FDEE1,
    0x3FEF06FE0A31B715, 0x3FEEF1A7373AA9CB, 0x3FEEDEA64C123422, 0x3FEECE086061892D,
    0x3FEEBFDAD5362A27, 0x3FEEB42B569D4F82, 0x3FEEAB07DD485429, 0x3FEEA47EB03A5585,
    0x3FEEA09E667F3BCD, 0x3FEE9F75E8EC5F74, 0x3FEEA11473EB0187, 0x3FEEA589994CCE13,
    0x3FEEACE5422AA0DB, 0x3FEEB737B0CDC5E5, 0x3FEEC49182A3F090, 0x3FEED503B23E255D,
    0x3FEEE89F995AD3AD, 0x3FEEFF76F2FB5E47, 0x3FEF199BDD85529C, 0x3FEF3720DCEF9069,
    0x3FEF5818DCFBA487, 0x3FEF7C97337B9B5F, 0x3FEFA4AFA2A490DA, 0x3FEFD0765B6E4540,
)  # fmt: skip
EXPF_INV_LN2_N = float.fromhex("0x1.71547652b82fep+0") * 32
EXPF_POLY = (
    float.fromhex("0x1.c6af84b912394p-5") / 32 / 32 / 32,
    float.fromhex("0x1.ebfce50fac4f3p-3") / 32 / 32,
    float.fromhex("0x1.62e42ff0c52d6p-1") / 32,
)
EXPF_OVERFLOW = float.fromhex("0x1.62e42ep6")  # above: +inf
EXPF_UNDERFLOW = -float.fromhex("0x1.9fe368p6")  # below: 0


def expf_table() -> np.ndarray:
    """2^(i/32) for i in 0..31, as glibc rebuilds them from its table (which has i << 47 taken off)."""
    bits = np.array(EXPF_TABLE, dtype=np.uint64) + (np.arange(32, dtype=np.uint64) << np.uint64(47))
    return bits.view(np.float64)


def _convert_xgboost(graph: _Graph, operator: Operator, model: Any) -> None:
    """XGBoost: the float32 margin, the objective's transform, and the answer as its scikit-learn
    estimator gives it: predict_proba [1 - p, p] of two classes (float32), the label p > 0.5 or
    the argmax of the probabilities."""
    trees, targets, objective = xgboost_trees(model)
    x = graph.node("Cast", [graph.concat(operator.inputs)], to=FLOAT)
    raw = graph.node("TreeEnsemble", [x], domain="ai.onnx.ml", **ensemble_attributes(trees, targets, np.float32, LT))
    if not hasattr(model, "classes_"):
        link = XGB_REGRESSION.get(objective)
        if link is None:
            raise NotImplementedError(f"XGBoost objective {objective}")
        if link == "sigmoid":
            raw = _xgb_sigmoid(graph, raw)
        elif link == "exp":
            raw = _expf(graph, raw)
        graph.node("Cast", [raw], operator.outputs[0].full_name, to=DOUBLE)
        return
    if objective == "binary:logistic" and targets == 1:
        positive = _xgb_sigmoid(graph, raw)
        negative = graph.node("Sub", [graph.const32(1.0), positive])
        proba = graph.node("Concat", [negative, positive], axis=1)
        above = graph.node("Greater", [positive, graph.const32(0.5)])
        index = graph.node("Reshape", [graph.node("Cast", [above], to=7), graph.const(np.array([-1]))])
    elif objective == "multi:softprob" and targets > 2:
        proba = _xgb_softmax(graph, raw, targets)
        index = graph.node("ArgMax", [proba], axis=1, keepdims=0)
    else:  # multi:softmax's predict_proba is scipy's softmax over numpy's exp; logitraw and hinge have none
        raise NotImplementedError(f"XGBoost classifier objective {objective}")
    graph.node("Cast", [proba], operator.outputs[1].full_name, to=DOUBLE)
    graph.labels(index, model.classes_, operator.outputs[0].full_name)


def _xgb_sigmoid(graph: _Graph, margin: str) -> str:
    """XGBoost's sigmoid in float32: 1 / (expf(min(-x, 88.7)) + 1 + 1e-16)."""
    exponent = graph.node("Min", [graph.node("Neg", [margin]), graph.const32(88.7)])
    plus_one = graph.node("Add", [_expf(graph, exponent), graph.const32(1.0)])
    denominator = graph.node("Add", [plus_one, graph.const32(1e-16)])
    return graph.node("Div", [graph.const32(1.0), denominator])


def _xgb_softmax(graph: _Graph, margin: str, k: int) -> str:
    """XGBoost's softmax: expf(x - max) in float32, their sum in double in class order, each
    divided by that sum rounded to float32."""
    shifted = graph.node("Sub", [margin, graph.node("ReduceMax", [margin, graph.const(np.array([1]))], keepdims=1)])
    exps = _expf(graph, shifted)
    columns = [graph.scope.get_unique_variable_name("class") for _ in range(k)]
    graph.container.add_node(
        "Split", [graph.node("Cast", [exps], to=DOUBLE)], columns, name=graph.scope.get_unique_operator_name("Split"),
        axis=1, num_outputs=k,
    )  # fmt: skip
    total = columns[0]
    for column in columns[1:]:  # one Add at a time: ReduceSum's order is not the loop's
        total = graph.add(total, column)
    return graph.node("Div", [exps, graph.node("Cast", [total], to=FLOAT)])


def _expf(graph: _Graph, x: str) -> str:
    """glibc's expf of a float32 tensor, operation for operation in double (see EXPF_TABLE); NaN
    stays NaN, beyond the float range +inf and 0 as expf answers."""
    nan = graph.node("IsNaN", [x])
    finite = graph.node("Where", [nan, graph.const32(0.0), x])
    inside = graph.node("Clip", [finite, graph.const32(EXPF_UNDERFLOW), graph.const32(EXPF_OVERFLOW)])
    z = graph.node("Mul", [graph.node("Cast", [inside], to=DOUBLE), graph.const(np.array(EXPF_INV_LN2_N))])
    kd = graph.node("Round", [z])  # to nearest, ties to even, as glibc's shift does
    r = graph.node("Sub", [z, kd])
    k = graph.node("Cast", [kd], to=7)
    i = graph.node("Mod", [k, graph.const(np.array(32))], fmod=0)
    power = graph.node("Div", [graph.node("Sub", [k, i]), graph.const(np.array(32))])  # exact: floor(k / 32)
    powers = np.ldexp(1.0, np.arange(-151, 130))
    scale = graph.node(
        "Mul",
        [
            graph.node("Gather", [graph.const(expf_table()), i], axis=0),
            graph.node("Gather", [graph.const(powers), graph.node("Add", [power, graph.const(np.array(151))])], axis=0),
        ],
    )  # 2^(i/32) * 2^power, exact: glibc adds the power to the exponent bits
    c0, c1, c2 = (graph.const(np.array(c)) for c in EXPF_POLY)
    cubic = graph.node("Mul", [graph.add(graph.node("Mul", [c0, r]), c1), graph.node("Mul", [r, r])])
    y = graph.add(cubic, graph.add(graph.node("Mul", [c2, r]), graph.const(np.array(1.0))))
    answer = graph.node("Cast", [graph.node("Mul", [y, scale])], to=FLOAT)
    above = graph.node("Greater", [finite, graph.const32(EXPF_OVERFLOW)])
    below = graph.node("Less", [finite, graph.const32(EXPF_UNDERFLOW)])
    answer = graph.node("Where", [above, graph.const32(np.inf), answer])
    answer = graph.node("Where", [below, graph.const32(0.0), answer])
    return graph.node("Where", [nan, x, answer])


def xgboost_trees(model: Any) -> tuple[list[Tree], int, str]:
    """The trees XGBoost's predict walks (up to the best iteration after early stopping), with
    float32 thresholds and leaves, each class's intercept folded into its first tree's leaves as
    XGBoost adds it first: fl32(base + leaf); a dart booster's leaves weighted as its inplace_predict
    weighs them (which its DMatrix predict does not: the two differ in the last bit);
    the number of classes (1 for two) and the objective."""
    import json

    booster = model.get_booster()
    if not np.isnan(model.missing):
        raise NotImplementedError(f"XGBoost with missing={model.missing} (only NaN is read as missing)")
    saved = json.loads(booster.save_raw("json"))
    learner = saved["learner"]
    objective = learner["objective"]["name"]
    if int(learner["learner_model_param"].get("num_target", 1)) > 1:
        raise NotImplementedError("XGBoost with several targets")
    booster_kind = learner["gradient_booster"]["name"]
    if booster_kind == "gbtree":
        forest, weights = learner["gradient_booster"]["model"], None
    elif booster_kind == "dart":
        forest = learner["gradient_booster"]["gbtree"]["model"]
        weights = np.asarray(learner["gradient_booster"]["weight_drop"], dtype=np.float32)
    else:
        raise NotImplementedError(f"XGBoost booster {booster_kind}")
    if any(1 in tree.get("split_type", []) for tree in forest["trees"]):
        raise NotImplementedError(
            "XGBoost categorical splits (enable_categorical): the served columns are text, which its "
            "scikit-learn estimator does not read"
        )
    start, stop = model._get_iteration_range(None)
    bounds = [int(b) for b in forest["iteration_indptr"]]
    stop = stop or len(bounds) - 1
    chosen = range(bounds[start], bounds[stop])
    targets = max(int(learner["learner_model_param"].get("num_class", 0)), 1)
    base = _xgboost_base(booster, saved, targets)
    trees: list[Tree] = []
    folded: set[int] = set()
    for index in chosen:
        tree = forest["trees"][index]
        group = int(forest["tree_info"][index])
        left = np.asarray(tree["left_children"], dtype=np.int64)
        leaf = left == -1
        value = np.asarray(tree["split_conditions"], dtype=np.float32)
        if weights is not None:  # inplace_predict (scikit-learn's) adds each tree's (base + leaf - base) * weight
            value = np.where(leaf, ((base[group] + value) - base[group]) * weights[index], value)
        if group not in folded:
            value = np.where(leaf, base[group] + value, value)
            folded.add(group)
        trees.append(
            Tree(
                np.asarray(tree["split_indices"], dtype=np.int64),
                np.where(leaf, 0.0, value).astype(np.float64),
                left,
                np.asarray(tree["right_children"], dtype=np.int64),
                np.asarray(tree["default_left"], dtype=bool),
                np.where(leaf, value, 0.0).astype(np.float64),
                group,
                {},
                {},
            )
        )
    for group in sorted(set(range(targets)) - folded):  # no tree for the class: its intercept alone
        one, nothing = np.array([-1]), np.zeros(1)
        trees.append(Tree(one * 0, nothing, one, one, nothing.astype(bool), nothing + base[group], group, {}, {}))
    return trees, targets, objective


def _xgboost_base(booster: Any, saved: dict, targets: int) -> np.ndarray:
    """The intercept in margin space, per class, as XGBoost computes it from base_score (its own
    float32 logit or log for the objective): its margin with every leaf set to 0."""
    import json

    import xgboost

    zeroed = json.loads(json.dumps(saved))
    learner = zeroed["learner"]["gradient_booster"]
    forest = learner["model"] if "model" in learner else learner["gbtree"]["model"]
    for tree in forest["trees"]:
        leaf = np.asarray(tree["left_children"]) == -1
        tree["split_conditions"] = np.where(leaf, 0.0, tree["split_conditions"]).tolist()
        tree["base_weights"] = [0.0] * len(tree["base_weights"])
    empty = xgboost.Booster(model_file=bytearray(json.dumps(zeroed).encode()))
    n = int(zeroed["learner"]["learner_model_param"]["num_feature"])
    row = xgboost.DMatrix(np.zeros((1, n), dtype=np.float32))
    margin = empty.predict(row, output_margin=True, validate_features=False)
    return np.asarray(margin, dtype=np.float32).reshape(-1)[:targets]


def _gb_init(model: Any) -> np.ndarray:
    """GradientBoosting's initial raw score: zero, or its prior (a Dummy estimator, the same for any
    row); an init estimator of the user's depends on the row and is not converted."""
    from sklearn.dummy import DummyClassifier, DummyRegressor

    if not (model.init_ == "zero" or isinstance(model.init_, (DummyClassifier, DummyRegressor))):
        raise NotImplementedError(f"{type(model).__name__} with init={type(model.init_).__name__}")
    return model._raw_predict_init(np.zeros((1, model.n_features_in_)))[0].astype(np.float64)


def forest_trees(model: Any) -> tuple[list[Tree], int]:
    """A forest's trees, one per class (leaf class fractions, as predict_proba normalises them) or
    one each for a regressor. Of two classes only the second's: half the walk, and its mean is
    sklearn's to the bit; the first's is 1 - p here, sklearn's own sum there, within an ulp (the
    label, the larger of the two, the same but when they tie within an ulp of 0.5, which the
    holdout check would show)."""
    if model.n_outputs_ != 1:
        raise NotImplementedError(f"{type(model).__name__} with {model.n_outputs_} outputs")
    classifier = hasattr(model, "classes_")
    trees = []
    for estimator in model.estimators_:
        t = estimator.tree_
        values = t.value[:, 0, :]
        if classifier:
            total = values.sum(axis=1, keepdims=True)
            total[total == 0.0] = 1.0
            values = values / total
        classes = range(values.shape[1]) if values.shape[1] != 2 else [1]
        trees += [_sklearn_tree(t, values[:, k], k if values.shape[1] != 2 else 0) for k in classes]
    return trees, (len(model.classes_) if classifier and len(model.classes_) != 2 else 1)


def gradient_boosting_trees(model: Any) -> tuple[list[Tree], int]:
    """Each stage's tree per class, its leaves times the learning rate (as predict_stages adds them)."""
    trees = [
        _sklearn_tree(estimator.tree_, model.learning_rate * estimator.tree_.value[:, 0, 0], k)
        for stage in model.estimators_
        for k, estimator in enumerate(stage)
    ]
    return trees, model.estimators_.shape[1]


def _sklearn_tree(t: Any, value: np.ndarray, target: int) -> Tree:
    return Tree(
        t.feature, t.threshold, t.children_left, t.children_right, t.missing_go_to_left.astype(bool),
        np.asarray(value, dtype=np.float64), target, {}, {},
    )  # fmt: skip


def hist_trees(model: Any) -> tuple[list[Tree], int]:
    """HistGradientBoosting's predictors. A categorical split sends a category in its left set
    left, another known category right, and an unknown one (or a negative value) where missing
    values go: as a membership test, the left set when missing values go right, else the known
    categories of the right side, tested true to the right."""
    known, feature_map = model._bin_mapper.make_known_categories_bitsets()
    trees = []
    for iteration in model._predictors:
        for k, predictor in enumerate(iteration):
            nodes = predictor.nodes
            leaf = nodes["is_leaf"].astype(bool)
            members: dict[int, list[float]] = {}
            true_right: dict[int, bool] = {}
            for i in np.flatnonzero(nodes["is_categorical"].astype(bool) & ~leaf):
                left = _bits(predictor.raw_left_cat_bitsets[nodes["bitset_idx"][i]])
                if nodes["missing_go_to_left"][i]:
                    every = _bits(known[feature_map[nodes["feature_idx"][i]]])
                    members[int(i)], true_right[int(i)] = sorted(set(every) - set(left)), True
                else:
                    members[int(i)], true_right[int(i)] = left, False
            trees.append(
                Tree(
                    nodes["feature_idx"].astype(np.int64),
                    nodes["num_threshold"].astype(np.float64),
                    np.where(leaf, -1, nodes["left"].astype(np.int64)),
                    np.where(leaf, -1, nodes["right"].astype(np.int64)),
                    nodes["missing_go_to_left"].astype(bool),
                    nodes["value"].astype(np.float64),
                    k,
                    members,
                    true_right,
                )
            )
    return trees, len(model._predictors[0])


def _indices(columns: Any, n: int) -> np.ndarray:
    """A ColumnTransformer's column selection (a boolean mask or indices) as indices."""
    columns = np.asarray(columns)
    return np.flatnonzero(columns) if columns.dtype == bool else np.arange(n)[columns]


def _bits(bitset: np.ndarray) -> list[float]:
    """The categories (bit positions) set in one of sklearn's 256-bit bitsets (8 uint32 words)."""
    words = np.asarray(bitset, dtype=np.uint32)
    return [float(32 * w + b) for w in range(len(words)) for b in range(32) if (int(words[w]) >> b) & 1]


def ensemble_attributes(trees: list[Tree], targets: int, dtype: type = np.float64, mode: int = LEQ) -> dict:
    """TreeEnsemble's attributes for `trees` (scores summed per target, no post transform), its
    thresholds and leaves in `dtype` (the input's type), numeric splits compared with `mode`."""
    from onnx import numpy_helper

    names = ("feature", "split", "mode", "true", "true_leaf", "false", "false_leaf", "missing_true", "weight", "target")
    columns: dict[str, list[np.ndarray]] = {k: [] for k in names}
    roots: list[int] = []
    members: list[float] = []
    nodes = leaves_so_far = 0
    for tree in trees:
        is_leaf = tree.left == -1
        splits, leaves = np.flatnonzero(~is_leaf), np.flatnonzero(is_leaf)
        position = np.empty(len(is_leaf), dtype=np.int64)
        position[splits] = nodes + np.arange(len(splits))
        position[leaves] = leaves_so_far + np.arange(len(leaves))
        columns["weight"].append(tree.value[leaves])
        columns["target"].append(np.full(len(leaves), tree.target, dtype=np.int64))
        roots.append(nodes)  # sklearn numbers a tree's root 0, and splits keep their order
        if len(splits) == 0:  # a tree that is one leaf: a split whose branches both lead to it
            splits, position[0] = np.array([0]), leaves_so_far
        swap = np.array([tree.true_right.get(int(i), False) for i in splits], dtype=bool)
        true_child = np.where(swap, tree.right[splits], tree.left[splits])
        false_child = np.where(swap, tree.left[splits], tree.right[splits])
        if len(leaves) == len(is_leaf):
            true_child = false_child = np.array([0])
        categorical = np.array([int(i) in tree.members for i in splits], dtype=bool)
        for i in splits[categorical]:
            members.extend([*tree.members[int(i)], np.nan])
        columns["feature"].append(np.maximum(tree.feature[splits], 0))
        columns["split"].append(np.where(categorical, 0.0, tree.threshold[splits]))
        columns["mode"].append(np.where(categorical, MEMBER, mode))
        columns["true"].append(position[true_child])
        columns["true_leaf"].append(is_leaf[true_child])
        columns["false"].append(position[false_child])
        columns["false_leaf"].append(is_leaf[false_child])
        columns["missing_true"].append(tree.missing_left[splits].astype(bool) != swap)
        nodes += len(splits)
        leaves_so_far += len(leaves)
    joined = {k: np.concatenate(v) for k, v in columns.items()}
    ints = lambda k: joined[k].astype(np.int64).tolist()
    attributes = {
        "n_targets": targets,
        "aggregate_function": 1,  # SUM: averages and initial scores are applied after, as sklearn does
        "post_transform": 0,
        "tree_roots": roots,
        "nodes_featureids": ints("feature"),
        "nodes_splits": numpy_helper.from_array(joined["split"].astype(dtype)),
        "nodes_modes": numpy_helper.from_array(joined["mode"].astype(np.uint8)),
        "nodes_truenodeids": ints("true"),
        "nodes_trueleafs": ints("true_leaf"),
        "nodes_falsenodeids": ints("false"),
        "nodes_falseleafs": ints("false_leaf"),
        "nodes_missing_value_tracks_true": ints("missing_true"),
        "leaf_weights": numpy_helper.from_array(joined["weight"].astype(dtype)),
        "leaf_targetids": ints("target"),
    }
    if members:
        attributes["membership_values"] = numpy_helper.from_array(np.asarray(members, dtype=dtype))
    return attributes


def groups(trees: list[Tree]) -> list[list[Tree]]:
    """Consecutive trees in groups of at most GROUP_NODES split nodes (a bigger tree alone)."""
    grouped: list[list[Tree]] = [[]]
    size = 0
    for tree in trees:
        n = int(np.sum(tree.left != -1))
        if grouped[-1] and size + n > GROUP_NODES:
            grouped.append([])
            size = 0
        grouped[-1].append(tree)
        size += n
    return grouped


class _Graph:
    """Small helpers over skl2onnx's scope and container: each node gets a unique output name."""

    def __init__(self, scope: Scope, container: ModelComponentContainer):
        self.scope = scope
        self.container = container

    def node(self, op: str, inputs: list[str], output: str | None = None, domain: str = "", **attrs) -> str:
        output = output or self.scope.get_unique_variable_name(op.lower())
        kwargs = {"op_domain": domain, "op_version": TREE_OPSET[domain]} if domain else {}
        self.container.add_node(op, inputs, [output], name=self.scope.get_unique_operator_name(op), **kwargs, **attrs)
        return output

    def const(self, values: np.ndarray) -> str:
        from onnx import TensorProto

        values = np.asarray(values)
        name = self.scope.get_unique_variable_name("const")
        kind = {"f": TensorProto.DOUBLE, "i": TensorProto.INT64}[values.dtype.kind]
        flat = values.reshape(-1).astype(np.float64 if values.dtype.kind == "f" else np.int64).tolist()
        self.container.add_initializer(name, kind, list(values.shape), flat)
        return name

    def const32(self, value: float) -> str:
        """A float32 scalar."""
        from onnx import TensorProto

        name = self.scope.get_unique_variable_name("const")
        self.container.add_initializer(name, TensorProto.FLOAT, [], [float(np.float32(value))])
        return name

    def add(self, a: str, b: str) -> str:
        return self.node("Add", [a, b])

    def concat(self, inputs: list[Variable]) -> str:
        """The inputs as one float64 tensor (booleans and integers cast; skl2onnx's own helper
        concatenates through float32)."""
        from skl2onnx.common.data_types import DoubleTensorType, StringTensorType

        names = []
        for variable in inputs:
            if isinstance(variable.type, StringTensorType):
                raise NotImplementedError("text columns straight into a tree ensemble (encode them first)")
            name = variable.full_name
            names.append(name if isinstance(variable.type, DoubleTensorType) else self.node("Cast", [name], to=11))
        return names[0] if len(names) == 1 else self.node("Concat", names, axis=1)

    def float32_rounded(self, x: str) -> str:
        """sklearn's trees compare the input as float32: round it so, then back to float64."""
        return self.node("Cast", [self.node("Cast", [x], to=1)], to=11)

    def hist_inputs(self, inputs: list[Variable], model: Any) -> str:
        """HistGradientBoosting's input. With categorical features it encodes them with its own
        OrdinalEncoder first (category -> its code, a missing or unknown one -> NaN) and puts them
        before the numeric ones, as its _preprocess_X does: text columns given one by one
        (`categorical_features="from_dtype"` on the raw columns), numbers from anywhere."""
        preprocessor = getattr(model, "_preprocessor", None)
        if preprocessor is None:
            return self.concat(inputs)
        (_, encoder, categorical), (_, _, numerical), *_ = preprocessor.transformers_
        n = model.n_features_in_
        if len(inputs) == n and all(v.type.shape[1] == 1 for v in inputs):
            columns = list(inputs)
        else:
            x = self.concat(inputs)
            columns = [self.node("Gather", [x, self.const(np.array([i]))], axis=1) for i in range(n)]
        encoded = [
            self._ordinal(columns[i], categories)
            for i, categories in zip(_indices(categorical, n), encoder.categories_, strict=True)
        ]
        numbers = [c if isinstance(c, str) else self.concat([c]) for c in (columns[i] for i in _indices(numerical, n))]
        together = encoded + numbers
        return together[0] if len(together) == 1 else self.node("Concat", together, axis=1)

    def _ordinal(self, column: Any, categories: np.ndarray) -> str:
        """One column (a graph variable, or a float64 tensor's name) as its category codes."""
        from onnx import numpy_helper
        from skl2onnx.common.data_types import StringTensorType

        codes = numpy_helper.from_array(np.arange(len(categories), dtype=np.float64))
        missing = numpy_helper.from_array(np.array([np.nan]))
        if not isinstance(column, str) and isinstance(column.type, StringTensorType):
            keys = numpy_helper.from_array(np.asarray([str(c) for c in categories], dtype=object))
            source = column.full_name
        else:
            keys = numpy_helper.from_array(np.asarray(categories, dtype=np.float64))
            source = column if isinstance(column, str) else self.concat([column])
        return self.node(
            "LabelEncoder", [source], domain="ai.onnx.ml", keys_tensor=keys, values_tensor=codes, default_tensor=missing
        )

    def ensemble(self, x: str, trees: list[Tree], targets: int) -> str:
        """The trees' scores summed per target, (N, targets) float64."""
        outputs = [
            self.node("TreeEnsemble", [x], domain="ai.onnx.ml", **ensemble_attributes(group, targets))
            for group in groups(trees)
        ]
        return outputs[0] if len(outputs) == 1 else self.node("Sum", outputs)

    def labels(self, index: str, classes: Any, output: str) -> None:
        """classes_[index], int64 or text."""
        from onnx import TensorProto

        classes = np.asarray(classes)
        name = self.scope.get_unique_variable_name("classes")
        if classes.dtype.kind in "biu":
            self.container.add_initializer(name, TensorProto.INT64, [len(classes)], classes.astype(np.int64).tolist())
        else:
            self.container.add_initializer(name, TensorProto.STRING, [len(classes)], [str(c).encode() for c in classes])
        self.node("Gather", [name, index], output, axis=0)
