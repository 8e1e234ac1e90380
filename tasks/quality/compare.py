"""The quality gate: no version becomes Shadow unless it is any good.

Before a registered version may take an alias it must
(a) beat its own baseline (the one-rule fallback model) on the holdout and meet the floors and
    ceilings of `quality.min` / `quality.max`;
(b) not be worse than Production on the holdout rows Production did not train on (a retrain on a
    fresh sample of the same source shares many rows with Production's training rows, which
    Production scores better than it will score new ones): worse means the paired bootstrap of
    the difference (candidate minus Production, the same resampled rows for both) excludes zero
    at the test's level AND the difference itself is larger than `quality.min_effect`. With fewer
    than `quality.min_unseen_rows` such rows, the candidate's interval on the whole holdout is
    compared with Production's own recorded holdout figure instead (tasks/training/seen_rows.py says how
    rows are matched);
(c) not be worse than Production in the same sense in any slice of `quality.slices` with at least
    `quality.min_slice_rows` unseen rows; smaller slices are reported, not judged;
(d) a classifier served with predict: answer users at least as well as its baseline, judged on the
    labels served (balanced accuracy, scope "served decisions"), whatever `quality.metric` reads;
    a served positive rate far from the training split's is a warning tag, not a failure.
The level of each test is `quality.alpha` split (Bonferroni) over the overall test and every
judged slice, so that a candidate as good as Production fails with chance at most `alpha`.

The evaluation table (overall, each floor, each slice: candidate, Production, baseline, the
difference and its interval, the verdict) goes to the version's run (`mlflow.log_table`: the
MLflow UI shows it as a table) and to a Prefect table artifact; the verdict is the version tag
`quality_gate` (passed, failed, overridden).
"""

from __future__ import annotations

import getpass
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from prefect.artifacts import create_table_artifact
from sklearn.base import is_regressor
from sklearn.metrics import accuracy_score

from configs.settings import DEFAULT_METRIC, QualitySettings, Settings
from core.errors import ConfigError, GateError, RegistryError, ShipwayError, SnapshotError
from core.integrity import MODEL_SKOPS
from core.vocabulary import Alias, Tag, Task
from tasks.data.snapshot import read_snapshot
from tasks.data.storage import open_store
from tasks.promotion.analysis import FAR, positive_rate_far
from tasks.quality.bootstrap import resample_means
from tasks.release import registry
from tasks.retries import run_logger, shipway_task
from tasks.training import seen_rows
from tasks.training.quality_metrics import METRICS, Answers, Metric, Truth, answers, encode, metrics_of
from tasks.training.seen_rows import Seen

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

    from tasks.release.registration import Registered  # registering pulls in the ONNX compiler: not needed to judge

TABLE_ARTIFACT = "quality/evaluation.json"
MAX_CATEGORIES = 20  # a categorical slice column keeps its most frequent values; the rest are "(other)"
PASS, FAIL, NOT_JUDGED = "pass", "fail", "not judged"
SERVED = "served decisions"
OVERALL, UNSEEN = "overall", "unseen by Production"
PAIRED, RECORDED, NONE = "paired", "recorded", "none"  # how Production is compared (tag quality_comparison)


@dataclass(frozen=True)
class Incumbent:
    """The Production version a candidate is compared with."""

    model: Any  # None when it could not be loaded
    version: str
    task: Task
    error: str = ""  # why it could not be loaded
    seen: Seen | None = None  # the rows it trained on; None: none of the candidate's holdout rows
    recorded: Mapping[str, float] = field(default_factory=dict)  # its holdout metrics at registration


@dataclass(frozen=True)
class Row:
    """One line of the evaluation table."""

    scope: str  # "overall", a slice ("region=north", "age in (31, 45]"), or "floor" / "ceiling"
    rows: int
    metric: str
    candidate: float
    production: float | None
    baseline: float | None
    difference: float | None  # candidate minus Production
    low: float | None  # the difference's bootstrap interval
    high: float | None
    verdict: str  # pass, fail, not judged
    reason: str
    left_out: int = 0  # rows of the scope left out of the comparison: Production trained on them


