"""The skew gate in the journey: which contract a batch meets, where its report goes, what is logged.

`shipway validate` checks batches against a model version's contract (or a snapshot's); the
training flow gates new data against the Production version's contract before training, and
logs the new version's own contract after registering it.
"""

from __future__ import annotations

import getpass
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from configs.settings import Settings
from core.errors import DataError, GateError
from core.refs import ModelRef
from core.vocabulary import Alias, Tag, Verdict
from expectations import contract
from serving import RegistryReader
from tasks.data.snapshot import Snapshot, check_source, read_snapshot, read_source
from tasks.data.storage import open_store
from tasks.gate.contract_checks import validate
from tasks.gate.drift_report import ReportFiles, table_rows, write_report
from tasks.gate.verdict import GateReport
from tasks.training import sensitive

if TYPE_CHECKING:
    from tasks.release.registration import Registered

# `shipway validate` must answer in a few seconds: MLflow's client (tasks.release.registry), Prefect
# and scikit-learn are imported by the steps that use them, not here (tests/flows/test_fast_start.py).

BATCH_SUFFIXES = (".csv", ".parquet", ".pq")


@dataclass(frozen=True)
class Reference:
    """The contract a batch is checked against, and where it came from."""

    suite: dict[str, Any]
    model: str | None = None
    version: str | None = None
    snapshot_id: str | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "suite": self.suite.get("name"),
            "model": self.model,
            "version": self.version,
            "snapshot_id": self.snapshot_id,
        }


@dataclass
class GateOutcome:
    """What the training flow's gate decided, for the version the flow registers next."""

    verdict: str  # pass, warn, fail, or not_gated when there was no Production version
    files: list[Path] = field(default_factory=list)
    folder: str = ""
    tags: dict[str, str] = field(default_factory=dict)


def contract_for_snapshot(
    settings: Settings, snapshot: Snapshot, target: str | None, features: list[str] | None = None
) -> dict[str, Any]:
    """The contract of the model's feature columns (default: as data.features / data.exclude choose them)."""
    columns = list(snapshot.frame.columns)
    target = target if target in columns else None
    if features is None and _chooses_features(settings):
        from tasks.features import choose_features  # scikit-learn: not for a check against a logged contract

        features = choose_features(columns, target or "", settings.data)
    frame, rules, key_check = sensitive.for_contract(snapshot.frame, settings)
    return contract.build_contract(
        frame,
        settings.gate,
        name=f"{settings.training.model_name}-{snapshot.id[:12]}",
        target=target,
        snapshot_id=snapshot.id,
        features=features,
        text_columns=settings.data.text_columns,
        sensitive={c: rule for c, rule in rules.items() if c in columns},
        hash_key_check=key_check,
    )


def _chooses_features(settings: Settings) -> bool:
    data = settings.data
    return data.features is not None or bool(data.exclude) or data.time_column is not None


def reference_for_model(settings: Settings, model: str) -> Reference:
    """The contract logged with NAME@ALIAS; versions from before contracts get one built from their snapshot.

    A logged contract matching the sha256 the version records is byte for byte the one shipway built
    and logged, not a hand edit: GX's check (its import alone takes seconds) is for the others."""
    ref = ModelRef.parse(model)
    reader = RegistryReader(settings)  # on a database store, MLflow's tables read without MLflow
    version = reader.resolve(ref)
    tags = reader.version_tags(ref.name, version)
    suite = reader.contract(ref.name, version, tags)
    snapshot_id = tags.get("data_snapshot_id")
    if suite is not None and tags.get(Tag.EXPECTATION_SUITE_SHA256):
        return Reference(suite, ref.name, version, snapshot_id)
    if suite is None:
        if not snapshot_id:
            raise DataError(f"version {version} of '{ref.name}' has no contract and no data_snapshot_id")
        snapshot = read_snapshot(open_store(settings.snapshots.store, settings.s3), snapshot_id)
        suite = contract_for_snapshot(settings, snapshot, tags.get("target"))
    return Reference(contract.check(suite, model), ref.name, version, snapshot_id)


def reference_for_snapshot(settings: Settings, snapshot_id: str) -> Reference:
    snapshot = read_snapshot(open_store(settings.snapshots.store, settings.s3), snapshot_id)
    return Reference(contract_for_snapshot(settings, snapshot, settings.data.target), snapshot_id=snapshot_id)


def user_suites(settings: Settings) -> list[dict[str, Any]]:
    """The user's own suites: every *.json in gate.expectations_dir, run by GX alongside the contract."""
    folder = Path(settings.gate.expectations_dir)
    return [contract.load(path) for path in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def gate(
    batch: pd.DataFrame, reference: Reference, settings: Settings, batch_name: str, *, logged: bool = False
) -> GateReport:
    """`batch` against the reference's contract. `logged`: the batch is read from the prediction log,
    so its sensitive columns are as serving.sensitive_columns left them (hashed, or dropped); else it
    is plain data, whose sensitive columns are hashed here as the contract holds them (tasks/training/sensitive.py)."""
    suite, batch, notes = sensitive.for_check(reference.suite, batch, settings, logged=logged)
    return validate(
        batch,
        suite,
        settings.gate,
        batch_name=batch_name,
        reference=reference.describe() | ({"sensitive_columns": notes} if notes else {}),
        user_suites=user_suites(settings),
    )


def stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


# --- shipway validate ------------------------------------------------------------------------------


def batch_sources(batches: tuple[str, ...]) -> list[str]:
    """Each --batch: a file, s3:// object, or a folder of .csv/.parquet files (in name order)."""
    sources: list[str] = []
    for batch in batches:
        path = Path(batch)
        if not batch.startswith("s3://") and path.is_dir():
            found = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in BATCH_SUFFIXES)
            if not found:
                raise DataError(f"folder {batch} holds no .csv or .parquet batch")
            sources += found
        else:
            check_source(batch)
            sources.append(batch)
    return sources


