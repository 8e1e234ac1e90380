"""A free-text column's part of the contract: its length distribution and its vocabulary.

A category set means nothing for text (every review is new), so a text column (core/free_text.py)
gets two expectations of shipway's own instead:

- `expect_column_value_lengths_to_match_training`: the distribution of the values' lengths in
  characters, with the numeric checks' quantile bands and KL divergence on training-quantile bins
  (the gate reuses those checks on the lengths): empty or truncated text shows here.
- `expect_column_tokens_to_be_in_training_vocabulary`: the share of a value's tokens (the built-in
  TF-IDF's tokens) found among the training's `gate.text_vocabulary` most frequent ones, against
  the share training itself reaches on rows held out of its vocabulary (k-fold), so that a clean
  batch passes and another language or garbled text fails.

The null rate is the usual not-null expectation. GX does not know these two types; `register()`
declares them (as expectations/joint.py does its own), so that GX keeps and checks them.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import pandas as pd

from core.free_text import tokens
from expectations import gx_json
from expectations.training_stats import TextStats, TrainingStats

LENGTHS = "expect_column_value_lengths_to_match_training"
VOCABULARY = "expect_column_tokens_to_be_in_training_vocabulary"
FOLDS = 5  # the held-out coverage: each fifth of the rows against the vocabulary of the other four
SAMPLE_ROWS = 20_000  # vocabulary and coverage read a seeded sample of a larger column (or batch)
SEED = 20190


def sample(present: pd.Series) -> pd.Series:
    """At most SAMPLE_ROWS of a column's present values, seeded: the same column, the same sample."""
    return present.sample(SAMPLE_ROWS, random_state=SEED) if len(present) > SAMPLE_ROWS else present


def row_tokens(present: pd.Series) -> pd.Series:
    """One token per entry, indexed by the row's position (rows without a token are absent)."""
    listed = tokens(present.reset_index(drop=True))
    return listed.explode().dropna().astype(str)


def vocabulary_expectation(column: str, present: pd.Series, size: int, drop: float) -> dict[str, Any] | None:
    """The vocabulary expectation of a text column's present values; None when they hold no token."""
    exploded = row_tokens(sample(present))
    if exploded.empty:
        return None
    vocabulary = _most_frequent(exploded, size)
    coverage = _held_out_coverage(exploded, size)
    mean, std = float(coverage.mean()), float(coverage.std(ddof=1)) if len(coverage) > 1 else 0.0
    stats = TextStats(vocabulary=vocabulary, coverage=mean, coverage_std=std, rows=len(coverage))
    return gx_json.expectation(
        VOCABULARY,
        TrainingStats(rows=len(present), text=stats).meta(
            note="the gate fails when the mean share of a value's tokens in this vocabulary falls below "
            "min_value (training's own share on held-out rows minus gate.text_coverage_drop)"
        ),
        column=column,
        min_value=round(max(0.0, mean - drop), 6),
    )


def coverage_of(exploded: pd.Series, vocabulary: set[str] | list[str]) -> pd.Series:
    """Per row (with tokens), the share of its tokens in `vocabulary`."""
    return exploded.isin(vocabulary).groupby(level=0).mean()


def _most_frequent(exploded: pd.Series, size: int) -> list[str]:
    """The `size` most frequent tokens, ties by the token itself: the same text, the same vocabulary."""
    counts = exploded.value_counts()
    order = np.lexsort((counts.index.to_numpy(dtype=str), -counts.to_numpy()))
    return counts.index.to_numpy(dtype=str)[order[:size]].tolist()


def _held_out_coverage(exploded: pd.Series, size: int) -> pd.Series:
    """Per row, the share of its tokens in the vocabulary of the other folds' rows (FOLDS folds)."""
    rows = exploded.index.unique()
    fold = pd.Series(np.random.default_rng(SEED).permutation(len(rows)) % FOLDS, index=rows)
    if len(rows) < FOLDS:  # too few rows to hold any out: the whole vocabulary's own coverage
        return coverage_of(exploded, set(_most_frequent(exploded, size)))
    folds, parts = fold.reindex(exploded.index).to_numpy(), []
    for k in range(FOLDS):
        inside = folds == k
        vocabulary = set(_most_frequent(exploded[~inside], size))
        parts.append(coverage_of(exploded[inside], vocabulary))
    return pd.concat(parts)


def length_values(present: pd.Series) -> np.ndarray:
    """The present values' lengths in characters, sorted, as float64 (the numeric checks' input)."""
    return np.sort(present.astype(str).str.len().to_numpy(dtype="float64"))


@cache
def register() -> tuple[type, type]:
    """Declare the two text expectation types to GX (their classes), so that GX builds and checks them."""
    from great_expectations.expectations.expectation import ColumnAggregateExpectation

    class ExpectColumnValueLengthsToMatchTraining(ColumnAggregateExpectation):
        """The lengths of a text column's values are distributed as in training (shipway's text check)."""

        quantile_ranges: dict[str, Any]
        partition_object: dict[str, Any]
        threshold: float
        tail_weight_holdout: float = gx_json.GX_DEFAULTS["tail_weight_holdout"]

        metric_dependencies = ("table.row_count",)
        success_keys = ("quantile_ranges", "partition_object", "threshold", "tail_weight_holdout")

        def _validate(self, metrics: dict, runtime_configuration: dict | None = None, execution_engine: Any = None):
            raise NotImplementedError(
                f"{LENGTHS} is evaluated by shipway's gate (tasks/gate/contract_checks.py), not by GX"
            )

    class ExpectColumnTokensToBeInTrainingVocabulary(ColumnAggregateExpectation):
        """A text column's tokens are as often in the training vocabulary as on held-out training rows."""

        min_value: float

        metric_dependencies = ("table.row_count",)
        success_keys = ("min_value",)

        def _validate(self, metrics: dict, runtime_configuration: dict | None = None, execution_engine: Any = None):
            raise NotImplementedError(
                f"{VOCABULARY} is evaluated by shipway's gate (tasks/gate/contract_checks.py), not by GX"
            )

    return ExpectColumnValueLengthsToMatchTraining, ExpectColumnTokensToBeInTrainingVocabulary
