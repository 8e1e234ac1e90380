"""The contract's checks: a batch against a model version's data contract (a GX suite built by
expectations/contract.py), one Outcome per expectation, judged by tasks/gate/verdict.py.

Each built-in expectation type is evaluated here with numpy, one pass per column (a single sort
serves quantiles, ranges, bins, the CDF and the most common value), reading its bounds from the
suite's kwargs, so that editing the suite changes the gate; each check also returns the p-value
of its effect under "nothing changed", from the training statistics the contract keeps
(expectations/training_stats.py). Expectation types the gate does not know (the user's own, in their
suites) run in Great Expectations itself.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
from scipy import special, stats

from configs.settings import GateSettings
from core.errors import DataError
from core.plain import jsonable, plain
from expectations import text
from expectations.contract import histogram
from expectations.joint import JOINT
from expectations.training_stats import TrainingStats
from tasks.data.canonical import canonical_column
from tasks.gate.joint_check import check_joint
from tasks.gate.verdict import TABLE, GateReport, Outcome, decide, failing_columns

# --- the gate --------------------------------------------------------------------------------------


def validate(
    batch: pd.DataFrame,
    suite: dict[str, Any],
    settings: GateSettings,
    *,
    batch_name: str = "batch",
    reference: dict[str, Any] | None = None,
    user_suites: Iterable[dict[str, Any]] = (),
) -> GateReport:
    """Check `batch` against the contract `suite` (GX JSON) and the user's suites; never raises on bad data."""
    start = time.perf_counter()
    columns: dict[str, list[dict]] = {}
    table: list[dict] = []
    foreign: list[dict] = []
    joint: list[dict] = []
    for expectation in suite.get("expectations", []):
        column = expectation.get("kwargs", {}).get("column")
        if expectation.get("type") == JOINT:
            joint.append(expectation)
        elif expectation.get("type") not in HANDLERS:
            foreign.append(expectation)
        elif column is None:
            table.append(expectation)
        else:
            columns.setdefault(str(column), []).append(expectation)
    for user_suite in user_suites:
        foreign += user_suite.get("expectations", [])

    names = [str(c) for c in batch.columns]
    batch = batch.set_axis(names, axis=1)
    outcomes: list[Outcome] = []
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:  # the first of each name is checked; the repeat itself fails the batch
        batch = batch.loc[:, ~batch.columns.duplicated()]
        outcomes.append(
            _outcome(
                {"type": "expect_table_columns_to_match_set", "kwargs": {}},
                TABLE,
                True,
                True,
                None,
                f"repeated column names: {', '.join(repeated)}",
                {"observed_value": names},
            )
        )
    for expectation in table:
        outcomes += HANDLERS[expectation["type"]](expectation, batch, settings.warn_fraction)
    if len(batch):
        for name, expectations in columns.items():
            if name in batch.columns:
                outcomes += _column_outcomes(batch[name], expectations, settings.warn_fraction)
    if foreign:
        outcomes += _run_in_gx(batch, foreign)
    if len(batch) and joint:  # last: it leaves out the columns that already fail on their own
        excluded = failing_columns(outcomes, settings, more_tests=len(joint))
        outcomes += [check_joint(e, batch, settings.warn_fraction, excluded) for e in joint]
    return decide(outcomes, settings, batch_name, len(batch), reference or {}, start)


def _column_outcomes(s: pd.Series, expectations: list[dict], wf: float) -> list[Outcome]:
    if _holds_dates(expectations):
        s = as_dates(s)
    try:
        data = _Column(canonical_column(s))
    except DataError as exc:
        return [_outcome(expectations[0], s.name, True, True, None, f"type: {exc}", {"observed_value": str(s.dtype)})]
    # The quantile check reads the training CDF that the same column's KL expectation keeps.
    data.kl = next(
        (e for e in expectations if e["type"] == KL and "bins" in e["kwargs"].get("partition_object", {})), None
    )
    out = [HANDLERS[e["type"]](e, data, wf) for e in expectations if e["type"] in TYPE_CHECKS]
    if any(o.fail for o in out):  # the distribution of a wrongly typed column means nothing
        return out + [check_not_null(e, data, wf) for e in expectations if e["type"] == NOT_NULL]
    for expectation in expectations:
        if expectation["type"] in TYPE_CHECKS:
            continue
        if expectation["type"] != NOT_NULL and data.present == 0:
            continue  # nothing to measure; the null check says why
        out.append(HANDLERS[expectation["type"]](expectation, data, wf))
    return out


# --- one column's data, computed once ------------------------------------------------------------


class _Column:
    def __init__(self, s: pd.Series):
        self.series = s
        self.name = str(s.name)
        self.dtype = str(s.dtype)
        self.total = len(s)
        self.nulls = int(s.isna().sum())
        self.present = self.total - self.nulls
        self.kl: dict | None = None

    @cached_property
    def sorted(self) -> np.ndarray:
        values = (
            _microseconds(self.series)
            if self.series.dtype.kind == "M"
            else self.series.to_numpy(dtype="float64", na_value=np.nan)
        )
        if self.nulls:
            values = values[~np.isnan(values)]
        return np.sort(values)

    @cached_property
    def mean(self) -> float:
        return float(self.sorted.mean())

    @cached_property
    def std(self) -> float:
        return float(self.sorted.std(ddof=1)) if self.present > 1 else 0.0

    @cached_property
    def counts(self) -> dict[Any, int]:
        return {plain(k): int(v) for k, v in self.series.value_counts().items()}

    @cached_property
    def mode(self) -> tuple[Any, int]:
        if self.series.dtype.kind not in "iuf":
            value = max(self.counts, key=self.counts.__getitem__)
            return value, self.counts[value]
        x = self.sorted
        starts = np.flatnonzero(np.concatenate(([True], x[1:] != x[:-1])))
        lengths = np.diff(np.append(starts, len(x)))
        i = int(np.argmax(lengths))
        return float(x[starts[i]]), int(lengths[i])

    def below(self, value: float) -> int:
        return int(np.searchsorted(self.sorted, value, "left"))

    def above(self, value: float) -> int:
        return self.present - int(np.searchsorted(self.sorted, value, "right"))


