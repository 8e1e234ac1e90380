"""Skew-gate time and peak memory on 10k, 100k and 1M rows x 20 columns.

Run from the repository root:

    .venv/bin/python tests/benchmarks/bench_gate.py [--sizes 10000,100000,1000000] [--repeat 3]

The frames are bench_snapshot.py's (14 float64 columns, 4 with nulls; 3 int64; 3 strings). The
contract is built from a 200,000-row frame; the batch of each size is a different draw. Each size
runs in a fresh subprocess (clean peak RSS, /proc/self/clear_refs before the measured call):

- gate:    tasks.gate.contract_checks.validate(batch, suite, settings): every check, every column, the report
           object; the figure the targets are about (median of --repeat runs in the process, after
           one warm-up call on 1,000 rows so that imports and first-call costs are not counted);
- files:   tasks.gate.drift_report.write_report (JSON, GX Data Docs HTML, PNG), outside the gate's path.

Memory: (peak RSS during the gate - RSS before the batch was built) / batch size in memory, so the
batch itself counts (small batches can land in memory the contract build freed: below 1x); and
the extra the gate adds over the RSS just before it runs. Targets: <= 0.5 s at 10k rows, <= 3.0 s at 1M
(the joint check included: it compares at most gate.joint_sample_rows batch rows, a seeded sample,
so its cost does not grow with the batch), about linear; <= 3x memory. The "joint s" column times
the joint check alone on the same batch.
For comparison (STACK.md 3c): a plain GX run of a naive 101-expectation suite, 0.51 / 0.77 / 3.26 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MB = 1e6
TARGETS = {10_000: 0.5, 1_000_000: 3.0}
TARGET_MEMORY = 3.0


def worker(rows: int, repeat: int) -> dict:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(Path(__file__).parent))
    import gc

    from bench_snapshot import build_frame, peak_bytes, reset_peak, rss_bytes

    from configs.settings import GateSettings
    from expectations.contract import build_contract
    from expectations.joint import JOINT
    from tasks.data.snapshot import canonicalize
    from tasks.gate.contract_checks import validate
    from tasks.gate.drift_report import write_report
    from tasks.gate.joint_check import check_joint

    settings = GateSettings()
    training = canonicalize(build_frame(200_000))
    suite = build_contract(training, settings, name="bench", target=None, snapshot_id=None)
    validate(training.iloc[:1000], suite, settings)  # warm-up: imports, first calls
    del training
    gc.collect()
    rss0 = rss_bytes()
    batch = build_frame(rows + 7).iloc[7:].reset_index(drop=True)  # not the training rows
    gc.collect()
    frame_bytes = int(batch.memory_usage(deep=True).sum())
    seconds, peaks = [], []
    before = rss_bytes()
    for _ in range(repeat):
        reset_peak()
        start = time.perf_counter()
        report = validate(batch, suite, settings)
        seconds.append(time.perf_counter() - start)
        peaks.append(peak_bytes())
    joint = [e for e in suite["expectations"] if e["type"] == JOINT]
    start = time.perf_counter()
    for e in joint:
        check_joint(e, batch, settings.warn_fraction, set())
    joint_seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        write_report(report, Path(tmp) / "report.json")
        files = time.perf_counter() - start
    return {
        "rows": rows,
        "frame_bytes": frame_bytes,
        "rss0": rss0,
        "seconds": seconds,
        "peak": max(peaks),
        "rss_before": before,
        "files": files,
        "joint": joint_seconds,
        "verdict": report.verdict.value,
        "checks": sum(len(c.checks) for c in report.columns),
    }


def main(sizes: list[int], repeat: int) -> None:
    print(
        f"bench_gate: 20 columns, median of {repeat} gate runs per size; python {sys.version.split()[0]}, "
        f"{os.cpu_count()} cores, load before {os.getloadavg()[0]:.2f}"
    )
    print(
        f"{'rows':>9}  {'gate s':>7}  {'s/1M rows':>9}  {'target':>8}  {'peak/batch':>10}  {'extra/batch':>11}  {'batch MB':>8}  "
        f"{'checks':>6}  {'verdict':>7}  {'files s':>7}  {'joint s':>7}"
    )
    for rows in sizes:
        done = subprocess.run(
            [sys.executable, __file__, "--worker", str(rows), str(repeat)], capture_output=True, text=True, cwd=ROOT
        )
        if done.returncode != 0:
            sys.exit(f"worker for {rows} rows failed:\n{done.stderr}")
        r = json.loads(done.stdout.strip().splitlines()[-1])
        seconds = statistics.median(r["seconds"])
        target = TARGETS.get(rows)
        verdict = "-" if target is None else ("ok" if seconds <= target else "MISSED")
        memory = (r["peak"] - r["rss0"]) / r["frame_bytes"]  # the batch included
        extra = (r["peak"] - r["rss_before"]) / r["frame_bytes"]  # what the gate adds over the batch
        print(
            f"{rows:>9,}  {seconds:>7.3f}  {seconds / rows * 1e6:>9.2f}  {verdict:>8}  "
            f"{memory:>9.2f}x{'' if memory <= TARGET_MEMORY else '!'}  {extra:>10.2f}x  {r['frame_bytes'] / MB:>8.1f}  "
            f"{r['checks']:>6}  {r['verdict']:>7}  {r['files']:>7.2f}  {r['joint']:>7.3f}"
        )
    print(f"load after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        print(json.dumps(worker(int(sys.argv[2]), int(sys.argv[3]))))
    else:
        parser = argparse.ArgumentParser()
        parser.add_argument("--sizes", default="10000,100000,1000000")
        parser.add_argument("--repeat", type=int, default=3)
        args = parser.parse_args()
        main([int(s) for s in args.sizes.split(",")], args.repeat)
