"""The `shipway` command line. Exit 0: done; 1: a gate or check said no; 2: bad usage or input;
143: stopped by SIGTERM, 130: by Ctrl-C (SIGINT), at any stage, with one line and no traceback (a
promotion stopped so puts back what it had moved, as the next one would for a killed one).

Flows and MLflow are imported inside the commands: the profile must set the environment
(PREFECT_API_URL, the S3 endpoint) before Prefect reads it, and `--help` stays fast.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, TypeVar

import click
from rich.console import Console
from rich.table import Table

from core.errors import ShipwayError
from core.integrity import HASH_TAGS
from core.stops import Terminated, signal_of, stop_in

if TYPE_CHECKING:  # the profile's schema takes a second to build: only commands that read a profile pay it
    from mlflow.entities.model_registry import ModelVersion

    from configs.settings import Settings
    from flows.monitor import MonitoringResult
    from flows.train import TrainingResult
    from serving import VersionRow
    from tasks.gate.drift_report import ReportFiles
    from tasks.gate.verdict import GateReport

    Gated = list[tuple[GateReport, ReportFiles]]

Command = TypeVar("Command", bound=Callable[..., object])

PORT = click.IntRange(0, 65535)  # as the profile's serving.port: bind() would fail with a traceback
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)


class _Cli(click.Group):
    """Turns a ShipwayError into one line on stderr and its exit code, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ShipwayError as exc:
            click.echo(f"shipway: error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except BaseException as exc:
            signum = signal_of(exc)
            if signum is None:
                raise
            click.echo(f"shipway: stopped by {signal.Signals(signum).name}", err=True)
            ctx.exit(128 + signum)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def _redeliver_swallowed_signal(unraisable: sys.UnraisableHookArgs) -> None:
    """A signal's exception raised inside a garbage-collection callback (SQLAlchemy's weakref ones)
    is printed and dropped by Python: the stop would be lost and the command run on. Send the signal
    again, once the callback has returned, and print nothing."""
    signum = signal_of(unraisable.exc_value) if unraisable.exc_value is not None else None
    if signum is None:
        sys.__unraisablehook__(unraisable)
        return
    again = threading.Timer(0.05, os.kill, (os.getpid(), signum))
    again.daemon = True
    again.start()


def install_signal_handlers() -> None:
    """SIGTERM unwinds like Ctrl-C (cleanups run, the temporary Prefect server stops), and no stop
    is lost in a callback that swallows exceptions."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    sys.unraisablehook = _redeliver_swallowed_signal


def config_option(command: Command) -> Command:
    return click.option(
        "--config",
        "config_path",
        type=click.Path(path_type=Path, dir_okay=False),
        envvar="SHIPWAY_CONFIG",
        help="YAML profile (default: the embedded default, configs/default.yaml).",
    )(command)


def _settings(config_path: Path | None) -> Settings:
    """Load the profile and export what Prefect and MLflow read from the environment."""
    from configs.settings import RenamedSetting, load_settings

    with warnings.catch_warnings(record=True, action="always", category=RenamedSetting) as caught:
        settings = load_settings(config_path)
    for warning in caught:  # a renamed key in one line, as an error would be; any other warning as Python shows it
        if issubclass(warning.category, RenamedSetting):
            click.echo(f"shipway: warning: {warning.message}", err=True)
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    if settings.prefect.api_url:
        os.environ["PREFECT_API_URL"] = settings.prefect.api_url
    if settings.s3.endpoint_url:
        os.environ.setdefault("MLFLOW_S3_ENDPOINT_URL", settings.s3.endpoint_url)
    _quiet_expected_tracebacks()
    return settings


def _start_prefect_early(settings: Settings) -> Callable[[], None]:
    """In ephemeral mode, start Prefect's temporary server now, while the flow's modules import.

    Returns the wait to call before the first flow run. Call it before anything imports prefect:
    the API URL it sets is read then.
    """
    if settings.prefect.api_url or os.environ.get("PREFECT_API_URL") or "prefect" in sys.modules:
        return lambda: None  # a server is named, or Prefect already read its settings (in-process use)
    from flows.prefect_server import TemporaryPrefectServer

    server = TemporaryPrefectServer()
    server.start()
    return server.wait


def _quiet_expected_tracebacks() -> None:
    """Prefect logs each failed task or flow with its traceback; for a ShipwayError the message is
    enough, and an error a stop caused in a flow's own code ends in "stopped by" (`_Cli`)."""

    def drop_traceback(record: logging.LogRecord) -> bool:
        if record.exc_info and (error := record.exc_info[1]) and (isinstance(error, ShipwayError) or stop_in(error)):
            record.exc_info = None
            record.exc_text = None
        return True

    # MLflow logs a store error with its traceback (db.utils) before raising it; SQLAlchemy's pool, a
    # cursor it could not close (a stop cut its read off)
    for name in ("prefect.task_runs", "prefect.flow_runs", "mlflow.store.db.utils", "sqlalchemy.pool.impl.QueuePool"):
        logging.getLogger(name).addFilter(drop_traceback)


@click.group(cls=_Cli)
@click.version_option(package_name="shipway")
def cli() -> None:
    """shipway: take a scikit-learn model from data to production, safely."""


@cli.command()
@click.option(
    "--data", help="Training data: a .csv/.parquet file, s3://bucket/key, 'demo' or 'demo:SEED' (another draw)."
)
@click.option("--target", help="The label column (default: data.target of the profile).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--force-gate", is_flag=True, help="Train even if the data fails the gate (needs --reason).")
@click.option(
    "--force-quality", is_flag=True, help="Make the version Shadow even if it fails the quality gate (needs --reason)."
)
@click.option(
    "--reason", help="Why a gate is overridden; recorded on the version (tags gate_override, quality_override)."
)
@config_option
def train(
    config_path: Path | None,
    data: str | None,
    target: str | None,
    as_json: bool,
    force_gate: bool,
    force_quality: bool,
    reason: str | None,
) -> None:
    """Snapshot -> gate -> train -> register -> quality -> contract -> bench -> Shadow."""
    for flag, given in (("--force-gate", force_gate), ("--force-quality", force_quality)):
        if given and not (reason or "").strip():
            raise click.UsageError(f"{flag} needs --reason TEXT: the override is recorded on the version")
    from core.sources import check_source

    if data:
        check_source(data)  # a missing file is answered at once, before the profile and Prefect load
    settings = _settings(config_path)
    check_source(data or settings.data.source)
    prefect_ready = _start_prefect_early(settings)
    from flows.train import training_flow

    prefect_ready()
    result = training_flow(
        data=data,
        target=target,
        force_gate=force_gate,
        reason=reason,
        settings=settings,
        force_quality=force_quality,
    )
    if as_json:
        click.echo(json.dumps(asdict(result), indent=2))
        return
    _print_training(result)


def _print_training(result: TrainingResult) -> None:
    reused = " (identical data: reused, nothing written)" if result.snapshot_reused else ""
    metrics = "  ".join(f"{k} {v:.3f}" for k, v in result.metrics.items())
    steps = " · ".join(f"{k} {v:.1f}s" for k, v in result.timings.items())
    console.print(f"[bold]{result.model_name}[/] version [bold]{result.version}[/] is now Shadow")
    console.print(f"  snapshot  {result.snapshot_id}{reused}")
    console.print(f"            {result.snapshot_uri}")
    console.print(f"  holdout   {metrics}")
    console.print(f"  gate      {result.gate}")
    console.print(f"  quality   {result.quality}")
    console.print(f"  steps     {steps}")


@cli.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print versions, aliases and tags as JSON.")
@config_option
def status(config_path: Path | None, name: str, as_json: bool) -> None:
    """Versions, aliases and lineage of registered model NAME."""
    settings = _settings(config_path)
    from core.vocabulary import Tag
    from tasks.release.status import model_status

    state = model_status(settings, name)  # no MLflow import on a database store
    found, aliases, tags, transitions = state.versions, state.aliases, state.tags, state.history
    waiting = tags.get(Tag.AWAITING_APPROVAL)
    lease = json.loads(tags[Tag.PROMOTION_LEASE]) if Tag.PROMOTION_LEASE in tags else None
    if as_json:
        payload = {
            "name": name,
            "aliases": aliases,
            "awaiting_approval": json.loads(waiting) if waiting else None,
            "promotion": lease,
            "release_record": tags.get(Tag.RELEASE_RECORD),
            "history": [asdict(t) for t in transitions],
            "versions": [
                {
                    "version": str(v.version),
                    "created": _time(v.creation_timestamp),
                    "run_id": v.run_id,
                    "description": v.description,
                    "tags": dict(v.tags),
                }
                for v in found
            ],
        }
        click.echo(json.dumps(payload, indent=2))
        return
    _print_status(name, found, aliases)
    if transitions:
        console.print("\n[bold]alias history[/] (newest last)")
        for t in transitions[-12:]:
            change = f"{t.previous or '-'} -> {t.version or '-'}"
            console.print(f"  {t.at[:19]}  {t.alias:<12} {change:<10} by {t.actor}: {t.reason}")
    if lease:
        console.print(
            f"\n[bold]promotion in progress[/]: flow run {lease['run_id']} ({lease['run_name']}), pid "
            f"{lease['owner']['pid']} on {lease['owner']['host']}, since {lease['since'][:19]}; lease until "
            f"{lease['expires'][11:19]} UTC"
        )
    if waiting:
        w = json.loads(waiting)
        console.print(
            f"\n[bold yellow]waiting for approval[/]: version {w['version']} ({w['stage']}) since "
            f"{w['since'][:19]}: shipway approve {w['run_id']} [--reject] [--comment TEXT]"
        )


def _print_status(name: str, found: Sequence[VersionRow | ModelVersion], aliases: dict[str, str]) -> None:
    roles: dict[str, list[str]] = {}
    for alias, version in sorted(aliases.items()):
        roles.setdefault(version, []).append(alias)
    table = Table(title=f"{name}: {len(found)} version(s)", title_justify="left")
    # The quality gate's metric of the newest version that names one: rmse for a regression model.
    metric = next((v.tags["quality_metric"] for v in found if "quality_metric" in v.tags), "roc_auc")
    columns = {  # header -> (tag or None, right-justified)
        "version": (None, True),
        "aliases": (None, False),
        "created": (None, False),
        "commit": ("git_commit", False),
        "dirty": ("git_dirty", False),
        "snapshot": ("data_snapshot_id", False),
        "rows": ("data_rows", True),
        metric: (f"metric_{metric}", True),
        "validation": ("validation_status", False),
        "quality": ("quality_gate", False),
        "p99 ms": ("latency_p99_ms", True),
    }
    for header, (_, right) in columns.items():
        table.add_column(header, justify="right" if right else "left", no_wrap=True)
    for v in found:
        version = str(v.version)
        fixed = [version, ", ".join(roles.get(version, [])) or "-", _time(v.creation_timestamp)]
        tagged = [_short(v.tags.get(tag, "-")) for tag, _ in list(columns.values())[3:] if tag]
        table.add_row(*fixed, *tagged)
    console.print(table)
    for v in [v for v in found if str(v.version) in roles] or found[:1]:
        console.print(
            f"\n[bold]version {v.version}[/] ({', '.join(roles.get(str(v.version), [])) or 'latest'}) lineage"
        )
        # The files' sha256 tags (64 hex characters each) are for the loaders and the MLflow UI, not this list.
        for key in sorted(k for k in v.tags if not k.startswith(("transition.", "approval.")) and k not in HASH_TAGS):
            console.print(f"  {key:<22} {v.tags[key]}")


def _short(value: str) -> str:
    """Hashes to 10 characters, figures to 4 significant digits: enough to tell versions apart."""
    if len(value) >= 40 and all(c in "0123456789abcdef" for c in value):
        return value[:10]
    try:
        return f"{float(value):.4g}" if "." in value else value
    except ValueError:
        return value


def _time(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M") if ms else "-"


@cli.command()
@click.option("--model", "model", metavar="NAME@ALIAS", help="Check against this version's contract.")
@click.option(
    "--reference", "snapshot_id", metavar="SNAPSHOT_ID", help="Check against a contract built from a snapshot."
)
@click.option(
    "--batch",
    "batches",
    multiple=True,
    required=True,
    metavar="SRC",
    help="A .csv/.parquet file, s3://bucket/key, or a folder of them. Repeatable.",
)
@click.option(
    "--report",
    type=click.Path(path_type=Path),
    metavar="PATH",
    help="Report FILE.json for one batch, a folder for several (default: under gate.report_dir).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the reports as JSON.")
@click.option(
    "--record",
    is_flag=True,
    help="Log the reports with the --model version and its worst verdict in tag last_check_status "
    "(validation_status, the training gate's verdict, is never changed by a check).",
)
@config_option
def validate(
    config_path: Path | None,
    model: str | None,
    snapshot_id: str | None,
    batches: tuple[str, ...],
    report: Path | None,
    as_json: bool,
    record: bool,
) -> None:
    """The skew gate: each batch against a contract. Exit 0 all pass (warnings allowed), 1 any fails."""
    if bool(model) == bool(snapshot_id):
        raise click.UsageError("give exactly one of --model NAME@ALIAS and --reference SNAPSHOT_ID")
    if record and not model:
        raise click.UsageError("--record needs --model: a check is recorded with a model version")
    settings = _settings(config_path)
    from core.errors import GateError
    from tasks.gate import skew as gate

    sources = gate.batch_sources(batches)
    if model:
        reference = gate.reference_for_model(settings, model)
    else:
        assert snapshot_id is not None  # exactly one of the two, checked above
        reference = gate.reference_for_snapshot(settings, snapshot_id)
    if len(sources) > 1:
        done = _with_progress(
            len(sources),
            lambda advance: gate.validate_batches(
                settings, sources, reference, report, on_batch=advance, record=record
            ),
        )
    else:
        done = gate.validate_batches(settings, sources, reference, report, record=record)
    if as_json:
        click.echo(json.dumps([r.to_dict() | {"files": [str(p) for p in f.paths()]} for r, f in done], indent=2))
    elif len(done) == 1:
        _print_gate(done)
    else:
        _print_gate_summary(done)
    failed = [r.batch for r, _ in done if r.verdict == "fail"]
    if failed:
        named = ", ".join(failed[:3]) + (f" and {len(failed) - 3} more" if len(failed) > 3 else "")
        raise GateError(f"gate: {len(failed)} of {len(done)} batch(es) failed: {named}")


def _with_progress(total: int, work: Callable[[Callable[[GateReport], None]], Gated]) -> Gated:
    """Run `work(advance)` under a progress bar of `total` batches (on stderr: stdout stays the result)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("validating"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"))
    with Progress(*columns, TimeRemainingColumn(), console=Console(stderr=True), transient=True) as progress:
        bar = progress.add_task("", total=total)
        counts: dict[str, int] = {}

        def advance(result: GateReport) -> None:
            counts[result.verdict.value] = counts.get(result.verdict.value, 0) + 1
            progress.update(bar, advance=1, description=" ".join(f"{k} {v}" for k, v in sorted(counts.items())))

        return work(advance)


def _print_gate(done: Gated) -> None:
    from tasks.gate.drift_report import table_rows

    for result, files in done:
        console.print(f"[bold]{result.batch}[/]: [{_COLORS[result.verdict]}]{result.verdict}[/] {result.reason}")
        for row in table_rows(result):
            if row["verdict"] != "pass":
                console.print(
                    f"  [{_COLORS[row['verdict']]}]{row['verdict']:<4}[/] {row['column']:<20} {row['reason']}"
                )
        console.print(f"  report    {files.json}" + (f"  picture {files.png}" if files.png else ""))


def _print_gate_summary(done: Gated, shown: int = 10) -> None:
    """Many batches: the ones that did not pass (the first `shown`), then counts and where the reports are."""
    noted = [(r, f) for r, f in done if r.verdict != "pass"]
    for result, _ in noted[:shown]:
        console.print(f"{result.batch}: [{_COLORS[result.verdict]}]{result.verdict}[/] {result.reason}")
    if len(noted) > shown:
        console.print(f"... and {len(noted) - shown} more that did not pass (their reports say why)")
    counts = {v: sum(r.verdict == v for r, _ in done) for v in ("pass", "warn", "fail")}
    folder = Path(os.path.commonpath([str(f.json.parent) for _, f in done]))
    console.print(
        f"[bold]{len(done)} batches[/]: "
        + ", ".join(f"[{_COLORS[v]}]{n} {v}[/]" for v, n in counts.items())
        + f"\n  reports in {folder}"
    )


_COLORS = {"pass": "green", "warn": "yellow", "fail": "red"}


@cli.command()
@click.option(
    "--model", "model", required=True, metavar="NAME@ALIAS", help="The version to score with (or NAME/VERSION)."
)
@click.option(
    "--batch",
    "batch",
    required=True,
    metavar="SRC",
    help="A .csv/.parquet file, s3://bucket/key, or a folder or S3 prefix of them (the partitions).",
)
@click.option("--out", "out", required=True, metavar="DST", help="A new or empty folder or s3://bucket/prefix.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@config_option
def score(config_path: Path | None, model: str, batch: str, out: str, as_json: bool) -> None:
    """Gate and score every partition of a batch on Dask into partitioned Parquet. Exit 1 when a
    partition fails the gate and scoring.on_failed_partition is stop (then nothing is written)."""
    settings = _settings(config_path)
    from tasks.scoring.batch import score as run_scoring
    from tasks.scoring.batch import summary

    result = run_scoring(settings, model, batch, out)
    if as_json:
        click.echo(json.dumps(summary(result), indent=2))
        return
    console.print(
        f"[bold]{result.model_name}[/] version [bold]{result.version}[/] scored {result.rows:,} rows of "
        f"{result.partitions} partition(s) in {result.seconds:.1f} s ({result.rows_per_s:,.0f} rows/s) "
        f"into {result.out}"
    )
    for failed in result.failed:
        console.print(f"  [red]quarantined[/] {failed.source}: {failed.causes} -> {failed.file}")
    console.print(f"  MLflow run {result.run_id} in experiment {settings.scoring.experiment}")


@cli.command()
@click.argument("name", required=False)
@click.option("--version", help="The version to promote (default: the one holding Shadow).")
@config_option
def promote(config_path: Path | None, name: str | None, version: str | None) -> None:
    """Shadow analysis -> approval -> canary steps -> approval -> Production, for model NAME."""
    settings = _settings(config_path)
    prefect_ready = _start_prefect_early(settings)
    from tasks.promotion.lease import claimed  # the registry client only: no Prefect, no analysis code
    from tasks.release.registry import get_version, model_state

    model = name or settings.training.model_name  # an unknown model or version is answered before Prefect is up
    if version is None:
        model_state(settings, model)
    else:
        get_version(settings, model, version)
    # The lease is taken before Prefect and the flow load (most of the start-up): a promotion whose process
    # died is undone at once (its canary loses its share), a live one refuses this one at once.
    with claimed(settings, model, actor=_user(), say=lambda text: console.print(f"[yellow]{text}[/]")) as dead:
        from flows.promote import mark_crashed, promotion_flow

        prefect_ready()
        for lease, why in dead:
            mark_crashed(lease, why)
        result = promotion_flow(name=name, version=version, actor=_user(), settings=settings)
    console.print(
        f"[bold]{result.model_name}[/] version [bold]{result.version}[/] is Production"
        + (f"; version {result.previous} is Previous" if result.previous else "")
    )


@cli.command()
@click.argument("run_id")
@click.option("--reject", is_flag=True, help="Reject instead of approving.")
@click.option("--comment", default="", help="Why: recorded with the decision.")
@click.option("--reviewer", default=None, help="Who decides (default: the login name).")
@config_option
def approve(config_path: Path | None, run_id: str, reject: bool, comment: str, reviewer: str | None) -> None:
    """Answer the promotion RUN_ID that waits for approval (shipway status NAME lists them)."""
    from flows.resume import embedded_prefect, parse_run_id, resume, run_input, running_api

    flow_run_id = parse_run_id(run_id)  # bad input is answered at once, before anything starts
    decision = run_input(approve=not reject, reviewer=_user() if reviewer is None else reviewer, comment=comment)
    # A Prefect API already up for this run: the one the paused promotion noted (its own temporary
    # server in ephemeral mode, else its profile's), found without reading the profile (its schema
    # is slow to load); else the profile's server. Only without any is a temporary server started.
    api_url = running_api(run_id)
    where = None
    if not api_url:
        settings = _settings(config_path)
        api_url = settings.prefect.api_url or os.environ.get("PREFECT_API_URL")
    if not api_url:
        from flows.prefect_server import TemporaryPrefectServer

        server = TemporaryPrefectServer()
        server.start()
        server.wait()
        api_url, where = server.api_url, embedded_prefect()
    resume(api_url, flow_run_id, decision, where)
    click.echo(f"{'rejected' if reject else 'approved'}: promotion {run_id} moves on")


@cli.command()
@click.argument("name")
@click.option("--reason", default="manual rollback", show_default=True, help="Why: recorded in the history.")
@config_option
def rollback(config_path: Path | None, name: str, reason: str) -> None:
    """Production <- Previous for model NAME, in one recorded step."""
    settings = _settings(config_path)
    from tasks.release.aliases import rollback as roll_back

    moved = roll_back(settings, name, actor=_user(), reason=reason)
    production = next(t for t in moved if t.alias == "Production")
    click.echo(f"{name}: Production {production.previous} -> {production.version} ({reason})")


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry in some containers
        return "unknown"


@cli.command()
@click.argument("name", required=False)
@click.option("--window", help="How far back to read the prediction log: 30m, 1h, 1d (default: monitoring.window).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@config_option
def monitor(config_path: Path | None, name: str | None, window: str | None, as_json: bool) -> None:
    """One window of the prediction log against Production's contract and limits. Exit 1 on a breach."""
    settings = _settings(config_path)
    from tasks.monitoring.window import parse_window

    parse_window(window or settings.monitoring.window)  # a bad window fails before anything starts
    prefect_ready = _start_prefect_early(settings)
    from core.errors import GateError
    from flows.monitor import monitoring_flow

    prefect_ready()
    result = monitoring_flow(name=name, window=window, settings=settings)
    if as_json:
        click.echo(json.dumps(asdict(result), indent=2))
    else:
        verdict = "breached: " + "; ".join(result.breaches) if result.breaches else "within limits"
        others = [f"{n:,} by version {v}" for v, n in result.by_version.items() if v != result.version]
        answered = f" ({', '.join(others)})" if others else ""
        console.print(
            f"[bold]{result.model_name}[/] version {result.version}: {result.requests:,} requests{answered}, "
            f"input drift {result.drift}, {verdict}"
        )
        _print_outputs(result)
        console.print(f"  MLflow run {result.run_id} in experiment {settings.monitoring.experiment}")
        if result.retraining:
            console.print(f"  retraining: {result.retraining}")
    if result.breaches:
        raise GateError(f"monitoring: {result.model_name} breached its limits: {'; '.join(result.breaches)}")


def _print_outputs(result: MonitoringResult) -> None:
    """The window's outputs: prediction drift, and the performance estimated without labels."""
    psi = "no answers to compare" if result.prediction_psi is None else f"largest PSI {result.prediction_psi:.3g}"
    drifted = f", drifted: {', '.join(result.prediction_drift)}" if result.prediction_drift else ""
    console.print(f"  prediction drift vs the holdout: {psi}{drifted}")
    if not result.estimate:
        console.print(f"  performance estimate: not estimable ({result.not_estimable or 'no estimate'})")
        return
    table = Table("estimated", "value", "95% band", "holdout", "drop", "breach", title="performance before labels")
    for metric, e in result.estimate.items():
        table.add_row(
            metric,
            f"{e['estimated']:.4f}",
            f"{e['low']:.4f}..{e['high']:.4f}",
            f"{e['holdout']:.4f}" if "holdout" in e else "-",
            f"{e['drop']:+.4f}" if "drop" in e else "-",
            "yes" if e.get("breach") else "no",
        )
    console.print(table)


@cli.command()
@click.option(
    "--manual", is_flag=True, help="Wait for a human to approve (shipway approve RUN_ID) instead of answering."
)
@config_option
def demo(config_path: Path | None, manual: bool) -> None:
    """The whole journey on generated demo data, in the current directory."""
    settings = _settings(config_path)
    prefect_ready = _start_prefect_early(settings)
    from flows.demo import run_demo
    from tasks.release.registry import versions

    prefect_ready()
    console.print(
        "[bold]shipway demo[/]: train -> gate -> benchmark -> Shadow -> approval -> Canary -> Production,\n"
        "with demo traffic replayed through a real gateway\n"
    )
    result = run_demo(
        settings,
        manual,
        say=lambda text: console.print(f"[bold cyan]demo[/] {text}"),
    )
    name = settings.training.model_name
    console.print()
    _print_status(name, *versions(settings, name))
    final = result.promoted[-1]
    console.print(
        f"\n[bold]{name} version {final.version} is Production[/] after shadow analysis, two approvals and "
        f"{len(settings.promotion.canary_steps)} canary steps; {result.requests:,} requests replayed; "
        f"{result.seconds:.0f} s in all.\n"
        "\n[bold]Where to look[/]\n"
        f"  shipway status {name}     versions, aliases, the alias history and any approval waiting\n"
        "  shipway ui                            then open the link it prints and click\n"
        f"    Model registry -> {name} -> Version {final.version}: the aliases and the release card (commit,\n"
        "      snapshot, gates, latency p99, who approved); its Source run: the dataset, the model, its ONNX\n"
        "      form, the benchmark, the contract; its release record: every alias move and approval, as tables.\n"
        "    Experiments -> shipway: the training runs side by side.\n"
        "  prefect server start                  then open http://127.0.0.1:4200\n"
        "                                        (the runs above are in its database)\n"
        "    Runs -> promotion -> Artifacts: the shadow and canary analyses the approvals were given;\n"
        "    Runs -> training -> Artifacts: the gate's drift table.\n"
        f"  {settings.snapshots.store}   the snapshots: data.parquet + manifest.json each"
    )


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=PORT)
@config_option
def ui(config_path: Path | None, host: str, port: int) -> None:
    """The MLflow UI on the profile's tracking store."""
    settings = _settings(config_path)
    uri = settings.mlflow.tracking_uri
    if uri.startswith(("http://", "https://")):
        click.echo(f"The MLflow UI is served by the tracking server itself: open {uri}")
        return
    # MLflow's UI opens in its GenAI view unless told otherwise: the app `shipway` (tasks/release/mlflow_ui.py)
    # makes model training the browser's default view, the link asks for it too.
    click.echo(f"MLflow UI on {uri}: http://{host}:{port}/#/models?workflowType=machine_learning  (Ctrl-C stops it)")
    # One worker and no job runner: a fraction of the memory, and a faster start.
    os.environ["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    args = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        uri,
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
        "--app-name",
        "shipway",
    ]
    os.execv(sys.executable, args)


@cli.command()
@click.option("--host", help="Address to bind (default: serving.host of the profile).")
@click.option("--port", type=PORT, help="Port (default: serving.port of the profile).")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="Gateway processes on the port (default: serving.workers of the profile; 0 there: one per CPU, at most 8).",
)
@config_option
def serve(config_path: Path | None, host: str | None, port: int | None, workers: int | None) -> None:
    """The gateway: MLflow's scoring protocol for the model's Production/Canary/Shadow aliases."""
    settings = _settings(config_path)
    from serving.server import default_workers
    from serving.server import serve as run_gateway

    count = workers or default_workers(settings.serving.workers)
    run_gateway(settings, host or settings.serving.host, port or settings.serving.port, workers=count)


@cli.command()
@click.option("--model", "ref", required=True, help="NAME@ALIAS or NAME/VERSION.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@config_option
def bench(config_path: Path | None, ref: str, as_json: bool) -> None:
    """Latency in-process and over HTTP through the gateway; exit 1 over the p99 budget."""
    settings = _settings(config_path)
    from tasks.benchmark.latency import bench as run_bench
    from tasks.benchmark.latency import check_budget, print_bench

    result = run_bench(settings, ref)
    if as_json:
        click.echo(json.dumps(asdict(result), indent=2))
    else:
        print_bench(result, console)
    check_budget(result)


def main() -> None:
    install_signal_handlers()
    try:
        cli()
    except SystemExit as exc:
        if exc.code in (128 + signal.SIGTERM, 128 + signal.SIGINT):  # stopped by a signal (_Cli.invoke)
            # The exit handlers still run, but not the collection of every object at the interpreter's
            # exit: seconds for MLflow's and Prefect's on a busy machine, while the signal's sender waits.
            gc.freeze()
        raise
