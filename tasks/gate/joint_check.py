"""The joint check: do the batch's rows keep the relations between columns that training rows had?

A classifier two-sample test (Rabanser et al. 2019, "Failing Loudly") aimed at relations, not at
marginals (those are the per-column checks' job, and columns that already fail them are left out):

1. the contract's training sample and a seeded sample of the batch (at most as many rows), coded
   the same way (expectations/joint.py); each numeric column becomes its normal score under the
   training sample's distribution, each category an indicator, standardized as in training;
2. each sample is split in halves. On the first halves the classifier is fitted: the difference of
   the two correlation matrices, soft-thresholded at two standard errors (a plug-in discriminant
   on pairwise products, which is what a broken relation moves);
3. on the second halves each row gets its score z' W z; the held-out AUC of batch vs training rows
   is tested against 0.5 with the Mann-Whitney U test (valid at any size: under "nothing changed"
   the held-out rows are exchangeable whatever the classifier learned). Fail: AUC >= min_auc AND the
   p-value below alpha split over all tests (tasks/gate/verdict.decide);
4. attribution: the fewest columns whose moving explains the changes. A block taken from another row
   keeps the relations inside it and loses those to the rest; so each candidate set of columns
   predicts every pair's batch correlation (the training one for a pair on one side, none for a
   pair across), and the set whose predictions fit best, each named column paying a penalty, is
   named (the smaller side). A column related to nothing, a high-cardinality category say, is
   predicted the same on either side and is never worth its penalty; a column that kept its own
   relations to the rest costs the set that names it. Each pair of columns weighs once, however many
   indicators its categories make, so a 25-level category gets no more say than a number.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from expectations.joint import NULL, SEED, decode, encode
from expectations.training_stats import JointReference, TrainingStats
from tasks.gate.verdict import TABLE, Outcome

EDGE_ALPHA = 0.001  # changed pairs shown: Bonferroni over the pairs at this level; also each named column's price
SHOWN_PAIRS = 12
SOFT_Z = 2.0  # the discriminant keeps a change past this many standard errors (one feature pair)
EXHAUSTIVE = 14  # up to this many columns attribution tries every set; beyond, a greedy search (one or two at a time)


def check_joint(e: dict, batch: pd.DataFrame, wf: float, excluded: set[str]) -> Outcome:
    """The joint check of `batch` against the training sample of expectation `e`; `excluded`: columns
    that already fail a per-column check (their relations mean nothing until they are fixed)."""
    kwargs = e.get("kwargs", {})
    min_auc = float(kwargs.get("min_auc", 0.55))
    reference = TrainingStats.of(e).joint
    if reference is None or len(batch) < 20:
        return _skipped(e, "no training sample in the contract" if reference is None else "fewer than 20 rows")
    wanted = [c for c in kwargs.get("columns", reference.columns) if c in reference.columns]
    columns = [c for c in wanted if c in batch.columns and c not in excluded and _codable(batch[c], reference, c)]
    if len(columns) < 2:
        return _skipped(e, "fewer than two columns to relate")
    ref_codes = decode(reference)[:, [reference.columns.index(c) for c in columns]]
    rng = np.random.default_rng(SEED)
    size = min(len(batch), len(ref_codes))
    rows = np.sort(rng.choice(len(batch), size=size, replace=False)) if size < len(batch) else np.arange(len(batch))
    batch_codes = np.column_stack(
        [encode(batch[c].iloc[rows], reference.cuts.get(c), reference.categories.get(c)) for c in columns]
    )
    ref_a, ref_b = _halves(ref_codes, rng)
    batch_a, batch_b = _halves(batch_codes, rng)
    (ref_a, ref_b, batch_a, batch_b), owner = _features(ref_a, [ref_a, ref_b, batch_a, batch_b], columns, reference)
    if len(owner) < 2:
        return _skipped(e, "fewer than two varying columns")
    weights = _discriminant(ref_a, batch_a, owner)
    score_ref = np.einsum("ij,jk,ik->i", ref_b, weights, ref_b)
    score_batch = np.einsum("ij,jk,ik->i", batch_b, weights, batch_b)
    if not weights.any():
        auc, p = 0.5, 1.0
    else:
        u, p = stats.mannwhitneyu(score_batch, score_ref, alternative="greater", method="asymptotic")
        auc, p = float(u) / (len(score_batch) * len(score_ref)), float(p)
    warn_auc = 0.5 + wf * (min_auc - 0.5)
    ref_all, batch_all = np.vstack([ref_a, ref_b]), np.vstack([batch_a, batch_b])
    pairs, threshold = _changed_pairs(ref_all, batch_all, owner, columns)
    implicated = _implicated(ref_all, batch_all, owner, columns) if auc >= warn_auc else []
    shown: list[dict[str, Any]] = [
        {"columns": [a, b], "train": round(r, 4), "batch": round(q, 4), "z": round(z, 2)}
        for a, b, r, q, z in sorted(pairs, key=lambda t: -abs(t[4]))[:SHOWN_PAIRS]
        if abs(z) > threshold
    ]
    described = ", ".join(f"{'~'.join(p['columns'])} r {p['train']:+.2f}->{p['batch']:+.2f}" for p in shown[:3])
    reason = (
        f"joint: {', '.join(implicated) or 'the rows'} no longer match the other columns "
        f"(held-out AUC {auc:.3f}, the contract allows {min_auc:g}; {described or 'no single pair stands out'})"
    )
    result = {
        "observed_value": auc,
        "details": {
            "implicated": implicated,
            "changed_pairs": shown,
            "columns": columns,
            "excluded": sorted(excluded & set(wanted)),
            "rows_compared": {"training": len(ref_b), "batch": len(batch_b)},
        },
    }
    measures = {"joint_auc": auc}
    return Outcome(e, TABLE, auc >= min_auc, auc >= warn_auc, p, reason, result, measures, tuple(implicated))


def _skipped(e: dict, why: str) -> Outcome:
    return Outcome(e, TABLE, False, False, None, "", {"observed_value": None, "details": {"skipped": why}})


def _codable(s: pd.Series, reference: JointReference, column: str) -> bool:
    """A column is coded as training coded it: numbers against cut points, anything else as categories."""
    if column in reference.cuts:
        return s.dtype.kind in "biuf"
    return s.dtype.kind not in "M"


def _features(
    fit: np.ndarray, samples: list[np.ndarray], columns: list[str], reference: JointReference
) -> tuple[list[np.ndarray], np.ndarray]:
    """Code matrices as features (a normal score per numeric column, an indicator per category), all
    standardized with the statistics of `fit` alone (the first training half: a test row must not
    shape its own transform, or the held-out test leaks), and the column each feature comes from."""
    out: list[list[np.ndarray]] = [[] for _ in samples]
    owner = []
    for i, column in enumerate(columns):
        base = fit[:, i]
        if column in reference.cuts:
            transforms = [lambda codes, base=base: _normal_scores(base, codes)]
        else:
            transforms = [lambda codes, k=k: (codes == k).astype("float64") for k in np.unique(base[base != NULL])]
        for transform in transforms:
            fitted = transform(base)
            sd = fitted.std()
            if sd <= 1e-12:
                continue
            for target, codes in zip(out, samples, strict=True):
                target.append((transform(codes[:, i]) - fitted.mean()) / sd)
            owner.append(i)
    return [np.column_stack(f) if f else np.empty((len(c), 0)) for f, c in zip(out, samples, strict=True)], np.asarray(
        owner, dtype=int
    )


def _normal_scores(reference: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Each code's normal score at its mid-rank in the training sample; a missing value scores 0."""
    present = reference[reference != NULL]
    counts = np.bincount(present, minlength=256).astype("float64")
    total = counts.sum() or 1.0
    mid = (np.cumsum(counts) - counts / 2) / total
    table = stats.norm.ppf(np.clip(mid, 0.5 / total, 1 - 0.5 / total))
    table[NULL] = 0.0
    return table[codes]