@dataclass
class QualityReport:
    metric: str
    task: Task
    production: str | None  # the version compared with, or None
    note: str  # why Production was not compared with, or which rows were left out, when there is one
    alpha_each: float
    rows: list[Row] = field(default_factory=list)
    comparison: str = NONE  # paired (on rows Production did not train on), recorded (its own figure), none
    left_out: int = 0  # holdout rows Production trained on

    @property
    def against_production(self) -> Row | None:
        """The row that judged the whole candidate against Production (overall or its unseen rows)."""
        return next((r for r in self.rows if r.scope in (OVERALL, UNSEEN) and r.low is not None), None)

    @property
    def failures(self) -> list[Row]:
        return [r for r in self.rows if r.verdict == FAIL]

    @property
    def passed(self) -> bool:
        return not self.failures

    def reason(self) -> str:
        """One line naming each failed metric and where it failed (first three, then a count)."""
        if self.passed:
            overall = self.rows[0]
            said = f"{self.metric} {overall.candidate:.4g} beats the baseline's {overall.baseline:.4g}"
            against = self.against_production
            if against is not None:
                return f"{said}; against Production (version {self.production}): {against.reason}"
            return f"{said}; {self.note}" if self.note else said
        lines = [f"{r.scope}: {r.reason}" for r in self.failures]
        more = f"; and {len(lines) - 3} more" if len(lines) > 3 else ""
        return "; ".join(lines[:3]) + more

    def table(self) -> list[dict[str, Any]]:
        """The rows as plain records (no NaN: JSON, MLflow and Prefect all read them)."""
        clean = lambda v: None if isinstance(v, float) and not np.isfinite(v) else v
        return [{k: clean(v) for k, v in asdict(r).items()} for r in self.rows]


def version_task(tags: Mapping[str, str], model: Any = None) -> Task:
    """The task a version predicts: its `task` tag; a version from before the tag is told apart
    by its model (a regressor, or more than two classes) and is otherwise a binary classifier
    (only classifiers were trained then; class-based comparisons need no more)."""
    value = tags.get(Tag.TASK)
    if value and value != Task.AUTO:
        try:
            return Task(value)
        except ValueError:
            raise RegistryError(f"version tag task={value!r} is not binary, multiclass or regression") from None
    if model is not None and is_regressor(model):
        return Task.REGRESSION
    if model is not None and len(getattr(model, "classes_", ())) > 2:
        return Task.MULTICLASS
    return Task.BINARY


def primary_metric(settings: QualitySettings, task: Task, candidate: Any) -> Metric:
    name = settings.metric or DEFAULT_METRIC[task]
    metric = _metric_of(name, task, "quality.metric")
    if metric.needs_proba and not hasattr(candidate, "predict_proba"):
        raise ConfigError(
            f"quality.metric: {name} needs predict_proba, which {type(candidate).__name__} has not; "
            f"choose one of {', '.join(m for m in metrics_of(task) if not METRICS[m].needs_proba)}"
        )
    return metric


def _metric_of(name: str, task: Task, key: str) -> Metric:
    if task not in METRICS[name].tasks:
        known = ", ".join(metrics_of(task))
        raise ConfigError(f"{key}: {name} is not a metric of a {task} model (its metrics: {known})")
    return METRICS[name]


def limits(settings: QualitySettings, task: Task) -> list[tuple[Metric, str, float]]:
    """The floors and ceilings as (metric, 'floor' or 'ceiling', limit), each checked against the task."""
    found = [(_metric_of(n, task, f"quality.min.{n}"), "floor", v) for n, v in settings.min.items()]
    return found + [(_metric_of(n, task, f"quality.max.{n}"), "ceiling", v) for n, v in settings.max.items()]


