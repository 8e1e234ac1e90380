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
4. attribution: pairs of columns whose correlation changed (Fisher z on the whole samples, a
   Bonferroni threshold), and the fewest columns that touch every changed pair (a greedy vertex
   cover): a block taken from another row changes every pair between it and the rest, so the
   smaller side, the block, is named; a stale column changes the pairs around it, so it alone is.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from expectations.joint import NULL, SEED, decode, encode
from expectations.training_stats import JointReference, TrainingStats
from tasks.gate.verdict import TABLE, Outcome

EDGE_ALPHA = 0.001  # changed pairs for attribution: Bonferroni over the pairs at this level
SHOWN_PAIRS = 12
MAX_DROPPED = 3  # changed pairs attribution may set aside as noise when they contradict the rest
KEPT_R, KEPT_CHANGE = 0.2, 0.25  # a relation of |r| >= 0.2 that moved < 25 % was kept (attribution)


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
    pairs, threshold = _changed_pairs(np.vstack([ref_a, ref_b]), np.vstack([batch_a, batch_b]), owner, columns)
    implicated = _implicated(pairs, threshold, columns) if auc >= warn_auc else []
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
    """Weights on pairwise products: the change of correlation, soft-thresholded at two standard errors;
    none within one column (its indicators) or on the diagonal (spreads are the per-column checks')."""
    r, b = _corr(ref), _corr(batch)
    se = np.sqrt(_r_variance(ref, r) * (1 / len(ref) + 1 / len(batch)))
    delta = b - r
    weights = np.sign(delta) * np.maximum(np.abs(delta) - 2 * se, 0.0)
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


def _implicated(pairs: list[tuple[str, str, float, float, float]], threshold: float, columns: list[str]) -> list[str]:
    """The columns on the smaller side of the cut the changes make. Pairs whose correlation changed
    must cross it; strongly related pairs that kept their correlation must not: a block taken from
    another row keeps the relations inside it and loses those to the rest. Each group of columns tied
    by changes is two-coloured and its smaller side named (a stale column: itself); where the
    constraints contradict each other, the fewest columns that touch every changed pair."""
    changed = sorted(((a, b, abs(z)) for a, b, _, _, z in pairs if abs(z) > threshold), key=lambda t: -t[2])
    if not changed:
        total: dict[str, float] = {}
        for a, b, _, _, z in pairs:
            total[a], total[b] = total.get(a, 0.0) + z * z, total.get(b, 0.0) + z * z
        return [max(total, key=total.__getitem__)] if total else []
    for dropped in range(min(MAX_DROPPED, len(changed) - 1) + 1):  # a conflict: the weakest changes may be noise
        named = _two_sides(pairs, [(a, b) for a, b, _ in changed[: len(changed) - dropped]], columns)
        if named is not None:
            return named
    return _cover([(a, b) for a, b, _ in changed], columns)


def _two_sides(
    pairs: list[tuple[str, str, float, float, float]], changed: list[tuple[str, str]], columns: list[str]
) -> list[str] | None:
    """The smaller side of each group of columns tied by changes, or None if no cut fits them."""
    group = {c: c for c in columns}

    def root(c: str) -> str:
        while group[c] != c:
            c = group[c]
        return c

    for a, b, r, q, z in pairs:  # kept relations tie columns into one group
        if abs(r) >= KEPT_R and abs(q - r) < KEPT_CHANGE * abs(r) and abs(z) < 2:
            group[root(a)] = root(b)
    links: dict[str, set[str]] = {}
    for a, b in changed:
        ra, rb = root(a), root(b)
        if ra == rb:
            return None
        links.setdefault(ra, set()).add(rb)
        links.setdefault(rb, set()).add(ra)
    colour: dict[str, int] = {}
    named: list[str] = []
    for start in links:
        if start in colour:
            continue
        colour[start], queue, seen = 0, [start], [start]
        while queue:
            g = queue.pop()
            for h in links[g]:
                if h not in colour:
                    colour[h] = 1 - colour[g]
                    queue.append(h)
                    seen.append(h)
                elif colour[h] == colour[g]:
                    return None
        sides = [[c for c in columns if root(c) in seen and colour[root(c)] == k] for k in (0, 1)]
        small = min(len(sides[0]), len(sides[1]))
        named += [c for side in sides if len(side) == small for c in side]
    return sorted(named, key=columns.index)


def _cover(changed: list[tuple[str, str]], columns: list[str]) -> list[str]:
    """The fewest columns that touch every changed pair (greedy: the column on most of them first)."""
    left, named = list(changed), []
    while left:
        degree: dict[str, int] = {}
        for pair in left:
            for c in pair:
                degree[c] = degree.get(c, 0) + 1
        pick = max(degree, key=lambda c: (degree[c], -columns.index(c)))
        named.append(pick)
        left = [pair for pair in left if pick not in pair]
    return sorted(named, key=columns.index)
