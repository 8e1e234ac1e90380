"""What dates cost: reading ISO 8601 text from a CSV as datetimes, the canonical form and hash of a
zone-aware column, and the gate's date check on a batch of ISO text (as the serving log keeps it).

Run from the repository root:

    .venv/bin/python tests/benchmarks/bench_dates.py [--rows N] [--repeat K]

The table (fixed seed): N rows of an ISO time with an offset (`2013-05-01T09:00:00-04:00`), a naive
ISO date, a number and two text columns, one of them numbers-as-text-with-dashes that must stay
text. Figures are the median of K runs, in seconds, with the rows per second of the date work.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from configs.settings import GateSettings
from expectations.contract import build_contract
from tasks.data.canonical import canonicalize, content_hash
from tasks.data.snapshot import iso_dates
from tasks.gate.contract_checks import validate


def table(rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(20240601)
    when = pd.Timestamp("2013-01-01", tz="America/New_York") + pd.to_timedelta(rng.integers(0, 8760, rows), unit="h")
    return pd.DataFrame(
        {
            "when": when,
            "day": (pd.Timestamp("2010-01-01") + pd.to_timedelta(rng.integers(0, 3000, rows), unit="D")).strftime(
                "%Y-%m-%d"
            ),
            "amount": rng.gamma(2.0, 10.0, rows),
            "plan": np.array(["basic", "plus", "pro"], dtype=object)[rng.integers(0, 3, rows)],
            "phone": [f"555-{i % 1000:03d}-{i % 10000:04d}" for i in range(rows)],
        }
    )


def timed(fn, repeat: int):
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - start)
    return result, statistics.median(seconds)


def main(rows: int, repeat: int) -> None:
    print(
        f"bench_dates: {rows:,} rows, median of {repeat}; python {sys.version.split()[0]}, "
        f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"
    )
    frame = table(rows)
    with tempfile.TemporaryDirectory(prefix="bench-dates-") as tmp:
        path = Path(tmp) / "t.csv"
        frame.to_csv(path, index=False)
        raw, read_s = timed(lambda: pd.read_csv(path), repeat)
        parsed, iso_s = timed(lambda: iso_dates(raw), repeat)
    kinds = {c: str(t) for c, t in parsed.dtypes.items()}
    print(f"pd.read_csv                    {read_s:7.3f} s")
    print(f"iso_dates (5 text columns)     {iso_s:7.3f} s  {rows / iso_s:12,.0f} rows/s  -> {kinds}")
    canonical, canon_s = timed(lambda: canonicalize(parsed), repeat)
    _, hash_s = timed(lambda: content_hash(canonical), repeat)
    print(f"canonicalize                   {canon_s:7.3f} s")
    print(f"content_hash                   {hash_s:7.3f} s  (zone-aware column hashed as int64 instants)")
    suite = build_contract(canonical, GateSettings(), name="bench", target=None, snapshot_id=None, features=["when"])
    served = pd.DataFrame({"when": frame["when"].head(min(rows, 100_000)).map(pd.Timestamp.isoformat)})
    report, gate_s = timed(lambda: validate(served, suite, GateSettings()), repeat)
    print(
        f"gate, {len(served):,} ISO texts     {gate_s:7.3f} s  {len(served) / gate_s:12,.0f} rows/s  "
        f"(verdict {report.verdict.value})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    main(args.rows, args.repeat)
