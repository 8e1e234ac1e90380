"""One monitoring window of the prediction log: what the model saw, how it answered, how well.

Plain functions over the rows `serving.prediction_log.read_window` returns: the inputs the
answering model received (for the skew gate), failure and fallback shares, latency p99, and
where feedback labels came back accuracy (classifiers) or mean absolute error (regression).
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import orjson
import pandas as pd

from configs.settings import MonitoringSettings, Settings
from core.errors import ShipwayError
from core.vocabulary import Task
from serving import RegistryReader
from tasks.promotion.analysis import comparable, numbers

ANSWERING = ("production", "canary", "fallback")  # shadow rows repeat inputs and never answer
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_window(text: str) -> timedelta:
    """'90s', '15m', '1h', '2d' -> a timedelta; anything else is a clear error."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*", text or "")
    if not match or float(match.group(1)) <= 0:
        raise ShipwayError(f"window '{text}' is not a duration like 30m, 1h or 2d")
    return timedelta(**{UNITS[match.group(2)]: float(match.group(1))})


def served_inputs(log: pd.DataFrame, datetimes: Collection[str] = ()) -> pd.DataFrame:
    """The feature rows of every answered request, decoded from the log's JSON records.

    The log keeps a datetime column as the gateway typed it: ISO 8601 text without an offset, in
    UTC for a client's zone-aware times (serving/dates.py). The columns named in `datetimes` come
    back as datetime64 columns without a zone, as the contract checks them; others as logged.
    """
    texts = log.loc[log["role"].isin(ANSWERING) & log["inputs"].notna(), "inputs"]
    records = [record for text in texts for record in orjson.loads(text)]
    frame = pd.DataFrame.from_records(records)
    for name in datetimes:
        if name in frame.columns:  # rows of older gateways may carry offsets: read as UTC
            stamps = pd.to_datetime(frame[name], format="ISO8601", utc=True, errors="coerce")
            frame[name] = stamps.dt.tz_localize(None)
    return frame


def datetime_columns(settings: Settings, name: str, version: str) -> list[str]:
    """A version's datetime inputs, from its signature; a hashed one (serving.sensitive_columns) is
    no datetime in the log: it stays the text the log keeps."""
    hashed = {c for c, rule in settings.serving.sensitive_columns.items() if rule == "hash"}
    columns = RegistryReader(settings).columns(name, version)
    return [c.name for c in columns if c.type == "datetime" and c.name not in hashed]


@dataclass
class WindowSummary:
    requests: int
    metrics: dict[str, float] = field(default_factory=dict)
    breaches: list[str] = field(default_factory=list)
    # requests by the version that answered: a window's traffic is the model's, and a rollback or a
    # canary inside it leaves rows of other versions than today's Production
    by_version: dict[str, int] = field(default_factory=dict)

    @property
    def breached(self) -> bool:
        return bool(self.breaches)


def summarize(
    log: pd.DataFrame,
    feedback: pd.DataFrame,
    settings: MonitoringSettings,
    task: Task = Task.BINARY,
    *,
    latency_budget_ms: float,
) -> WindowSummary:
    """Failure, fallback, latency and label figures of a window, and which limits they broke (latency:
    the one latency budget, serving.latency_budget_p99_ms)."""
    answered = log[log["role"].isin(ANSWERING)]
    n = len(answered)
    counts = answered["model_version"].fillna("none").astype(str).value_counts()
    summary = WindowSummary(n, {"requests": float(n)}, by_version={v: int(count) for v, count in counts.items()})
    if n == 0:
        return summary
    fallback = answered["role"] == "fallback"
    unanswered = answered["prediction"].isna()
    errors = float((fallback & unanswered).mean())  # every fallback failed: the client got a 503
    rejected = float((~fallback & unanswered).mean())  # the client's input was refused (4xx): skew at the source
    p99 = (
        float(np.nanpercentile(answered.loc[~unanswered, "latency_ms"].astype(float), 99))
        if (~unanswered).any()
        else 0.0
    )
    summary.metrics |= {
        "fallback_rate": float(fallback.mean()),
        "error_rate": errors,
        "rejected_rate": rejected,
        "latency_p99_ms": p99,
    }
    limits = [
        ("fallback_rate", float(fallback.mean()), settings.max_fallback_rate),
        ("error_rate", errors, settings.max_error_rate),
        ("rejected_rate", rejected, settings.max_rejected_rate),
        ("latency_p99_ms", p99, latency_budget_ms),
    ]
    summary.breaches += [
        f"{name} {value:.4g} > {limit:g}"
        for name, value, limit in limits
        if n >= settings.min_requests and value > limit
    ]
    labeled = answered.merge(feedback[["request_id", "label"]], on="request_id", how="inner")
    if len(labeled) and task is Task.REGRESSION:
        absolute = np.abs(numbers(labeled["prediction"]) - numbers(labeled["label"]))
        mae = float(np.nanmean(absolute)) if np.isfinite(absolute).any() else float("nan")
        summary.metrics |= {"mae": mae, "labeled": float(len(labeled))}
        if settings.max_mae is not None and len(labeled) >= settings.min_requests and mae > settings.max_mae:
            summary.breaches.append(f"mae {mae:.4g} > {settings.max_mae:g}")
    elif len(labeled):
        hits = [
            comparable(p) == comparable(label)
            for p, label in zip(labeled["prediction"], labeled["label"], strict=False)
            if p is not None
        ]
        accuracy = float(np.mean(hits)) if hits else float("nan")
        summary.metrics |= {"accuracy": accuracy, "labeled": float(len(labeled))}
        if (
            settings.min_accuracy is not None
            and len(labeled) >= settings.min_requests
            and accuracy < settings.min_accuracy
        ):
            summary.breaches.append(f"accuracy {accuracy:.4g} < {settings.min_accuracy:g}")
    return summary


def sustained(breached_before: list[bool], breached_now: bool, windows: int) -> bool:
    """True when this window and the `windows - 1` before it (newest first) all breached."""
    return breached_now and len(breached_before) >= windows - 1 and all(breached_before[: windows - 1])