# --- the checks --------------------------------------------------------------------------------------


def _outcome(
    e: dict,
    column: Any,
    fail: bool,
    warn: bool,
    p: float | None,
    reason: str,
    result: dict,
    measures: dict | None = None,
) -> Outcome:
    return Outcome(e, str(column), fail, warn, p, reason, result, measures or {})


def _training(e: dict) -> TrainingStats:
    return TrainingStats.of(e)


def _rows(e: dict, data: _Column) -> int:
    """Training rows behind an expectation; unknown (a hand-written one): as many as the batch."""
    return int(_training(e).rows or data.present or 1)


def _binom_p(k: int, n: int, p0: float) -> float:
    """P(at least k successes of n at rate p0): how surprising k is if the rate did not change."""
    if k <= 0:
        return 1.0
    return float(stats.binom.sf(k - 1, n, min(max(p0, 0.0), 1.0)))


def _beyond_p(k: int, n: int, m: int, j: float) -> float:
    """P(at least k of n batch values beyond a bound that j of m training values pass), the batch and
    training drawn from one distribution. The bound is a training order statistic, so the batch's
    count is beta-binomial (the training sample's own uncertainty included), not binomial at the
    training share: with 100 training rows that share is itself off by several points. Counting
    values strictly beyond the bound makes this conservative when values are tied."""
    if k <= 0:
        return 1.0
    j = min(max(math.ceil(round(j, 6)), 0), m)
    return float(stats.betabinom.sf(k - 1, n, j + 1, max(m - j, 1)))


def check_columns(e: dict, batch: pd.DataFrame, wf: float) -> list[Outcome]:
    kwargs = e.get("kwargs", {})
    expected = [str(c) for c in kwargs.get("column_set", [])]
    optional = set(e.get("meta", {}).get("optional", []))
    present = list(batch.columns)
    missing = [c for c in expected if c not in present and c not in optional]
    extra = [c for c in present if c not in expected] if kwargs.get("exact_match", True) else []
    result = {"observed_value": present, "details": {"mismatched": {"missing": missing, "unexpected": extra}}}
    out = [
        _outcome(
            e,
            TABLE,
            bool(missing or extra),
            False,
            None,
            f"columns missing: {', '.join(missing) or '-'}; not in the contract: {', '.join(extra) or '-'}"
            if missing or extra
            else "",
            result,
        )
    ]
    out += [_outcome(e, c, True, True, None, "missing: the column is not in the batch", result) for c in missing]
    out += [_outcome(e, c, True, True, None, "extra: the contract has no such column", result) for c in extra]
    return out


def check_row_count(e: dict, batch: pd.DataFrame, wf: float) -> list[Outcome]:
    kwargs = e.get("kwargs", {})
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    rows = len(batch)
    bad = (low is not None and rows < low) or (high is not None and rows > high)
    reason = "the batch has no rows" if rows == 0 else f"{rows} rows, the contract allows [{low}, {high}]"
    return [_outcome(e, TABLE, bad, bad, None, reason if bad else "", {"observed_value": rows})]


def check_type_list(e: dict, data: _Column, wf: float) -> Outcome:
    allowed = [str(t) for t in e["kwargs"].get("type_list") or []]
    bad = data.dtype not in allowed
    hint = " (numbers arriving as strings?)" if bad and data.dtype == "str" and _numeric_strings(data) else ""
    hint = _not_dates_hint(data, allowed) if bad and data.dtype == "str" and not hint else hint
    reason = f"type: dtype '{data.dtype}' is not one the contract allows ({', '.join(allowed[:4])}, ...){hint}"
    return _outcome(e, data.name, bad, bad, None, reason if bad else "", {"observed_value": data.dtype})


def check_type(e: dict, data: _Column, wf: float) -> Outcome:
    expected = str(e["kwargs"].get("type_"))
    bad = data.dtype != expected
    reason = f"type: dtype '{data.dtype}', the contract expects '{expected}'"
    return _outcome(e, data.name, bad, bad, None, reason if bad else "", {"observed_value": data.dtype})


def _numeric_strings(data: _Column) -> bool:
    sample = data.series.dropna().head(100)
    return len(sample) > 0 and pd.to_numeric(sample, errors="coerce").notna().all()


def check_not_null(e: dict, data: _Column, wf: float) -> Outcome:
    mostly = float(e["kwargs"].get("mostly", 1.0))
    trained = float(_training(e).null_fraction or 0.0)
    m = _rows(e, data)
    rate = data.nulls / data.total
    bound = 1 - mostly
    p = _binom_p(data.nulls, data.total, (trained * m + 1) / (m + 2))
    measures = {"null_rate": rate, "null_rate_train": trained, "null_rate_delta": rate - trained}
    if data.present == 0:  # all nulls: nothing else about this column can be checked
        return _outcome(
            e, data.name, True, True, None, "nulls: every value is null", _map_result(data.total, data.nulls), measures
        )
    reason = f"nulls: {rate:.1%} of values, training {trained:.1%}, the contract allows {bound:.1%}"
    return _outcome(
        e,
        data.name,
        rate > bound,
        rate > trained + wf * (bound - trained),
        p,
        reason,
        _map_result(data.total, data.nulls),
        measures,
    )