def slices(X: pd.DataFrame, settings: QualitySettings) -> list[list[tuple[str, np.ndarray]]]:
    """Per slice column, its segments as (name, row positions), together covering every row.

    Numeric columns with more than `slice_bins` values are cut into quantile bins; other columns
    keep their values (the MAX_CATEGORIES most frequent, the rest as one "(other)"); missing
    values are a segment of their own.
    """
    groups = []
    for column in dict.fromkeys(settings.slices):
        if column not in X.columns:
            raise ConfigError(
                f"quality.slices: column '{column}' is not a feature of the model (features: {', '.join(X.columns)})"
            )
        values = X[column]
        numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
        if numeric and values.nunique() > settings.slice_bins:
            bins = pd.qcut(values.astype(np.float64), settings.slice_bins, duplicates="drop")
            labels = [f"{column} in ({i.left:.4g}, {i.right:.4g}]" for i in bins.cat.categories]
            codes = bins.cat.codes.to_numpy()
        else:
            counts = values.value_counts()
            kept = counts.index[:MAX_CATEGORIES]
            codes = pd.Index(kept).get_indexer(values)
            labels = [f"{column}={v}" for v in kept]
            if len(counts) > MAX_CATEGORIES:
                codes = np.where((codes < 0) & values.notna().to_numpy(), len(labels), codes)
                labels.append(f"{column}=(other)")
        codes = np.where(codes < 0, len(labels), codes)  # missing values
        labels.append(f"{column} missing")
        order = np.argsort(codes, kind="stable")
        bounds = np.r_[0, np.cumsum(np.bincount(codes, minlength=len(labels)))]
        groups.append(
            [(label, order[a:b]) for label, a, b in zip(labels, bounds[:-1], bounds[1:], strict=True) if b > a]
        )
    return groups


@dataclass
class _Scope:
    group: int  # scopes of one group share no rows: overall, its unseen rows, or one slice column's segments
    label: str
    rows: np.ndarray
    points: list[float]  # the metric of the candidate, Production, the baseline
    left_out: int = 0  # rows of the scope Production trained on, not in `rows`
    columns: tuple[np.ndarray, ...] = ()  # shared, candidate's and Production's columns, while judged


def judge(
    candidate: Any,
    baseline: Any,
    production: Incumbent | None,
    X: pd.DataFrame,
    y: pd.Series,
    task: Task,
    settings: QualitySettings,
    X_all: pd.DataFrame | None = None,
) -> QualityReport:
    """The quality gate's verdict on `candidate`, with the evaluation table (plain: no I/O).
    `X_all`: the same holdout rows with every column of the snapshot, so that Production is scored
    (and its training rows matched) on the columns it reads when the candidate reads fewer."""
    metric = primary_metric(settings, task, candidate)
    bounds = limits(settings, task)
    read = [metric, *(m for m, _, _ in bounds)]
    models = [candidate, baseline] + ([production.model] if production and production.model is not None else [])
    truth = encode(y, task, models)
    mine, base = answers(candidate, X, truth, task, read), answers(baseline, X, truth, task, read)
    wide = X if X_all is None else X_all
    theirs, note = _production_answers(production, wide, truth, task, read)
    how = comparison(production, wide, y, metric, settings) if theirs is not None else Comparison(NONE, _every(X))
    theirs = theirs if how.kind != NONE else None
    compared = production.version if theirs is not None and production else None
    report = QualityReport(metric.name, task, compared, note or how.note, settings.alpha, [], how.kind, how.left_out)
    groups = _groups(X, how, settings)

    scopes = []
    for g, group in enumerate(groups):
        for label, rows, left_out in group:
            t = truth.take(rows)
            shared = metric.shared(t)
            shown = None if label == OVERALL and how.left_out else theirs  # never a figure of seen rows
            columns = [metric.model(t, a.take(rows)) if a is not None else None for a in (mine, shown, base)]
            points = [metric.of_columns(shared, c) if c is not None else float("nan") for c in columns]
            if label == OVERALL and how.kind == RECORDED:
                points[1] = how.recorded
            scope = _Scope(g, label, rows, points, left_out)
            wanted = how.kind == PAIRED if label == UNSEEN else label == OVERALL or len(rows) >= settings.min_slice_rows
            judge = shown is not None and wanted and bool(np.isfinite(points[:2]).all())
            if judge:  # only judged scopes are resampled: keep their columns for the bootstrap
                ours, others = columns[0], columns[1]
                assert ours is not None and others is not None  # both answered: shown is not None
                scope.columns = (shared, ours, others)
            scopes.append(scope)
    judged = [s for s in scopes if len(s.columns)]
    report.alpha_each = settings.alpha / max(1, len(judged) + (how.kind == RECORDED))
    intervals = _paired_bootstrap(metric, judged, len(groups), settings, report.alpha_each)
    if how.kind == RECORDED:
        intervals[OVERALL] = _recorded_interval(metric, truth, mine, how.recorded, settings, report.alpha_each)

    for scope in scopes:
        cand, prod, base_value = scope.points
        verdict, reason = _judge_scope(metric, scope, intervals.get(scope.label), settings, report)
        low, high, _ = intervals.get(scope.label, (None, None, None))
        given = bool(np.isfinite(prod))
        report.rows.append(
            Row(
                scope.label,
                len(scope.rows),
                metric.name,
                cand,
                prod if given else None,
                base_value,
                cand - prod if given else None,
                low,
                high,
                verdict,
                reason,
                scope.left_out,
            )
        )
    # the floors and ceilings follow the overall rows; Production's figures on seen rows are not shown
    at = sum(r.scope in (OVERALL, UNSEEN) for r in report.rows)
    leaked = None if how.left_out else theirs
    report.rows[at:at] = [_limit_row(m, kind, limit, truth, mine, leaked, base) for m, kind, limit in bounds]
    return report


