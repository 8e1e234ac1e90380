"""The quality gate: no version becomes Shadow unless it is any good.

Before a registered version may take an alias it must
(a) beat its own baseline (the one-rule fallback model) on the holdout and meet the floors and
    ceilings of `quality.min` / `quality.max`;
(b) not be worse than Production on the same holdout rows: worse means the paired bootstrap of the
    difference (candidate minus Production, the same resampled rows for both) excludes zero at
    the test's level AND the difference itself is larger than `quality.min_effect`;
(c) not be worse than Production in the same sense in any slice of `quality.slices` with at least
    `quality.min_slice_rows` rows; smaller slices are reported, not judged;
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
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from sklearn.base import is_regressor
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from configs.settings import QualitySettings, Settings
from core.errors import ConfigError, GateError, RegistryError
from core.vocabulary import Alias, Tag, Task
from tasks import registry
from tasks.analysis import FAR, positive_rate_far
from tasks.bootstrap import resample_means
from tasks.quality_metrics import DEFAULT_METRIC, METRICS, Answers, Metric, Truth, answers, encode, metrics_of

if TYPE_CHECKING:
    from tasks.registration import Registered  # registering pulls in the ONNX compiler: not needed to judge

TABLE_ARTIFACT = "quality/evaluation.json"
MAX_CATEGORIES = 20  # a categorical slice column keeps its most frequent values; the rest are "(other)"
PASS, FAIL, NOT_JUDGED = "pass", "fail", "not judged"
SERVED = "served decisions"


@dataclass(frozen=True)
class Incumbent:
    """The Production version a candidate is compared with."""

    model: Any  # None when it could not be loaded
    version: str
    task: Task
    error: str = ""  # why it could not be loaded


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


@dataclass
class QualityReport:
    metric: str
    task: Task
    production: str | None  # the version compared with, or None
    note: str  # why Production was not compared with, when there is one
    alpha_each: float
    rows: list[Row] = field(default_factory=list)

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
            if self.production:
                return f"{said} and is not worse than Production's {overall.production:.4g} (version {self.production})"
            return f"{said}; {self.note}"
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
    group: int  # scopes of one group share no rows: overall, or one slice column's segments
    label: str
    rows: np.ndarray
    points: list[float]  # the metric of the candidate, Production, the baseline
    columns: tuple[np.ndarray, ...] = ()  # shared, candidate's and Production's columns, while judged


def judge(
    candidate: Any,
    baseline: Any,
    production: Incumbent | None,
    X: pd.DataFrame,
    y: pd.Series,
    task: Task,
    settings: QualitySettings,
) -> QualityReport:
    """The quality gate's verdict on `candidate`, with the evaluation table (plain: no I/O)."""
    metric = primary_metric(settings, task, candidate)
    bounds = limits(settings, task)
    groups = [[("overall", np.arange(len(X)))], *slices(X, settings)]
    read = [metric, *(m for m, _, _ in bounds)]
    models = [candidate, baseline] + ([production.model] if production and production.model is not None else [])
    truth = encode(y, task, models)
    mine, base = answers(candidate, X, truth, task, read), answers(baseline, X, truth, task, read)
    theirs, note = _production_answers(production, X, truth, task, read)
    compared = production.version if theirs is not None and production else None
    report = QualityReport(metric.name, task, compared, note, settings.alpha)

    scopes = []
    for g, group in enumerate(groups):
        for label, rows in group:
            t = truth.take(rows)
            shared = metric.shared(t)
            columns = [metric.model(t, a.take(rows)) if a is not None else None for a in (mine, theirs, base)]
            points = [metric.of_columns(shared, c) if c is not None else float("nan") for c in columns]
            scope = _Scope(g, label, rows, points)
            judge = (label == "overall" or len(rows) >= settings.min_slice_rows) and bool(np.isfinite(points[:2]).all())
            if judge:  # only judged scopes are resampled: keep their columns for the bootstrap
                scope.columns = (shared, columns[0], columns[1])
            scopes.append(scope)
    judged = [s for s in scopes if len(s.columns)]
    report.alpha_each = settings.alpha / max(1, len(judged))
    intervals = _paired_bootstrap(metric, judged, len(groups), settings, report.alpha_each)

    for scope in scopes:
        cand, prod, base_value = scope.points
        n = len(scope.rows)
        verdict, reason = _judge_scope(metric, scope, intervals.get(scope.label), settings, report)
        low, high, _ = intervals.get(scope.label, (None, None, None))
        compared_to = theirs is not None
        report.rows.append(
            Row(
                scope.label,
                n,
                metric.name,
                cand,
                prod if compared_to else None,
                base_value,
                cand - prod if compared_to else None,
                low,
                high,
                verdict,
                reason,
            )
        )
        if scope.group == 0:  # the floors and ceilings follow the overall row
            report.rows += [_limit_row(m, kind, limit, truth, mine, theirs, base) for m, kind, limit in bounds]
    return report


