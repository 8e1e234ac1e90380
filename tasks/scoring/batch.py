"""Batch scoring: every partition of a dataset gated against a version's contract, then predicted
with the form the gateway serves (ONNX when it passed parity at registration), on Dask.

Partitions are scored where Dask puts them: each task reads one partition, gates it, predicts and
writes one Parquet file under `<out>/_temporary/<run>/`, so memory is bounded by the partitions a
worker holds at once. Only when every partition is done are the files moved to `<out>`: a stopped
run leaves nothing half-written there (Parquet readers skip `_`-prefixed paths meanwhile).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from configs.settings import ScoringSettings, Settings
from core.errors import DataError, GateError
from core.refs import ModelRef
from core.s3 import s3_client, split_s3_uri
from core.vocabulary import Tag, Verdict
from serving import Column, RegistryReader, Servable, frame_feeds, servable
from tasks.data.snapshot import check_source, read_source
from tasks.data.storage import open_store
from tasks.gate.drift_report import write_report
from tasks.gate.skew import BATCH_SUFFIXES, Reference, gate, reference_for_model

TEMPORARY = "_temporary"
QUARANTINE = "_quarantine"
PREDICT_ROWS = 32_768  # rows an ONNX call is given at once (bounds its intermediate tensors)
OUTPUT_COLUMNS = ("prediction", "model_name", "model_version", "snapshot_id", "request_id")


@dataclass(frozen=True)
class Job:
    """What a worker needs to score any partition of one run (sent to every worker: picklable)."""

    settings: Settings
    reference: Reference  # the version's contract, its model name, version and snapshot id
    staging: str  # <out>/_temporary/<run>
    run: str  # short id of this scoring: the prefix of every request id
    quarantine: bool


@dataclass
class PartitionResult:
    index: int
    source: str
    rows: int
    verdict: str  # the gate's: pass, warn or fail; empty for a partition without rows
    causes: str  # what failed, in one line ("" when it passed)
    file: str  # the scored (or quarantined) file, relative to the output
    seconds: float


@dataclass
class ScoringResult:
    model_name: str
    version: str
    snapshot_id: str
    out: str
    rows: int  # rows scored (a quarantined partition's rows are not)
    partitions: int
    failed: list[PartitionResult] = field(default_factory=list)
    seconds: float = 0.0
    run_id: str = ""

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


# --- what to read and where to write ------------------------------------------------------------


def _is_data(relative: str) -> bool:
    """A partition file: a .csv/.parquet whose path has no hidden or `_` part (Spark's and Dask's
    own _SUCCESS, _metadata, _temporary; a scoring's _quarantine)."""
    parts = relative.split("/")
    return Path(relative).suffix.lower() in BATCH_SUFFIXES and not any(p.startswith(("_", ".")) for p in parts)


def partitions(src: str, settings: Settings) -> list[str]:
    """The partitions of `src`: one file or S3 object, or every .csv/.parquet under a folder or S3
    prefix (Hive-style subfolders too), in name order."""
    if src.startswith("s3://"):
        bucket, key = split_s3_uri(src)
        if Path(key).suffix.lower() in BATCH_SUFFIXES:
            return [src]
        found = [f"s3://{bucket}/{k}" for k in _s3_keys(src, settings) if _is_data(k[len(key) :].lstrip("/"))]
    elif Path(src).is_dir():
        root = Path(src)
        found = [str(p) for p in root.rglob("*") if p.is_file() and _is_data(p.relative_to(root).as_posix())]
    else:
        check_source(src)
        return [src]
    if not found:
        raise DataError(f"cannot read {src}: it holds no .csv or .parquet partition")
    return sorted(found)


def _s3_keys(prefix_uri: str, settings: Settings) -> list[str]:
    from botocore.exceptions import ClientError

    bucket, key = split_s3_uri(prefix_uri)
    prefix = f"{key}/" if key else ""
    try:
        pages = s3_client(settings.s3).get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return [obj["Key"] for page in pages for obj in page.get("Contents", [])]
    except ClientError as exc:
        error = exc.response["Error"]
        raise DataError(f"cannot read {prefix_uri}: {error['Code']} {error.get('Message', '')}".strip()) from None


def check_output(out: str, settings: Settings) -> None:
    """The output must be new or empty: scored files are never mixed with another run's."""
    if out.startswith("s3://"):
        held = [k for k in _s3_keys(out, settings) if f"/{TEMPORARY}/" not in f"/{k}"]
    else:
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise DataError(f"--out {out} is a file: give a folder (or s3://bucket/prefix) for the scored partitions")
        held = [p.name for p in path.iterdir() if p.name != TEMPORARY] if path.is_dir() else []
    if held:
        raise DataError(f"--out {out} already holds files ({held[0]}, ...): give a new or empty folder")


def _publish(staging: str, out: str, settings: Settings) -> None:
    """Move every staged file to its place under `out`, then drop the staging folder."""
    if out.startswith("s3://"):
        client = s3_client(settings.s3)
        bucket, staged_prefix = split_s3_uri(staging)
        _, out_prefix = split_s3_uri(out)
        for key in _s3_keys(staging, settings):
            placed = f"{out_prefix}/{key[len(staged_prefix) + 1 :]}".lstrip("/")
            client.copy({"Bucket": bucket, "Key": key}, bucket, placed)
        _discard(staging, settings)
        return
    root = Path(staging)
    for staged in sorted(p for p in root.rglob("*") if p.is_file()):
        moved = Path(out) / staged.relative_to(root)
        moved.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, moved)
    _discard(staging, settings)