def served_decisions(
    candidate: Any,
    baseline: Any,
    X: pd.DataFrame,
    y: pd.Series,
    training_rate: float | None,
    settings: QualitySettings | None = None,
) -> tuple[list[Row], str]:
    """The labels a classifier served with predict answers, judged as users receive them: its
    balanced accuracy on the holdout must not be worse than its baseline's (a probability metric can
    pass while the labels at the served threshold are no better than the one-rule fallback), worse
    in the gate's sense: the paired bootstrap of the difference excludes zero at `alpha` and the
    loss is larger than `min_effect` (a strong one-rule baseline, Titanic's sex, ties a good model
    on a few hundred rows). Accuracy is reported. Binary: the served positive rate against the
    training split's, and the warning when it is far (tasks.promotion.analysis.positive_rate_far)."""
    settings = settings or QualitySettings()
    metric, task = METRICS["balanced_accuracy"], Task.BINARY if len(candidate.classes_) == 2 else Task.MULTICLASS
    truth = encode(y, task, [candidate, baseline])
    shared = metric.shared(truth)
    mine_cols, base_cols = (metric.model(truth, answers(m, X, truth, task, [metric])) for m in (candidate, baseline))
    balanced, balanced_base = metric.of_columns(shared, mine_cols), metric.of_columns(shared, base_cols)
    [[means]] = resample_means([[np.hstack([shared, mine_cols, base_cols])]], settings.resamples, settings.seed)
    ks, km = shared.shape[1], mine_cols.shape[1]
    difference = metric.resampled(means[:, :ks], means[:, ks : ks + km]) - metric.resampled(
        means[:, :ks], means[:, ks + km :]
    )
    low, high = (float(q) for q in np.nanquantile(difference, [settings.alpha, 1 - settings.alpha]))
    worse = high < 0 and balanced_base - balanced > settings.min_effect
    interval = (
        f"difference {balanced - balanced_base:+.4g}, {1 - 2 * settings.alpha:.4g} interval [{low:+.4g}, {high:+.4g}]"
    )
    relation = "worse than" if worse else "not worse than"
    mine, base = candidate.predict(X), baseline.predict(X)
    n = len(y)
    rows = [
        Row(SERVED, n, "balanced_accuracy", balanced, None, balanced_base, balanced - balanced_base, low, high,
            FAIL if worse else PASS,
            f"balanced_accuracy {balanced:.4g} of the served labels {relation} the baseline's {balanced_base:.4g} "
            f"({interval})"),
        Row(SERVED, n, "accuracy", accuracy_score(y, mine), None, accuracy_score(y, base), None, None, None,
            NOT_JUDGED, "reported, not judged: it rewards answering the majority class"),
    ]  # fmt: skip
    if training_rate is None or len(candidate.classes_) != 2:
        return rows, ""
    positive = candidate.classes_[1]
    rate, rate_base = float(np.mean(mine == positive)), float(np.mean(base == positive))
    far = positive_rate_far(rate, training_rate)
    said = f"served positive rate {rate:.1%} ({y.name} = {positive}) vs training rate {training_rate:.1%}"
    warning = f"{said}: far (off by more than {FAR})" if far else ""
    rows.append(
        Row(SERVED, n, "positive_rate", rate, None, rate_base, None, None, None, NOT_JUDGED,
            f"warning: {warning}" if far else f"{said}: close"),
    )  # fmt: skip
    return rows, warning


