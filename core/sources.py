"""What a data source names, checked without reading it: fast enough for the CLI to answer before
Prefect, pandas or MLflow start (tasks/data/snapshot.py reads the source)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.errors import DataError


@dataclass(frozen=True)
class DemoSource:
    seed: int | None  # None: the profile's training seed


def check_source(source: str) -> DemoSource | None:
    """Fail fast, before any flow starts, on a source that names no readable kind of thing.

    Returns the demo dataset's draw for 'demo' and 'demo:SEED'; None for a file or S3 object.
    """
    if source == "demo":
        return DemoSource(None)
    if source.startswith("demo:"):
        seed = source.removeprefix("demo:")
        if not seed.isdigit():
            raise DataError(f"cannot read {source}: a demo source is 'demo' or 'demo:SEED' with SEED a whole number")
        return DemoSource(int(seed))
    suffix = Path(source).suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise DataError(f"cannot read {source}: unsupported file type '{suffix}' (use .csv or .parquet)")
    if not source.startswith("s3://") and not Path(source).is_file():
        raise DataError(f"cannot read {source}: no such file")
    return None
