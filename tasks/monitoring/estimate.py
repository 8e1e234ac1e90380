"""A window's outputs against what the version predicted on its holdout at registration.

- **Prediction drift**: the served class shares and score distributions against the reference's
  (tasks/release/prediction_reference.py), each by a chi-square test of homogeneity on the
  reference's bins, with its population stability index (PSI) as the effect size. A distribution
  drifts when its PSI passes `monitoring.max_prediction_psi` AND the test rejects at `gate.alpha`
  (split over the distributions tested): on an unchanged model and unchanged inputs a window
  breaches with a chance of at most `gate.alpha`, and a large window does not breach on a trivial
  shift.
- **Performance estimated without labels** (confidence-based performance estimation, CBPE, as
  NannyML does): the window's probabilities calibrated by the reference's Platt scaling give each
  row's chance of being right; their mean is the expected accuracy; for a binary classifier the
  expected confusion matrix at every threshold of the score gives the expected ROC curve and AUC.
  The band is the 95% sampling interval of the realised figure on a window of that size (binomial
  for accuracy, Hanley-McNeil for AUC). It holds under covariate shift (the inputs move, the
  relation between inputs and label does not); a concept shift is seen only once labels come back.
  It needs probabilities: a version served with predict logs labels only, and a regressor's error
  cannot be estimated from its outputs alone: both are "not estimable".
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import orjson
import pandas as pd
from scipy import stats

from core.vocabulary import Tag
from tasks.release.prediction_reference import PredictionReference, bin_counts, class_key, score_columns

Z95 = 1.959964
MIN_ESTIMATE_ROWS = 20  # fewer served rows: no estimate worth a figure


@dataclass
class Estimate:
    """Estimated figures of a window, their bands, and what the holdout scored; or why none."""

    rows: int = 0
    figures: dict[str, float] = field(default_factory=dict)  # accuracy, roc_auc
    bands: dict[str, tuple[float, float]] = field(default_factory=dict)
    holdout: dict[str, float] = field(default_factory=dict)
    not_estimable: str = ""


@dataclass
class Outputs:
    """A window's served rows of one version: raw values, request ids, and labels where known."""

    values: np.ndarray  # probabilities (n, classes) or outputs/classes (n,)
    request_ids: list[str]
    inputs: pd.DataFrame


def served_outputs(
    log: pd.DataFrame, version: str, reference: PredictionReference, with_inputs: bool = True
) -> Outputs:
    """The rows `version` answered as Production (one per record of a request), decoded from the log;
    their inputs only `with_inputs` (slices need them; decoding them costs more than the rest)."""
    rows = log[(log["role"] == "production") & (log["model_version"].astype(str) == str(version))]
    rows = rows[rows["prediction"].notna()]
    answers = _decoded(rows["prediction"])  # one parse of the whole column, not one per row
    answers = [a if isinstance(a, list) else [a] for a in answers]
    sizes = np.fromiter((len(a) for a in answers), dtype=np.int64, count=len(answers))
    values: list[Any] = [v for a in answers for v in a]
    ids = list(np.repeat(rows["request_id"].to_numpy(dtype=object), sizes))
    inputs = pd.DataFrame(index=range(len(values)))
    if with_inputs:
        decoded = _decoded(rows["inputs"].fillna("[]"))
        records = [r for got, n in zip(decoded, sizes, strict=True) for r in (got if len(got) == n else [{}] * n)]
        inputs = pd.DataFrame.from_records(records, index=range(len(records)))
    if reference.predict_fn == "predict_proba" and reference.classes is not None:
        array = np.asarray(values, dtype=float).reshape(len(values), len(reference.classes))
    elif reference.classes is None:
        array = np.asarray(values, dtype=float)
    else:
        array = np.asarray([json.dumps(v) for v in values], dtype=object)  # class_key of a decoded value
    return Outputs(array, ids, inputs)


def _decoded(texts: pd.Series) -> list[Any]:
    if texts.empty:
        return []
    return orjson.loads(b"[" + ",".join(texts.tolist()).encode() + b"]")