@dataclass(frozen=True)
class Comparison:
    """How the candidate is compared with Production: `kind` PAIRED on the `unseen` rows (a mask of
    the holdout), RECORDED against Production's own `recorded` holdout figure, or NONE."""

    kind: str
    unseen: np.ndarray
    recorded: float = float("nan")
    note: str = ""

    @property
    def left_out(self) -> int:
        return int(len(self.unseen) - np.count_nonzero(self.unseen))


def comparison(
    production: Incumbent | None, X: pd.DataFrame, y: pd.Series, metric: Metric, settings: QualitySettings
) -> Comparison:
    """The fair comparison with Production: on the holdout rows it did not train on; when fewer than
    `quality.min_unseen_rows` remain, against the holdout figure recorded at its registration; with
    neither, none (a comparison on rows it learned would fail every flexible model)."""
    if production is None or production.seen is None:
        return Comparison(PAIRED, _every(X))
    unseen, why = production.seen.unseen(X.assign(**{str(y.name): y.to_numpy()}))
    n = int(unseen.sum())
    if n == len(X) or n >= settings.min_unseen_rows:
        left = f"left out {len(X) - n} holdout rows that Production trained on ({production.seen.source})"
        return Comparison(PAIRED, unseen, note=left if n < len(X) else "")
    few = why or (
        f"only {n} of {len(X)} holdout rows are unseen by Production "
        f"(< quality.min_unseen_rows {settings.min_unseen_rows}; {production.seen.source})"
    )
    recorded = production.recorded.get(metric.name)
    if recorded is None or not np.isfinite(recorded):
        note = f"{few}; Production recorded no holdout {metric.name}: not compared"
        return Comparison(NONE, _every(X), note=note)
    return Comparison(RECORDED, unseen, recorded, f"{few}: compared with Production's recorded holdout {metric.name}")


def _every(X: pd.DataFrame) -> np.ndarray:
    return np.ones(len(X), dtype=bool)


def _groups(X: pd.DataFrame, how: Comparison, settings: QualitySettings) -> list[list[tuple[str, np.ndarray, int]]]:
    """The scopes as (label, rows, rows left out), grouped as the bootstrap takes them: the whole
    holdout, the rows unseen by Production when some were seen, each slice column's segments (of
    unseen rows: a slice is only ever compared on those)."""
    unseen = how.unseen
    groups = [[(OVERALL, np.arange(len(X)), 0)]]
    if how.left_out and unseen.any():
        groups.append([(UNSEEN, np.flatnonzero(unseen), how.left_out)])
    for group in slices(X, settings):
        kept = [(label, rows[unseen[rows]], int((~unseen[rows]).sum())) for label, rows in group]
        groups.append([(label, rows, left_out) for label, rows, left_out in kept if len(rows)])
    return groups


def _production_answers(
    production: Incumbent | None, X: pd.DataFrame, truth: Truth, task: Task, read: list[Metric]
) -> tuple[Answers | None, str]:
    if production is None:
        return None, "no Production version yet: judged against the baseline and the floors only"
    if production.model is None:
        return None, f"Production (version {production.version}) cannot be loaded ({production.error}): not compared"
    if production.task != task:
        return None, f"Production (version {production.version}) predicts a {production.task} target: not compared"
    if any(m.needs_proba for m in read) and not hasattr(production.model, "predict_proba"):
        return None, f"Production (version {production.version}) has no predict_proba: not compared"
    reads = getattr(production.model, "feature_names_in_", None)  # the columns it was fitted on
    try:
        return answers(production.model, X if reads is None else X[list(reads)], truth, task, read), ""
    except Exception as exc:  # e.g. a feature it needs is gone: what it cannot score it cannot be compared on
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        return None, f"Production (version {production.version}) cannot score this holdout ({reason}): not compared"


def _paired_bootstrap(
    metric: Metric, judged: list[_Scope], n_groups: int, settings: QualitySettings, alpha: float
) -> dict[str, tuple[float, float, np.ndarray]]:
    """Per judged scope: the (alpha, 1 - alpha) quantiles of candidate minus Production over
    resamples that weight both models' rows alike, and the resampled differences."""
    groups: list[list[np.ndarray]] = [[] for _ in range(n_groups)]
    widths = []
    for scope in judged:
        groups[scope.group].append(np.hstack(scope.columns))
        widths.append((scope.columns[0].shape[1], scope.columns[1].shape[1]))
        scope.columns = ()  # memory: the stacked copy is all the bootstrap needs
    means = resample_means(groups, settings.resamples, settings.seed)
    out, taken = {}, [0] * n_groups
    for scope, (ks, km) in zip(judged, widths, strict=True):
        m = means[scope.group][taken[scope.group]]
        taken[scope.group] += 1
        shared, a, b = m[:, :ks], m[:, ks : ks + km], m[:, ks + km :]
        difference = metric.resampled(shared, a) - metric.resampled(shared, b)
        low, high = np.nanquantile(difference, [alpha, 1 - alpha])
        out[scope.label] = (float(low), float(high), difference)
    return out