def report_paths(sources: list[str], report: Path | None, default_dir: Path) -> list[Path]:
    """Where each batch's JSON report goes: --report FILE.json for one batch, a folder for several."""
    stems = [Path(s).stem for s in sources]
    if len(set(stems)) < len(stems):
        raise DataError(f"batches share a file name, so their reports would collide: {', '.join(stems)}")
    if report is None:
        return [default_dir / f"{stem}.json" for stem in stems]
    if len(sources) == 1 and report.suffix.lower() == ".json":
        return [report]
    if report.suffix.lower() == ".json":
        raise DataError(f"--report {report}: with {len(sources)} batches, --report names a folder, not a .json file")
    return [report / f"{stem}.json" for stem in stems]


def validate_batches(
    settings: Settings,
    sources: list[str],
    reference: Reference,
    report: Path | None,
    on_batch: Callable[[GateReport], None] | None = None,
    record: bool = False,
) -> list[tuple[GateReport, ReportFiles]]:
    """Gate each batch and write its report files; with `record`, log them with the model version.
    `on_batch` is told of each batch's report as it is written (the CLI's progress bar).

    A batch check never changes the version's `validation_status` (its training gate's verdict, which
    alias moves read): recorded, the worst verdict goes to `last_check_status` instead.
    """
    label = (
        f"{reference.model}-v{reference.version}"
        if reference.model
        else f"snapshot-{(reference.snapshot_id or '')[:12]}"
    )
    folder = f"{stamp()}-{label}"
    paths = report_paths(sources, report, Path(settings.gate.report_dir) / folder)
    done = []
    for source, path in zip(sources, paths, strict=True):
        frame = read_source(source, settings)
        result = gate(frame, reference, settings, batch_name=source)
        done.append((result, write_report(result, path)))
        if on_batch is not None:
            on_batch(result)
    if record and reference.model and reference.version:
        from tasks.release import registry

        worst = max((r.verdict for r, _ in done), key=lambda v: v.rank)
        for _, files in done:
            registry.log_gate_report(
                settings,
                files.paths(),
                worst.value,
                name=reference.model,
                version=reference.version,
                folder=f"{folder}/{files.json.stem}",
                status_tag=Tag.LAST_CHECK_STATUS,
            )
    return done


# --- the training flow's steps ---------------------------------------------------------------------


def gate_new_data(
    settings: Settings, snapshot: Snapshot, force: bool = False, reason: str | None = None
) -> GateOutcome:
    """New training data against the Production version's contract; a fail stops training unless forced."""
    from prefect.artifacts import create_table_artifact

    from tasks.release import registry

    name = settings.training.model_name
    production = registry.alias_version(settings, name, Alias.PRODUCTION)
    if production is None:
        return GateOutcome("not_gated")
    reference = reference_for_model(settings, f"{name}@{Alias.PRODUCTION.value}")
    report = gate(snapshot.frame, reference, settings, batch_name=f"snapshot {snapshot.id[:12]}")
    folder = f"{stamp()}-training-{snapshot.id[:12]}"
    files = write_report(report, Path(settings.gate.report_dir) / folder / "report.json")
    create_table_artifact(
        key="training-gate",
        table=table_rows(report),
        description=f"New data (snapshot {snapshot.id[:12]}) vs {name} version {production} (Production): "
        f"{report.verdict.value}: {report.reason}",
    )
    outcome = GateOutcome(report.verdict.value, files.paths(), folder, {"gate_reference": f"{name}/{production}"})
    if report.verdict != Verdict.FAIL:
        return outcome
    if not force:
        registry.log_gate_report(settings, files.paths(), "fail", name=name, version=None, folder=folder)
        raise GateError(
            f"gate: the new data drifted from {name} version {production} (Production): {report.causes(3)}; "
            f"report: {files.json} (override with --force-gate --reason TEXT)"
        )
    outcome.verdict = "overridden"
    outcome.tags |= {
        "gate_override": reason or "",
        "gate_override_by": getpass.getuser(),
        "gate_override_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "gate_override_columns": ",".join(report.columns_with(Verdict.FAIL)),
    }
    return outcome


def record_gate(settings: Settings, registered: Registered, outcome: GateOutcome) -> None:
    """The data gate's report and verdict, logged with the new version as soon as it exists: a version
    the quality gate then refuses still says what the gate found in its data."""
    from tasks.release import registry
    from tasks.release.decisions import record_override

    if outcome.files:
        registry.log_gate_report(
            settings,
            outcome.files,
            outcome.verdict,
            name=registered.name,
            version=registered.version,
            folder=outcome.folder,
            tags=outcome.tags,
        )
    else:
        registry.set_version_tags(settings, registered.name, registered.version, {"validation_status": outcome.verdict})
    if outcome.verdict == "overridden":  # the tag holds 250 characters of the reason; the record all of it
        record_override(
            settings,
            registered.name,
            registered.version,
            kind="data gate",
            by=outcome.tags["gate_override_by"],
            reason=outcome.tags["gate_override"],
            detail=f"failed columns: {outcome.tags['gate_override_columns']}",
        )


def publish_contract(
    settings: Settings, snapshot: Snapshot, target: str, registered: Registered, features: list[str] | None = None
) -> str:
    """The new version's own contract (of its features), logged with the version: its URI."""
    from tasks.release import registry

    return registry.log_contract(
        settings, registered.name, registered.version, contract_for_snapshot(settings, snapshot, target, features)
    )
