"""The training flow: snapshot -> gate -> train -> register -> quality -> contract -> bench -> alias Shadow."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from prefect import flow, get_run_logger

from configs.settings import Settings, load_settings
from core.errors import GateError, RegistryError
from core.owner import Owner
from core.vocabulary import Alias, Tag
from flows.run_labels import label_run
from flows.run_labels import run_name as labelled
from tasks.benchmark.latency import bench_task
from tasks.data.snapshot import Snapshot, take_snapshot
from tasks.gate.skew import GateOutcome, gate_new_data, publish_contract, record_gate
from tasks.quality.compare import check_quality
from tasks.release import registry
from tasks.release.aliases import move
from tasks.release.lineage import project_lineage
from tasks.release.registration import Registered, mark_unfinished, register
from tasks.retries import shipway_task
from tasks.training.pipeline import train_task


@dataclass
class TrainingResult:
    model_name: str
    version: str
    run_id: str
    snapshot_id: str
    snapshot_uri: str
    snapshot_reused: bool
    metrics: dict[str, float]
    task: str = ""  # binary, multiclass or regression (training.task, resolved)
    gate: str = "not_gated"  # pass, warn, overridden, or not_gated (no Production version yet)
    quality: str = ""  # the quality gate: passed or overridden (a failure ends the flow)
    contract_uri: str = ""
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step, orchestration included


def run_name() -> str:
    """train-MODEL-STORE: which model of which tracking store (a short hash of its URI) a run trains; the
    version is added once registered (flows/run_labels.py)."""
    from prefect.runtime import flow_run

    settings = flow_run.parameters.get("settings")
    if not isinstance(settings, Settings):
        settings = load_settings(flow_run.parameters.get("config"))
    return labelled("train", settings.training.model_name, settings)


@flow(name="training", log_prints=True, flow_run_name=run_name)
def training_flow(
    data: str | None = None,
    target: str | None = None,
    config: str | None = None,
    force_gate: bool = False,
    reason: str | None = None,
    settings: Settings | None = None,
    force_quality: bool = False,
) -> TrainingResult:
    """Snapshot the data, gate it against Production's contract, train the pipeline and its baseline,
    register the version, judge its quality, log its contract, benchmark it, make it Shadow.
    `force_gate` trains despite a failed data gate, `force_quality` goes on despite a failed quality
    gate; `reason` is recorded on the version. The CLI and tests pass `settings`;
    a deployment names its profile by `config` (or SHIPWAY_CONFIG)."""
    settings = settings or load_settings(config)
    source = data or settings.data.source
    target = target or settings.data.target
    timings: dict[str, float] = {}

    with _timed(timings, "snapshot"):
        snapshot = snapshot_task(source, settings, target)
    with _timed(timings, "gate"):
        gate = gate_task(settings, snapshot, force_gate, reason)
    with _timed(timings, "train"):
        trained = train_task(snapshot.frame, target, settings)
    unfinished = _unfinished()
    with _until_verdict(settings, unfinished, timings) as verdict:  # from the moment the version exists
        with _timed(timings, "register"):
            registered = verdict.registered = register(
                trained, snapshot, project_lineage(settings.training), settings, unfinished
            )
            record_gate(settings, registered, gate)  # before the quality gate: a refused version keeps it
        label_run("train", registered.name, registered.version, settings)
        shadow = registry.alias_version(settings, registered.name, Alias.SHADOW)  # the state this version follows
        with _timed(timings, "quality"):  # a failure ends the flow here: registered, without an alias
            quality = check_quality(
                settings, registered, trained.model, trained.baseline, trained.X_holdout, trained.y_holdout,
                force_quality, reason, snapshot.frame.loc[trained.holdout_index].drop(columns=target),
            )  # fmt: skip
        with _timed(timings, "contract"):
            contract_uri = contract_task(settings, snapshot, target, registered, trained.features)
            get_run_logger().info("contract of %s version %s: %s", registered.name, registered.version, contract_uri)
        with _timed(timings, "bench"):
            bench_task(settings, registered.name, registered.version)  # over the p99 budget: no Shadow
    with _timed(timings, "alias"):
        alias_task(
            settings,
            registered.name,
            Alias.SHADOW,
            registered.version,
            actor="training flow",
            reason=f"trained on snapshot {snapshot.id[:12]}",
            expect=shadow,  # a concurrent training that moved Shadow first wins; this one is told
        )

    return TrainingResult(
        model_name=registered.name,
        version=registered.version,
        run_id=registered.run_id,
        snapshot_id=snapshot.id,
        snapshot_uri=snapshot.uri,
        snapshot_reused=not snapshot.created,
        metrics=trained.metrics,
        task=trained.task.value,
        gate=gate.verdict,
        quality=quality.verdict,
        contract_uri=contract_uri,
        timings=timings,
    )


# The tasks of the steps that fast commands also take (`shipway validate` reads snapshots and checks
# contracts; the CLI and the promotion lease move aliases) wrap their function here, next to their
# flow, so those commands never import Prefect.


@shipway_task("snapshot", io=True)
def snapshot_task(source: str, settings: Settings, target: str | None = None) -> Snapshot:
    snap = take_snapshot(source, settings, target)
    verb = "stored" if snap.created else "reused identical"
    get_run_logger().info("%s snapshot %s (%d rows) at %s", verb, snap.id[:12], snap.manifest.rows, snap.uri)
    return snap


@shipway_task("gate")
def gate_task(settings: Settings, snapshot: Snapshot, force: bool = False, reason: str | None = None) -> GateOutcome:
    outcome = gate_new_data(settings, snapshot, force, reason)
    logger = get_run_logger()
    if outcome.verdict == "not_gated":
        logger.info(
            "no Production version of %s yet: nothing to gate the new data against", settings.training.model_name
        )
    elif outcome.verdict == "overridden":
        logger.warning("gate failed and was overridden (%s); report: %s", reason, outcome.files[0])
    else:
        logger.info("gate %s; report: %s", outcome.verdict, outcome.files[0])
    return outcome


contract_task = shipway_task("contract", io=True)(publish_contract)


@shipway_task("set-alias", io=True, retry_delay_seconds=[1, 5])
def alias_task(
    settings: Settings, name: str, alias: Alias, version: str, *, actor: str, reason: str, expect: str | None = None
) -> None:
    """One alias move of a flow, recorded and checked like every other (the gateway can load it);
    refused (AliasMoved) if `alias` no longer points where it did (`expect`) when the flow decided.
    Here, not in tasks/release/aliases.py (see above)."""
    move(settings, name, {alias: version}, actor=actor, reason=reason, expect={alias: expect})
    get_run_logger().info("%s@%s -> version %s", name, alias.value, version)


VERDICT_STEPS = ("quality", "contract", "bench")  # after them the version is judged: complete, aliased or not


def _unfinished() -> str:
    """The tag a version is registered with until its gates have decided (a kill -9 leaves it so)."""
    from prefect.runtime import flow_run

    return f"training flow run {flow_run.id} ({Owner.current()}) has not reached its gates' verdicts"


@dataclass
class _Verdict:
    registered: Registered | None = None  # once `register` has returned it


@contextmanager
def _until_verdict(settings: Settings, unfinished: str, timings: dict[str, float]) -> Iterator[_Verdict]:
    """Clear the version's `unfinished` tag once its gates have decided: passed, or a gate refused it
    (GateError: the verdict is on the version). A signal or a failure before then is written there,
    the step after registration included: the version exists before `register` has returned it."""
    verdict = _Verdict()

    def decided() -> None:
        if verdict.registered is not None:  # the block registers before a gate can decide
            registry.delete_version_tag(settings, verdict.registered.name, verdict.registered.version, Tag.UNFINISHED)

    try:
        yield verdict
        decided()
    except GateError:
        decided()
        raise
    except BaseException as exc:  # a stop while the mark is cleared, after the verdicts, is one "during alias"
        step = next(step for step in ("register", *VERDICT_STEPS, "alias") if step not in timings)
        for name, version in _unfinished_versions(settings, verdict.registered, unfinished):
            mark_unfinished(settings, name, version, exc, step)
        raise


def _unfinished_versions(settings: Settings, registered: Registered | None, unfinished: str) -> list[tuple[str, str]]:
    """The version this flow run registered: as returned, or found by its `unfinished` tag (none yet)."""
    if registered is not None:
        return [(registered.name, registered.version)]
    name = settings.training.model_name
    try:
        found, _ = registry.versions(settings, name)
    except RegistryError:  # no registered model yet
        return []
    return [(name, str(v.version)) for v in found if v.tags.get(Tag.UNFINISHED) == unfinished]


@contextmanager
def _timed(timings: dict[str, float], step: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[step] = round(time.perf_counter() - start, 3)