def check_between(e: dict, data: _Column, wf: float) -> Outcome:
    if data.series.dtype.kind == "M":
        return check_date_range(e, data, wf)
    kwargs = e["kwargs"]
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    outside = (data.below(low) if low is not None else 0) + (data.above(high) if high is not None else 0)
    share = outside / data.present
    bound = 1 - float(kwargs.get("mostly", 1.0))
    # Outside [min, max] of m training draws: as beyond a bound that 1 of m passes (beta-binomial).
    p = _beyond_p(outside, data.present, _rows(e, data), 1)
    reason = (
        f"range: {share:.1%} of values outside training [{_fmt(low)}, {_fmt(high)}], the contract allows {bound:.1%}"
    )
    return _outcome(
        e,
        data.name,
        share > bound,
        share > wf * bound,
        p,
        reason,
        _map_result(data.present, outside),
        {"out_of_range": share},
    )


def check_mean(e: dict, data: _Column, wf: float) -> Outcome:
    kwargs = e["kwargs"]
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    t = _training(e)
    center = t.mean if t.mean is not None else _mid(low, high, data.mean)
    sd = t.std or 0.0
    mean = data.mean
    half = _half(low, high, center)
    n, m = data.present, _rows(e, data)
    p = _t_p(mean, data.std, n, center, sd, m)
    if n > 2:  # one row is no drift (the range and quantile checks judge single values): without the farthest
        x = data.sorted
        rest = x[1:] if abs(x[0] - center) > abs(x[-1] - center) else x[:-1]
        p = max(p, _t_p(float(rest.mean()), float(rest.std(ddof=1)), n - 1, center, sd, m))
    shift = (mean - center) / sd if sd > 0 else 0.0
    fail = (low is not None and mean < low) or (high is not None and mean > high)
    reason = f"mean: {_fmt(mean)} outside [{_fmt(low)}, {_fmt(high)}] (training {_fmt(center)}, shift {shift:+.2f} sd)"
    return _outcome(
        e,
        data.name,
        fail,
        abs(mean - center) > wf * half,
        p,
        reason,
        {"observed_value": mean},
        {"mean": mean, "mean_train": center, "mean_shift_sd": shift},
    )


MIN_SPREAD_VALUES = 20  # values a spread is judged on


def _t_p(mean: float, std: float, n: int, center: float, sd: float, m: int) -> float:
    """Two-sample t-test on the pooled variance: on small samples the training sd alone is too sure."""
    pooled = ((m - 1) * sd**2 + (n - 1) * std**2) / max(m + n - 2, 1)
    se = math.sqrt(pooled * (1 / n + 1 / m))
    return 2 * float(stats.t.sf(abs(mean - center) / se, max(m + n - 2, 1))) if se > 0 else float(mean == center)


def check_stdev(e: dict, data: _Column, wf: float) -> Outcome:
    kwargs = e["kwargs"]
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    t = _training(e)
    trained = t.std if t.std is not None else _mid(low, high, data.std)
    std = data.std
    n, m = data.present, _rows(e, data)
    if n < MIN_SPREAD_VALUES:  # too few for the sd's normal approximation on lumpy data (an id column
        p = 1.0  # with a few users many times); the range, quantile and distribution checks judge them
    elif trained > 0 and std > 0:
        log_ratio = math.log(std / trained)
        # Not below the normal's 3: a light-tailed (say bimodal) small sample's kurtosis is too sure of itself.
        kurtosis = max(_pooled_kurtosis(t.kurtosis, trained, m, data), 3.0)
        se = math.sqrt((kurtosis - 1) / 4 * (1 / n + 1 / m))
        p = 2 * float(stats.norm.sf(abs(log_ratio) / se))
    elif std == 0 and trained > 0:  # a constant batch: a stuck column, or a rare-event column's quiet day
        p = _one_value_p(t, data, m)
    else:  # a constant training column that now varies
        p = 1.0 if std == trained else 0.0
    fail = (low is not None and std < low) or (high is not None and std > high)
    warn = trained > 0 and (
        (low is not None and low > 0 and std < trained * (low / trained) ** wf)
        or (high is not None and std > trained * (high / trained) ** wf)
    )
    ratio = std / trained if trained > 0 else math.inf
    reason = f"spread: sd {_fmt(std)} outside [{_fmt(low)}, {_fmt(high)}] (training {_fmt(trained)}, ×{ratio:.2f})"
    return _outcome(e, data.name, fail, warn or fail, p, reason, {"observed_value": std}, {"std_ratio": ratio})


def _one_value_p(t: TrainingStats, data: _Column, m: int) -> float:
    """P(all n batch values are the one value the batch holds), were it drawn as training was: a
    column that is 0 but for 1 row in 3,000 is all 0 in most batches. A value training did not
    rank among its most frequent is at most as frequent as the least of those; a contract without
    the shares: p = 0."""
    value, _ = data.mode
    share = _shares(t).get(value, t.other_max_share)
    if share is None:
        return 0.0
    return 1 - _beyond_p(1, data.present, m, m * (1 - share))


def _ks_p(ks: float, effective_n: float) -> float:
    """The two-sample KS p-value: the exact one-sample distribution at the effective size, or past
    10,000 rows Kolmogorov's limit (close there, on the larger, conservative side, and far cheaper on
    a large batch)."""
    if effective_n <= 10_000:
        return float(stats.kstwo.sf(ks, max(1, round(effective_n))))
    return float(stats.kstwobign.sf(ks * math.sqrt(effective_n)))


def _pooled_kurtosis(trained: float | None, trained_std: float, m: int, data: _Column) -> float:
    """Kurtosis of training and batch together: the sd's noise grows with it, and on a small heavy-tailed
    training sample the outliers that set it may all have landed in the batch."""
    squares = np.square(data.sorted - data.mean)  # squared twice, not `** 4`: a float power is far slower
    batch = float(np.dot(squares, squares) / len(squares) / data.std**4) if data.std > 0 else 3.0
    trained = trained if trained is not None else batch
    n = data.present
    fourth = (m * trained * trained_std**4 + n * batch * data.std**4) / (m + n)
    return fourth / ((m * trained_std**2 + n * data.std**2) / (m + n)) ** 2