def _halves(x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    order = rng.permutation(len(x))
    half = len(x) // 2
    return x[order[:half]], x[order[half:]]


def _discriminant(ref: np.ndarray, batch: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """Weights on pairwise products: the change of correlation, soft-thresholded at two standard errors
    (at the same level split over a pair of columns' feature pairs: a many-level category's indicators
    would otherwise feed the classifier noise); none within one column (its indicators) or on the
    diagonal (spreads are the per-column checks')."""
    r, b = _corr(ref), _corr(batch)
    se = np.sqrt(_r_variance(ref, r) * (1 / len(ref) + 1 / len(batch)))
    delta = b - r
    counts = np.bincount(owner)
    per_pair = counts[owner][:, None] * counts[owner][None, :]
    soft = stats.norm.isf(stats.norm.sf(SOFT_Z) / per_pair)
    weights = np.sign(delta) * np.maximum(np.abs(delta) - soft * se, 0.0)
    weights[owner[:, None] == owner[None, :]] = 0.0
    return weights


def _corr(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=0)
    sd = np.sqrt((x**2).mean(axis=0))
    sd[sd == 0] = 1.0
    return np.clip((x.T @ x) / len(x) / np.outer(sd, sd), -0.999999, 0.999999)


def _r_variance(x: np.ndarray, r: np.ndarray) -> np.ndarray:
    """n x Var(r) of each pair's correlation, from its influence function x y - r (x² + y²) / 2 on the
    standardized training sample: no normality assumed (a heteroscedastic relation's r is noisier)."""
    n, sq = len(x), x**2
    both = sq.T @ sq / n  # E x²y²
    odd = (sq * x).T @ x / n  # E x³y
    fourth = (sq**2).mean(axis=0)
    variance = both - r * (odd + odd.T) + r**2 / 4 * (fourth[:, None] + fourth[None, :] + 2 * both)
    return np.maximum(variance, 1e-6)


def _changed_pairs(
    ref: np.ndarray, batch: np.ndarray, owner: np.ndarray, columns: list[str]
) -> tuple[list[tuple[str, str, float, float, float]], float]:
    """Each pair of columns with its strongest change of correlation (z on the influence-function
    variance; over their features):
    (a, b, training r, batch r, z), and the z past which a change counts (Bonferroni over the pairs)."""
    r, b = _corr(ref), _corr(batch)
    z = (b - r) / np.sqrt(_r_variance(ref, r) * (1 / len(ref) + 1 / len(batch)))
    tests = max(int(np.sum(owner[:, None] < owner[None, :])), 1)  # feature pairs across columns
    best: dict[tuple[int, int], tuple[float, float, float]] = {}
    for i, j in zip(*np.triu_indices(len(owner), 1), strict=True):
        a, c = sorted((int(owner[i]), int(owner[j])))
        if a != c and abs(z[i, j]) > abs(best.get((a, c), (0.0, 0.0, 0.0))[2]):
            best[(a, c)] = (float(r[i, j]), float(b[i, j]), float(z[i, j]))
    pairs = [(columns[a], columns[c], *values) for (a, c), values in best.items()]
    return pairs, float(stats.norm.isf(EDGE_ALPHA / (2 * tests)))


def _implicated(ref: np.ndarray, batch: np.ndarray, owner: np.ndarray, columns: list[str]) -> list[str]:
    """The fewest columns whose moving to other rows best explains the batch's correlations (see the
    module's step 4): the smaller side of the best cut, or none when no cut pays for its columns."""
    r, b = _corr(ref), _corr(batch)
    variance = _r_variance(ref, r) * (1 / len(ref) + 1 / len(batch))
    n = len(columns)
    across = owner[:, None] != owner[None, :]
    cell = (owner[:, None] * n + owner[None, :])[across]  # the pair of columns of each pair of features
    total = lambda values: np.bincount(cell, weights=values[across], minlength=n * n).reshape(n, n)
    kept = total((b - r) ** 2 / variance)
    crossed = total(b**2 * len(batch))  # no relation: Var r = 1 / n, training's r not involved
    weight = total(np.ones_like(b))
    weight[weight == 0] = 1
    # what putting a pair across the cut adds to the misfit, each pair of columns weighed once
    extra = (crossed - kept) / weight
    price = stats.norm.isf(EDGE_ALPHA / 2) ** 2
    best = _best_cut(extra, price)
    return [columns[k] for k in np.flatnonzero(best)]


def _best_cut(extra: np.ndarray, price: float) -> np.ndarray:
    """The set S (a boolean per column, at most half of them) minimising the added misfit of the pairs
    it cuts, sum over a in S, b not in S of extra[a, b], plus price x |S|; empty if none beats nothing."""
    n = len(extra)
    cost = lambda sets: sets @ extra.sum(axis=1) - np.einsum("si,ij,sj->s", sets, extra, sets) + price * sets.sum(1)
    if n <= EXHAUSTIVE:
        codes = np.arange(1, 2**n)
        sets = ((codes[:, None] >> np.arange(n)) & 1).astype("float64")
        sets = sets[sets.sum(axis=1) <= n / 2]
        costs = cost(sets)
        pick = int(np.argmin(costs))
        return sets[pick] > 0 if costs[pick] < 0 else np.zeros(n, dtype=bool)
    singles = np.eye(n)
    pairs = singles[np.triu_indices(n, 1)[0]] + singles[np.triu_indices(n, 1)[1]]
    moves = np.vstack([singles, pairs])  # a block's columns may pay only together
    chosen, current = np.zeros(n), 0.0
    while True:  # make the move (one column or two in or out) that lowers the cost most, while one does
        candidates = np.abs(chosen[None, :] - moves)
        candidates = candidates[candidates.sum(axis=1) <= n / 2]
        costs = cost(candidates)
        pick = int(np.argmin(costs))
        if costs[pick] >= current - 1e-9:
            return chosen > 0
        chosen, current = candidates[pick], float(costs[pick])
