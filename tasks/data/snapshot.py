"""Dataset snapshots: immutable, content-addressed, verified on read.

A snapshot is `<store>/<id>/data.parquet` plus `<store>/<id>/manifest.json`, where the id is the
sha256 of the canonical content (column names, dtypes and values; not the file bytes, so the
same data from a CSV or a Parquet file gets the same id). The data file is written first and
the manifest last: a snapshot without a manifest does not exist. Same content, same id, and
nothing is written twice.
"""

from __future__ import annotations

import io
import json
import re
import tempfile
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ValidationError

from configs.settings import Settings
from core.errors import DataError, SnapshotError
from core.s3 import s3_client, split_s3_uri
from core.sources import DemoSource, check_source  # noqa: F401 (part of this module's interface)
from tasks.data import demo_data
from tasks.data.canonical import FORMAT, canonicalize, content_hash
from tasks.data.storage import Store, open_store, progress

DATA_FILE = "data.parquet"
MANIFEST_FILE = "manifest.json"
ROW_GROUP = 131_072
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
TOP_CATEGORIES = 50


class Manifest(BaseModel):
    id: str
    format: str = FORMAT
    source: str
    rows: int
    columns: dict[str, str]  # name -> canonical dtype, in canonical order
    profile: dict[str, dict[str, Any]]
    created_at: datetime
    data_bytes: int


@dataclass(frozen=True)
class Snapshot:
    manifest: Manifest
    frame: pd.DataFrame
    uri: str
    created: bool  # False when identical content was already in the store

    @property
    def id(self) -> str:
        return self.manifest.id


# --- sources ---------------------------------------------------------------------------------


def read_source(source: str, settings: Settings) -> pd.DataFrame:
    """Read `source`: 'demo' (or 'demo:SEED', another draw), a .csv/.parquet file, or s3://bucket/key."""
    demo = check_source(source)
    if demo is not None:
        return demo_data.generate(
            settings.data.demo_rows, seed=demo.seed if demo.seed is not None else settings.training.seed
        )
    if source.startswith("s3://"):
        return _read_s3_object(source, settings)
    return _read_file(Path(source), source)


def _read_file(path: Path, name: str) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        with progress(f"read {path.name}", path.stat().st_size) as advance, _CountingFile(path, advance) as fh:
            return iso_dates(pd.read_csv(fh) if suffix == ".csv" else pd.read_parquet(fh))
    except pd.errors.EmptyDataError:
        raise DataError(f"cannot read {name}: the file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, pa.ArrowException, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"cannot read {name}: {reason}") from None


# ISO 8601 as people and programs write it: a date, then optionally a time to the minute, second or
# fraction, then optionally an offset (Z, +02:00, +0200, +02). Nothing without the dashes: 20240531
# is a number as often as a date.
ISO_DATE = r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?)?"
OFFSET = r":\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}(?::?\d{2})?)$"  # of an ISO_DATE: a time, then an offset


def iso_dates(frame: pd.DataFrame) -> pd.DataFrame:
    """Text columns whose every value is an ISO 8601 date or time, as datetimes: a CSV has no date
    type, and a Parquet file may hold dates as text too (pandas writes a column of ISO strings so);
    the same table with a timestamp column is read as one. Values with an offset become UTC instants
    (datetime64[us, UTC], mixed offsets too); values without stay naive. A column mixing the two,
    or holding anything else (numbers as text, an impossible date such as 2024-02-30), stays text."""
    out = {}
    for name in frame.columns:
        s = frame[name]
        out[name] = _parsed_dates(s) if pd.api.types.is_string_dtype(s.dtype) else None
    parsed = {name: s for name, s in out.items() if s is not None}
    return frame.assign(**parsed) if parsed else frame