def _discard(staging: str, settings: Settings, drop_out: bool = False) -> None:
    """Remove the staging folder, `_temporary` when no other run stages there, and with `drop_out`
    the output folder when this run made it and left it empty."""
    if staging.startswith("s3://"):
        bucket, _ = split_s3_uri(staging)
        keys = [{"Key": k} for k in _s3_keys(staging, settings)]
        client = s3_client(settings.s3)
        for start in range(0, len(keys), 1000):
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys[start : start + 1000]})
        return
    shutil.rmtree(staging, ignore_errors=True)
    folders = [Path(staging).parent, Path(staging).parent.parent][: 2 if drop_out else 1]
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return  # another run stages there, or scored files are in it


# --- one partition, on a worker -----------------------------------------------------------------

_loaded: dict[tuple[str, str, str], Servable] = {}  # one load of a version per worker process


def _model(job: Job) -> Servable:
    ref = job.reference
    key = (job.settings.mlflow.tracking_uri, ref.model or "", ref.version or "")
    if key not in _loaded:
        _loaded[key] = servable(RegistryReader(job.settings).load(key[1], key[2]))
    return _loaded[key]


def model_frame(frame: pd.DataFrame, columns: list[Column], source: str) -> pd.DataFrame:
    """The signature's columns, typed as the model was trained on (int64, float64, str, bool, datetime)."""
    missing = [c.name for c in columns if c.name not in frame.columns and c.required]
    if missing:
        raise DataError(
            f"cannot score {source}: column '{missing[0]}' is missing "
            f"(the model takes {', '.join(c.name for c in columns)})"
        )
    typed = {}
    for column in (c for c in columns if c.name in frame.columns):
        values = frame[column.name]
        try:
            if column.type in ("long", "integer", "double", "float"):
                typed[column.name] = values if values.dtype.kind in "iuf" else pd.to_numeric(values).astype("float64")
            elif column.type == "string":
                typed[column.name] = values if pd.api.types.is_string_dtype(values.dtype) else values.astype("str")
            elif column.type == "boolean":
                typed[column.name] = values.astype("bool")
            elif column.type == "datetime":
                typed[column.name] = pd.to_datetime(values)
            else:
                typed[column.name] = values
        except (ValueError, TypeError) as exc:
            raise DataError(
                f"cannot score {source}: column '{column.name}' is not {column.type}: {str(exc).splitlines()[0]}"
            ) from None
    return pd.DataFrame(typed)


