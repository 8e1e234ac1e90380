"""The joint check's training reference: a bounded sample of training rows, kept with the contract.

Per-column checks cannot see a skew that keeps every column's distribution and breaks the rows:
a feature join on the wrong key (a block of columns from another customer) or a stale
feature-store column. The contract therefore keeps, in one table-level expectation
(`expect_table_rows_to_match_training_joint_distribution`), a seeded sample of training rows with
each value coded by its training quantile bin (numbers) or category (text, bool): one byte a
cell, base64 in `meta.training.joint`, so the sample adds little to the suite.
tasks/gate/joint_check.py codes the batch the same way and compares the relations between columns.

GX 1.x drops an expectation type it does not know, with a logged error, when a plain context loads
the suite (`ExpectationSuite(**json)` still works); `register()` declares the type to GX so that
shipway's own contexts keep it, check it and render it in Data Docs.
"""

from __future__ import annotations

import base64
from functools import cache
from typing import Any

import numpy as np
import pandas as pd

from core.errors import DataError
from core.plain import plain
from expectations import gx_json
from expectations.training_stats import JointReference, TrainingStats

JOINT = "expect_table_rows_to_match_training_joint_distribution"
BINS = 64  # quantile bins per numeric column: finer than any relation the check needs to see
MAX_CATEGORIES = 16  # categories kept per text column (the rest share one code)
NULL = 255  # the code of a missing value
SEED = 20190  # the reference sample and the batch's sample are seeded: same data, same verdict


def joint_expectation(
    frame: pd.DataFrame, features: list[str], sample_rows: int, min_auc: float
) -> dict[str, Any] | None:
    """The table-level expectation with its training sample, or None (no sample wanted, or < 2 columns)."""
    columns = [c for c in features if frame[c].dtype.kind in "biufO" or frame[c].dtype == "str"]
    if sample_rows <= 0 or len(columns) < 2:
        return None
    rng = np.random.default_rng(SEED)
    rows = np.sort(rng.choice(len(frame), size=min(len(frame), sample_rows), replace=False))
    cuts: dict[str, list[float]] = {}
    categories: dict[str, list[Any]] = {}
    codes = np.empty((len(rows), len(columns)), dtype=np.uint8)
    for i, column in enumerate(columns):
        s = frame[column]
        if s.dtype.kind in "iuf":
            present = np.sort(s.dropna().to_numpy(dtype="float64"))
            levels = np.linspace(0, 1, BINS + 1)[1:-1]
            quantiles = np.quantile(present, levels, method="inverted_cdf") if len(present) else []
            cuts[column] = np.unique(quantiles).tolist()
        else:
            categories[column] = [plain(v) for v in s.value_counts().head(MAX_CATEGORIES).index]
        codes[:, i] = encode(s.iloc[rows], cuts.get(column), categories.get(column))
    reference = JointReference(
        columns=columns, cuts=cuts, categories=categories, codes=base64.b64encode(codes.tobytes()).decode("ascii")
    )
    return gx_json.expectation(
        JOINT,
        TrainingStats(rows=len(frame), joint=reference).meta(
            note="a seeded sample of training rows, each value coded by its training quantile bin or category; "
            "the gate fails when a classifier tells the batch's rows from these (see docs/gate-joint.md)"
        ),
        columns=columns,
        min_auc=min_auc,
    )


def encode(s: pd.Series, cuts: list[float] | None, categories: list[Any] | None) -> np.ndarray:
    """One column's codes: numbers by their training quantile bin (0..len(cuts)), other values by their
    category's position + 1 (0: a category training did not list), NULL for a missing value."""
    out = np.full(len(s), NULL, dtype=np.uint8)
    present = s.notna().to_numpy()
    if cuts is not None:
        values = s.to_numpy(dtype="float64", na_value=np.nan)[present]
        out[present] = np.searchsorted(np.asarray(cuts, dtype="float64"), values, "right")
    else:  # pd.Categorical codes a value training did not list as -1, so +1 makes it 0
        codes = pd.Categorical(s[present].to_numpy(dtype=object), categories=list(categories or [])).codes
        out[present] = codes.astype(np.int64) + 1
    return out


def decode(reference: JointReference) -> np.ndarray:
    """The stored sample's codes: rows x reference.columns."""
    try:
        raw = np.frombuffer(base64.b64decode(reference.codes, validate=True), dtype=np.uint8)
        return raw.reshape(-1, len(reference.columns))
    except ValueError as exc:  # binascii.Error is one
        raise DataError(f"contract expectation {JOINT}: meta.training.joint.codes is not its sample: {exc}") from None


@cache
def register() -> type:
    """Declare the joint expectation type to GX (its class), so that GX builds, checks and renders it."""
    from great_expectations.expectations.expectation import BatchExpectation

    class ExpectTableRowsToMatchTrainingJointDistribution(BatchExpectation):
        """Rows of a batch keep the relations between columns that training rows had (shipway's joint check)."""

        columns: list[str]
        min_auc: float = gx_json.GX_DEFAULTS["min_auc"]  # left out of a written suite at this value

        metric_dependencies = ("table.row_count",)
        domain_keys = ("batch_id",)
        success_keys = ("columns", "min_auc")

        def _validate(self, metrics: dict, runtime_configuration: dict | None = None, execution_engine: Any = None):
            # The check needs the training sample in meta and runs in shipway's gate, not in GX.
            raise NotImplementedError(f"{JOINT} is evaluated by shipway's gate (tasks/gate/joint_check.py), not by GX")

    return ExpectTableRowsToMatchTrainingJointDistribution