def served_decisions(
    candidate: Any, baseline: Any, X: pd.DataFrame, y: pd.Series, training_rate: float | None
) -> tuple[list[Row], str]:
    """The labels a classifier served with predict answers, judged as users receive them: its
    balanced accuracy on the holdout must not be below its baseline's (a probability metric can
    pass while the labels at the served threshold are no better than the one-rule fallback);
    accuracy is reported. Binary: the served positive rate against the training split's, and the
    warning when it is far (tasks.analysis.positive_rate_far)."""
    mine, base = candidate.predict(X), baseline.predict(X)
    n = len(y)
    balanced, balanced_base = balanced_accuracy_score(y, mine), balanced_accuracy_score(y, base)
    ok = balanced >= balanced_base
    relation = "not below" if ok else "below"
    rows = [
        Row(SERVED, n, "balanced_accuracy", balanced, None, balanced_base, None, None, None, PASS if ok else FAIL,
            f"balanced_accuracy {balanced:.4g} of the served labels {relation} the baseline's {balanced_base:.4g}"),
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
    try:
        return answers(production.model, X, truth, task, read), ""
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
    verdict, why = _against_production(metric, len(scope.rows), scope.points, interval, settings, report)
    beaten = cand < base if metric.error else cand > base
    if label == "overall" and not beaten:
        lost = f"{metric.name} {cand:.4g} does not beat the baseline's {base:.4g}"
        return FAIL, f"{lost}; {why}" if verdict == FAIL else lost
    if label == "overall" and verdict == NOT_JUDGED:
        return PASS, why
    return verdict, why


def _against_production(
    metric: Metric,
    n: int,
    point: list[float],
    interval: tuple[float, float, np.ndarray] | None,
    settings: QualitySettings,
    report: QualityReport,
) -> tuple[str, str]:
    cand, prod, _ = point
    if interval is None:
        if report.production is None:
            return NOT_JUDGED, report.note
        if n < settings.min_slice_rows:
            return NOT_JUDGED, f"{n} rows < quality.min_slice_rows {settings.min_slice_rows}: reported, not judged"
        return NOT_JUDGED, f"{metric.name} of Production is undefined on these rows"
    low, high, _ = interval
    difference = cand - prod
    effect = settings.min_effect * abs(prod) if metric.error else settings.min_effect
    loss = difference if metric.error else -difference
    significant = low > 0 if metric.error else high < 0
    level = f"{1 - 2 * report.alpha_each:.4g}"
    figures = f"{cand:.4g} vs {prod:.4g} (difference {difference:+.4g}, {level} interval [{low:+.4g}, {high:+.4g}])"
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


def incumbent(settings: Settings, name: str) -> Incumbent | None:
    """The Production version of `name` with its model, or None when there is none yet."""
    version = registry.alias_version(settings, name, Alias.PRODUCTION)
    if version is None:
        return None
    import mlflow.sklearn

    tags = registry.get_version(settings, name, version).tags
    try:
        model = mlflow.sklearn.load_model(f"models:/{name}/{version}")
    except Exception as exc:  # a Production that cannot load must not stop a fixed model from training
        return Incumbent(None, version, version_task(tags), f"{type(exc).__name__}: {exc}".splitlines()[0][:200])
    return Incumbent(model, version, version_task(tags, model))


@dataclass
class QualityOutcome:
    verdict: str  # passed, failed, overridden
    report: QualityReport
    table_uri: str
    tags: dict[str, str]


def check_quality(
    settings: Settings,
    registered: Registered,
    candidate: Any,
    baseline: Any,
    X: pd.DataFrame,
    y: pd.Series,
    force: bool = False,
    reason: str | None = None,
) -> QualityOutcome:
    """Judge a registered version, log the table with its run, tag it; a failure raises GateError
    unless forced (the override is recorded on the version as --force-gate's is)."""
    name, version = registered.name, registered.version
    tags = registry.get_version(settings, name, version).tags
    task = version_task(tags, candidate)
    report = judge(candidate, baseline, incumbent(settings, name), X, y, task, settings.quality)
    warning = ""
    if task.is_classification and tags.get(Tag.PREDICT_FN, "predict") == "predict":
        rate = tags.get(Tag.TRAINING_POSITIVE_RATE)
        served, warning = served_decisions(candidate, baseline, X, y, float(rate) if rate else None)
        report.rows += served
    verdict = "passed" if report.passed else ("overridden" if force else "failed")
    out = {
        Tag.QUALITY_GATE.value: verdict,
        "quality_metric": report.metric,
        "quality_reference": f"{name}/{report.production}" if report.production else "baseline",
        **({Tag.POSITIVE_RATE_WARNING.value: warning} if warning else {}),
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
    return QualityOutcome(verdict, report, uri, out)


def record(settings: Settings, registered: Registered, report: QualityReport, tags: dict[str, str]) -> str:
    """The table with the version's run (a table in the MLflow UI), the verdict tags on the version."""
    client, _ = registry.connect(settings)
    client.log_table(registered.run_id, data=pd.DataFrame(report.table()), artifact_file=TABLE_ARTIFACT)
    registry.set_version_tags(settings, registered.name, registered.version, tags)
    return f"{client.get_run(registered.run_id).info.artifact_uri}/{TABLE_ARTIFACT}"


@task(name="quality", cache_policy=NO_CACHE)
def quality_task(
    settings: Settings,
    registered: Registered,
    candidate: Any,
    baseline: Any,
    X: pd.DataFrame,
    y: pd.Series,
    force: bool = False,
    reason: str | None = None,
) -> QualityOutcome:
    outcome = check_quality(settings, registered, candidate, baseline, X, y, force, reason)
    logger = get_run_logger()
    if outcome.verdict == "overridden":
        logger.warning("quality gate failed and was overridden (%s): %s", reason, outcome.report.reason())
    else:
        logger.info("quality gate passed: %s", outcome.report.reason())
    if outcome.report.note:
        logger.info(outcome.report.note)
    if Tag.POSITIVE_RATE_WARNING in outcome.tags:
        logger.warning("%s", outcome.tags[Tag.POSITIVE_RATE_WARNING])
    return outcome
