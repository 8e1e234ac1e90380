"""Tree ensembles compiled to float64 ONNX (tasks/training/compile_trees.py): the whole holdout answered as
scikit-learn answers it, for every family and task, with missing values, native categories and a
decision threshold; LightGBM's and XGBoost's estimators (XGBoost's own float32 answers to the
bit); a model that cannot be compiled says why; a version trained by the flow is served compiled
by the gateway with sklearn's answers."""

from __future__ import annotations

import sys

import httpx
import numpy as np
import pandas as pd
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.dummy import DummyClassifier
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
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OrdinalEncoder

from core.vocabulary import Alias, Tag
from serving import frame_feeds, session
from tasks.data.demo_data import CATEGORIES, NUMERIC, TARGET, generate
from tasks.release.registry import set_alias, versions
from tasks.training import compile_trees
from tasks.training.compile import compile_pipeline
from tasks.training.pipeline import preprocessor, with_threshold
from tests.conftest import tuned

TOLERANCE = 1e-9  # |dp| of the target, float64


@pytest.fixture(scope="module")
def data():
    """Demo rows with nulls (numbers and categories), a binary, a three-class and a numeric target."""
    frame = generate(1500, seed=3)
    y = frame.pop(TARGET)
    frame.loc[frame.index[::13], "age"] = np.nan
    value = frame["monthly_charges"] * 2 + frame["tenure_months"] - 10 * frame["support_calls"]
    three = pd.Series(
        np.where(value < value.quantile(0.3), "low", np.where(value < value.quantile(0.7), "mid", "high"))
    )
    targets = {"binary": y, "multiclass": three.set_axis(frame.index), "regression": value}
    return frame, targets


def answers_like_sklearn(model, X: pd.DataFrame, predict_fn: str = "predict") -> float:
    """Compile `model`, answer X with the graph as the gateway does; labels must equal sklearn's
    and numbers match to TOLERANCE. The largest |difference| in probabilities (or values)."""
    compiled = compile_pipeline(model, X, predict_fn)
    assert compiled.ok, compiled.status
    assert compiled.status.startswith(f"passed: {len(X)} holdout rows")
    outputs = session(compiled.onnx).run(None, frame_feeds(X))
    if not hasattr(model, "classes_"):
        delta = float(np.max(np.abs(outputs[0].reshape(-1) - model.predict(X))))
    else:
        assert outputs[0].reshape(-1).tolist() == model.predict(X).tolist()
        delta = float(np.max(np.abs(outputs[1] - model.predict_proba(X))))
    assert delta <= TOLERANCE
    return delta


FAMILIES = {
    "random_forest": (RandomForestClassifier, RandomForestRegressor, {"n_estimators": 15}),
    "extra_trees": (ExtraTreesClassifier, ExtraTreesRegressor, {"n_estimators": 15}),
    "gradient_boosting": (GradientBoostingClassifier, GradientBoostingRegressor, {"n_estimators": 30}),
    "hist_gradient_boosting": (HistGradientBoostingClassifier, HistGradientBoostingRegressor, {"max_iter": 30}),
}


@pytest.fixture(autouse=True)
def one_thread():
    """HGB fits with OpenMP threads, which on a busy 2-core machine wait for each other for seconds."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_answers_the_whole_holdout_as_sklearn_does(data, family, task):
    frame, targets = data
    classifier, regressor, params = FAMILIES[family]
    estimator = (regressor if task == "regression" else classifier)(random_state=0, **params)
    train, holdout = frame.iloc[:1100], frame.iloc[1100:]
    model = Pipeline([("preprocess", preprocessor(train)), ("model", estimator)])
    model.fit(train, targets[task].loc[train.index])
    answers_like_sklearn(model, holdout)
    if task != "regression":
        answers_like_sklearn(model, holdout, "predict_proba")


@pytest.mark.parametrize("family", ["random_forest", "hist_gradient_boosting"])
def test_missing_values_reach_the_trees_and_go_where_each_split_learnt(data, family):
    """No imputer in front: NaN is routed by each node's missing_go_to_left, as in sklearn."""
    frame, targets = data
    numbers = frame[NUMERIC]
    assert numbers.isna().any().sum() >= 3
    classifier, _, params = FAMILIES[family]
    model = Pipeline([("model", classifier(random_state=0, **params))]).fit(
        numbers.iloc[:1100], targets["binary"][:1100]
    )
    answers_like_sklearn(model, numbers.iloc[1100:])


