"""The monitoring flow: one window of the prediction log against Production's contract and limits.

Each window becomes a run of the monitoring experiment (so the MLflow UI shows the trend) and a
Prefect artifact. When `monitoring.breach_windows` windows in a row breach, the retraining
deployment is triggered. Only the window asked for is read, through the log's index on time.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from configs.settings import Settings, load_settings
from core.errors import RegistryError
from core.vocabulary import Alias, Verdict
from flows.artifacts import artifact_key
from flows.run_labels import label_run
from serving.prediction_log import read_feedback, read_window
from tasks.gate.drift_report import write_report
from tasks.gate.skew import gate, reference_for_model
from tasks.monitoring.estimate import assess
from tasks.monitoring.trend import plot_trend
from tasks.monitoring.window import (
    WindowSummary,
    datetime_columns,
    parse_window,
    served_inputs,
    summarize,
    sustained,
)
from tasks.promotion.analysis import predicted_classes
from tasks.quality.compare import version_task
from tasks.release import prediction_reference, registry
from tasks.retries import shipway_task


@dataclass
class MonitoringResult:
    model_name: str
    version: str
    requests: int
    drift: str  # the gate's verdict on the window's inputs: pass, warn, fail (or "none": no traffic)
    breaches: list[str]
    run_id: str
    retraining: str  # what was done about a sustained breach: "", a flow run id, or why nothing could be
    # metric -> estimated, low, high, holdout, drop, breach (performance estimated without labels)
    estimate: dict[str, dict[str, Any]] = field(default_factory=dict)
    not_estimable: str = ""  # why there is no estimate ("" when there is one)
    prediction_psi: float | None = None  # the largest PSI of the outputs against the holdout's
    prediction_drift: list[str] = field(default_factory=list)  # the output distributions that drifted
    by_version: dict[str, int] = field(default_factory=dict)  # the window's requests by the version that answered


@flow(name="monitoring", log_prints=True)
def monitoring_flow(
    name: str | None = None, window: str | None = None, config: str | None = None, settings: Settings | None = None
) -> MonitoringResult:
    """Read one window of the prediction log, gate its inputs, check the limits, log the window.
    The CLI and tests pass `settings`; a deployment names its profile by `config` (or SHIPWAY_CONFIG)."""
    settings = settings or load_settings(config)
    name = name or settings.training.model_name
    span = parse_window(window or settings.monitoring.window)
    end = datetime.now(UTC)
    start = end - span
    aliases, _ = registry.model_state(settings, name)
    version = aliases.get(Alias.PRODUCTION.value)
    if version is None:
        raise RegistryError(f"'{name}' has no Production version to monitor")
    label_run("monitor", name, version, settings)

    log, feedback = cast(tuple[pd.DataFrame, pd.DataFrame], read_log_task(settings, name, start, end))
    production = registry.get_version(settings, name, version)
    # the served outputs against the holdout's, while the log still holds the probabilities
    outputs = assess(log, feedback, version, prediction_reference.load(settings, production), settings)
    if len(log):  # probability answers are compared with labels as their predicted class
        log = predicted_classes(log, registry.probability_classes(settings, name, log["model_version"].unique()))
    task = version_task(production.tags)
    summary = summarize(
        log, feedback, settings.monitoring, task, latency_budget_ms=settings.serving.latency_budget_p99_ms
    )
    summary.metrics |= outputs.metrics
    summary.breaches += outputs.breaches
    with tempfile.TemporaryDirectory(prefix="shipway-monitor-") as tmp:
        files, drift = [], "none"
        inputs = served_inputs(log, datetime_columns(settings, name, version) if len(log) else ())
        if len(inputs):
            report = gate(
                inputs,
                reference_for_model(settings, f"{name}@{Alias.PRODUCTION.value}"),
                settings,
                batch_name=f"{name} {start:%Y-%m-%d %H:%M}..{end:%H:%M} UTC",
                logged=True,
            )
            drift = report.verdict.value
            files.append(write_report(report, Path(tmp) / "drift_report.json").json)
            if report.verdict == Verdict.FAIL:
                summary.breaches.append("input drift: " + report.causes())
            summary.metrics["drifted_columns"] = float(len(report.columns_with(Verdict.FAIL)))
        if outputs.slices:
            (Path(tmp) / "slices.json").write_text(json.dumps(outputs.slices, indent=1))
            files.append(Path(tmp) / "slices.json")
        history = registry.monitoring_history(settings, name, limit=max(settings.monitoring.breach_windows, 48))
        picture = Path(tmp) / "trend.png"
        if plot_trend(history, summary.metrics, start, end, settings, picture):
            files.append(picture)
        run_id = registry.log_window(
            settings,
            name,
            run_name=f"{name} {end:%Y-%m-%d %H:%M}",
            params={
                "window": window or settings.monitoring.window,
                "start": start.isoformat(),
                "end": end.isoformat(),
                "version": version,
            },
            metrics=summary.metrics,
            tags={
                "version": version,
                "drift": drift,
                "breached": str(summary.breached).lower(),
                "breaches": "; ".join(summary.breaches)[:5000],
                "estimate": outputs.not_estimable or "estimated",
            },
            files=files,
        )

    # the gateway's registry poll reads these and exports them to Prometheus (its alert on the estimate)
    registry.set_version_tags(settings, name, version, outputs.version_tags(end))
    before = [h["tags"].get("breached") == "true" for h in history]
    retraining = ""
    if sustained(before, summary.breached, settings.monitoring.breach_windows):
        retraining = trigger_retraining(settings)
    _publish(name, version, start, end, summary, drift, retraining, outputs.not_estimable)
    psi = outputs.metrics.get("prediction_psi")
    return MonitoringResult(
        name,
        version,
        summary.requests,
        drift,
        summary.breaches,
        run_id,
        retraining,
        estimate=outputs.estimate,
        not_estimable=outputs.not_estimable,
        prediction_psi=psi if psi is not None and psi == psi else None,
        prediction_drift=outputs.drifted,
        by_version=summary.by_version,
    )


@shipway_task("read-prediction-log", retries=2, retry_delay_seconds=[2, 10])
def read_log_task(settings: Settings, name: str, start: datetime, end: datetime) -> tuple[pd.DataFrame, pd.DataFrame]:
    log = read_window(settings.prediction_log.url, start, end, model_name=name)
    return log, read_feedback(settings.prediction_log.url, log["request_id"])


def trigger_retraining(settings: Settings) -> str:
    """Start the retraining deployment; without one (ephemeral mode) say what to do instead."""
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    deployment = settings.monitoring.retrain_deployment
    try:
        run = cast(FlowRun, run_deployment(deployment, timeout=0))  # sync in a flow
    except ObjectNotFound:
        message = (
            f"sustained breach, but the deployment '{deployment}' does not exist: deploy prefect.yaml "
            "on a Prefect server (see docs/operations.md), or run shipway train"
        )
        get_run_logger().warning(message)
        return message
    print(f"sustained breach: started {deployment} (flow run {run.id})")
    return str(run.id)


def _publish(
    name: str,
    version: str,
    start: datetime,
    end: datetime,
    summary: WindowSummary,
    drift: str,
    retraining: str,
    not_estimable: str,
) -> None:
    figures = "\n".join(f"| {k} | {v:.4g} |" for k, v in summary.metrics.items())
    verdict = "breached: " + "; ".join(summary.breaches) if summary.breached else "within limits"
    text = (
        f"### {name} version {version}, {start:%Y-%m-%d %H:%M}..{end:%H:%M} UTC: {verdict}\n\n"
        f"input drift vs contract: **{drift}**\n\n"
        + (f"performance estimate: not estimable ({not_estimable})\n\n" if not_estimable else "")
        + f"| figure | value |\n| --- | --- |\n{figures}\n"
        + (f"\nretraining: {retraining}\n" if retraining else "")
    )
    create_markdown_artifact(text, key=artifact_key("monitoring", name), description=f"{name}: monitoring window")
    print(json.dumps({"requests": summary.requests, "drift": drift, "breaches": summary.breaches}))
