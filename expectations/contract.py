"""A model version's data contract: a Great Expectations suite built from its training snapshot.

Per feature column the suite states presence and type, the null rate, the range or value set (a
datetime's range and recency: see `_dates`), and the distribution seen in training (mean and
standard deviation bands, quantile bands, a KL divergence on training-quantile bins or on
category shares, and the largest share one value may take); a free-text column gets its length
distribution and vocabulary instead of a value set (expectations/text.py). The kwargs are the
practical bounds a user reads and edits; each expectation's `meta.training` keeps the training
statistics the gate needs to tell drift from sampling noise (see tasks/gate/contract_checks.py). The
suite is plain GX JSON, written without importing GX (expectations/gx_json.py): any GX 1.x
context can load it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from configs.settings import GateSettings
from core.errors import DataError
from core.free_text import text_columns as find_text
from core.plain import plain
from core.redaction import DROP
from expectations import gx_json, text
from expectations.joint import joint_expectation, register
from expectations.training_stats import Cdf, TrainingStats

if TYPE_CHECKING:
    from great_expectations.data_context import AbstractDataContext

FORMAT = "shipway.contract/v1"
NUMERIC_TYPES = [
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float32",
    "float64",
    "Int64",
    "Float64",
]  # ints arriving as floats are no drift
DATETIME_TYPES = [
    *(f"datetime64[{unit}]" for unit in ("s", "ms", "us", "ns")),
    *(f"datetime64[{unit}, UTC]" for unit in ("s", "ms", "us", "ns")),
]  # naive, or zone-aware as a snapshot keeps them (in UTC)
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
TAIL_LEVELS = (0.01, 0.025, 0.975, 0.99)  # finer bins where clipping and outliers show
CDF_STEP = 0.005  # the training CDF is kept on this grid of quantiles for the KS distance
TOP_VALUES = 20
TAIL_WEIGHT_HOLDOUT = 0.001
KL = "expect_column_kl_divergence_to_be_less_than"


def build_contract(
    frame: pd.DataFrame,
    settings: GateSettings,
    *,
    name: str,
    target: str | None,
    snapshot_id: str | None,
    features: list[str] | None = None,
    text_columns: list[str] | None = None,
    sensitive: Mapping[str, str] | None = None,
    hash_key_check: str | None = None,
) -> dict[str, Any]:
    """The suite, as GX JSON, for the feature columns of a canonical snapshot frame (see
    tasks.data.snapshot). `features` None: every column but the target, and no other column allowed;
    chosen features: the other columns (IDs, free text) are neither checked nor refused.
    `text_columns` (data.text_columns) names the free-text features; None: those that read as text.
    `sensitive` (serving.sensitive_columns): a hashed column arrives already hashed (tasks/training/sensitive.py)
    and is checked as categories; a dropped one keeps its type and null rate only, and no column of
    either joins the joint check's sample or is read as text: no training value of them is kept."""
    if len(frame) == 0:
        raise DataError("cannot build a contract from a snapshot with no rows")
    chosen = features is not None
    features = [c for c in frame.columns if c != target] if features is None else list(features)
    columns = [*features, *([target] if target is not None and target in frame.columns else [])]
    expectations = _table_expectations(columns, target, exact=not chosen)
    sensitive = dict(sensitive or {})
    texts = [c for c in find_text(frame, features, text_columns) if c not in sensitive]
    for column in features:
        if sensitive.get(column) == DROP:
            expectations += column_expectations(frame[column], settings)[:2]  # its type and null rate
        else:
            expectations += column_expectations(frame[column], settings, free_text=column in texts)
    # The joint check codes a value by its category: a text's never repeats, so it is left out.
    others = [c for c in features if c not in texts and sensitive.get(c) != DROP]
    joint = joint_expectation(frame, others, settings.joint_sample_rows, settings.joint_min_auc)
    if joint is not None:
        expectations.append(joint)
    meta = {
        "format": FORMAT,
        "snapshot_id": snapshot_id,
        "rows": len(frame),
        "target": target,
        "features": features,
        **({"text_columns": texts} if texts else {}),
        **({"sensitive": sensitive} if sensitive else {}),
        **({"hash_key_check": hash_key_check} if hash_key_check else {}),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return gx_json.suite(name, expectations, {"shipway": meta})


def _table_expectations(columns: list[str], target: str | None, exact: bool = True) -> list[dict[str, Any]]:
    optional = [target] if target in columns else []
    return [
        gx_json.expectation(
            "expect_table_columns_to_match_set",
            {"optional": optional, "note": "optional columns (the label) may be absent from a batch"},
            column_set=columns,
            exact_match=exact,
        ),
        gx_json.expectation("expect_table_row_count_to_be_between", min_value=1),
    ]


def column_expectations(s: pd.Series, settings: GateSettings, free_text: bool = False) -> list[dict[str, Any]]:
    """The expectations of one column, from its training values (`free_text`: a text column's)."""
    column = str(s.name)
    rows = len(s)
    nulls = int(s.isna().sum())
    null_fraction = nulls / rows
    if s.dtype.kind in "iuf":
        kind = gx_json.expectation("expect_column_values_to_be_in_type_list", column=column, type_list=NUMERIC_TYPES)
    elif s.dtype.kind == "M":
        kind = gx_json.expectation("expect_column_values_to_be_in_type_list", column=column, type_list=DATETIME_TYPES)
    else:
        kind = gx_json.expectation(
            "expect_column_values_to_be_of_type", column=column, type_="bool" if s.dtype == "bool" else "str"
        )
    out = [
        kind,
        gx_json.expectation(
            "expect_column_values_to_not_be_null",
            TrainingStats(null_fraction=null_fraction, rows=rows).meta(),
            column=column,
            mostly=round(max(0.0, 1 - null_fraction - settings.null_tolerance), 6),
        ),
    ]
    if s.dtype.kind in "iuf":
        values = np.sort(s.dropna().to_numpy(dtype="float64"))
        if len(values):
            out += _numeric(column, values, settings)
    elif free_text:
        out += _free_text(column, s.dropna(), settings)
    elif s.dtype.kind == "M":
        out += _dates(column, s.dropna(), settings)
    else:
        out += _categorical(column, s.dropna(), settings)
    return out


def _free_text(column: str, present: pd.Series, settings: GateSettings) -> list[dict[str, Any]]:
    """A text column's length distribution (the numeric quantile bands and KL divergence, on the
    values' lengths) and its vocabulary (expectations/text.py)."""
    if len(present) == 0:
        return []
    numeric = {e["type"]: e for e in _numeric(column, text.length_values(present), settings)}
    quantiles, kl = numeric["expect_column_quantile_values_to_be_between"], numeric[KL]
    lengths = gx_json.expectation(
        text.LENGTHS,
        TrainingStats.of(quantiles)
        .model_copy(update={"cdf": TrainingStats.of(kl).cdf})
        .meta(note="lengths in characters; the gate checks them as it checks a number's quantiles and distribution"),
        column=column,
        quantile_ranges=quantiles["kwargs"]["quantile_ranges"],
        **{k: kl["kwargs"][k] for k in ("partition_object", "threshold", "tail_weight_holdout")},
    )
    vocabulary = text.vocabulary_expectation(column, present, settings.text_vocabulary, settings.text_coverage_drop)
    return [lengths, *([vocabulary] if vocabulary else [])]


def _numeric(column: str, x: np.ndarray, settings: GateSettings) -> list[dict[str, Any]]:
    n = len(x)
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if n > 1 else 0.0
    kurtosis = float(np.mean((x - mean) ** 4) / std**4) if std > 0 else 3.0
    training = TrainingStats(rows=n, mean=mean, std=std)
    band = settings.quantile_band

    def q(level: float) -> float:
        return float(np.quantile(x, min(1.0, max(0.0, level)), method="inverted_cdf"))

    # Tail quantiles get a band proportional to their tail, so that clipping there shows.
    ranges = [[q(p - min(band, p / 2)), q(p + min(band, (1 - p) / 2))] for p in QUANTILES]
    levels = sorted({*np.linspace(0, 1, settings.bins + 1).round(6), *TAIL_LEVELS})
    edges = np.unique(np.quantile(x, levels, method="inverted_cdf"))
    if len(edges) == 1:
        edges = np.array([edges[0], np.nextafter(edges[0], np.inf)])
    weights = histogram(x, edges) / n
    grid = np.unique(np.quantile(x, np.linspace(0, 1, round(1 / CDF_STEP) + 1), method="inverted_cdf"))
    values, counts = np.unique(x, return_counts=True)
    top = np.argsort(counts)[::-1][:TOP_VALUES]
    shares = {str(float(values[i])): float(counts[i] / n) for i in top}  # JSON keys are strings
    point_masses = [float(v) for v, share in shares.items() if share >= 0.005] or [float(values[top[0]])]
    sd = std or 1.0
    return [
        gx_json.expectation(
            "expect_column_values_to_be_between",
            TrainingStats(rows=n).meta(),
            column=column,
            min_value=float(x[0]),
            max_value=float(x[-1]),
            mostly=round(1 - settings.range_tolerance, 6),
        ),
        gx_json.expectation(
            "expect_column_mean_to_be_between",
            training.meta(),
            column=column,
            min_value=mean - settings.mean_shift_sd * sd,
            max_value=mean + settings.mean_shift_sd * sd,
        ),
        gx_json.expectation(
            "expect_column_stdev_to_be_between",
            # The top values' shares: how likely a batch holding only one value is (a rare-event column).
            training.model_copy(
                update={"kurtosis": kurtosis, "shares": shares, "other_max_share": float(min(shares.values()))}
            ).meta(),
            column=column,
            min_value=std / settings.stdev_ratio,
            max_value=std * settings.stdev_ratio,
        ),
        gx_json.expectation(
            "expect_column_quantile_values_to_be_between",
            TrainingStats(rows=n, values=[q(p) for p in QUANTILES]).meta(),
            column=column,
            quantile_ranges={"quantiles": list(QUANTILES), "value_ranges": ranges},
        ),
        gx_json.expectation(
            "expect_column_kl_divergence_to_be_less_than",
            # Training CDF on a fine quantile grid: F(v) and F(v-), for the KS distance.
            TrainingStats(
                rows=n,
                cdf=Cdf(
                    values=grid.tolist(),
                    at_or_below=(np.searchsorted(x, grid, "right") / n).tolist(),
                    below=(np.searchsorted(x, grid, "left") / n).tolist(),
                ),
            ).meta(),
            column=column,
            partition_object={"bins": edges.tolist(), "weights": weights.tolist()},
            threshold=settings.kl_threshold,
            tail_weight_holdout=TAIL_WEIGHT_HOLDOUT,
        ),
        gx_json.expectation(
            "expect_column_most_common_value_to_be_in_set",
            TrainingStats(
                rows=n, distinct=len(values), shares=shares, other_max_share=float(min(shares.values()))
            ).meta(
                max_share_increase=settings.point_mass_share,
                note="the gate fails only when the batch's most common value holds a share this much "
                "larger than in training (a stuck column), or when this share of training values lies beyond "
                "the batch's largest or smallest value (a clipped column); values added here are accepted",
            ),
            column=column,
            value_set=point_masses,
            ties_okay=True,
        ),
    ]


def _categorical(column: str, present: pd.Series, settings: GateSettings) -> list[dict[str, Any]]:
    n = len(present)
    if n == 0:
        return []
    counts = present.value_counts()
    kept = counts.head(settings.max_categories)
    other = float(1 - kept.sum() / n)
    # Good-Turing: values seen once estimate the share of values training never saw. A long-tail
    # column (tail numbers, names, ids) keeps meeting new values; that is its nature, not drift.
    new = float((counts == 1).sum() / n)
    values = [plain(v) for v in kept.index]
    return [
        gx_json.expectation(
            "expect_column_values_to_be_in_set",
            TrainingStats(rows=n, other_share=other, new_share=new).meta(),
            column=column,
            value_set=values,
            mostly=round(max(0.0, 1 - other - new - settings.unseen_tolerance), 6),
        ),
        gx_json.expectation(
            "expect_column_kl_divergence_to_be_less_than",
            TrainingStats(rows=n).meta(),
            column=column,
            partition_object={"values": values, "weights": (kept / kept.sum()).tolist()},
            threshold=settings.kl_threshold,
            tail_weight_holdout=TAIL_WEIGHT_HOLDOUT,
        ),
    ]


def _dates(column: str, present: pd.Series, settings: GateSettings) -> list[dict[str, Any]]:
    """A datetime column's range and recency: values from training's earliest date to its latest
    plus `date_horizon` times training's span. Dates move on, so a batch later than training is no
    drift until it passes the horizon; dates before training's are out of range at once. No
    distribution checks: a served batch's dates are rightly not distributed as training's."""
    if not len(present):
        return []
    earliest, latest = present.min(), present.max()
    horizon = (latest - earliest) * settings.date_horizon
    return [
        gx_json.expectation(
            "expect_column_values_to_be_between",
            TrainingStats(rows=len(present), earliest=earliest.isoformat(), latest=latest.isoformat()).meta(
                note="dates: min_value is training's earliest, max_value its latest plus gate.date_horizon times "
                "its span; the gate reads dates without an offset as UTC, as the gateway does"
            ),
            column=column,
            min_value=earliest.isoformat(),
            max_value=(latest + horizon).isoformat(),
            mostly=round(1 - settings.range_tolerance, 6),
        )
    ]


def histogram(sorted_values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts per bin of sorted values, as np.histogram (and so GX) counts them: [a, b), the last [a, b]."""
    left = np.searchsorted(sorted_values, edges, "left")
    left[-1] = np.searchsorted(sorted_values, edges[-1], "right")
    return np.diff(left)


@cache
def gx_context() -> AbstractDataContext:
    """One ephemeral GX context per process: GX wants one around any suite or validation."""
    import great_expectations as gx

    # GX pins this logger at INFO and says so for every temporary docs folder it makes.
    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)
    register()  # shipway's own expectation types, so GX keeps and checks them in a suite
    text.register()
    return gx.get_context(mode="ephemeral")


def save(suite: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(suite, indent=2))
    return path


def load(path: Path) -> dict[str, Any]:
    """A suite from its JSON file, checked by GX itself so that a hand edit that breaks it is caught here."""
    try:
        suite = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read expectation suite {path}: {str(exc).splitlines()[0]}") from None
    return check(suite, str(path))


def check(suite: Any, origin: str) -> dict[str, Any]:
    """`suite` if GX accepts each of its expectations, else a DataError naming `origin` and the first bad one."""
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    if not isinstance(suite, dict) or not isinstance(suite.get("expectations"), list):
        raise DataError(f"expectation suite {origin} is not a GX suite (no 'expectations' list)")
    gx_context()
    for i, expectation in enumerate(suite["expectations"]):
        kind = expectation.get("type", "?") if isinstance(expectation, dict) else "?"
        try:
            fields = {k: v for k, v in expectation.items() if k in ("type", "kwargs", "meta", "id", "notes")}
            ExpectationConfiguration(**fields).to_domain_obj()
        except Exception as exc:  # GX raises many kinds for a bad expectation; all mean the same to the user
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(f"expectation suite {origin} is invalid: expectation {i + 1} ({kind}): {reason}") from None
    return suite
