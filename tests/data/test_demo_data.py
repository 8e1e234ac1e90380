import numpy as np
import pandas as pd
import pytest

from tasks.data import demo_data
from tasks.data.demo_data import Drift, generate


def test_demo_data_is_realistic_tabular_classification():
    df = generate(30_000, seed=1)
    assert len(df) == 30_000
    assert set(demo_data.NUMERIC) <= set(df.select_dtypes("number").columns)
    assert all(df[c].dtype == "str" for c in demo_data.CATEGORIES)
    for col, rate in demo_data.NULL_RATES.items():
        assert abs(df[col].isna().mean() - rate) < 0.01, col
    churn = df.groupby("contract")[demo_data.TARGET].mean()
    assert churn["month_to_month"] > churn["one_year"] > churn["two_year"]  # the label follows the features
    assert 0.2 < df[demo_data.TARGET].mean() < 0.45


def test_same_seed_same_data():
    pd.testing.assert_frame_equal(generate(500, seed=3), generate(500, seed=3))
    assert not generate(500, seed=3).equals(generate(500, seed=4))


def test_serving_batches_drift_as_asked():
    _mean, sd = demo_data.reference_stats()["monthly_charges"]
    clean = generate(20_000, seed=5, with_label=False)
    drifted = generate(
        20_000,
        seed=5,
        with_label=False,
        drift=Drift(
            shift={"monthly_charges": 0.5},
            scale={"age": 1.5},
            null_rate={"plan": 0.4},
            categories={"region": {"north": 0.5, "atlantis": 0.5}},
        ),
    )
    assert demo_data.TARGET not in clean
    assert drifted["monthly_charges"].mean() - clean["monthly_charges"].mean() == pytest.approx(0.5 * sd, rel=0.02)
    assert drifted["age"].std() / clean["age"].std() == pytest.approx(1.5, rel=0.03)
    assert drifted["age"].dtype == np.int64
    assert drifted["plan"].isna().mean() == pytest.approx(0.4, abs=0.02)
    assert set(drifted["region"].dropna()) == {"north", "atlantis"}


def test_drift_on_unknown_column_is_refused():
    with pytest.raises(ValueError, match="does not have: \\['nope'\\]"):
        generate(10, drift=Drift(shift={"nope": 1.0}))
    with pytest.raises(ValueError, match="contract"):
        generate(10, drift=Drift(shift={"contract": 1.0}))  # a category has no mean to shift