def check_quantiles(e: dict, data: _Column, wf: float) -> Outcome:
    ranges = e["kwargs"].get("quantile_ranges", {})
    levels, bounds = ranges.get("quantiles", []), ranges.get("value_ranges", [])
    trained = _training(e).values or [_mid(lo, hi, 0.0) for lo, hi in bounds]
    cdf = _cdf_of(data.kl) if data.kl else _Cdf(*(np.asarray(a, dtype="float64") for a in (trained, levels, levels)))
    x, m = data.sorted, _rows(e, data)
    observed = _sorted_quantiles(x, levels)
    fail, warn, pvals, bad = False, False, [], []
    for level, (low, high), value, center in zip(levels, bounds, observed, trained, strict=False):
        if low is not None and value < low:
            pvals.append(_beyond_p(data.below(low), data.present, m, m * _interp_cdf(cdf, low, strict=True)))
        elif high is not None and value > high:
            pvals.append(_beyond_p(data.above(high), data.present, m, m * (1 - _interp_cdf(cdf, high, strict=False))))
        else:
            inner_low = center - wf * (center - low) if low is not None else -math.inf
            inner_high = center + wf * (high - center) if high is not None else math.inf
            warn |= not inner_low <= value <= inner_high
            continue
        fail = True
        bad.append(f"q{level:g} {_fmt(value)} outside [{_fmt(low)}, {_fmt(high)}]")
    p = min(1.0, min(pvals) * len(levels)) if pvals else 1.0
    result = {
        "observed_value": {"quantiles": levels, "values": observed},
        "details": {
            "success_details": [
                lo is None or hi is None or lo <= v <= hi for v, (lo, hi) in zip(observed, bounds, strict=False)
            ]
        },
    }
    return _outcome(
        e,
        data.name,
        fail,
        warn or fail,
        p,
        "quantiles: " + ", ".join(bad),
        result,
        {"quantiles": dict(zip((f"{q:g}" for q in levels), observed, strict=False))},
    )


def check_kl(e: dict, data: _Column, wf: float) -> Outcome:
    if "values" in e["kwargs"].get("partition_object", {}):
        return _check_kl_categorical(e, data, wf)
    kwargs = e["kwargs"]
    partition = kwargs["partition_object"]
    edges = np.asarray(partition["bins"], dtype="float64")
    tail = float(kwargs.get("tail_weight_holdout") or 0.0)
    internal = float(kwargs.get("internal_weight_holdout") or 0.0)
    threshold = kwargs.get("threshold")
    x, n = data.sorted, data.present
    observed = histogram(x, edges) / n
    below, above = data.below(edges[0]) / n, data.above(edges[-1]) / n
    expected = np.asarray(partition["weights"], dtype="float64") * (1 - tail - internal)
    zeros = expected == 0
    if internal > 0 and zeros.any():
        expected[zeros] = internal / zeros.sum()
    p_all = np.concatenate(([below], observed, [above]))
    q_all = np.concatenate(([tail / 2], expected, [tail / 2]))
    kl = float(stats.entropy(p_all, q_all))
    cdf = _cdf_of(e)
    ks, m = _ks(cdf, x), _rows(e, data)
    p = _ks_p(ks, n * m / (n + m))
    std = float(np.std(x)) or 1.0
    measures = {
        "kl": kl if math.isfinite(kl) else None,
        "psi": _psi(p_all, q_all),
        "js": _js(p_all, q_all),
        "ks": ks,
        "ks_p": p,
        "wasserstein_sd": _wasserstein(cdf, x) / (_training_std(e) or std),
    }
    fail = threshold is not None and not kl <= threshold
    warn = threshold is not None and not kl <= wf * threshold
    result = {
        "observed_value": measures["kl"],
        "details": {
            "observed_partition": {
                "bins": edges.tolist(),
                "weights": observed.tolist(),
                "tail_weights": [below, above],
            },
            "expected_partition": {
                "bins": edges.tolist(),
                "weights": expected.tolist(),
                "tail_weights": [tail / 2, tail / 2],
            },
        },
    }
    reason = (
        f"distribution: KL {_fmt(kl)} on training-quantile bins > {threshold} (KS {ks:.3f}, PSI {measures['psi']:.3f})"
    )
    return _outcome(e, data.name, fail, warn, p, reason, result, measures)


def _check_kl_categorical(e: dict, data: _Column, wf: float) -> Outcome:
    kwargs = e["kwargs"]
    partition = kwargs["partition_object"]
    values = [plain(v) for v in partition["values"]]
    weights = np.asarray(partition["weights"], dtype="float64")
    tail = float(kwargs.get("tail_weight_holdout") or 0.0)
    threshold = kwargs.get("threshold")
    counts = data.counts
    unseen = [v for v in counts if v not in set(values)]
    observed = (
        np.array([counts.get(v, 0) for v in values] + [counts[v] for v in unseen], dtype="float64") / data.present
    )
    expected = np.concatenate((weights * (1 - tail), np.full(len(unseen), tail / len(unseen)))) if unseen else weights
    kl = float(stats.entropy(observed, expected))
    seen = np.array([counts.get(v, 0) for v in values], dtype="float64")
    p = _chi_square_p(seen, weights, _rows(e, data), data.present - seen.sum())
    shift = observed[: len(values)] - weights
    i = int(np.argmax(np.abs(shift))) if len(values) else 0
    measures = {
        "kl": kl if math.isfinite(kl) else None,
        "psi": _psi(observed, expected),
        "js": _js(observed, expected),
        "chi2_p": p,
        "largest_share_change": {"category": values[i], "train": float(weights[i]), "batch": float(observed[i])}
        if len(values)
        else None,
    }
    fail = threshold is not None and not kl <= threshold
    warn = threshold is not None and not kl <= wf * threshold
    shown, observed_shown, expected_shown = _top_shares(values + unseen, observed, expected)
    result = {
        "observed_value": measures["kl"],
        "details": {
            "observed_partition": {"values": shown, "weights": observed_shown},
            "expected_partition": {"values": shown, "weights": expected_shown},
        },
    }
    reason = f"category shares: KL {_fmt(kl)} > {threshold} (JS {measures['js']:.3f})"
    return _outcome(e, data.name, fail, warn, p, reason, result, measures)


