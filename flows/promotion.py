"""The promotion flow: Shadow analysis -> approval -> Canary steps -> approval -> Production.

Every alias move is a journaled, recorded step (tasks/aliases.py); a breach rolls the canary
back automatically; a rejection or an approval timeout ends the promotion with the aliases as
they were. Two promotions of one model never interleave: a Prefect global concurrency limit
of one slot per model is held for the whole flow.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import get_run_context
from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run

from configs.settings import Settings, load_settings
from core.errors import GateError, RegistryError
from core.vocabulary import Alias, Tag
from flows.approval import Approval
from flows.artifacts import artifact_key
from serving.prediction_log import read_feedback, read_window
from tasks import registry
from tasks.aliases import move, recover
from tasks.analysis import Analysis, canary_analysis, predicted_classes, shadow_analysis
from tasks.gate import gate, reference_for_model
from tasks.monitoring import served_inputs


class PromotionRejected(GateError):
    """A reviewer said no, the approval timed out, or the evidence breached a limit. Exit 1."""


@dataclass
class PromotionResult:
    model_name: str
    version: str
    previous: str | None
    evidence: list[str]


@flow(name="promotion", log_prints=True)
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
    run_id = str(get_run_context().flow_run.id)
    with _exclusive(settings, name, run_id):
        recover(settings, name, actor=actor)
        aliases, _ = registry.model_state(settings, name)
        version = version or aliases.get(Alias.SHADOW.value)
        if version is None:
            raise RegistryError(f"'{name}' has no Shadow version to promote; pass --version")
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
        if now.get(Alias.PRODUCTION.value) != production:  # compare-and-set: a rollback happened meanwhile
            _end(
                settings,
                name,
                version,
                actor,
                f"Production moved from {production} to {now.get(Alias.PRODUCTION.value)} during the promotion",
            )
        changes = {Alias.PRODUCTION: version, Alias.SHADOW: None, Alias.CANARY: None}
        if production is not None:
            changes[Alias.PREVIOUS] = production
        move(
            settings,
            name,
            changes,
            actor=actor,
            reason=f"promotion {run_id} approved",
            evidence=run_id,
            canary_share=0.0,
        )
        print(f"{name} version {version} is Production" + (f"; version {production} is Previous" if production else ""))
        return PromotionResult(name, version, production, evidence)


@task(name="shadow-analysis", cache_policy=NO_CACHE)
def shadow_task(settings: Settings, name: str, version: str) -> Analysis:
    """Shadow's predictions against Production's on the same live requests of the last
    `promotion.step_seconds` (waiting, up to that long again, until there are enough)."""
    since = datetime.now(UTC) - pd.Timedelta(seconds=settings.promotion.step_seconds)
    enough = lambda log: _paired(log, version) >= settings.promotion.min_requests
    log = _traffic(settings, name, since, enough)
    inputs = served_inputs(log)
    drift = None
    if len(inputs):  # what Production was asked, against the candidate's own data contract
        drift = gate(
            inputs, reference_for_model(settings, f"{name}/{version}"), settings, "shadow traffic"
        ).verdict.value
    log = predicted_classes(log, registry.probability_classes(settings, name, log["model_version"].unique()))
    return shadow_analysis(log, settings.promotion, drift_verdict=drift)


@task(name="canary-step", cache_policy=NO_CACHE)
def canary_task(settings: Settings, name: str, version: str, share: float) -> Analysis:
    """Canary against Production on the traffic of this step only."""
    since = datetime.now(UTC)
    minimum = settings.promotion.min_requests
    enough = lambda log: (log["route"] == "canary").sum() >= minimum and (log["route"] == "production").sum() >= minimum
    log = _traffic(settings, name, since, enough)
    log = log[log["role"] != "shadow"]
    feedback = read_feedback(settings.prediction_log.url, log["request_id"])
    log = predicted_classes(log, registry.probability_classes(settings, name, log["model_version"].unique()))
    return canary_analysis(log, feedback, settings.promotion, f"canary {share:.0%}")


def _traffic(settings: Settings, name: str, since: datetime, enough: Callable[[pd.DataFrame], bool]) -> pd.DataFrame:
    """Wait until the log since `since` holds enough requests, or the step's time is up."""
    deadline = time.monotonic() + settings.promotion.step_seconds
    while True:
        log = read_window(settings.prediction_log.url, since, datetime.now(UTC), model_name=name)
        if enough(log) or time.monotonic() >= deadline:
            return log
        time.sleep(settings.promotion.poll_seconds)


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
    run_id = str(get_run_context().flow_run.id)
    waiting = {"run_id": run_id, "stage": stage, "version": version, "since": datetime.now(UTC).isoformat()}
    registry.set_model_tag(settings, name, Tag.AWAITING_APPROVAL, json.dumps(waiting))
    print(f"waiting for approval of {name} version {version} ({stage}): shipway approve {run_id} [--reject]")
    form = Approval.with_initial_data(
        description=f"Promote **{name}** version **{version}** ({stage})?\n\n" + _evidence_markdown(evidence),
        reviewer="",
        comment="",
    )
    try:
        decision = pause_flow_run(
            wait_for_input=form,
            timeout=settings.promotion.approval_timeout_seconds,
            poll_interval=max(1, round(settings.promotion.poll_seconds)),
        )
    except FlowPauseTimeout:
        decision = Approval(
            approve=False, reviewer="timeout", comment=f"no answer in {settings.promotion.approval_timeout_seconds} s"
        )
    finally:
        registry.delete_model_tag(settings, name, Tag.AWAITING_APPROVAL)
    record = {
        "approved": decision.approve,
        "reviewer": decision.reviewer,
        "comment": decision.comment,
        "at": datetime.now(UTC).isoformat(),
        "run_id": run_id,
        "evidence": [json.loads(e) for e in evidence],
    }
    registry.set_version_tags(settings, name, version, {f"approval.{stage}": json.dumps(record)})
    get_run_logger().info(
        "%s: %s by %s (%s)", stage, "approved" if decision.approve else "rejected", decision.reviewer, decision.comment
    )
    if not decision.approve:
        _end(settings, name, version, actor, f"{stage} approval rejected by {decision.reviewer}: {decision.comment}")


