"""The promotion flow: Shadow analysis -> approval -> Canary steps -> approval -> Production.

Every alias move is a journaled, recorded step (tasks/release/aliases.py); a breach rolls the canary
back automatically; a rejection or an approval timeout ends the promotion with the aliases as
they were. Two promotions of one model never interleave: the promotion holds the model's lease
(tasks/promotion/lease.py) for the whole flow; a promotion whose process died is taken over by the next.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.client.schemas.objects import FlowRun
from prefect.context import FlowRunContext, get_run_context
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run

from configs.settings import Settings, load_settings
from core.errors import GateError, RegistryError
from core.vocabulary import Alias, Tag
from flows.approval import Approval
from flows.artifacts import artifact_key
from flows.resume import note_paused, paused_note
from flows.run_labels import label_run
from flows.run_labels import run_name as labelled
from tasks.promotion.lease import Lease, held
from tasks.release import registry
from tasks.release.aliases import AliasMoved, move, recover
from tasks.release.decisions import record_approval
from tasks.retries import shipway_task

if TYPE_CHECKING:  # the analyses' modules (scipy.stats, the skew gate, the log's SQL) load in their tasks:
    import pandas as pd  # a promotion taking over a killed one gets to its lease without them

    from tasks.promotion.analysis import Analysis


class PromotionRejected(GateError):
    """A reviewer said no, the approval timed out, or the evidence breached a limit. Exit 1."""


@dataclass
class PromotionResult:
    model_name: str
    version: str
    previous: str | None
    evidence: list[str]


def run_name() -> str:
    """promote-MODEL-STORE: which model of which tracking store (a short hash of its URI) a run promotes;
    the version is added once read (flows/run_labels.py)."""
    from prefect.runtime import flow_run

    parameters = flow_run.parameters
    settings = parameters.get("settings")
    if not isinstance(settings, Settings):
        settings = load_settings(parameters.get("config"))
    return labelled("promote", parameters.get("name") or settings.training.model_name, settings)


@flow(name="promotion", log_prints=True, flow_run_name=run_name)
def promotion_flow(
    name: str | None = None,
    version: str | None = None,
    config: str | None = None,
    actor: str = "promotion flow",
    settings: Settings | None = None,
) -> PromotionResult:
    """Take the Shadow version (or `version`) through shadow analysis, canary steps and two approvals.
    The CLI and tests pass `settings`; a deployment names its profile by `config` (or SHIPWAY_CONFIG)."""
    settings = settings or load_settings(config)
    name = name or settings.training.model_name
    run = _flow_run()
    run_id = str(run.id)
    with held(settings, name, run_id, run.name, actor=actor, crashed=mark_crashed) as lease:
        recover(settings, name, actor=actor)
        aliases, _ = registry.model_state(settings, name)
        version = version or aliases.get(Alias.SHADOW.value)
        if version is None:
            raise RegistryError(f"'{name}' has no Shadow version to promote; pass --version")
        lease.promoting(version)
        label_run("promote", name, version, settings)
        production = aliases.get(Alias.PRODUCTION.value)
        move(settings, name, {Alias.SHADOW: version}, actor=actor, reason=f"promotion {run_id} started")
        print(f"promoting {name} version {version} (Production: {production or 'none yet'})")
        evidence: list[str] = []

        if production is not None:
            shadow = shadow_task(settings, name, version)
            evidence.append(_publish(shadow, name, version))
            if not shadow.passed:
                _end(settings, name, version, actor, "shadow analysis breached: " + "; ".join(shadow.breaches))
        _require_approval(settings, name, version, "shadow", evidence, actor)

        if production is not None:
            for share in settings.promotion.canary_steps:
                move(
                    settings,
                    name,
                    {Alias.CANARY: version},
                    actor=actor,
                    canary_share=share,
                    reason=f"canary step {share:.0%}",
                )
                step = canary_task(settings, name, version, share)
                evidence.append(_publish(step, name, version))
                if not step.passed:
                    _end(settings, name, version, actor, f"canary {share:.0%} breached: " + "; ".join(step.breaches))
            _require_approval(settings, name, version, "production", evidence, actor)

        now, _ = registry.model_state(settings, name)
        changes = {Alias.PRODUCTION: version, Alias.CANARY: None}
        if now.get(Alias.SHADOW.value) == version:  # a newer Shadow trained meanwhile keeps its alias
            changes[Alias.SHADOW] = None
        if production is not None:
            changes[Alias.PREVIOUS] = production
        try:  # compare-and-set: a rollback may have moved Production during the promotion
            move(
                settings,
                name,
                changes,
                actor=actor,
                reason=f"promotion {run_id} approved",
                evidence=run_id,
                canary_share=0.0,
                expect={Alias.PRODUCTION: production},
            )
        except AliasMoved as moved:
            _end(settings, name, version, actor, str(moved))
        print(f"{name} version {version} is Production" + (f"; version {production} is Previous" if production else ""))
        return PromotionResult(name, version, production, evidence)


@shipway_task("shadow-analysis")
def shadow_task(settings: Settings, name: str, version: str) -> Analysis:
    """Shadow's predictions against Production's on the same live requests of the last
    `promotion.step_seconds` (waiting, up to that long again, until there are enough)."""
    from tasks.gate.skew import gate, reference_for_model
    from tasks.monitoring.window import datetime_columns, served_inputs
    from tasks.promotion.analysis import predicted_classes, shadow_analysis
    from tasks.quality.compare import version_task

    since = datetime.now(UTC) - timedelta(seconds=settings.promotion.step_seconds)
    minimum = settings.promotion.min_requests
    enough = lambda log: _paired(log, version) >= minimum
    progress = lambda log: f"{_paired(log, version)}/{minimum} paired requests ({_routes(log)})"
    log = _traffic(settings, name, since, enough, "shadow analysis", progress)
    inputs = served_inputs(log, datetime_columns(settings, name, version))
    drift = None
    if len(inputs):  # what Production was asked, against the candidate's own data contract
        reference = reference_for_model(settings, f"{name}/{version}")
        drift = gate(inputs, reference, settings, "shadow traffic", logged=True)
    log = predicted_classes(log, registry.probability_classes(settings, name, log["model_version"].unique()))
    tags = registry.get_version(settings, name, version).tags
    task = version_task(tags)
    return shadow_analysis(
        log,
        settings.promotion,
        drift=drift,
        task=task,
        positive=positive_class_rate(tags),
        latency_budget_ms=settings.serving.latency_budget_p99_ms,
    )


def positive_class_rate(tags: dict[str, str]) -> tuple[Any, float] | None:
    """A binary version's positive class (the second of its classes) and training positive rate."""
    classes, rate = tags.get(Tag.CLASSES), tags.get(Tag.TRAINING_POSITIVE_RATE)
    if classes is None or rate is None or len(json.loads(classes)) != 2:
        return None
    return json.loads(classes)[1], float(rate)