def _parsed_dates(s: pd.Series) -> pd.Series | None:
    present = s.dropna()
    if not len(present) or not re.fullmatch(ISO_DATE, str(present.iloc[0])):  # most columns stop here
        return None
    text = present.astype("str")
    if not text.str.fullmatch(ISO_DATE).all():
        return None
    zoned = text.str.contains(OFFSET)
    if zoned.any() and not zoned.all():
        return None
    try:
        return pd.to_datetime(s, format="ISO8601", utc=bool(zoned.all()))
    except (ValueError, OverflowError):
        return None


def _read_s3_object(uri: str, settings: Settings) -> pd.DataFrame:
    from botocore.exceptions import ClientError

    bucket, key = split_s3_uri(uri)
    if not key:
        raise DataError(f"cannot read {uri}: no object key")
    client = s3_client(settings.s3)
    with tempfile.TemporaryDirectory(prefix="shipway-") as tmp:
        local = Path(tmp) / Path(key).name
        try:
            size = client.head_object(Bucket=bucket, Key=key)["ContentLength"]
            with progress(f"download {uri}", size) as advance:
                client.download_file(bucket, key, str(local), Callback=advance)
        except ClientError as exc:
            code = exc.response["Error"]["Code"]
            if code in ("404", "NoSuchKey", "NoSuchBucket", "403", "AccessDenied"):
                raise DataError(
                    f"cannot read {uri}: {code} {exc.response['Error'].get('Message', '')}".strip()
                ) from None
            raise
        return _read_file(local, uri)


class _CountingFile(io.FileIO):
    """A file that reports how many bytes were read, for the progress bar."""

    def __init__(self, path: Path, advance: Callable[[int], None]):
        super().__init__(path, "rb")
        self._advance = advance

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self._advance(len(data))
        return data

    def readinto(self, buffer: Any) -> int | None:
        n = super().readinto(buffer)
        self._advance(n or 0)
        return n


# --- profile -----------------------------------------------------------------------------------


def profile(df: pd.DataFrame, sensitive: Collection[str] = ()) -> dict[str, dict[str, Any]]:
    """Per column: nulls, and the range and quantiles, or the category shares; a `sensitive`
    column's nulls only (its values are kept in the data file alone)."""
    out: dict[str, dict[str, Any]] = {}
    for name in df.columns:
        s = df[name]
        nulls = int(s.isna().sum())
        entry: dict[str, Any] = {"dtype": str(s.dtype), "nulls": nulls, "null_fraction": nulls / len(s)}
        present = s.dropna()
        if name in sensitive:
            entry["kind"] = "sensitive"
        elif s.dtype == "str":
            shares = present.value_counts(normalize=True)
            entry |= {
                "kind": "categorical",
                "distinct": len(shares),
                "top": {str(k): float(v) for k, v in shares.head(TOP_CATEGORIES).items()},
            }
        elif s.dtype == "bool":
            entry |= {"kind": "boolean", "true_fraction": float(s.mean())}
        elif s.dtype.kind == "M":
            entry |= {"kind": "datetime", "min": str(present.min()), "max": str(present.max())}
        elif len(present):
            values = present.to_numpy(dtype="float64")
            entry |= {
                "kind": "numeric",
                "min": float(values.min()),
                "max": float(values.max()),
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                "quantiles": dict(
                    zip((str(q) for q in QUANTILES), map(float, np.quantile(values, QUANTILES)), strict=False)
                ),
            }
        else:
            entry |= {"kind": "numeric"}
        out[name] = entry
    return out


# --- write and read ----------------------------------------------------------------------------