def predicted_keys(outputs: Outputs, reference: PredictionReference) -> np.ndarray:
    """Each row's predicted class as JSON text (argmax of probabilities, as the monitor reads them)."""
    if reference.predict_fn == "predict_proba" and reference.classes is not None:
        classes = np.asarray([class_key(c) for c in reference.classes], dtype=object)
        return classes[outputs.values.argmax(axis=1)] if len(outputs.values) else np.asarray([], dtype=object)
    return outputs.values


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two count vectors over the same bins."""
    e = np.clip(expected / max(expected.sum(), 1), 1e-4, None)
    a = np.clip(actual / max(actual.sum(), 1), 1e-4, None)
    return float(np.sum((a - e) * np.log(a / e)))


def homogeneity_p(expected: np.ndarray, actual: np.ndarray) -> float:
    """p-value of the chi-square test that both count vectors come from one distribution."""
    table = np.vstack([expected, actual])
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or actual.sum() == 0 or expected.sum() == 0:
        return 1.0
    return float(stats.chi2_contingency(table, correction=False)[1])


@dataclass
class PredictionDrift:
    psi: dict[str, float] = field(default_factory=dict)  # distribution -> PSI
    p: dict[str, float] = field(default_factory=dict)  # distribution -> chi-square p-value
    shares: dict[str, tuple[float, float]] = field(default_factory=dict)  # class -> (holdout, window)
    drifted: list[str] = field(default_factory=list)

    @property
    def max_psi(self) -> float:
        return max(self.psi.values(), default=float("nan"))


def prediction_drift(
    outputs: Outputs, reference: PredictionReference, *, max_psi: float, alpha: float
) -> PredictionDrift:
    """The window's class shares and score distributions against the holdout's (see the module)."""
    drift = PredictionDrift()
    n = len(outputs.values)
    if n == 0:
        return drift
    tested: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if reference.class_counts:
        keys = list(reference.class_counts)
        predicted = predicted_keys(outputs, reference)
        window = np.asarray([int(np.sum(predicted == k)) for k in keys])
        holdout = np.asarray([reference.class_counts[k] for k in keys])
        tested["class shares"] = (holdout, window)
        drift.shares = {k: (h / max(holdout.sum(), 1), w / n) for k, h, w in zip(keys, holdout, window, strict=True)}
    if reference.scores:
        values = outputs.values if reference.predict_fn == "predict_proba" or reference.classes is None else None
        if values is not None:
            for name, column in score_columns(values, reference.classes, reference.task).items():
                bins = reference.scores[name]
                tested[name] = (np.asarray(bins["counts"]), bin_counts(column, bins["edges"]))
    level = alpha / max(len(tested), 1)
    for name, (holdout, window) in tested.items():
        drift.psi[name], drift.p[name] = psi(holdout, window), homogeneity_p(holdout, window)
        if drift.psi[name] > max_psi and drift.p[name] < level:
            drift.drifted.append(name)
    return drift


def expected_auc(scores: np.ndarray, calibrated: np.ndarray) -> float:
    """CBPE's ROC AUC: the expected confusion matrix at every threshold of `scores`, each row counted
    as `calibrated` of a positive and 1 - `calibrated` of a negative."""
    order = np.argsort(-scores, kind="stable")
    s, p = scores[order], calibrated[order]
    tp, fp = np.cumsum(p), np.cumsum(1 - p)
    if tp[-1] <= 0 or fp[-1] <= 0:
        return float("nan")
    last = np.r_[s[1:] != s[:-1], True]  # tied scores pass a threshold together
    tpr = np.r_[0.0, tp[last] / tp[-1]]
    fpr = np.r_[0.0, fp[last] / fp[-1]]
    return float(np.sum((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2))


def auc_band(auc: float, positives: float, negatives: float) -> tuple[float, float]:
    """Hanley-McNeil 95% interval of an AUC over that many positives and negatives."""
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = (auc * (1 - auc) + (positives - 1) * (q1 - auc**2) + (negatives - 1) * (q2 - auc**2)) / max(
        positives * negatives, 1.0
    )
    half = Z95 * float(np.sqrt(max(var, 0.0)))
    return max(auc - half, 0.0), min(auc + half, 1.0)


def estimate(outputs: Outputs, reference: PredictionReference | None) -> Estimate:
    """Expected accuracy (and ROC AUC, binary) of the window's rows, with bands; or why not."""
    if reference is None:
        return Estimate(not_estimable="no prediction reference: the version was registered before shipway kept one")
    if reference.task == "regression":
        return Estimate(
            not_estimable="regression: an error cannot be estimated from the outputs alone, only measured on labels"
        )
    if not reference.has_probabilities:
        return Estimate(
            not_estimable="served with predict: the log keeps labels, not probabilities "
            "(serve with training.predict_fn: predict_proba to estimate)"
        )
    n = len(outputs.values)
    result = Estimate(rows=n, holdout=dict(reference.holdout))
    if n < MIN_ESTIMATE_ROWS:
        result.not_estimable = f"{n} served rows, fewer than {MIN_ESTIMATE_ROWS}"
        return result
    return result_of(outputs.values, reference, result)


