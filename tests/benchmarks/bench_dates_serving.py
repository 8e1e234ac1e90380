"""What reading a datetime column as MLflow reads it costs the gateway, per request format.

Run from the repository root:

    .venv/bin/python tests/benchmarks/bench_dates_serving.py [--rows 1 10000] [--repeat 200]

A body of `rows` rows with a datetime column and a double column, parsed, typed against the
signature (serving.schema: pandas' reading for dataframe_split, numpy's for inputs, Parquet's
timestamps) and made the DataFrame the model is given; beside it the same body with the dates
replaced by numbers (a double column), the cost a datetime column adds. Prints the median and
p99 microseconds of each, best of three rounds of `repeat`.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from serving.registry_reader import Column  # noqa: E402
from serving.schema import PARQUET_TYPE, Schema, parse  # noqa: E402


def bodies(rows: int) -> dict[str, tuple[bytes, str, str]]:
    """name -> (body, content type, the kind of the `when` column)."""
    when = pd.Series(pd.Timestamp("2024-01-01") + pd.to_timedelta(np.arange(rows) * 977, unit="min"))
    text = when.dt.strftime("%Y-%m-%dT%H:%M:%S").tolist()
    amount = np.round(np.linspace(1, 100, rows), 2).tolist()
    numbers = when.astype("int64").astype("float64").tolist()
    frame = pd.DataFrame({"when": when.astype("datetime64[ns]"), "amount": amount})
    parquet = io.BytesIO()
    frame.to_parquet(parquet, index=False)

    def split(values: list) -> bytes:
        return orjson.dumps(
            {"dataframe_split": {"columns": ["when", "amount"], "data": list(zip(values, amount, strict=True))}}
        )

    json = "application/json"
    return {
        "dataframe_split, ISO text": (split(text), json, "datetime"),
        "dataframe_split, a double instead": (split(numbers), json, "double"),
        "inputs, ISO text": (orjson.dumps({"inputs": {"when": text, "amount": amount}}), json, "datetime"),
        "parquet, timestamp[ns]": (parquet.getvalue(), PARQUET_TYPE, "datetime"),
    }


def timed(body: bytes, content_type: str, schema: Schema, repeat: int) -> np.ndarray:
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        schema.frame(schema.coerce(parse(body, content_type)))
        out.append(time.perf_counter() - started)
    return np.array(out) * 1e6


def main(sizes: list[int], repeat: int) -> None:
    for rows in sizes:
        print(f"{rows:,} row(s) a request, {repeat} requests, best of 3 rounds:")
        for name, (body, content_type, kind) in bodies(rows).items():
            schema = Schema([Column("when", kind, True), Column("amount", "double", True)])
            runs = [
                timed(body, content_type, schema, max(1, repeat if rows < 1000 else repeat // 20)) for _ in range(3)
            ]
            best = min(runs, key=lambda r: float(np.median(r)))
            p50, p99 = np.percentile(best, [50, 99])
            print(f"  {name:36} p50 {p50:10.1f} us   p99 {p99:10.1f} us")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 10_000])
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()
    main(args.rows, args.repeat)