SHOWN_CATEGORIES = 20  # a report shows this many categories' shares, the rest as one


def _top_shares(values: list, observed: np.ndarray, expected: np.ndarray) -> tuple[list, list, list]:
    """The SHOWN_CATEGORIES categories with the largest share in the batch or in training, then the
    others as one entry: a report (and its picture) shows what moved, not every value of the column."""
    if len(values) <= SHOWN_CATEGORIES + 1:
        return values, observed.tolist(), expected.tolist()
    top = np.sort(np.argsort(-np.maximum(observed, expected), kind="stable")[:SHOWN_CATEGORIES])
    rest = np.ones(len(values), dtype=bool)
    rest[top] = False
    other = f"(other {int(rest.sum())} values)"
    return (
        [values[i] for i in top] + [other],
        [*observed[top].tolist(), float(observed[rest].sum())],
        [*expected[top].tolist(), float(expected[rest].sum())],
    )


def check_in_set(e: dict, data: _Column, wf: float) -> Outcome:
    kwargs = e["kwargs"]
    allowed = {plain(v) for v in kwargs.get("value_set") or []}
    unseen = {v: c for v, c in data.counts.items() if v not in allowed}
    count = sum(unseen.values())
    share = count / data.present
    bound = 1 - float(kwargs.get("mostly", 1.0))
    t = _training(e)
    other = (t.other_share or 0.0) + (t.new_share or 0.0)
    p = _binom_p(count, data.present, other + 1 / (_rows(e, data) + 1))
    top = sorted(unseen.items(), key=lambda kv: -kv[1])[:5]
    listed = ", ".join(f"{_short(v)} {c / data.present:.1%}" for v, c in top)
    reason = f"values: {share:.1%} not seen in training ({listed}), the contract allows {bound:.1%}"
    result = _map_result(data.present, count) | {"partial_unexpected_list": [v for v, _ in top]}
    return _outcome(
        e,
        data.name,
        share > bound,
        share > other + wf * (bound - other),
        p,
        reason,
        result,
        {"unseen_share": share, "unseen_top": [v for v, _ in top]},
    )


def check_most_common(e: dict, data: _Column, wf: float) -> Outcome:
    """A stuck column (one value much more frequent than in training) or a clipped one (see
    `_clipped`). Both effects are shares with `max_share_increase` as their bound, each with its
    test; the outcome is the sub-test whose effect passes its bound with the smallest p, that p
    Bonferroni-split over the sub-tests (stuck; clipped above; clipped below)."""
    value, count = data.mode
    allowed = {plain(v) for v in e["kwargs"].get("value_set") or []}
    meta = e.get("meta", {})
    t = _training(e)
    shares = _shares(t)
    share = count / data.present
    m = _rows(e, data)
    result = {"observed_value": [value]}
    measures: dict[str, Any] = {"top_value": value, "top_value_share": share}
    limit = float(meta.get("max_share_increase", 0.03))
    ends = _clipped(data, m, shares, t.other_max_share or 0.0, allowed, limit, wf)
    if ends is not None:
        measures["tail_missing"] = max(f.missing for f in ends)
    findings = [f for f in ends or [] if f.warn]
    if not (value in allowed and value not in shares):  # else a value the user declared fine
        trained = shares.get(value, t.other_max_share or 0.0)
        candidates = min(t.distinct if t.distinct is not None else data.present, data.present)
        p = min(1.0, _binom_p(count, data.present, trained + 1 / (m + 1)) * max(candidates, 1))
        measures["top_value_share_train"] = trained
        reason = f"stuck or clipped: {share:.1%} of values are {_fmt(value)} (training {trained:.1%})"
        findings.append(_Finding(share - trained >= limit, share - trained >= wf * limit, p, reason))
    if not findings:
        return _outcome(e, data.name, False, False, None, "", result, measures)
    chosen = min(findings, key=lambda f: (not f.fail, not f.warn, f.p))  # a tie: the clipping's reason
    p = min(1.0, chosen.p * (3 if ends is not None else 1))
    return _outcome(e, data.name, chosen.fail, chosen.warn, p, chosen.reason, result, measures)


@dataclass(frozen=True)
class _Finding:
    fail: bool
    warn: bool
    p: float
    reason: str
    missing: float = 0.0