def _end(settings: Settings, name: str, version: str, actor: str, reason: str) -> None:
    """Stop the promotion: the candidate leaves Shadow and Canary, the canary share goes to 0."""
    aliases, _ = registry.model_state(settings, name)
    mine = {alias: None for alias in (Alias.SHADOW, Alias.CANARY) if aliases.get(alias.value) == version}
    move(settings, name, mine, actor=actor, reason=reason, canary_share=0.0)
    raise PromotionRejected(f"promotion of '{name}' version {version} stopped: {reason}")


def _evidence_markdown(evidence: list[str]) -> str:
    if not evidence:
        return "No live traffic to compare with: nothing is in Production yet."
    lines = []
    for item in map(json.loads, evidence):
        checks = ", ".join(f"{c['name']} {c['value']}" for c in item["checks"])
        lines.append(f"- {item['stage']}: {'passed' if item['passed'] else 'BREACHED'}: {checks}")
    return "\n".join(lines)


@contextmanager
def _exclusive(settings: Settings, name: str, run_id: str) -> Iterator[None]:
    """Hold the model's promotion slot (a Prefect global concurrency limit of 1) or say who does."""
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    limit = f"shipway-promotion-{name}"
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(limit)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=limit, limit=1))
            except ObjectAlreadyExists:  # created meanwhile by another promotion
                pass
    with ExitStack() as held:
        try:
            held.enter_context(concurrency(limit, occupy=1, timeout_seconds=2, strict=True))
        except TimeoutError:
            _, tags = registry.model_state(settings, name)
            raise PromotionRejected(
                f"another promotion of '{name}' is in progress (flow run "
                f"{tags.get(Tag.PROMOTION_RUN, 'unknown')}): wait for it to end or answer it"
            ) from None
        registry.set_model_tag(settings, name, Tag.PROMOTION_RUN, run_id)
        yield
