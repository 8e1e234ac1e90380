"""The paired bootstrap of the quality gate: weighted means of per-row columns over many resamples.

Every metric the gate judges is a function of means of per-row columns (tasks/training/quality_metrics.py),
so a resample is a vector of row weights and the means of all columns of a scope, candidate's and
Production's side by side (paired: the same weights for both), are one matrix product. Resamples
run in chunks of a few million weights: vectorized, with bounded memory.

Weights are Poisson(1) counts (the Poisson bootstrap: for holdouts of hundreds of rows and more
it is indistinguishable from drawing n rows with replacement, and each row's weight is drawn
independently). Because they are independent and identically distributed, one weight matrix
serves every group of scopes: the slices of one column take consecutive blocks of it, the
slices of the next column the same blocks again, each a valid resample of its own rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from math import exp, factorial

import numpy as np
from threadpoolctl import threadpool_limits

CHUNK_WEIGHTS = 4_000_000  # weights per chunk of resamples: 16 MB of float32


@cache
def _poisson_table() -> np.ndarray:
    """Poisson(1) counts by inverse CDF on 16-bit uniforms: mean 1, variance 1 to 3e-5."""
    cdf = np.cumsum([exp(-1) / factorial(k) for k in range(16)])
    return np.minimum(np.searchsorted(cdf, (np.arange(65536) + 0.5) / 65536), 15).astype(np.float32)


def poisson_weights(rng: np.random.Generator, resamples: int, rows: int) -> np.ndarray:
    """A (resamples x rows) float32 matrix of independent Poisson(1) row weights."""
    size = resamples * rows
    uniforms = rng.bit_generator.random_raw(-(-size // 4)).view(np.uint16)[:size]  # four per raw draw: fewer calls
    return _poisson_table()[uniforms.reshape(resamples, rows)]


def resample_means(groups: Sequence[Sequence[np.ndarray]], resamples: int, seed: int) -> list[list[np.ndarray]]:
    """For each group of scopes (scopes of a group share no rows), for each scope's (rows x k)
    column matrix: the (resamples x k) weighted means of its columns, resample by resample.

    Columns are centred on their mean before the float32 product, so the product carries only the
    resampling noise and float32 sums lose nothing that matters; the mean is added back in float64.
    """
    blocks = [[_centred(columns) for columns in group] for group in groups]
    width = max((sum(len(c) for c, _ in group) for group in blocks), default=0)
    out = [[np.empty((resamples, c.shape[1] - 1)) for c, _ in group] for group in blocks]
    if width == 0:
        return out
    rng = np.random.default_rng(seed)
    step = max(1, min(resamples, CHUNK_WEIGHTS // width))
    # One BLAS thread: the products are thin and memory-bound, and threads fight on a busy machine.
    with threadpool_limits(1, user_api="blas"):
        for start in range(0, resamples, step):
            stop = min(start + step, resamples)
            weights = poisson_weights(rng, stop - start, width)
            for group, means in zip(blocks, out, strict=True):
                at = 0
                for (columns, centre), result in zip(group, means, strict=True):
                    sums = weights[:, at : at + len(columns)] @ columns
                    total = np.maximum(sums[:, -1:].astype(np.float64), 1.0)  # a resample that drew no row
                    result[start:stop] = centre + sums[:, :-1] / total
                    at += len(columns)
    return out


def _centred(columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 columns minus their float64 mean, plus a column of ones (the total weight); the mean."""
    centre = columns.mean(axis=0) if len(columns) else np.zeros(columns.shape[1])
    block = np.empty((len(columns), columns.shape[1] + 1), dtype=np.float32)
    block[:, :-1] = columns - centre
    block[:, -1] = 1.0
    return block, centre