def write_snapshot(df: pd.DataFrame, source: str, store: Store, sensitive: Collection[str] = ()) -> Snapshot:
    """Store `df` as a snapshot; identical content that is already stored is reused, not rewritten.
    The manifest's profile of a `sensitive` column (serving.sensitive_columns) holds no value of it.

    A reused snapshot is re-hashed first: the stored copy is what the gate, the benchmark and a
    later audit read, so a tampered one is refused here rather than trained on and registered.
    """
    frame = canonicalize(df)
    snapshot_id = content_hash(frame)
    uri = f"{store.uri}/{snapshot_id}"
    if store.exists(f"{snapshot_id}/{MANIFEST_FILE}"):
        return read_snapshot(store, snapshot_id)
    with store.staged(f"{snapshot_id}/{DATA_FILE}") as path:
        _write_parquet(frame, path)
        data_bytes = path.stat().st_size
    manifest = Manifest(
        id=snapshot_id,
        source=source,
        rows=len(frame),
        columns={name: str(dtype) for name, dtype in frame.dtypes.items()},
        profile=profile(frame, sensitive),
        created_at=datetime.now(UTC),
        data_bytes=data_bytes,
    )
    store.write_bytes(f"{snapshot_id}/{MANIFEST_FILE}", manifest.model_dump_json(indent=2).encode())
    return Snapshot(manifest, frame, uri, created=True)


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    schema = pa.Schema.from_pandas(frame, preserve_index=False)
    total = int(frame.memory_usage(index=False).sum())
    with progress(f"write {path.parent.name[:12] or 'snapshot'}", total) as advance:
        with pq.ParquetWriter(path, schema) as writer:
            for start in range(0, len(frame), ROW_GROUP):
                chunk = frame.iloc[start : start + ROW_GROUP]
                writer.write_table(pa.Table.from_pandas(chunk, schema=schema, preserve_index=False))
                advance(total * len(chunk) // len(frame))


def read_snapshot(store: Store, snapshot_id: str) -> Snapshot:
    """Load a snapshot and prove it is unchanged: its content must still hash to its id."""
    manifest = _read_manifest(store, snapshot_id)
    key = f"{snapshot_id}/{DATA_FILE}"
    if not store.exists(key):
        raise SnapshotError(f"snapshot {snapshot_id[:12]} in {store.uri} has lost its data file {key}")
    try:
        with store.local_copy(key) as path:
            with progress(f"read {snapshot_id[:12]}", manifest.data_bytes) as advance:
                with _CountingFile(path, advance) as fh:
                    frame = canonicalize(pd.read_parquet(fh))
    except (pa.ArrowException, OSError, DataError) as exc:
        raise SnapshotError(f"snapshot {snapshot_id[:12]} in {store.uri} is unreadable ({key}): {exc}") from None
    actual = content_hash(frame)
    if actual != snapshot_id:
        raise SnapshotError(
            f"snapshot {snapshot_id[:12]} in {store.uri} has changed since it was written: {key} "
            f"now hashes to {actual[:12]}; refusing to use it"
        )
    return Snapshot(manifest, frame, f"{store.uri}/{snapshot_id}", created=False)


def _read_manifest(store: Store, snapshot_id: str) -> Manifest:
    key = f"{snapshot_id}/{MANIFEST_FILE}"
    if not store.exists(key):
        raise SnapshotError(f"snapshot {snapshot_id[:12]} not found in {store.uri}")
    try:
        manifest = Manifest.model_validate(json.loads(store.read_bytes(key)))
    except (ValueError, ValidationError) as exc:
        raise SnapshotError(f"snapshot {snapshot_id[:12]} has a corrupt manifest: {str(exc).splitlines()[0]}") from None
    if manifest.id != snapshot_id:
        raise SnapshotError(f"snapshot {snapshot_id[:12]} has a manifest for another snapshot ({manifest.id[:12]})")
    return manifest


def take_snapshot(source: str, settings: Settings, target: str | None = None) -> Snapshot:
    """Read `source`, check it can train a model for `target`, and store it as a snapshot."""
    df = read_source(source, settings)
    if target is not None and target not in df.columns:
        columns = ", ".join(map(str, df.columns[:20]))
        raise DataError(f"target column '{target}' is not in {source} (columns: {columns})")
    store = open_store(settings.snapshots.store, settings.s3)
    return write_snapshot(df, source, store, sensitive=list(settings.serving.sensitive_columns))