@shipway_task("canary-step")
def canary_task(settings: Settings, name: str, version: str, share: float) -> Analysis:
    """Canary against Production on the traffic of this step only."""
    from serving.prediction_log import read_feedback
    from tasks.promotion.analysis import canary_analysis, predicted_classes
    from tasks.quality.compare import version_task

    since = datetime.now(UTC)
    minimum = settings.promotion.min_requests
    counts = lambda log: {route: int((log["route"] == route).sum()) for route in ("canary", "production")}
    enough = lambda log: min(counts(log).values()) >= minimum
    progress = lambda log: ", ".join(f"{route} {n}/{minimum}" for route, n in counts(log).items())
    log = _traffic(settings, name, since, enough, f"canary {share:.0%}", progress)
    log = log[log["role"] != "shadow"]
    feedback = read_feedback(settings.prediction_log.url, log["request_id"])
    log = predicted_classes(log, registry.probability_classes(settings, name, log["model_version"].unique()))
    task = version_task(registry.get_version(settings, name, version).tags)
    return canary_analysis(log, feedback, settings.promotion, f"canary {share:.0%}", task)


def _traffic(
    settings: Settings,
    name: str,
    since: datetime,
    enough: Callable[[pd.DataFrame], bool],
    step: str,
    progress: Callable[[pd.DataFrame], str],
) -> pd.DataFrame:
    """Wait until the log since `since` holds enough requests, or the step's time is up; say how far
    it is every `promotion.progress_seconds`."""
    from serving.prediction_log import read_window

    start = time.monotonic()
    deadline = start + settings.promotion.step_seconds
    told = start
    while True:
        log = read_window(settings.prediction_log.url, since, datetime.now(UTC), model_name=name)
        now = time.monotonic()
        if enough(log) or now >= deadline:
            return log
        if now - told >= settings.promotion.progress_seconds:
            print(f"{step}: waiting for traffic: {progress(log)}; {deadline - now:.0f} s left")
            told = now
        time.sleep(settings.promotion.poll_seconds)


def _routes(log: pd.DataFrame) -> str:
    counts = log["route"].value_counts() if len(log) else {}
    return ", ".join(f"{route} {int(n)}" for route, n in sorted(dict(counts).items())) or "no requests yet"