def _clipped(
    data: _Column, m: int, shares: dict, other_max: float, allowed: set, limit: float, wf: float
) -> list[_Finding] | None:
    """A column clipped (or cut off) at some value, at either end. At each end of a numeric batch
    sits its extreme value v, nothing beyond it (by definition); the effect is the share of training
    values beyond v (read off the training CDF the KL expectation keeps): the tail the batch lacks.
    Its p combines (Fisher) P(no batch value beyond v) -- beta-binomial on the training count
    beyond v, so that the training sample's own uncertainty counts -- with P(the pile at v): the
    values at v besides the one that makes it the extreme, at v's training share. None: no CDF."""
    if data.kl is None or data.series.dtype.kind not in "iuf" or data.present < 2:
        return None
    cdf, x, n = _cdf_of(data.kl), data.sorted, data.present
    out = []
    for side, v in (("above", float(x[-1])), ("below", float(x[0]))):
        if side == "above":
            at, within, bound = n - data.below(v), _interp_cdf(cdf, v, strict=False), 1 - cdf.below[-1]
        else:
            at, within, bound = (
                int(np.searchsorted(x, v, "right")),
                1 - _interp_cdf(cdf, v, strict=True),
                cdf.at_or_below[0],
            )
        # The effect leaves out training's own pile at its extreme (a floor or a cap): that pile
        # moved a little is a shift of the bound, which the mean, quantile and KS checks judge.
        missing = 1 - within
        effect = missing - float(bound) if missing > 0 else 0.0
        if effect < wf * limit or (v in allowed and v not in shares):  # a bound the user declared
            out.append(_Finding(False, False, 1.0, "", effect))
            continue
        j = math.floor(round(m * missing, 6))  # training values beyond v (fewer: the conservative side)
        p_empty = math.exp(special.betaln(j, m - j + 1 + n) - special.betaln(j, m - j + 1)) if j > 0 else 1.0
        trained = shares.get(v, other_max)
        p_pile = _binom_p(at - 1, n - 1, min(1.0, (trained + 1 / (m + 1)) / max(within, 1e-9)))
        p = float(stats.chi2.sf(-2 * (math.log(max(p_empty, 1e-300)) + math.log(max(p_pile, 1e-300))), 4))
        level = within if side == "above" else missing
        what = (
            f"none of {n} values {side} {_fmt(v)} (training q{level:.3g}: {missing:.1%} of training values {side} it)"
        )
        if at > 1 and at / n - trained >= wf * limit:
            reason = f"clipped: {what}; {at / n:.1%} of values are {_fmt(v)} (training {trained:.1%})"
        else:
            reason = f"tail cut off: {what}"
        out.append(_Finding(effect >= limit, True, p, reason, effect))
    return out


# --- free text (expectations/text.py) -------------------------------------------------------------


def check_text_lengths(e: dict, data: _Column, wf: float) -> Outcome:
    """A text column's value lengths, judged as a number's are: its quantile bands and the KL
    divergence on training-quantile bins (the stronger of the two, its p doubled for the pair)."""
    kwargs, t = e["kwargs"], _training(e)
    lengths = _Column(pd.Series(text.length_values(data.series.dropna()), name=data.name))
    lengths.kl = {
        "type": KL,
        "kwargs": {k: kwargs[k] for k in ("partition_object", "threshold", "tail_weight_holdout") if k in kwargs},
        "meta": TrainingStats(rows=t.rows, cdf=t.cdf).meta(),
    }
    quantiles = {"kwargs": {"quantile_ranges": kwargs.get("quantile_ranges", {})}, "meta": e.get("meta", {})}
    found = [check_quantiles(quantiles, lengths, wf), check_kl(lengths.kl, lengths, wf)]
    chosen = min(found, key=lambda o: (not o.fail, not o.warn, o.p if o.p is not None else 1.0))
    measures = {f"length_{k}": v for o in found for k, v in o.measures.items()}
    p = min(1.0, (chosen.p if chosen.p is not None else 1.0) * len(found))
    return _outcome(e, data.name, chosen.fail, chosen.warn, p, f"length {chosen.reason}", found[1].result, measures)


def check_text_vocabulary(e: dict, data: _Column, wf: float) -> Outcome:
    """The mean share of a value's tokens in the training vocabulary, against training's own share on
    rows held out of that vocabulary: a one-sided two-sample t-test (rows, not tokens, are the
    independent draws), failing when the share falls below `min_value`. Values without a token
    (empty, punctuation) are left to the length check."""
    t = _training(e).text
    low = e["kwargs"].get("min_value")
    if t is None:
        return _outcome(e, data.name, False, False, None, "", {"observed_value": None})
    exploded = text.row_tokens(text.sample(data.series.dropna()))
    seen = exploded.isin(set(t.vocabulary))
    per_row = seen.groupby(level=0).mean()
    n, m = len(per_row), t.rows
    if n == 0:
        return _outcome(e, data.name, False, False, None, "", {"observed_value": None}, {"token_coverage": None})
    share = float(per_row.mean())
    std = float(per_row.std(ddof=1)) if n > 1 else 0.0
    pooled = ((m - 1) * t.coverage_std**2 + (n - 1) * std**2) / max(m + n - 2, 1)
    se = math.sqrt(pooled * (1 / n + 1 / max(m, 1)))
    drop = t.coverage - share
    p = float(stats.t.sf(drop / se, max(m + n - 2, 1))) if se > 0 else float(drop <= 0)
    bound = t.coverage - low if low is not None else math.inf
    unseen = exploded[~seen].value_counts().head(5)
    listed = ", ".join(_short(v) for v in unseen.index)
    reason = (
        f"vocabulary: {share:.1%} of tokens are in the training vocabulary, training {t.coverage:.1%} on held-out "
        f"rows, the contract allows down to {low:.1%}" + (f" (unseen: {listed})" if listed else "")
    )
    return _outcome(
        e,
        data.name,
        low is not None and share < low,
        drop > wf * bound,
        p,
        reason,
        {"observed_value": share, "partial_unexpected_list": [_short(v) for v in unseen.index]},
        {"token_coverage": share, "token_coverage_train": t.coverage, "token_coverage_drop": drop},
    )


# --- datetime columns: ISO text read as the gateway reads it, then range and recency --------------


def _holds_dates(expectations: list[dict]) -> bool:
    """Whether the contract types this column as datetimes."""
    return any(
        str(t).startswith("datetime64")
        for e in expectations
        if e["type"] == "expect_column_values_to_be_in_type_list"
        for t in e["kwargs"].get("type_list") or []
    )


