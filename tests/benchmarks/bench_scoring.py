"""Batch scoring: 10 M rows x 20 columns gated and scored by `shipway score`'s function on a local
Dask cluster, with the peak memory of every process it runs.

Run from the repository root:

    .venv/bin/python tests/benchmarks/bench_scoring.py [--rows 10000000] [--partitions 40] [--workers 0]
        [--threads 1] [--estimator auto] [--keep DIR]

In a fresh temporary directory (embedded default profile): a version trained on 50,000 rows of
bench_snapshot.py's table (14 float64 columns, 4 with nulls; 3 int64; 3 strings) with a binary
label, its contract logged, made Production; then `--rows` rows of the same distribution (a new
draw) written as `--partitions` Parquet files (not timed). Timed: `tasks.scoring.batch.score`, the
whole of what `shipway score` does after reading its profile: start the local cluster
(`--workers` processes, 0: one per core, `--threads` each), read the contract, gate every
partition, predict with the version's served form, write the scored Parquet files, publish them,
log the MLflow run, stop the cluster.

CPU: user + system time of this process and its children (the cluster's processes, counted once they
have exited: the cluster is stopped inside the timed call); divided by the cores, it is the least
the scoring can take on an idle machine, a fair figure when the machine is shared.
Memory: the resident set of this process and all its descendants (the cluster's nanny and worker
processes), summed, sampled every 50 ms while scoring; the peak is printed with the load average.
Targets (issue 23): <= 60 s and <= 2 GB peak on the project's 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

TARGET_SECONDS = 60.0
TARGET_BYTES = 2e9
TARGET = "churned"


def frame(rows: int, seed: int):
    """bench_snapshot.py's 20 columns, drawn with `seed`, and a label that depends on some of them."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    columns = {}
    for i in range(14):
        values = rng.normal(loc=i, scale=1 + i, size=rows)
        if i % 4 == 1:
            values[rng.random(rows) < 0.02 + 0.01 * (i // 4)] = np.nan
        columns[f"f{i:02d}"] = values
    for i in range(3):
        columns[f"i{i}"] = rng.integers(0, 10 ** (i + 2), size=rows, dtype=np.int64)
    for i, levels in enumerate(
        (["basic", "standard", "premium"], ["north", "south", "east", "west"], ["web", "mobile", "store", "phone"])
    ):
        values = np.array(levels, dtype=object)[rng.integers(0, len(levels), size=rows)]
        if i == 1:
            values[rng.random(rows) < 0.03] = None
        columns[f"s{i}"] = pd.Series(values, dtype="str")
    df = pd.DataFrame(columns)
    score = 0.3 * (df["f00"] - 0) + 0.05 * (df["f03"] - 3) - 0.2 * (df["s0"] == "premium") + rng.normal(0, 1, rows)
    return df, (score > 0).astype("int64")


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its children that have exited (the cluster's)."""
    import resource

    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


class TreeMemory:
    """The summed RSS of this process and every descendant, sampled until stopped; its peak."""

    def __init__(self, every: float = 0.05):
        import psutil

        self.me = psutil.Process()
        self.every = every
        self.peak = 0
        self.processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        import psutil

        while not self._stop.is_set():
            total, count = 0, 0
            for process in [self.me, *self.me.children(recursive=True)]:
                try:
                    total += process.memory_info().rss
                    count += 1
                except psutil.Error:
                    pass  # it ended between the listing and the read
            if total > self.peak:
                self.peak, self.processes = total, count
            time.sleep(self.every)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--partitions", type=int, default=40)
    parser.add_argument("--workers", type=int, default=0, help="local cluster worker processes (0: one per core)")
    parser.add_argument("--threads", type=int, default=1, help="threads per worker")
    parser.add_argument("--estimator", default="auto")
    parser.add_argument("--keep", type=Path, help="reuse (or make) the partitions in this folder")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="shipway-bench-scoring-"))
    os.chdir(home)
    try:
        run(args, home)
    finally:
        os.chdir(ROOT)
        shutil.rmtree(home, ignore_errors=True)  # the scored output is larger than the input


def run(args: argparse.Namespace, home: Path) -> None:
    from configs.settings import load_settings
    from core.vocabulary import Alias
    from tasks.data.snapshot import take_snapshot
    from tasks.gate.skew import contract_for_snapshot
    from tasks.release.lineage import GitLineage
    from tasks.release.registration import register
    from tasks.release.registry import get_version, log_contract, set_alias
    from tasks.scoring.batch import score
    from tasks.training.pipeline import train
    from tests.conftest import tuned

    settings = tuned(
        load_settings(cwd=home),
        training={"estimator": args.estimator},
        scoring={"workers": args.workers, "threads_per_worker": args.threads},
    )
    X, y = frame(50_000, seed=1)
    X.assign(**{TARGET: y}).to_parquet(home / "train.parquet")
    snapshot = take_snapshot(str(home / "train.parquet"), settings, TARGET)
    trained = train(snapshot.frame, TARGET, settings.training)
    version = register(trained, snapshot, GitLineage(commit="b" * 40, branch="main", dirty=False), settings)
    log_contract(settings, version.name, version.version, contract_for_snapshot(settings, snapshot, TARGET))
    set_alias(settings, version.name, Alias.PRODUCTION, version.version)
    served = get_version(settings, version.name, version.version).tags.get("serving_format")

    batch = args.keep or home / "batch"
    per = args.rows // args.partitions
    if not (batch.is_dir() and len(list(batch.glob("*.parquet"))) == args.partitions):
        batch.mkdir(parents=True, exist_ok=True)
        made = time.perf_counter()
        for i in range(args.partitions):
            frame(per, seed=100 + i)[0].to_parquet(batch / f"part-{i:05d}.parquet", index=False)
        print(f"data: {args.partitions} x {per:,} rows written in {time.perf_counter() - made:.1f} s (not timed)")
    size = sum(p.stat().st_size for p in batch.glob("*.parquet"))

    load_before = os.getloadavg()
    cpu_before = cpu_seconds()
    started = time.perf_counter()
    with TreeMemory() as memory:
        result = score(settings, f"{version.name}@Production", str(batch), str(home / "out"))
    seconds = time.perf_counter() - started
    cpu = cpu_seconds() - cpu_before
    load_after = os.getloadavg()

    scored = sum(p.stat().st_size for p in (home / "out").glob("*.parquet"))
    cores = len(os.sched_getaffinity(0))
    print(
        f"version {version.version} ({args.estimator}, served as {served}); {result.partitions} partitions, "
        f"{result.rows:,} rows x {len(X.columns)} columns ({size / 1e6:.0f} MB Parquet in, {scored / 1e6:.0f} MB out); "
        f"failed partitions {len(result.failed)}"
    )
    print(
        f"local cluster: {args.workers or cores} worker process(es) x {args.threads} thread(s) on {cores} cores; "
        f"load average before {load_before[0]:.2f} / {load_before[1]:.2f} / {load_before[2]:.2f}, "
        f"after {load_after[0]:.2f} / {load_after[1]:.2f} / {load_after[2]:.2f}"
    )
    print(
        f"scored and gated in {seconds:.1f} s ({result.rows / seconds:,.0f} rows/s; the run's own figure "
        f"{result.seconds:.1f} s) target <= {TARGET_SECONDS:.0f} s: {'met' if seconds <= TARGET_SECONDS else 'NOT met'}"
    )
    print(
        f"CPU time of the process tree {cpu:.1f} s (user + system; the cluster's processes counted once they "
        f"exit): on {cores} idle cores at least {cpu / cores:.1f} s"
    )
    print(
        f"peak memory, {memory.processes} processes summed: {memory.peak / 1e9:.2f} GB "
        f"target <= {TARGET_BYTES / 1e9:.0f} GB: {'met' if memory.peak <= TARGET_BYTES else 'NOT met'}"
    )


if __name__ == "__main__":
    main()