def _recorded_interval(
    metric: Metric, truth: Truth, mine: Answers, recorded: float, settings: QualitySettings, alpha: float
) -> tuple[float, float, np.ndarray]:
    """The (alpha, 1 - alpha) quantiles of the candidate's metric minus Production's recorded figure.
    Nothing can be paired: the figure was measured on Production's own holdout, of about this size
    for a retrain of the same source, so its noise counts as much as the candidate's: the spread of
    the candidate's resampled metric, widened by sqrt(2) (the difference of two independent figures)."""
    shared, own = metric.shared(truth), metric.model(truth, mine)
    [[means]] = resample_means([[np.hstack([shared, own])]], settings.resamples, settings.seed)
    k = shared.shape[1]
    point = metric.of_columns(shared, own)
    difference = point - recorded + np.sqrt(2) * (metric.resampled(means[:, :k], means[:, k:]) - point)
    low, high = np.nanquantile(difference, [alpha, 1 - alpha])
    return float(low), float(high), difference


def _judge_scope(
    metric: Metric,
    scope: _Scope,
    interval: tuple[float, float, np.ndarray] | None,
    settings: QualitySettings,
    report: QualityReport,
) -> tuple[str, str]:
    """A scope's verdict and why: the overall scope must beat the baseline; every judged scope
    must not be worse than Production."""
    cand, _, base = scope.points
    label = scope.label
    if not np.isfinite(cand):
        return NOT_JUDGED, f"{metric.name} is undefined on these rows (e.g. one class only)"
    verdict, why = _against_production(metric, scope, interval, settings, report)
    beaten = cand < base if metric.error else cand > base
    if label == OVERALL and not beaten:
        lost = f"{metric.name} {cand:.4g} does not beat the baseline's {base:.4g}"
        return FAIL, f"{lost}; {why}" if verdict == FAIL else lost
    if label == OVERALL and verdict == NOT_JUDGED:
        return PASS, why
    return verdict, why


def _against_production(
    metric: Metric,
    scope: _Scope,
    interval: tuple[float, float, np.ndarray] | None,
    settings: QualitySettings,
    report: QualityReport,
) -> tuple[str, str]:
    cand, prod, _ = scope.points
    n = len(scope.rows)
    if interval is None:
        if report.production is None:
            return NOT_JUDGED, report.note
        if scope.label == OVERALL and report.left_out:
            unseen = n - report.left_out
            return NOT_JUDGED, f"compared with Production on the {unseen} rows it did not train on ('{UNSEEN}')"
        if scope.label == UNSEEN:
            return NOT_JUDGED, f"{n} rows < quality.min_unseen_rows {settings.min_unseen_rows}: reported, not judged"
        if n < settings.min_slice_rows:
            return NOT_JUDGED, f"{n} rows < quality.min_slice_rows {settings.min_slice_rows}: reported, not judged"
        return NOT_JUDGED, f"{metric.name} of Production is undefined on these rows"
    low, high, _ = interval
    difference = cand - prod
    effect = settings.min_effect * abs(prod) if metric.error else settings.min_effect
    level = f"{1 - 2 * report.alpha_each:.4g}"
    spread = f"difference {difference:+.4g}, {level} interval [{low:+.4g}, {high:+.4g}]"
    if scope.label == OVERALL and report.comparison == RECORDED:
        figures = (
            f"{cand:.4g} on all {n} holdout rows vs its recorded {prod:.4g} ({spread}; "
            f"only {n - report.left_out} rows unseen by Production)"
        )
        if low > effect if metric.error else high < -effect:  # the whole interval is worse by more than min_effect
            return FAIL, f"{metric.name} worse than Production (version {report.production}): {figures}"
        return PASS, f"{figures}: not wholly worse by more than the minimum effect {effect:.4g}"
    loss = difference if metric.error else -difference
    significant = low > 0 if metric.error else high < 0
    left = f", {scope.left_out} left out as seen by Production" if scope.left_out else ""
    figures = f"{cand:.4g} vs {prod:.4g} on {n} rows{left} ({spread})"
    if significant and loss > effect:
        return FAIL, f"{metric.name} worse than Production (version {report.production}): {figures}"
    if significant:
        return PASS, f"{figures}: worse, but within the minimum effect {effect:.4g}"
    better = high < 0 if metric.error else low > 0
    return PASS, f"{figures}: {'better' if better else 'no significant loss'}"