def as_dates(s: pd.Series) -> pd.Series:
    """A batch's datetime column as the gate compares it with training: instants in UTC, without the
    zone (datetime64[us]), which is what the gateway hands the model. ISO 8601 text, as clients send
    dates and the serving log keeps them, is parsed: an offset converts to UTC, a time without one
    is read as UTC (so is a naive training column: the same instants the date parts see). Text
    that is not all ISO dates stays text, and the type check says so."""
    if pd.api.types.is_datetime64_any_dtype(s.dtype):
        if isinstance(s.dtype, pd.DatetimeTZDtype):
            s = s.dt.tz_convert("UTC").dt.tz_localize(None)
        return s
    if not (pd.api.types.is_string_dtype(s.dtype) or pd.api.types.is_object_dtype(s.dtype)):
        return s
    try:
        return pd.to_datetime(s, format="ISO8601", utc=True).dt.tz_localize(None).rename(s.name)
    except (ValueError, TypeError, OverflowError):
        return s


def check_date_range(e: dict, data: _Column, wf: float) -> Outcome:
    """Range and recency of a datetime column: the share of dates outside [training's earliest,
    its latest plus the horizon] (expectations/contract.py), tested as the numeric range is."""
    kwargs = e["kwargs"]
    low, high = (_instant(kwargs.get(k)) for k in ("min_value", "max_value"))
    before = data.below(_microseconds_of(low)) if low is not None else 0
    after = data.above(_microseconds_of(high)) if high is not None else 0
    share = (before + after) / data.present
    bound = 1 - float(kwargs.get("mostly", 1.0))
    t = _training(e)
    first, last = data.series.min(), data.series.max()
    latest = _instant(t.latest) or high
    measures = {
        "out_of_range": share,
        "dates_before": before / data.present,
        "dates_after": after / data.present,
        "batch_earliest": first.isoformat(),
        "batch_latest": last.isoformat(),
    }
    if latest is not None:  # how much later the batch ends than training did: the model's age, in days
        measures["recency_days"] = (last - latest) / pd.Timedelta(days=1)
    ends = f"training ends {_day(latest)}; " if t.latest else ""
    reason = (
        f"dates: {share:.1%} of values outside [{_day(low)}, {_day(high)}] ({before / data.present:.1%} before, "
        f"{after / data.present:.1%} after; {ends}the batch spans {_day(first)} to {_day(last)}), "
        f"the contract allows {bound:.1%}"
    )
    return _outcome(
        e,
        data.name,
        share > bound,
        share > wf * bound,
        _beyond_p(before + after, data.present, _rows(e, data), 1),
        reason,
        _map_result(data.present, before + after),
        measures,
    )


def _not_dates_hint(data: _Column, allowed: list[str]) -> str:
    if not any(t.startswith("datetime64") for t in allowed):
        return ""
    parsed = pd.to_datetime(data.series, format="ISO8601", utc=True, errors="coerce")
    bad = data.series[data.series.notna() & parsed.isna()]
    return f" (text that is not an ISO 8601 date, e.g. {bad.iloc[0]!r})" if len(bad) else ""


def _instant(value: Any) -> pd.Timestamp | None:
    """A bound or a training date (ISO text) as a naive UTC timestamp, as `as_dates` makes the batch's."""
    if value is None or value == "":
        return None
    stamp = pd.Timestamp(value)
    return stamp.tz_convert("UTC").tz_localize(None) if stamp.tzinfo is not None else stamp


def _microseconds(s: pd.Series) -> np.ndarray:
    """Naive datetimes as float microseconds since the epoch, NaT as NaN."""
    values = s.to_numpy().astype("datetime64[us]")
    return np.where(np.isnat(values), np.nan, values.view("int64").astype("float64"))


def _microseconds_of(stamp: pd.Timestamp) -> float:
    return float(np.datetime64(stamp.to_datetime64(), "us").astype("int64"))


def _day(stamp: pd.Timestamp | None) -> str:
    """A date as people read it: the day alone at midnight, else to the second."""
    if stamp is None:
        return "-"
    return stamp.strftime("%Y-%m-%d") if stamp == stamp.normalize() else stamp.isoformat(sep=" ", timespec="seconds")


NOT_NULL = "expect_column_values_to_not_be_null"
KL = "expect_column_kl_divergence_to_be_less_than"
TYPE_CHECKS = {"expect_column_values_to_be_in_type_list", "expect_column_values_to_be_of_type"}
HANDLERS: dict[str, Callable[..., Any]] = {
    "expect_table_columns_to_match_set": check_columns,
    "expect_table_row_count_to_be_between": check_row_count,
    "expect_column_values_to_be_in_type_list": check_type_list,
    "expect_column_values_to_be_of_type": check_type,
    NOT_NULL: check_not_null,
    "expect_column_values_to_be_between": check_between,
    "expect_column_mean_to_be_between": check_mean,
    "expect_column_stdev_to_be_between": check_stdev,
    "expect_column_quantile_values_to_be_between": check_quantiles,
    KL: check_kl,
    "expect_column_values_to_be_in_set": check_in_set,
    "expect_column_most_common_value_to_be_in_set": check_most_common,
    text.LENGTHS: check_text_lengths,
    text.VOCABULARY: check_text_vocabulary,
}


# --- statistics helpers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Cdf:
    values: np.ndarray
    at_or_below: np.ndarray
    below: np.ndarray


def _cdf_of(e: dict) -> _Cdf:
    cdf = _training(e).cdf
    if cdf:
        return _Cdf(*(np.asarray(a, dtype="float64") for a in (cdf.values, cdf.at_or_below, cdf.below)))
    partition = e.get("kwargs", {}).get("partition_object", {})
    edges = np.asarray(partition.get("bins", [0.0, 1.0]), dtype="float64")
    cum = np.concatenate(([0.0], np.cumsum(partition.get("weights", [1.0]))))
    return _Cdf(edges, cum, cum)  # a hand-made partition: its edges are all the CDF there is