def _paired(log: pd.DataFrame, version: str) -> int:
    shadow = log[(log["role"] == "shadow") & (log["model_version"] == version)]
    return int(log[log["role"] == "production"]["request_id"].isin(shadow["request_id"]).sum())


def _publish(analysis: Analysis, name: str, version: str) -> str:
    """The analysis as a Prefect markdown artifact; returns the evidence recorded with decisions."""
    create_markdown_artifact(
        analysis.markdown(),
        key=artifact_key(name, analysis.stage),
        description=f"{name} version {version}: {analysis.stage}",
    )
    print(analysis.markdown())
    return analysis.evidence()


def _require_approval(settings: Settings, name: str, version: str, stage: str, evidence: list[str], actor: str) -> None:
    """Pause for a reviewer; a rejection or a timeout ends the promotion as rejected."""
    from prefect.settings import PREFECT_API_URL, get_current_settings

    run_id = str(_flow_run().id)
    waiting = {"run_id": run_id, "stage": stage, "version": version, "since": datetime.now(UTC).isoformat()}
    registry.set_model_tag(settings, name, Tag.AWAITING_APPROVAL, json.dumps(waiting))
    api_url, home = PREFECT_API_URL.value(), get_current_settings().home
    if api_url:  # where `shipway approve` can resume this run without starting Prefect itself
        note_paused(run_id, api_url, home)
    print(f"waiting for approval of {name} version {version} ({stage}): shipway approve {run_id} [--reject]")
    form = Approval.with_initial_data(
        description=f"### Promote **{name}** version **{version}** ({stage})?\n\n"
        + _evidence_markdown(evidence)
        + "\n\nChoose **approve** or **reject** and give your name: nothing is decided for you."
    )
    try:
        decision = pause_flow_run(
            wait_for_input=form,
            timeout=settings.promotion.approval_timeout_seconds,
            poll_interval=max(1, round(settings.promotion.poll_seconds)),
        )
        verdict = "approved" if decision.approved else "rejected"
    except FlowPauseTimeout:
        decision = Approval(
            decision="reject",
            reviewer="timeout",
            comment=f"no answer in {settings.promotion.approval_timeout_seconds} s",
        )
        verdict = "timeout"
    finally:
        registry.delete_model_tag(settings, name, Tag.AWAITING_APPROVAL)
        paused_note(run_id, home).unlink(missing_ok=True)
    record_approval(
        settings,
        name,
        version,
        stage=stage,
        decision=verdict,
        reviewer=decision.reviewer,
        comment=decision.comment,
        flow_run=run_id,
        evidence=[json.loads(e) for e in evidence],
    )
    get_run_logger().info("%s: %s by %s (%s)", stage, verdict, decision.reviewer, decision.comment)
    if not decision.approved:
        _end(settings, name, version, actor, f"{stage} approval rejected by {decision.reviewer}: {decision.comment}")


def _end(settings: Settings, name: str, version: str, actor: str, reason: str) -> None:
    """Stop the promotion: the candidate leaves Shadow and Canary, the canary share goes to 0."""
    aliases, _ = registry.model_state(settings, name)
    mine = {alias: None for alias in (Alias.SHADOW, Alias.CANARY) if aliases.get(alias.value) == version}
    move(settings, name, mine, actor=actor, reason=reason, canary_share=0.0)
    raise PromotionRejected(f"promotion of '{name}' version {version} stopped: {reason}")


def _evidence_markdown(evidence: list[str]) -> str:
    """The analyses as one table: each check, what was measured, the limit it had to meet."""
    if not evidence:
        return "No live traffic to compare with: nothing is in Production yet."
    rows = ["| step | check | measured | limit | verdict |", "| --- | --- | --- | --- | --- |"]
    for item in map(json.loads, evidence):
        for check in item["checks"]:
            verdict = "ok" if check["ok"] else "**BREACH**"
            rows.append(f"| {item['stage']} | {check['name']} | {check['value']} | {check['limit']} | {verdict} |")
    return "\n".join(rows)


def mark_crashed(dead: Lease, why: str) -> None:
    """The dead promotion's flow run, marked Crashed in Prefect (when it is a run of this Prefect database;
    a promotion that died starting up had none)."""
    from uuid import UUID

    if not dead.run_id:
        return

    from prefect import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Crashed

    with get_client(sync_client=True) as client:
        try:
            client.set_flow_run_state(UUID(dead.run_id), Crashed(message=why), force=True)
        except ObjectNotFound:
            pass


def _flow_run() -> FlowRun:
    """The promotion's own flow run (the flow is running: there is one)."""
    context = get_run_context()
    assert isinstance(context, FlowRunContext) and context.flow_run is not None
    return context.flow_run
