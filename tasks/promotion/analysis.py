"""Evidence for a promotion: shadow analysis and canary-versus-production comparison.

Plain functions over prediction-log rows (one row per request and role: request_id, ts,
model_version, role, prediction, latency_ms, error). No verdict is drawn from too few requests,
and differences must be both statistically significant (sample size accounted for) and larger
than a minimum effect before they count as a breach, so a 100k-request canary does not fail on
noise-level differences and a 12-request one proves nothing.

Classifiers are compared on predicted classes (agreement, class shares, error rate on labels);
regression models on values: agreement within `promotion.regression_tolerance`, the distance
between prediction distributions (two-sample KS), the mean absolute error on labels (Welch).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from configs.settings import PromotionSettings
from core.vocabulary import Task, Verdict
from tasks.gate.verdict import GateReport

CLIENT_ERROR = r"^4\d\d "  # the gateway logs a refused request's error as "STATUS CODE: message"
REFUSED = "refused as bad input (production answered)"
FAR_POINTS, FAR_RELATIVE = 0.05, 0.5  # a served positive rate is far from the training rate when off by more than both
TAIL = 0.01  # the share of requests a p99 leaves above it
FAR = f"{FAR_POINTS * 100:g} points and {FAR_RELATIVE:.0%} of the training rate"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    value: str  # what was measured, readable
    limit: str  # what it had to meet
    gated: bool = True  # False: a warning for the reviewer, never a breach


@dataclass
class Analysis:
    stage: str
    requests: dict[str, int]
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.ok for c in self.checks if c.gated)

    @property
    def breaches(self) -> list[str]:
        return [f"{c.name}: {c.value} (limit {c.limit})" for c in self.checks if not c.ok and c.gated]

    @property
    def warnings(self) -> list[str]:
        return [f"{c.name}: {c.value} ({c.limit})" for c in self.checks if not c.ok and not c.gated]

    def evidence(self) -> str:
        """Compact JSON for tags and approval records."""
        return json.dumps(
            {
                "stage": self.stage,
                "passed": self.passed,
                "requests": self.requests,
                "checks": [asdict(c) for c in self.checks],
            }
        )

    def markdown(self) -> str:
        verdict = "**passed**" if self.passed else "**breached**: " + "; ".join(self.breaches)
        verdict += "".join(f"; **warning**: {w}" for w in self.warnings)
        said = lambda c: "ok" if c.ok else ("BREACH" if c.gated else "WARNING")
        rows = "\n".join(f"| {c.name} | {c.value} | {c.limit} | {said(c)} |" for c in self.checks)
        counts = ", ".join(f"{k}: {v:,}" for k, v in self.requests.items())
        return (
            f"### {self.stage}: {verdict}\n\nrequests: {counts}\n\n"
            f"| check | measured | limit | verdict |\n| --- | --- | --- | --- |\n{rows}\n"
        )


def client_caused(rows: pd.DataFrame) -> pd.Series:
    """Rows of a client's bad request (a 4xx, or a batch of no rows): no model's failure, so no evidence."""
    refused = rows["error"].fillna("").astype(str).str.match(CLIENT_ERROR)
    empty = rows["inputs"].eq("[]") if "inputs" in rows else False
    return refused | empty


def shadow_analysis(
    log: pd.DataFrame,
    settings: PromotionSettings,
    drift: GateReport | None = None,
    task: Task = Task.BINARY,
    positive: tuple[Any, float] | None = None,
    *,
    latency_budget_ms: float,
) -> Analysis:
    """Shadow against Production on the same requests: agreement, errors, latency against the one
    latency budget (serving.latency_budget_p99_ms), and the gate's report on the inputs (`drift`),
    whose failing columns and checks a breach names; for a binary classifier with `positive` (its
    positive class and training rate), its live positive rate against the training rate (a warning)."""
    production = log[(log["role"] == "production") & log["error"].isna()].set_index("request_id")
    shadow = log[log["role"] == "shadow"].set_index("request_id")
    paired = production.join(shadow, how="inner", lsuffix="_prod", rsuffix="_shadow")
    n = len(paired)
    served = log[log["role"] != "shadow"]
    # Requests Production answered and the candidate refused as bad input: its stricter contract,
    # evidence for the reviewer (gated only by promotion.max_shadow_refused), not a model failure.
    refused = paired["error_shadow"].fillna("").astype(str).str.match(CLIENT_ERROR)
    analysis = Analysis(
        "shadow",
        # client errors: information only; the shadow is compared on requests Production answered
        {
            "production": len(production),
            "shadow": len(shadow),
            "paired": n,
            "client errors": int(client_caused(served).sum()),
            "refused by shadow": int(refused.sum()),
        },
    )
    analysis.checks.append(_enough(n, settings.min_requests))
    if n < settings.min_requests:
        return analysis
    answered = paired["error_shadow"].isna()
    production_said, shadow_said = paired.loc[answered, "prediction_prod"], paired.loc[answered, "prediction_shadow"]
    if task is Task.REGRESSION:
        agreement, within = agreement_within(production_said, shadow_said, settings), tolerance_text(settings)
    else:
        agreement, within = float((production_said == shadow_said).mean()), ""
    errors = 1 - float((answered | refused).mean())
    p99 = float(np.percentile(shadow["latency_ms"], 99))
    analysis.checks += [
        Check(
            "agreement with production",
            agreement >= settings.min_agreement,
            f"{agreement:.1%}{within}",
            f">= {settings.min_agreement:.0%}",
        ),
        Check("error rate", errors <= settings.max_error_rate, f"{errors:.2%}", f"<= {settings.max_error_rate:.1%}"),
        Check("latency p99", p99 <= latency_budget_ms, f"{p99:.2f} ms", f"<= {latency_budget_ms:g} ms"),
        _refusals(int(refused.sum()), n, settings.max_shadow_refused),
    ]
    if drift is not None:
        ok = drift.verdict != Verdict.FAIL
        analysis.checks.append(Check("input drift vs contract", ok, drift.causes(), "not fail"))
    if positive is not None and task is Task.BINARY and len(shadow_said):
        analysis.checks.append(_positive_rate(shadow_said, *positive))
    return analysis


def positive_rate_far(rate: float, training_rate: float) -> bool:
    return abs(rate - training_rate) > max(FAR_POINTS, FAR_RELATIVE * training_rate)


def _positive_rate(said: pd.Series, positive: Any, training_rate: float) -> Check:
    """The share of the positive class among the labels answered (every row of every request)."""
    labels = [comparable(v) for text in said for v in _rows(text)]
    rate = float(np.mean([v == comparable(positive) for v in labels]))
    return Check(
        "positive rate vs training",
        not positive_rate_far(rate, training_rate),
        f"{rate:.1%} vs {training_rate:.1%}",
        f"warning when off by more than {FAR}",
        gated=False,
    )


def _rows(text: Any) -> list:
    """A logged prediction's answers: the JSON list of one request's rows."""
    value = json.loads(text) if isinstance(text, str) and text[:1] == "[" else text
    return value if isinstance(value, list) else [value]


def canary_analysis(
    log: pd.DataFrame, feedback: pd.DataFrame, settings: PromotionSettings, stage: str, task: Task = Task.BINARY
) -> Analysis:
    """Canary against Production over the same period: failures, latency, predictions, errors on labels.

    Only requests a model was asked to answer count: a client's 4xx or empty batch lands on whichever
    route its key is sticky to, so counting it would let one misbehaving client roll back a healthy
    canary. Client errors per route are reported beside, as information.
    """
    by_client = client_caused(log)
    routed = {route: (log["route"] == route) for route in ("canary", "production")}
    canary, production = log[routed["canary"] & ~by_client], log[routed["production"] & ~by_client]
    analysis = Analysis(
        stage,
        {
            "canary": len(canary),
            "production": len(production),
            "canary client errors": int((routed["canary"] & by_client).sum()),
            "production client errors": int((routed["production"] & by_client).sum()),
        },
    )
    analysis.checks.append(_enough(min(len(canary), len(production)), settings.min_requests))
    if min(len(canary), len(production)) < settings.min_requests:
        return analysis
    step, alpha = CanaryStep(canary, production, feedback, task), canary_test_level(settings)
    analysis.checks += [c for check in CANARY_CHECKS if (c := check(step, settings, alpha)) is not None]
    return analysis


@dataclass
class CanaryStep:
    """One canary step's requests a model was asked to answer, per route, and the feedback labels."""

    canary: pd.DataFrame
    production: pd.DataFrame
    feedback: pd.DataFrame
    task: Task

    @cached_property
    def own(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Each route's own model's answers: an answer a fallback gave (the baseline, under a slow
        first call) counts as a failure, not as the model's prediction."""
        own = lambda rows, route: rows[(rows["role"] == route) & rows["error"].isna()]
        return own(self.canary, "canary"), own(self.production, "production")

    @cached_property
    def labeled(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        labels = self.feedback.drop_duplicates("request_id").set_index("request_id")["label"]
        return tuple(rows.join(labels, on="request_id", how="inner") for rows in self.own)


def _failures(step: CanaryStep, settings: PromotionSettings, alpha: float) -> Check:
    failed = lambda rows: int((rows["error"].notna() | (rows["role"] == "fallback")).sum())
    return _not_worse(
        "error and fallback rate",
        failed(step.canary),
        len(step.canary),
        failed(step.production),
        len(step.production),
        settings.max_error_rate_increase,
        alpha,
    )


def _latency(step: CanaryStep, settings: PromotionSettings, alpha: float) -> Check:
    """Canary's p99 against a limit set by Production's, tested as a tail share: a p99 within the
    limit means at most 1% of requests over it. The p99 of a few hundred requests is their third
    slowest, which one scheduler hiccup sets; the share over the limit is weighed by a binomial test."""
    p99_canary = float(np.percentile(step.canary["latency_ms"], 99))
    p99_prod = float(np.percentile(step.production["latency_ms"], 99))
    limit = max(settings.max_latency_ratio * p99_prod, p99_prod + settings.latency_slack_ms)
    over, n = int((step.canary["latency_ms"] > limit).sum()), len(step.canary)
    p = float(stats.binomtest(over, n, TAIL, alternative="greater").pvalue)
    return Check(
        "latency p99",
        p >= alpha,
        f"{p99_canary:.2f} ms vs {p99_prod:.2f} ms; {over:,} of {n:,} over the limit (one-sided p={p:.3g})",
        f"<= {limit:.2f} ms: over it at most {TAIL:.0%} at p < {alpha:.2g}",
    )


def _predictions(step: CanaryStep, settings: PromotionSettings, alpha: float) -> Check | None:
    canary, production = step.own
    if min(len(canary), len(production)) == 0:  # nothing of its own answered: failures say it all
        return None
    same = _same_distribution if step.task is Task.REGRESSION else _same_predictions
    return same(canary, production, settings.max_prediction_shift, alpha)


def _labels(step: CanaryStep, settings: PromotionSettings, alpha: float) -> Check | None:
    canary, production = step.labeled
    if min(len(canary), len(production)) < settings.min_labeled:  # labeled rows are own answers: none without them
        return None
    if step.task is Task.REGRESSION:
        return _error_not_worse(canary, production, settings.max_mae_increase, alpha)
    hits = lambda rows: int((rows["prediction"].map(comparable) == rows["label"].map(comparable)).sum())
    return _not_worse(
        "error rate on feedback labels",
        len(canary) - hits(canary),
        len(canary),
        len(production) - hits(production),
        len(production),
        settings.max_accuracy_drop,
        alpha,
    )


# A canary step's checks, in the order they are reported; each is a statistical test (None: not
# applicable to the step). Adding one is one entry: the Bonferroni split counts them, so a new test
# cannot silently loosen the promotion's significance.
CANARY_CHECKS: tuple[Callable[[CanaryStep, PromotionSettings, float], Check | None], ...] = (
    _failures,
    _latency,
    _predictions,
    _labels,
)


def canary_test_level(settings: PromotionSettings) -> float:
    """The level of each canary test: `alpha` split (Bonferroni) over the promotion's tests (the
    CANARY_CHECKS of every step), so that a canary no worse than Production is rolled back with
    chance <= alpha, not once in a dozen promotions."""
    return settings.alpha / (len(CANARY_CHECKS) * len(settings.canary_steps))


def _refusals(refused: int, n: int, limit: float | None) -> Check:
    """Requests Production answered that the candidate refused as bad input: clients it would break."""
    share = refused / n
    measured = f"{refused:,} of {n:,} ({share:.2%})"
    if limit is None:
        return Check(REFUSED, True, measured, "reported, not gated (promotion.max_shadow_refused)")
    return Check(REFUSED, share <= limit, measured, f"<= {limit:.1%}")


def _enough(n: int, minimum: int) -> Check:
    return Check("requests for a verdict", n >= minimum, f"{n:,}", f">= {minimum:,}")


def _not_worse(name: str, bad_a: int, n_a: int, bad_b: int, n_b: int, min_increase: float, alpha: float) -> Check:
    """A's rate of bad outcomes is worse than B's only if significantly higher by more than min_increase."""
    rate_a, rate_b = bad_a / n_a, bad_b / n_b
    pooled = (bad_a + bad_b) / (n_a + n_b)
    se = np.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    p = float(stats.norm.sf((rate_a - rate_b) / se)) if se > 0 else (0.0 if rate_a > rate_b else 1.0)
    breach = p < alpha and rate_a - rate_b > min_increase
    return Check(
        name,
        not breach,
        f"{rate_a:.2%} vs {rate_b:.2%} (one-sided p={p:.3g})",
        f"not higher by > {min_increase:.1%} at p < {alpha:.2g}",
    )


def _same_predictions(canary: pd.DataFrame, production: pd.DataFrame, max_shift: float, alpha: float) -> Check:
    """Chi-square on the predicted classes, plus a minimum shift in any class's share."""
    counts = pd.crosstab(
        pd.concat([canary["prediction"], production["prediction"]]),
        np.r_[np.zeros(len(canary)), np.ones(len(production))],
    )
    shares = counts / counts.sum()
    shift = float((shares.iloc[:, 0] - shares.iloc[:, 1]).abs().max())
    p = float(stats.chi2_contingency(counts.to_numpy())[1]) if len(counts) > 1 else 1.0
    breach = p < alpha and shift > max_shift
    return Check(
        "predicted class shares",
        not breach,
        f"largest shift {shift:.1%} (chi-square p={p:.3g})",
        f"not shifted by > {max_shift:.0%} at p < {alpha:.2g}",
    )


def _same_distribution(canary: pd.DataFrame, production: pd.DataFrame, max_shift: float, alpha: float) -> Check:
    """Regression: two-sample KS on the predicted values; its distance is the largest change in the
    share of predictions below any value, the counterpart of a class share's shift."""
    ks = stats.ks_2samp(numbers(canary["prediction"]), numbers(production["prediction"]), nan_policy="omit")
    distance, p = float(ks.statistic), float(ks.pvalue)
    breach = p < alpha and distance > max_shift
    return Check(
        "prediction distribution",
        not breach,
        f"KS distance {distance:.3f} (p={p:.3g})",
        f"not shifted by > {max_shift:.0%} at p < {alpha:.2g}",
    )


def _error_not_worse(canary: pd.DataFrame, production: pd.DataFrame, max_increase: float, alpha: float) -> Check:
    """Regression: the canary's absolute errors on labels against Production's, one-sided Welch test on
    their means, a breach only when the mean grew by more than `max_increase` of Production's."""
    error = lambda rows: np.abs(numbers(rows["prediction"]) - numbers(rows["label"]))
    mine, theirs = error(canary), error(production)
    mine, theirs = mine[np.isfinite(mine)], theirs[np.isfinite(theirs)]
    mae, mae_prod = float(mine.mean()), float(theirs.mean())
    test = stats.ttest_ind(mine, theirs, equal_var=False, alternative="greater")
    p = float(test.pvalue) if np.isfinite(test.pvalue) else (0.0 if mae > mae_prod else 1.0)
    growth = mae / mae_prod - 1 if mae_prod > 0 else (np.inf if mae > 0 else 0.0)
    breach = p < alpha and growth > max_increase
    return Check(
        "absolute error on feedback labels",
        not breach,
        f"MAE {mae:.4g} vs {mae_prod:.4g} ({growth:+.1%}, one-sided Welch p={p:.3g})",
        f"not higher by > {max_increase:.0%} at p < {alpha:.2g}",
    )


def agreement_within(production: pd.Series, shadow: pd.Series, settings: PromotionSettings) -> float:
    """Share of paired predictions within the tolerance: relative to Production's, or absolute."""
    a, b = numbers(production), numbers(shadow)
    scale = np.abs(a) if settings.regression_tolerance_mode == "relative" else 1.0
    return float(np.mean(np.abs(b - a) <= settings.regression_tolerance * scale)) if len(a) else float("nan")


def tolerance_text(settings: PromotionSettings) -> str:
    if settings.regression_tolerance_mode == "relative":
        return f" within ±{settings.regression_tolerance:.1%}"
    return f" within ±{settings.regression_tolerance:g}"


def numbers(values: pd.Series) -> np.ndarray:
    """Logged predictions (JSON text of a one-value list) or labels, as floats (NaN where none)."""
    return np.array([_number(v) for v in values], dtype=np.float64)


def _number(value: Any) -> float:
    try:
        if isinstance(value, str):
            value = json.loads(value)
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        return float(value)
    except (TypeError, ValueError):  # no answer, or not one number
        return float("nan")


def predicted_classes(log: pd.DataFrame, classes_by_version: dict[str, list]) -> pd.DataFrame:
    """The log with each probability answer replaced by its predicted class, the argmax over the
    version's classes, for the versions in `classes_by_version` (those served with predict_proba);
    so that agreement, class shares and accuracy compare classes whatever a version answers."""
    if not classes_by_version or log.empty:
        return log
    log = log.copy()
    for version, classes in classes_by_version.items():
        rows = (log["model_version"] == version) & log["prediction"].notna()
        log.loc[rows, "prediction"] = [_argmax_classes(text, classes) for text in log.loc[rows, "prediction"]]
    return log


def _argmax_classes(text: str, classes: list) -> str:
    rows = json.loads(text) if isinstance(text, str) else text
    return json.dumps([classes[int(np.argmax(row))] for row in rows])


def comparable(value: Any) -> str:
    """A logged prediction (JSON text of a list) or a feedback label, as comparable JSON text."""
    if isinstance(value, str) and value[:1] in ("[", "{"):
        value = json.loads(value)
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    return json.dumps(value.item() if hasattr(value, "item") else value)