def _sorted_quantiles(x: np.ndarray, levels: list[float]) -> list[float]:
    """np.quantile's linear method, read off an already sorted array (np.quantile would partition it again)."""
    position = np.asarray(levels, dtype="float64") * (len(x) - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, len(x) - 1)
    return (x[low] + (x[high] - x[low]) * (position - low)).tolist()


def _interp_cdf(cdf: _Cdf, x: float, strict: bool) -> float:
    """Training F(x-) (strict) or F(x): exact on the grid, linear between its points."""
    v = cdf.values
    i = int(np.searchsorted(v, x, "left"))
    if i < len(v) and v[i] == x:
        return float(cdf.below[i] if strict else cdf.at_or_below[i])
    if i == 0:
        return 0.0
    if i == len(v):
        return 1.0
    start, end = cdf.at_or_below[i - 1], cdf.below[i]
    return float(start + (end - start) * (x - v[i - 1]) / (v[i] - v[i - 1]))


def _ks(cdf: _Cdf, x: np.ndarray) -> float:
    """Kolmogorov-Smirnov distance between the batch and training, on the training CDF grid."""
    n = len(x)
    at = np.searchsorted(x, cdf.values, "right") / n
    below = np.searchsorted(x, cdf.values, "left") / n
    return float(max(np.abs(at - cdf.at_or_below).max(), np.abs(below - cdf.below).max()))


def _wasserstein(cdf: _Cdf, x: np.ndarray) -> float:
    at = np.searchsorted(x, cdf.values, "right") / len(x)
    return float(np.sum(np.abs(at - cdf.at_or_below)[:-1] * np.diff(cdf.values)))


def _training_std(e: dict) -> float:
    return float(_training(e).std or 0.0)


def _psi(p: np.ndarray, q: np.ndarray, eps: float = 1e-4) -> float:
    p, q = np.clip(p, eps, None), np.clip(q, eps, None)
    return float(np.sum((p - q) * np.log(p / q)))


def _js(p: np.ndarray, q: np.ndarray) -> float:
    from scipy.spatial.distance import jensenshannon

    return float(jensenshannon(p, q, base=2))


def _chi_square_p(counts: np.ndarray, weights: np.ndarray, m: int, unseen: float) -> float:
    """Chi-square test that the batch's categories are drawn as `m` training rows' were: two samples in a
    2 x k table, not the batch against training shares taken as exact. Cells under 5 expected are
    pooled into one rare cell, where the batch's values training never saw go too: on a long-tail
    column, training's values seen once are as many as the batch's new ones (Good-Turing)."""
    trained = weights / weights.sum() * m if weights.sum() > 0 else weights
    n = counts.sum() + unseen
    small = np.minimum(trained * n / (n + m), trained * m / (n + m)) < 5
    table = np.vstack(
        [
            np.append(trained[~small], trained[small].sum()),
            np.append(counts[~small], counts[small].sum() + unseen),
        ]
    )
    table = table[:, table.sum(axis=0) > 0]
    if n == 0 or table.shape[1] < 2:
        return 1.0
    return float(stats.chi2_contingency(table, correction=False).pvalue)


def _map_result(count: int, unexpected: int) -> dict[str, Any]:
    return {
        "element_count": count,
        "unexpected_count": unexpected,
        "unexpected_percent": 100 * unexpected / count if count else 0.0,
        "partial_unexpected_list": [],
    }


def _mid(low: Any, high: Any, default: float) -> float:
    return (low + high) / 2 if low is not None and high is not None else default


def _half(low: Any, high: Any, center: float) -> float:
    sides = [abs(b - center) for b in (low, high) if b is not None]
    return min(sides) if sides else math.inf


def _shares(t: TrainingStats) -> dict[Any, float]:
    """Training's shares of its most frequent values, keyed as the batch holds them (numbers as floats)."""
    return {_key(k): float(v) for k, v in (t.shares or {}).items()}


def _key(value: str) -> Any:
    try:
        return float(value)
    except ValueError:
        return value


def _short(value: Any, limit: int = 40) -> str:
    """A value as a report quotes it: repr'd, one line, at most `limit` characters."""
    shown = repr(value)
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# --- expectations the gate does not implement: Great Expectations runs them ------------------------


def _run_in_gx(batch: pd.DataFrame, expectations: list[dict]) -> list[Outcome]:
    import uuid

    from great_expectations.core.expectation_suite import ExpectationSuite

    from expectations.contract import gx_context

    context = gx_context()
    definition = (
        context.data_sources.add_pandas(f"gate-{uuid.uuid4().hex[:8]}")
        .add_dataframe_asset("batch")
        .add_batch_definition_whole_dataframe("whole")
    )
    suite = ExpectationSuite(name="user", expectations=[dict(e) for e in expectations])
    results = definition.get_batch(batch_parameters={"dataframe": batch}).validate(suite)
    out = []
    for r in results.results:
        config = r.expectation_config
        assert config is not None  # GX gives each result the expectation it checked
        e: dict[str, Any] = {"type": config.type, "kwargs": dict(config.kwargs), "meta": dict(config.meta or {})}
        column = e["kwargs"].get("column", TABLE)
        error = (
            (r.exception_info or {}).get("exception_message")
            if (r.exception_info or {}).get("raised_exception")
            else None
        )
        result = jsonable(dict(r.result or {}))
        observed = result.get("observed_value", result.get("unexpected_percent"))
        failed = f"{config.type} failed (observed {_short(observed, 80)})"
        reason = f"{config.type}: could not run: {error}" if error else failed
        out.append(_outcome(e, column, not r.success, not r.success, None, reason if not r.success else "", result))
    return out