def test_native_categories_from_dtype_are_encoded_as_hgb_encodes_them(data):
    """categorical_features="from_dtype": category columns (text categories, nulls) are coded by
    HGB's own OrdinalEncoder; the gateway sends them as text, unknown ones included."""
    frame, targets = data
    categorical = frame.astype({c: "category" for c in CATEGORIES})
    hgb = HistGradientBoostingClassifier(max_iter=30, random_state=0, categorical_features="from_dtype")
    model = Pipeline([("model", hgb)]).fit(categorical.iloc[:1100], targets["multiclass"][:1100])
    assert model[-1].is_categorical_.sum() == len(CATEGORIES)
    holdout = frame.iloc[1100:].copy()  # as served: text, not category dtype
    holdout.loc[holdout.index[:7], "plan"] = "platinum"  # never seen in training: goes where missing values go
    answers_like_sklearn(model, holdout)
    answers_like_sklearn(model, categorical.iloc[1100:], "predict_proba")


def test_native_categories_by_mask_behind_an_ordinal_encoder(data):
    frame, targets = data
    encode = ColumnTransformer(
        [("codes", OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1), list(CATEGORIES))],
        remainder="passthrough",
    )
    hgb = HistGradientBoostingRegressor(max_iter=30, random_state=0, categorical_features=[0, 1, 2, 3])
    model = Pipeline([("encode", encode), ("model", hgb)]).fit(frame.iloc[:1100], targets["regression"][:1100])
    holdout = frame.iloc[1100:].copy()
    holdout.loc[holdout.index[:5], "contract"] = "ten_year"  # -1: a negative code goes where missing values go
    answers_like_sklearn(model, holdout)


@pytest.mark.parametrize("family", ["random_forest", "gradient_boosting", "hist_gradient_boosting"])
def test_a_decision_threshold_answers_labels_from_the_compiled_probabilities(data, family):
    frame, targets = data
    train, holdout = frame.iloc[:1100], frame.iloc[1100:]
    classifier, _, params = FAMILIES[family]
    fitted = Pipeline([("preprocess", preprocessor(train)), ("model", classifier(random_state=0, **params))])
    fitted.fit(train, targets["binary"].loc[train.index])
    proba = fitted.predict_proba(holdout)[:, 1]
    threshold = float(np.quantile(proba, 0.4))  # labels that differ from 0.5's
    model = with_threshold(fitted, threshold, train, targets["binary"].loc[train.index])
    assert model.predict(holdout).tolist() != fitted.predict(holdout).tolist()
    answers_like_sklearn(model, holdout)


def test_trees_split_over_several_ensemble_nodes_sum_to_the_same_answer(data, monkeypatch):
    frame, targets = data
    train = frame.iloc[:1100]
    model = Pipeline([("preprocess", preprocessor(train)), ("model", RandomForestClassifier(8, random_state=0))])
    model.fit(train, targets["multiclass"].loc[train.index])
    monkeypatch.setattr(compile_trees, "GROUP_NODES", 50)  # each tree a node of its own
    compiled = compile_pipeline(model, frame.iloc[1100:])
    import onnx

    ensembles = [n for n in onnx.load_from_string(compiled.onnx).graph.node if n.op_type == "TreeEnsemble"]
    assert len(ensembles) == 8 * 3  # a tree per class of each
    answers_like_sklearn(model, frame.iloc[1100:])


def test_a_large_batch_split_across_cores_answers_row_for_row_as_one_call(data, monkeypatch):
    from serving import models

    frame, targets = data
    train, holdout = frame.iloc[:1100], frame.iloc[1100:]
    model = Pipeline([("preprocess", preprocessor(train)), ("model", RandomForestClassifier(8, random_state=0))])
    model.fit(train, targets["multiclass"].loc[train.index])
    compiled = compile_pipeline(model, holdout)
    feeds = frame_feeds(holdout)
    whole = session(compiled.onnx).run(None, feeds)
    monkeypatch.setattr(models, "SPLIT_ROWS", 100)
    monkeypatch.setattr(models, "CORES", 3)
    for predict_fn, output in (("predict", 0), ("predict_proba", 1)):
        servable = models.Servable("1", "onnx", None, session(compiled.onnx), predict_fn)
        calls: list[int] = []

        def counted(*args, run=servable._run, calls=calls):
            calls.append(len(args[1]["age"]))
            return run(*args)

        servable._run = counted
        answer = servable.forward(feeds)
        assert sorted(calls) == [133, 133, 134]  # 400 rows in three slices, one a thread
        assert answer.tolist() == whole[output].tolist()


