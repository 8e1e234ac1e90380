"""The demo dataset: customer churn, generated here so the journey needs no network.

Numeric and categorical features with some nulls, and a label drawn from a logistic model of
the features, so a good model can learn it and a one-rule baseline gets part of the way.
`generate(..., drift=Drift(...))` draws later "serving" batches from the same distribution,
optionally drifted, for the gates, shadow, canary and monitoring.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache

import numpy as np
import pandas as pd

TARGET = "churned"
NUMERIC = ["age", "tenure_months", "monthly_charges", "total_charges", "support_calls", "data_usage_gb"]
CATEGORIES: dict[str, dict[str, float]] = {
    "contract": {"month_to_month": 0.55, "one_year": 0.25, "two_year": 0.20},
    "payment_method": {
        "electronic_check": 0.34,
        "mailed_check": 0.22,
        "bank_transfer": 0.22,
        "credit_card": 0.22,
    },
    "plan": {"basic": 0.5, "standard": 0.35, "premium": 0.15},
    "region": {"north": 0.3, "south": 0.25, "east": 0.25, "west": 0.2},
}
NULL_RATES = {"total_charges": 0.03, "data_usage_gb": 0.05, "region": 0.02}


@dataclass(frozen=True)
class Drift:
    """How a batch departs from the training distribution.

    shift: column -> mean shift in training standard deviations.
    scale: column -> factor on the spread around the training mean.
    null_rate: column -> share of values replaced by nulls.
    categories: column -> new category probabilities (may name unseen categories).
    """

    shift: Mapping[str, float] = field(default_factory=dict)
    scale: Mapping[str, float] = field(default_factory=dict)
    null_rate: Mapping[str, float] = field(default_factory=dict)
    categories: Mapping[str, Mapping[str, float]] = field(default_factory=dict)


def generate(n_rows: int, seed: int = 0, drift: Drift | None = None, with_label: bool = True) -> pd.DataFrame:
    """`n_rows` customers; the label follows from the (possibly drifted) features."""
    drift = drift or Drift()
    _check_columns(drift)
    rng = np.random.default_rng(seed)
    df = _draw_features(rng, n_rows, drift.categories)
    stats = reference_stats()
    for col in {*drift.shift, *drift.scale}:
        mean, sd = stats[col]
        values = mean + (df[col] - mean) * drift.scale.get(col, 1.0) + drift.shift.get(col, 0.0) * sd
        df[col] = values.round().astype("int64") if df[col].dtype.kind == "i" else values
    if with_label:
        df[TARGET] = _label(df, rng)
    for col, rate in {**NULL_RATES, **drift.null_rate}.items():
        df.loc[rng.random(n_rows) < rate, col] = None
    return df


@cache
def reference_stats() -> dict[str, tuple[float, float]]:
    """Mean and standard deviation of each numeric feature in the undrifted distribution."""
    sample = _draw_features(np.random.default_rng(12345), 200_000, {})
    return {col: (float(sample[col].mean()), float(sample[col].std())) for col in NUMERIC}


def _draw_features(rng: np.random.Generator, n: int, categories: Mapping[str, Mapping[str, float]]) -> pd.DataFrame:
    tenure = rng.integers(0, 73, n)
    monthly = np.clip(rng.normal(65, 25, n), 18, 130).round(2)
    df = pd.DataFrame(
        {
            "age": np.clip(rng.normal(45, 14, n), 18, 90).round().astype("int64"),
            "tenure_months": tenure.astype("int64"),
            "monthly_charges": monthly,
            "total_charges": (monthly * tenure * rng.normal(1.0, 0.05, n)).round(2),
            "support_calls": rng.poisson(1.5, n).astype("int64"),
            "data_usage_gb": rng.lognormal(2.5, 0.6, n).round(3),
        }
    )
    for col, default in CATEGORIES.items():
        probs = categories.get(col, default)
        names = list(probs)
        weights = np.asarray([probs[k] for k in names], dtype=float)
        picks = rng.choice(len(names), n, p=weights / weights.sum())
        df[col] = pd.Series(np.asarray(names, dtype=object)[picks], dtype="str")
    return df


def _label(df: pd.DataFrame, rng: np.random.Generator) -> np.ndarray:
    logit = (
        -1.1
        + 1.3 * (df["contract"] == "month_to_month")
        - 0.6 * (df["contract"] == "two_year")
        - 0.035 * df["tenure_months"]
        + 0.02 * (df["monthly_charges"] - 65)
        + 0.4 * df["support_calls"]
        + 0.45 * (df["payment_method"] == "electronic_check")
        - 0.3 * (df["payment_method"] == "credit_card")
        + 0.25 * (df["plan"] == "premium")
        - 0.01 * (df["age"] - 45)
    ).to_numpy(dtype=float)
    return (rng.random(len(df)) < 1 / (1 + np.exp(-logit))).astype("int64")


def _check_columns(drift: Drift) -> None:
    known = set(NUMERIC) | set(CATEGORIES)
    numeric_only = {*drift.shift, *drift.scale}
    unknown = (numeric_only - set(NUMERIC)) | ({*drift.null_rate, *drift.categories} - known)
    if unknown:
        raise ValueError(f"drift names columns the demo data does not have: {sorted(unknown)}")