def _limit_row(
    metric: Metric, kind: str, limit: float, truth: Truth, mine: Answers, theirs: Answers | None, base: Answers
) -> Row:
    value = metric.point(truth, mine)
    prod = metric.point(truth, theirs) if theirs is not None else None
    ok = value <= limit if kind == "ceiling" else value >= limit
    key = f"quality.{'max' if kind == 'ceiling' else 'min'}.{metric.name}"
    relation = ("<=" if ok else "above") if kind == "ceiling" else (">=" if ok else "below")
    return Row(
        kind,  # the scope column says "floor" or "ceiling": the whole holdout, against a fixed limit
        len(truth.values),
        metric.name,
        value,
        prod,
        metric.point(truth, base),
        value - prod if prod is not None else None,
        None,
        None,
        PASS if ok and np.isfinite(value) else FAIL,
        f"{metric.name} {value:.4g} {relation} {limit:g} ({key})",
    )


# --- in the training flow ---------------------------------------------------------------------------


def incumbent(settings: Settings, name: str, columns: Sequence[str] = ()) -> Incumbent | None:
    """The Production version of `name` with its model, the rows it trained on (matched over
    `columns`, the candidate's features and target, when only its snapshot says) and its recorded
    holdout metrics; None when there is no Production yet."""
    version = registry.alias_version(settings, name, Alias.PRODUCTION)
    if version is None:
        return None
    from serving import load_sklearn  # its file checked against the sha256 recorded at registration

    found = registry.get_version(settings, name, version)
    tags = found.tags
    try:
        model = load_sklearn(f"models:/{name}/{version}", dict(tags), MODEL_SKOPS, name, version)
    except Exception as exc:  # a Production that cannot load (or whose file was changed) must not stop a fixed model
        return Incumbent(None, version, version_task(tags), f"{type(exc).__name__}: {exc}".splitlines()[0][:200])
    recorded = {k.removeprefix("metric_"): _number(v) for k, v in tags.items() if k.startswith("metric_")}
    seen = seen_by(settings, found, columns)
    return Incumbent(model, version, version_task(tags, model), seen=seen, recorded=recorded)