def predict(model: Servable, X: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels (or values) as the gateway answers `predict`, and a classifier's class probabilities."""
    if model.flavor == "onnx":  # the same tensors the parity check at registration fed
        # In slices: onnxruntime's arena keeps the largest intermediate tensors it ever held (a one-hot
        # encoding of every row), so a whole partition at once would set the worker's memory for good.
        parts = [
            model.model.run(None, frame_feeds(X.iloc[a : a + PREDICT_ROWS])) for a in range(0, len(X), PREDICT_ROWS)
        ]
        labels = np.concatenate([p[0].reshape(-1) for p in parts])
        return labels, (np.concatenate([p[1] for p in parts]) if len(parts[0]) > 1 else None)
    estimator = model.model
    labels = np.asarray(estimator.predict(X))
    classifier = model.label_rule is not None and model.label_rule.classes is not None
    proba = estimator.predict_proba(X) if model.flavor == "sklearn" and classifier else None
    return labels, None if proba is None else np.asarray(proba)


def scored_table(frame: pd.DataFrame, X: pd.DataFrame, model: Servable, job: Job, index: int, source: str) -> pa.Table:
    """The partition's columns as read (`frame`), then the prediction on `X` (`model_frame` of it), each
    class's probability, the model's name, version and snapshot id, and a request id per row
    (`<run>-<partition>-<row>`)."""
    labels, proba = predict(model, X)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    taken = set(table.column_names) & {*OUTPUT_COLUMNS, *(f"probability_{c}" for c in _classes(model, proba))}
    if taken:
        raise DataError(f"cannot score {source}: column '{sorted(taken)[0]}' is a name the scored output uses")
    rows = len(frame)
    table = table.append_column("prediction", pa.array(labels))
    if proba is not None:
        for i, name in enumerate(_classes(model, proba)):
            table = table.append_column(f"probability_{name}", pa.array(proba[:, i], pa.float64()))
    ref = job.reference
    for name, value in (("model_name", ref.model), ("model_version", ref.version), ("snapshot_id", ref.snapshot_id)):
        table = table.append_column(name, pa.DictionaryArray.from_arrays(np.zeros(rows, np.int32), [value or ""]))
    row_numbers = pc.cast(pa.array(np.arange(rows)), pa.string())
    request_ids = pc.binary_join_element_wise(pa.scalar(f"{job.run}-{index:05d}-"), row_numbers, "")
    return table.append_column("request_id", request_ids)


def _classes(model: Servable, proba: np.ndarray | None) -> list[str]:
    if proba is None:
        return []
    rule = model.label_rule
    classes = rule.classes if rule is not None and rule.classes is not None else range(proba.shape[1])
    return [str(c) for c in classes]


def score_partition(job: Job, index: int, source: str) -> PartitionResult:
    """Read, gate, predict and stage one partition (a failing one quarantined, or left out on stop)."""
    started = time.perf_counter()
    settings = job.settings
    frame = read_source(source, settings)
    if frame.empty:  # a partition writers left empty: nothing to gate or score
        return PartitionResult(index, source, 0, "empty", "", "", time.perf_counter() - started)
    model = _model(job)
    X = model_frame(frame, model.schema.columns, source)  # before the gate: a missing column is bad input, not drift
    report = gate(frame, job.reference, settings, batch_name=source)
    name = f"part-{index:05d}"
    store = open_store(job.staging, settings.s3)
    if report.verdict == Verdict.FAIL:
        file = ""
        if job.quarantine:
            file = f"{QUARANTINE}/{name}.parquet"
            with store.staged(file) as path:
                pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
            with tempfile.TemporaryDirectory(prefix="shipway-") as tmp:
                for written in write_report(report, Path(tmp) / f"{name}.json").paths():
                    store.write_bytes(f"{QUARANTINE}/{written.name}", written.read_bytes())
        return PartitionResult(index, source, len(frame), "fail", report.causes(), file, time.perf_counter() - started)
    file = f"{name}.parquet"
    table = scored_table(frame, X, model, job, index, source)
    del frame, X
    with store.staged(file) as path:
        pq.write_table(table, path)
    return PartitionResult(index, source, table.num_rows, report.verdict.value, "", file, time.perf_counter() - started)


# --- the run ------------------------------------------------------------------------------------


@contextmanager
def dask_client(scoring: ScoringSettings) -> Iterator[Any]:
    """A client of `scoring.scheduler`, or of a local cluster started (and stopped) here."""
    import logging

    from distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(logging.WARNING)  # a line per connection otherwise
    if scoring.scheduler:
        with Client(scoring.scheduler) as client:
            yield client
        return
    workers = scoring.workers or len(os.sched_getaffinity(0))
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=scoring.threads_per_worker,
            dashboard_address=":0",  # any free port: two scorings on one machine must not collide
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def score(
    settings: Settings,
    model: str,
    src: str,
    out: str,
    client: Any = None,
    on_partition: Callable[[PartitionResult], None] | None = None,
) -> ScoringResult:
    """Score every partition of `src` with NAME@ALIAS (or NAME/VERSION) into `out`, and log the run.

    `client`: a Dask client to run on (default: `dask_client(settings.scoring)`). Raises GateError
    (exit 1) naming the first failing partition when scoring.on_failed_partition is stop; DataError
    (exit 2) on bad input, naming the file or column."""
    started = time.perf_counter()
    ModelRef.parse(model, "--model")
    reference = reference_for_model(settings, model)  # an unknown model or alias is answered here
    sources = partitions(src, settings)
    out = out.rstrip("/")
    check_output(out, settings)
    made_out = not out.startswith("s3://") and not Path(out).exists()
    run = uuid.uuid4().hex[:12]
    quarantine = settings.scoring.on_failed_partition == "quarantine"
    job = Job(settings, reference, f"{out}/{TEMPORARY}/{run}", run, quarantine)
    try:
        if client is None:
            with dask_client(settings.scoring) as own:
                results = _run(own, job, sources, on_partition)
        else:
            results = _run(client, job, sources, on_partition)
        failed = sorted((r for r in results if r.verdict == "fail"), key=lambda r: r.index)
        if failed and not quarantine:
            first = failed[0]
            raise GateError(
                f"scoring: partition {first.source} failed the gate ({first.causes}); nothing was written to {out} "
                "(scoring.on_failed_partition: stop)"
            )
        _publish(job.staging, out, settings)
    except BaseException:
        _discard(job.staging, settings, drop_out=made_out)
        raise
    result = ScoringResult(
        model_name=reference.model or "",
        version=reference.version or "",
        snapshot_id=reference.snapshot_id or "",
        out=out,
        rows=sum(r.rows for r in results if r.verdict != "fail"),
        partitions=len(results),
        failed=failed,
        seconds=time.perf_counter() - started,
    )
    result.run_id = log_run(settings, result, src, sorted(results, key=lambda r: r.index))
    return result


def _run(
    client: Any, job: Job, sources: list[str], on_partition: Callable[[PartitionResult], None] | None
) -> list[PartitionResult]:
    """Every partition as one task; on stop, the first failing partition cancels the rest."""
    from distributed import as_completed

    futures = client.map(score_partition, [job] * len(sources), range(len(sources)), sources, pure=False)
    results = []
    try:
        for future in as_completed(futures):
            result = future.result()
            results.append(result)
            if on_partition is not None:
                on_partition(result)
            if result.verdict == "fail" and not job.quarantine:
                break
    finally:
        client.cancel(futures)
        # A cancelled task that had started runs on to its end: wait for it, or it would stage its file
        # after the staging folder is discarded.
        client.run(_finished, keys={f.key for f in futures})
    return results


async def _finished(keys: set[Any], dask_worker: Any) -> None:
    """On a worker: return once none of `keys` executes (cancelled ones included, until their end)."""
    import asyncio

    while any(task.key in keys for task in dask_worker.state.executing):
        await asyncio.sleep(0.05)


def log_run(settings: Settings, result: ScoringResult, src: str, results: list[PartitionResult]) -> str:
    """One run of the scoring experiment with the figures, linked to the version both ways (tags)."""
    import mlflow

    from tasks.release import registry

    _, experiment_id = registry.connect(settings, experiment=settings.scoring.experiment)
    source_run = registry.get_version(settings, result.model_name, result.version).run_id
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"{result.model_name}-v{result.version}") as run:
        mlflow.set_tags(
            {
                "model": result.model_name,
                "version": result.version,
                "model_uri": f"models:/{result.model_name}/{result.version}",
                "model_version_run_id": source_run or "",
                Tag.DATA_SNAPSHOT_ID.value: result.snapshot_id,
            }
        )
        mlflow.log_params(
            {"source": src, "out": result.out, "on_failed_partition": settings.scoring.on_failed_partition}
        )
        mlflow.log_metrics(
            {
                "rows": result.rows,
                "partitions": result.partitions,
                "failed_partitions": len(result.failed),
                "seconds": result.seconds,
                "rows_per_s": result.rows_per_s,
            }
        )
        mlflow.log_dict({"partitions": [asdict(r) for r in results]}, "partitions.json")
    registry.set_version_tags(settings, result.model_name, result.version, {Tag.LAST_SCORING_RUN: run.info.run_id})
    return run.info.run_id


def summary(result: ScoringResult) -> dict[str, Any]:
    """The result as JSON values (the CLI's --json, the flow's artifact)."""
    return json.loads(json.dumps(asdict(result) | {"rows_per_s": result.rows_per_s}))