def test_a_boosting_round_of_one_leaf_is_a_tree_too(data):
    frame, targets = data
    numbers = frame[NUMERIC].fillna(0)
    # min_samples_leaf over half the rows: no split is possible, every tree is one leaf
    hgb = HistGradientBoostingClassifier(max_iter=5, min_samples_leaf=800, early_stopping=False)
    model = Pipeline([("model", hgb)]).fit(numbers.iloc[:1100], targets["binary"][:1100])
    assert all(len(p.nodes) == 1 for it in model[-1]._predictors for p in it)
    answers_like_sklearn(model, numbers.iloc[1100:])


def test_a_tree_model_that_cannot_be_compiled_says_why(data):
    frame, targets = data
    train = frame.iloc[:1100]
    # an init estimator of the user's: its score depends on the row, which the graph does not compute
    boosted = GradientBoostingClassifier(n_estimators=5, init=LogisticRegression())
    model = Pipeline([("preprocess", preprocessor(train)), ("model", boosted)])
    model.fit(train, targets["binary"].loc[train.index])
    compiled = compile_pipeline(model, frame.iloc[1100:])
    assert compiled.onnx is None
    assert (
        compiled.status == "unsupported: NotImplementedError: GradientBoostingClassifier with init=LogisticRegression"
    )
    prior = GradientBoostingClassifier(n_estimators=5, init=DummyClassifier(strategy="prior"))
    model.set_params(model=prior).fit(train, targets["binary"].loc[train.index])
    answers_like_sklearn(model, frame.iloc[1100:])


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize(
    ("estimator", "params"),
    [
        ("random_forest", {"n_estimators": 30}),
        ("hist_gradient_boosting", {"max_iter": 50}),
        ("xgboost:XGBClassifier", {"n_estimators": 80, "max_depth": 4}),
    ],
)
def test_a_version_trained_by_the_flow_is_served_compiled_with_sklearns_answers(settings, estimator, params):
    import mlflow

    from flows.train import training_flow
    from serving.server import running

    s = tuned(settings, data={"demo_rows": 3000}, training={"estimator": estimator, "params": params})
    result = training_flow(data="demo", settings=s)
    found, _ = versions(s, result.model_name)
    tags = next(v.tags for v in found if str(v.version) == result.version)
    assert tags[Tag.SERVING_FORMAT] == "onnx", tags[Tag.ONNX_PARITY]
    assert tags[Tag.ONNX_PARITY].startswith("passed: 600 holdout rows, predictions equal, max |dp| ")
    set_alias(s, result.model_name, Alias.PRODUCTION, result.version)
    model = mlflow.sklearn.load_model(f"models:/{result.model_name}/{result.version}")
    rows = generate(400, seed=77).drop(columns=[TARGET])
    body = {"dataframe_split": {"columns": list(rows.columns), "data": rows.astype(object).where(rows.notna(), None).values.tolist()}}  # fmt: skip
    with running(s) as url:
        answer = httpx.post(f"{url}/invocations", json=body, timeout=60)
        health = httpx.get(f"{url}/health", timeout=10).json()
    assert answer.status_code == 200, answer.text
    assert answer.json()["predictions"] == model.predict(rows).tolist()
    assert health["serving"]["Production"] == {"version": result.version, "format": "onnx"}