def result_of(raw: np.ndarray, reference: PredictionReference, result: Estimate) -> Estimate:
    calibrated = reference.calibrated(raw)
    confidence = calibrated[np.arange(len(raw)), raw.argmax(axis=1)]  # chance the answered class is right
    n = len(raw)
    accuracy = float(confidence.mean())
    half = Z95 * float(np.sqrt(np.sum(confidence * (1 - confidence)))) / n
    result.figures["accuracy"] = accuracy
    result.bands["accuracy"] = (max(accuracy - half, 0.0), min(accuracy + half, 1.0))
    if raw.shape[1] == 2:
        auc = expected_auc(raw[:, 1], calibrated[:, 1])
        if auc == auc:
            positives = float(calibrated[:, 1].sum())
            result.figures["roc_auc"] = auc
            result.bands["roc_auc"] = auc_band(auc, positives, n - positives)
    return result


def estimate_breaches(result: Estimate, max_drop: float | None, min_rows: int) -> list[str]:
    """`monitoring.max_estimated_drop`: an estimated figure below the holdout's by more than that."""
    if max_drop is None or result.rows < min_rows:
        return []
    return [
        f"estimated {metric} {value:.4g} < holdout {result.holdout[metric]:.4g} - {max_drop:g}"
        for metric, value in result.figures.items()
        if metric in result.holdout and value < result.holdout[metric] - max_drop
    ]


def realised(outputs: Outputs, reference: PredictionReference, labels: dict[str, Any]) -> dict[str, float]:
    """Accuracy (and ROC AUC, binary with probabilities) on the rows whose label came back."""
    known = [i for i, r in enumerate(outputs.request_ids) if r in labels]
    if not known:
        return {}
    truth = np.asarray([class_key(_one(labels[outputs.request_ids[i]])) for i in known], dtype=object)
    predicted = predicted_keys(outputs, reference)[known]
    figures = {"accuracy": float(np.mean(predicted == truth)), "labeled": float(len(known))}
    classes = reference.classes or []
    if reference.predict_fn == "predict_proba" and len(classes) == 2:
        positive = truth == class_key(classes[1])
        if 0 < positive.sum() < len(positive):
            from sklearn.metrics import roc_auc_score

            figures["roc_auc"] = float(roc_auc_score(positive, outputs.values[known, 1]))
    return figures


def by_slice(
    outputs: Outputs,
    reference: PredictionReference,
    labels: dict[str, Any],
    slices: Sequence[str],
    bins: int,
) -> list[dict[str, Any]]:
    """Per slice of `quality.slices` (numeric columns with more than `bins` values cut into quantile
    bins of the window): rows, estimated figures where estimable, realised ones where labels came back."""
    table: list[dict[str, Any]] = []
    frame = outputs.inputs
    for column in slices:
        if column not in frame.columns:
            continue
        values = frame[column]
        numeric = pd.api.types.is_numeric_dtype(values)
        groups = (
            pd.qcut(values.astype(float), bins, duplicates="drop").astype(str)
            if numeric and values.nunique() > bins
            else values.astype(str)
        )
        for value in sorted(groups.unique()):
            rows = np.flatnonzero((groups == value).to_numpy())
            part = Outputs(outputs.values[rows], [outputs.request_ids[i] for i in rows], frame.iloc[rows])
            entry: dict[str, Any] = {"column": column, "value": value, "rows": len(rows)}
            est = estimate(part, reference)
            entry |= {f"estimated_{k}": v for k, v in est.figures.items()}
            entry |= {f"realised_{k}": v for k, v in realised(part, reference, labels).items()}
            table.append(entry)
    return table