def seen_by(settings: Settings, version: ModelVersion, columns: Sequence[str]) -> Seen:
    """The rows `version` trained on: the keys recorded at its registration; for a version from
    before them, every row of its snapshot (its holdout too: which rows that was is not recorded);
    when neither can be read, unknown (every row counts as seen)."""
    client, _ = registry.connect(settings, create=False)
    try:
        if version.run_id is None:
            raise FileNotFoundError(seen_rows.ARTIFACT)
        with tempfile.TemporaryDirectory(prefix="shipway-") as tmp:
            data = Path(client.download_artifacts(version.run_id, seen_rows.ARTIFACT, tmp)).read_bytes()
        return seen_rows.loads(data, f"the training rows recorded with version {version.version}")
    except (MlflowException, OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        why = "" if isinstance(exc, (MlflowException, FileNotFoundError)) else f" ({type(exc).__name__}: {exc})"
    uri, snapshot_id = version.tags.get(Tag.DATA_SNAPSHOT_URI), version.tags.get(Tag.DATA_SNAPSHOT_ID)
    old = f"version {version.version} recorded no training rows{why[:200]}"
    try:
        if not uri or not snapshot_id:
            raise SnapshotError("it has no data_snapshot_uri tag")
        frame = read_snapshot(open_store(uri.rsplit("/", 1)[0], settings.s3), snapshot_id).frame
    except (ShipwayError, OSError) as exc:
        return Seen((), None, f"{old} and its snapshot cannot be read ({exc})")
    shared = [c for c in columns if c in frame.columns]
    if not shared:
        return Seen((), None, f"{old} and its snapshot {snapshot_id[:12]} has none of this holdout's columns")
    return Seen(tuple(shared), seen_rows.keys_of(frame, shared), f"every row of its snapshot {snapshot_id[:12]}: {old}")


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


@dataclass
class QualityOutcome:
    verdict: str  # passed, failed, overridden
    report: QualityReport
    table_uri: str
    tags: dict[str, str]


@shipway_task("quality")
def check_quality(
    settings: Settings,
    registered: Registered,
    candidate: Any,
    baseline: Any,
    X: pd.DataFrame,
    y: pd.Series,
    force: bool = False,
    reason: str | None = None,
    X_all: pd.DataFrame | None = None,
) -> QualityOutcome:
    """Judge a registered version, log the table with its run, tag it; a failure raises GateError
    unless forced (the override is recorded on the version as --force-gate's is). `X_all`: as judge's."""
    name, version = registered.name, registered.version
    tags = registry.get_version(settings, name, version).tags
    task = version_task(tags, candidate)
    production = incumbent(settings, name, [*map(str, (X if X_all is None else X_all).columns), str(y.name)])
    report = judge(candidate, baseline, production, X, y, task, settings.quality, X_all)
    warning = ""
    if task.is_classification and tags.get(Tag.PREDICT_FN, "predict") == "predict":
        rate = tags.get(Tag.TRAINING_POSITIVE_RATE)
        served, warning = served_decisions(candidate, baseline, X, y, float(rate) if rate else None, settings.quality)
        report.rows += served
    verdict = "passed" if report.passed else ("overridden" if force else "failed")
    out = {
        Tag.QUALITY_GATE.value: verdict,
        "quality_metric": report.metric,
        "quality_reference": f"{name}/{report.production}" if report.production else "baseline",
        **({Tag.POSITIVE_RATE_WARNING.value: warning} if warning else {}),
        **comparison_tags(report),
    }
    if verdict == "overridden":
        out |= {
            "quality_override": reason or "",
            "quality_override_by": getpass.getuser(),
            "quality_override_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "quality_override_failures": ", ".join(f"{r.scope}: {r.metric}" for r in report.failures)[:500],
        }
    uri = record(settings, registered, report, out)
    create_table_artifact(
        key="quality-gate",
        table=report.table(),
        description=f"{name} version {version} ({task}): {verdict}: {report.reason()}"
        + (f" ({report.note})" if report.note else ""),
    )
    if verdict == "failed":
        raise GateError(
            f"quality gate: {name} version {version} is registered without an alias: {report.reason()}; "
            f"table: {uri} (override with --force-quality --reason TEXT)"
        )
    logger = run_logger()
    if verdict == "overridden":
        logger.warning("quality gate failed and was overridden (%s): %s", reason, report.reason())
    else:
        logger.info("quality gate passed: %s", report.reason())
    if report.note and report.note not in report.reason():  # a pass with no Production says it there
        logger.info(report.note)
    if warning:
        logger.warning("%s", warning)
    return QualityOutcome(verdict, report, uri, out)


def comparison_tags(report: QualityReport) -> dict[str, str]:
    """How Production was compared, for a person reading the version page: paired (on the rows it
    did not train on), recorded (its own holdout figure) or none; the rows used, the rows left out
    as seen by Production, the difference's interval."""
    against = report.against_production
    tags = {
        "quality_comparison": report.comparison if against else NONE,
        "quality_rows_compared": str(against.rows if against else 0),
        "quality_rows_left_out": str(report.left_out),
    }
    if against is not None:
        tags["quality_interval"] = f"[{against.low:+.4g}, {against.high:+.4g}]"
    return tags


def record(settings: Settings, registered: Registered, report: QualityReport, tags: dict[str, str]) -> str:
    """The table with the version's run (a table in the MLflow UI), the verdict tags on the version."""
    client, _ = registry.connect(settings)
    client.log_table(registered.run_id, data=pd.DataFrame(report.table()), artifact_file=TABLE_ARTIFACT)
    registry.set_version_tags(settings, registered.name, registered.version, tags)
    return f"{client.get_run(registered.run_id).info.artifact_uri}/{TABLE_ARTIFACT}"