def test_date_parts_compile_for_naive_and_zoned_dates_and_nulls(data):
    """DateParts in the graph: dates from 1950 to 2069 to the microsecond, zone-aware ones read in
    UTC, NaT as missing parts; a linear model on the parts shows any part that differs."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LinearRegression

    from tasks.features import DateParts

    frame, targets = data
    rng = np.random.default_rng(4)
    seconds = pd.to_timedelta(rng.integers(0, 120 * 365 * 86_400, len(frame)), unit="s")
    dates = pd.DataFrame(
        {
            "signed_up": pd.Timestamp("1950-01-01")
            + seconds
            + pd.to_timedelta(rng.integers(0, 10**6, len(frame)), unit="us")
        },
        index=frame.index,
    )
    dates.loc[dates.index[::11], "signed_up"] = pd.NaT
    dates["seen_at"] = dates["signed_up"].dt.tz_localize("UTC").dt.tz_convert("America/Sao_Paulo")
    parts = Pipeline([("parts", DateParts()), ("impute", SimpleImputer()), ("model", LinearRegression())])
    parts.fit(dates, targets["regression"])
    coefficients = parts[-1].coef_
    assert np.all(np.abs(coefficients) > 1e-6)  # every part counts in the answer
    answers_like_sklearn(parts, dates)
    with_dates = frame.join(dates)
    model = Pipeline([("preprocess", preprocessor(with_dates)), ("model", HistGradientBoostingClassifier(max_iter=20))])
    model.fit(with_dates.iloc[:1100], targets["binary"][:1100])
    answers_like_sklearn(model, with_dates.iloc[1100:])


def test_the_gateway_feeds_datetimes_as_the_compiled_parts_read_them():
    from serving.registry_reader import Column
    from serving.schema import Raw, Schema

    schema = Schema([Column("signed_up", "datetime", False)])
    # one format a column, without an offset: as mlflow models serve reads a dataframe_split column
    sent = ["2024-05-31T14:00:00.000000", None, "1969-12-31T23:59:59.999999", "2024-02-28T22:00:00.000001"]
    batch = schema.coerce(Raw({"signed_up": sent}, len(sent)))
    fed = schema.feeds(batch)["signed_up"].reshape(-1)
    expected = pd.to_datetime(pd.Series(sent), format="ISO8601", utc=True)
    assert np.isnan(fed[1])
    micros = (expected.drop(index=1) - pd.Timestamp("1970-01-01", tz="UTC")) // pd.Timedelta(microseconds=1)
    assert fed[[0, 2, 3]].tolist() == micros.astype(float).tolist()


@pytest.mark.parametrize("task", ["binary", "multiclass", "regression"])
def test_lightgbm_models_given_by_import_path_compile_exactly(data, task):
    """LightGBM (a dev dependency: users bring it) through training.estimator's import path, behind
    shipway's preprocessing and on raw columns with NaN; its random-forest mode averages."""
    from configs.settings import TrainingSettings
    from tasks.training.pipeline import train

    frame, targets = data
    table = frame.assign(label=targets[task])
    estimator = "lightgbm:LGBMRegressor" if task == "regression" else "lightgbm:LGBMClassifier"
    settings = TrainingSettings(estimator=estimator, params={"n_estimators": 40, "verbose": -1}, threshold="none")
    trained = train(table, "label", settings)
    answers_like_sklearn(trained.model, trained.X_holdout)
    import lightgbm

    numbers = frame[NUMERIC]
    forest = lightgbm.LGBMClassifier(boosting_type="rf", subsample=0.8, subsample_freq=1, n_estimators=10, verbose=-1)
    model = Pipeline([("model", forest)]).fit(numbers.iloc[:1100], targets["binary"][:1100])
    answers_like_sklearn(model, numbers.iloc[1100:])


def public_table(name: str) -> tuple[pd.DataFrame, pd.Series]:
    """A table scikit-learn ships (breast cancer, wine, diabetes), a tenth of its values made missing."""
    from sklearn import datasets

    loaded = getattr(datasets, f"load_{name}")(as_frame=True)
    rng = np.random.default_rng(5)
    X = loaded.data.mask(rng.random(loaded.data.shape) < 0.1)
    return X, loaded.target.rename("label")


XGB_CASES = {
    "binary:logistic": ("breast_cancer", "XGBClassifier", {}),
    "multi:softprob": ("wine", "XGBClassifier", {}),
    "reg:squarederror": ("diabetes", "XGBRegressor", {}),
    "count:poisson": ("diabetes", "XGBRegressor", {"objective": "count:poisson"}),
    "reg:logistic": ("breast_cancer", "XGBRegressor", {"objective": "reg:logistic"}),
    "reg:quantileerror": ("diabetes", "XGBRegressor", {"objective": "reg:quantileerror", "quantile_alpha": 0.3}),
    "dart": ("wine", "XGBClassifier", {"booster": "dart", "rate_drop": 0.2}),
    "random_forest": ("breast_cancer", "XGBRFClassifier", {"n_estimators": 20}),
}


def answers_exactly_as_xgboost(model, X: pd.DataFrame) -> None:
    """XGBoost answers float32: the compiled answers are the same float32 numbers (|dp| 0), labels equal."""
    answers_like_sklearn(model, X)
    outputs = session(compile_pipeline(model, X, "predict").onnx).run(None, frame_feeds(X))
    if hasattr(model, "classes_"):
        assert np.array_equal(outputs[1], model.predict_proba(X).astype(np.float64))
    else:
        assert np.array_equal(outputs[0].reshape(-1), model.predict(X).astype(np.float64))


