import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import train_test_split

from configs.settings import TrainingSettings
from core.errors import ConfigError, DataError
from core.vocabulary import Task
from tasks.data.demo_data import TARGET, generate
from tasks.training.pipeline import estimator_of, train


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    return generate(6_000, seed=21)


@pytest.fixture(scope="module")
def trained(data):
    return train(data, TARGET, TrainingSettings())


def test_preprocessing_statistics_are_fitted_on_the_training_split_and_ship_inside(trained, data):
    X = data.drop(columns=[TARGET])
    X_train, X_test = train_test_split(X, test_size=0.2, random_state=42, stratify=data[TARGET])
    numeric = trained.model.named_steps["preprocess"].named_transformers_["numeric"]
    columns = numeric.feature_names_in_
    np.testing.assert_allclose(numeric.named_steps["impute"].statistics_, X_train[columns].median())
    np.testing.assert_allclose(
        numeric.named_steps["scale"].mean_, X_train[columns].fillna(X_train[columns].median()).mean()
    )
    assert not np.allclose(numeric.named_steps["scale"].mean_, X_test[columns].fillna(X_test[columns].median()).mean())
    columns = {name: cols for name, _, cols in trained.model.named_steps["preprocess"].transformers_}
    assert set(columns["categorical"]) == {"contract", "payment_method", "plan", "region"}
    encoder = trained.model.named_steps["preprocess"].named_transformers_["categorical"].named_steps["encode"]
    assert sorted(encoder.categories_[0]) == sorted(X_train["contract"].unique())


def test_one_row_at_a_time_gives_the_batch_answer(trained):
    """Nothing is recomputed from the request: a single row scores as it does inside a batch."""
    rows = trained.X_holdout.head(20)
    batch = trained.model.predict_proba(rows)
    single = np.vstack([trained.model.predict_proba(rows.iloc[[i]]) for i in range(len(rows))])
    np.testing.assert_allclose(single, batch)


def test_unseen_categories_and_nulls_at_serving_do_not_break_the_model(trained):
    """An unseen plan scores as a row with no plan at all (its one-hot columns zero: the encoder
    ignores it) and a null charge as the training median (the imputer's): valid labels, the same
    probabilities as the pipeline gives those rows spelled out by hand, every time."""
    rows = trained.X_holdout.head(20).copy()
    rows["plan"] = "platinum"
    rows["monthly_charges"] = np.nan
    proba = trained.model.predict_proba(rows)
    labels = trained.model.predict(rows)
    assert np.isfinite(proba).all() and np.allclose(proba.sum(axis=1), 1.0)
    assert set(labels) <= set(trained.model.classes_)

    preprocess, model = trained.model.named_steps["preprocess"], trained.model.named_steps["model"]
    numeric = preprocess.named_transformers_["numeric"]
    median = numeric.named_steps["impute"].statistics_[list(numeric.feature_names_in_).index("monthly_charges")]
    spelled_out = rows.assign(plan=trained.X_holdout["plan"].head(20), monthly_charges=median)
    encoded = pd.DataFrame(preprocess.transform(spelled_out), columns=preprocess.get_feature_names_out())
    encoded[[c for c in encoded.columns if c.startswith("plan_")]] = 0.0  # what "ignore" does to an unseen plan
    np.testing.assert_allclose(proba, model.predict_proba(encoded.to_numpy()))
    assert labels.tolist() == model.predict(encoded.to_numpy()).tolist()
    np.testing.assert_array_equal(trained.model.predict_proba(rows), proba)  # deterministic


def test_holdout_metrics_and_a_baseline_the_model_beats(trained):
    assert set(trained.metrics) == {
        "accuracy",
        "balanced_accuracy",
        "f1",
        "precision",
        "recall",
        "log_loss",
        "roc_auc",
    }
    assert trained.metrics["roc_auc"] > 0.75
    assert 0.5 < trained.baseline_metrics["roc_auc"] < trained.metrics["roc_auc"]
    assert trained.baseline_rule == "contract in {month_to_month}"  # ahead of tenure_months, the best number
    baseline_only_needs_its_feature = trained.X_holdout[["contract"]].head(5)
    assert len(trained.baseline.predict(baseline_only_needs_its_feature)) == 5


def test_same_seed_same_model_other_seed_other_split(data):
    a, b = train(data, TARGET, TrainingSettings(seed=5)), train(data, TARGET, TrainingSettings(seed=5))
    np.testing.assert_array_equal(a.model.predict_proba(a.X_holdout), b.model.predict_proba(a.X_holdout))
    assert a.metrics == b.metrics
    c = train(data, TARGET, TrainingSettings(seed=6))
    assert not a.X_holdout.index.equals(c.X_holdout.index)


@pytest.mark.parametrize("estimator", ["random_forest", "hist_gradient_boosting", "gradient_boosting"])
def test_model_family_and_hyperparameters_come_from_settings(data, estimator):
    params = {"max_depth": 3} | ({"n_estimators": 10} if estimator != "hist_gradient_boosting" else {"max_iter": 10})
    result = train(data, TARGET, TrainingSettings(estimator=estimator, params=params))
    model = estimator_of(result.model)
    assert model.max_depth == 3
    assert model.random_state == 42
    assert result.metrics["roc_auc"] > 0.7


def test_unknown_hyperparameter_is_named(data):
    with pytest.raises(ConfigError, match=r"training.params: auto \(LogisticRegression\) has no parameter 'n_trees'"):
        train(data, TARGET, TrainingSettings(params={"n_trees": 3}))
    named = TrainingSettings(estimator="random_forest", params={"C": 1.0})
    with pytest.raises(ConfigError, match=r"random_forest \(RandomForestClassifier\) has no parameter 'C'"):
        train(data, TARGET, named)
    with pytest.raises(ConfigError, match="training.params"):
        train(data, TARGET, TrainingSettings(params={"C": "lots"}))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda df: df.drop(columns=[TARGET]), "target column 'churned' is not in the data"),
        (lambda df: df.assign(churned=df[TARGET].astype(float).where(df.index > 5)), "has 6 null labels"),
        (lambda df: df.assign(churned="yes"), "holds a single class"),
        (lambda df: df[[TARGET]], "no feature columns besides the target"),
    ],
)
def test_unusable_labels_get_clear_errors(data, mutate, message):
    with pytest.raises(DataError, match=message):
        train(mutate(data), TARGET, TrainingSettings())


def test_multiclass_labels_train_too(data):
    three = data.assign(churned=data["contract"])
    result = train(three.drop(columns=["contract"]), TARGET, TrainingSettings())
    assert result.task is Task.MULTICLASS
    assert len(result.model.classes_) == 3
    assert {"roc_auc", "f1_macro", "balanced_accuracy", "log_loss"} <= set(result.metrics)