def metric_name(key: str) -> str:
    """A class's JSON text as an MLflow metric name takes it (letters, digits, _ - . / and spaces)."""
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", key.strip('"'))


def _one(label: Any) -> Any:
    return label[0] if isinstance(label, list) and len(label) == 1 else label


@dataclass
class Assessment:
    """A window's outputs judged against the reference: figures to log, breaches, the slice table."""

    metrics: dict[str, float] = field(default_factory=dict)
    breaches: list[str] = field(default_factory=list)
    not_estimable: str = ""
    slices: list[dict[str, Any]] = field(default_factory=list)
    drifted: list[str] = field(default_factory=list)
    # metric -> estimated, low, high (its band), holdout (the reference), drop (holdout - estimated), breach
    estimate: dict[str, dict[str, Any]] = field(default_factory=dict)

    def version_tags(self, end: datetime) -> dict[str, str]:
        """The window's figures as the Production version's tags (Tag.MONITORING_*), which the gateway
        exports to Prometheus: the last window's estimate, prediction PSI ("" without one) and end."""
        figures = {
            metric: {k: round(float(e[k]), 4) for k in ("estimated", "holdout", "drop")}
            for metric, e in self.estimate.items()
            if "holdout" in e
        }
        psi = self.metrics.get("prediction_psi")
        return {
            Tag.MONITORING_ESTIMATE: json.dumps(figures, separators=(",", ":")),
            Tag.MONITORING_PREDICTION_PSI: f"{psi:.4g}" if psi is not None and psi == psi else "",
            Tag.MONITORING_WINDOW_END: end.isoformat(timespec="seconds"),
        }


def assess(
    log: pd.DataFrame,
    feedback: pd.DataFrame,
    version: str,
    reference: PredictionReference | None,
    settings: Any,
) -> Assessment:
    """Prediction drift, the estimated performance with its band and breach, and realised figures
    beside them (overall and per slice) of the rows `version` answered as Production in `log`, whose
    probabilities are as logged (not yet turned into classes)."""
    monitoring = settings.monitoring
    if reference is None:
        return Assessment(not_estimable=estimate(Outputs(np.empty(0), [], pd.DataFrame()), None).not_estimable)
    outputs = served_outputs(log, version, reference, with_inputs=bool(settings.quality.slices))
    result = Assessment()
    n = len(outputs.values)
    if n:
        drift = prediction_drift(outputs, reference, max_psi=monitoring.max_prediction_psi, alpha=settings.gate.alpha)
        result.metrics["prediction_psi"] = drift.max_psi
        result.metrics |= {f"share_{metric_name(k)}": w for k, (_, w) in drift.shares.items()}
        result.drifted = drift.drifted
        if n >= monitoring.min_requests and drift.drifted:
            result.breaches.append(
                "prediction drift: "
                + ", ".join(f"{d} (PSI {drift.psi[d]:.3g}, p {drift.p[d]:.2g})" for d in drift.drifted)
            )
    est = estimate(outputs, reference)
    result.not_estimable = est.not_estimable
    breaches = estimate_breaches(est, monitoring.max_estimated_drop, monitoring.min_requests)
    for metric, value in est.figures.items():
        low, high = est.bands[metric]
        key = f"estimated_{metric}"
        result.metrics |= {key: value, f"{key}_low": low, f"{key}_high": high}
        result.estimate[metric] = {"estimated": value, "low": low, "high": high}
        if metric in est.holdout:
            result.metrics[f"holdout_{metric}"] = est.holdout[metric]
            result.estimate[metric] |= {
                "holdout": est.holdout[metric],
                "drop": est.holdout[metric] - value,
                "breach": any(b.startswith(f"estimated {metric} ") for b in breaches),
            }
            if monitoring.max_estimated_drop is not None:
                result.metrics[f"estimated_{metric}_floor"] = est.holdout[metric] - monitoring.max_estimated_drop
    result.breaches += breaches
    labels = dict(zip(feedback["request_id"], feedback["label"], strict=True)) if len(feedback) else {}
    result.metrics |= {f"realised_{k}": v for k, v in realised(outputs, reference, labels).items() if k != "labeled"}
    if n and settings.quality.slices:
        result.slices = by_slice(outputs, reference, labels, settings.quality.slices, settings.quality.slice_bins)
    return result