@pytest.mark.parametrize("case", list(XGB_CASES))
def test_xgboost_answers_the_whole_table_with_its_own_float32_numbers(case):
    """XGBoost through training.estimator's import path behind shipway's preprocessing, and on the
    raw columns with NaN reaching the trees (each split's default side)."""
    import xgboost

    from configs.settings import TrainingSettings
    from tasks.training.pipeline import train

    table, cls, params = XGB_CASES[case]
    X, y = public_table(table)
    params = {"n_estimators": 60, "max_depth": 4, **params}
    task = "regression" if "Regressor" in cls else "auto"
    settings = TrainingSettings(estimator=f"xgboost:{cls}", params=params, threshold="none", task=task)
    trained = train(X.assign(label=y), "label", settings)
    answers_exactly_as_xgboost(trained.model, trained.X_holdout)
    raw = Pipeline([("model", getattr(xgboost, cls)(**params))]).fit(X.iloc[::2], y.iloc[::2])
    answers_exactly_as_xgboost(raw, X.iloc[1::2])
    if hasattr(raw, "predict_proba"):
        assert compile_pipeline(raw, X.iloc[1::2], "predict_proba").status.endswith("within 0 relative")


def test_xgboost_after_early_stopping_walks_the_trees_up_to_its_best_iteration():
    import onnx
    import xgboost

    X, y = public_table("breast_cancer")
    boosted = xgboost.XGBClassifier(n_estimators=400, learning_rate=0.5, early_stopping_rounds=3)
    boosted.fit(X.iloc[:250], y.iloc[:250], eval_set=[(X.iloc[250:400], y.iloc[250:400])], verbose=False)
    assert boosted.best_iteration + 1 < boosted.get_booster().num_boosted_rounds()
    model = Pipeline([("model", boosted)])
    compiled = compile_pipeline(model, X.iloc[400:])
    (ensemble,) = [n for n in onnx.load_from_string(compiled.onnx).graph.node if n.op_type == "TreeEnsemble"]
    roots = next(a for a in ensemble.attribute if a.name == "tree_roots")
    assert len(roots.ints) == boosted.best_iteration + 1
    answers_exactly_as_xgboost(model, X.iloc[400:])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="XGBoost calls the machine's expf: glibc's here")
def test_the_compiled_expf_is_glibcs_to_the_bit():
    """ONNX's own float Exp differs from glibc's expf in the last bit for about one value in
    sixteen; the graph's replica of glibc's algorithm must not differ at all."""
    import ctypes
    import ctypes.util

    from onnx import TensorProto, helper
    from skl2onnx.common._container import ModelComponentContainer
    from skl2onnx.common._topology import Scope

    rng = np.random.default_rng(0)
    x = np.concatenate(
        [rng.uniform(-104.5, 89.0, 60_000), rng.normal(0, 4, 60_000), [0.0, -0.0, np.inf, -np.inf, np.nan]]
    ).astype(np.float32)
    expf = ctypes.CDLL(ctypes.util.find_library("m")).expf
    expf.restype, expf.argtypes = ctypes.c_float, [ctypes.c_float]
    expected = np.array([expf(float(v)) for v in x], dtype=np.float32)
    scope = Scope("expf", target_opset=compile_trees.TREE_OPSET[""])
    container = ModelComponentContainer(compile_trees.TREE_OPSET[""])
    output = compile_trees._expf(compile_trees._Graph(scope, container), "x")
    graph = helper.make_graph(
        container.nodes,
        "expf",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, [None])],
        container.initializers,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", compile_trees.TREE_OPSET[""])])
    got = session(proto.SerializeToString()).run(None, {"x": x})[0]
    assert np.array_equal(got, expected, equal_nan=True)


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"objective": "multi:softmax"}, "XGBoost classifier objective multi:softmax"),
        ({"booster": "gblinear"}, "XGBoost booster gblinear"),
        ({"missing": 0.0}, "XGBoost with missing=0.0 (only NaN is read as missing)"),
    ],
)
def test_an_xgboost_model_that_cannot_be_compiled_says_why(params, reason):
    import xgboost

    X, y = public_table("wine")
    model = Pipeline([("model", xgboost.XGBClassifier(n_estimators=5, **params))]).fit(X, y)
    compiled = compile_pipeline(model, X)
    assert compiled.onnx is None
    assert compiled.status == f"unsupported: NotImplementedError: {reason}"


def test_xgboost_categorical_splits_are_refused_with_the_reason():
    import xgboost

    frame = pd.DataFrame({"plan": pd.Categorical(["a", "b", "c", "a"] * 50), "n": np.arange(200.0)})
    y = (frame["plan"] == "b").astype(int)
    model = Pipeline([("model", xgboost.XGBClassifier(n_estimators=3, enable_categorical=True))]).fit(frame, y)
    compiled = compile_pipeline(model, frame)
    assert compiled.onnx is None
    assert compiled.status.startswith("unsupported: NotImplementedError: XGBoost categorical splits")
