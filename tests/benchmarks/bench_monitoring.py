"""One monitoring window on a large prediction log: its cost must not grow with the log.

Run from the repository root:

    .venv/bin/python tests/benchmarks/bench_monitoring.py [--rows 10000000] [--per-hour 100000]

Builds a SQLite prediction log (the gateway's schema, its ts index) of `rows` one-row requests,
`per-hour` of them in each hour, with realistic inputs (the demo features as JSON records) and a feedback label for a third of them,
then
times the work of one `shipway monitor --window 1h` on an hour in the middle of it: read the
window through the ts index, decode the inputs, the window's figures, the skew gate against a
contract built from training data. The same window is timed on a log of a tenth the size, to
show that the cost follows the window, not the log. Target: <= 2 s for a 100k-row hour of a
10M-row log. The MLflow run and Prefect artifact of a real run add ~1 s that does not grow either.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from configs.settings import load_settings  # noqa: E402
from expectations.contract import build_contract  # noqa: E402
from serving.prediction_log import engine, read_feedback, read_window  # noqa: E402
from tasks.data.demo_data import TARGET, generate  # noqa: E402
from tasks.data.snapshot import canonicalize  # noqa: E402
from tasks.gate.contract_checks import validate  # noqa: E402
from tasks.monitoring.window import served_inputs, summarize  # noqa: E402

START = datetime(2026, 1, 1, tzinfo=UTC)
CHUNK = 200_000


def build_log(path: Path, rows: int, per_hour: int) -> float:
    """Fill a prediction log at `path`; returns the seconds it took."""
    begun = time.perf_counter()
    url = f"sqlite:///{path}"
    engine(url).dispose()  # the gateway's tables and the ts index
    features = generate(2_000, seed=3).drop(columns=[TARGET])
    records = features.astype(object).where(features.notna(), None).to_dict(orient="records")
    inputs = [orjson.dumps([r]).decode() for r in records]
    step = 3600 / per_hour
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=OFF")
        for first in range(0, rows, CHUNK):
            batch = [
                (
                    f"r{i}",
                    "production",
                    (START + timedelta(seconds=i * step)).strftime("%Y-%m-%d %H:%M:%S.%f"),
                    "churn-classifier",
                    "1",
                    None,
                    inputs[i % len(inputs)],
                    "[1]" if i % 4 == 0 else "[0]",
                    0.3 + (i % 7) * 0.05,
                    None,
                    "production",
                )
                for i in range(first, min(first + CHUNK, rows))
            ]
            db.executemany(
                "INSERT INTO predictions (request_id, role, ts, model_name, model_version, source, inputs, "
                "prediction, latency_ms, error, route) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                batch,
            )
            labels = [
                (row[0], "1" if int(row[0][1:]) % 8 == 0 else "0", row[2]) for row in batch[::3]
            ]  # a third labelled
            db.executemany("INSERT INTO feedback (request_id, label, ts) VALUES (?,?,?)", labels)
            db.commit()
    return time.perf_counter() - begun


def one_window(url: str, hour: int, suite: dict, settings) -> dict[str, float]:
    start = START + timedelta(hours=hour)
    times = {}
    t = time.perf_counter()
    log = read_window(url, start, start + timedelta(hours=1), model_name="churn-classifier")
    times["read window"] = time.perf_counter() - t
    t = time.perf_counter()
    feedback = read_feedback(url, log["request_id"])
    times["read feedback"] = time.perf_counter() - t
    t = time.perf_counter()
    inputs = served_inputs(log)
    times["decode inputs"] = time.perf_counter() - t
    t = time.perf_counter()
    summarize(log, feedback, settings.monitoring, latency_budget_ms=settings.serving.latency_budget_p99_ms)
    times["figures"] = time.perf_counter() - t
    t = time.perf_counter()
    report = validate(inputs, suite, settings.gate, batch_name="window")
    times["gate"] = time.perf_counter() - t
    times["total"] = sum(times.values())
    times["rows"] = len(log)
    times["verdict"] = report.verdict.value
    return times


def main(rows: int, per_hour: int) -> None:
    print(
        f"bench_monitoring: {rows:,}-row log, {per_hour:,} rows per hour; {os.cpu_count()} cores, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    settings = load_settings()
    training = canonicalize(generate(30_000, seed=1))
    suite = build_contract(training, settings.gate, name="bench", target=TARGET, snapshot_id=None)
    hour = rows // per_hour // 2
    with tempfile.TemporaryDirectory(prefix="bench-monitoring-") as tmp:
        for size in (rows // 10, rows):
            path = Path(tmp) / f"log-{size}.db"
            seconds = build_log(path, size, per_hour)
            url = f"sqlite:///{path}"
            with sqlite3.connect(path) as db:
                plan = db.execute(
                    "EXPLAIN QUERY PLAN SELECT * FROM predictions WHERE ts >= ? AND ts < ?", ("2026", "2027")
                ).fetchall()
            print(
                f"\nlog of {size:,} rows ({path.stat().st_size / 1e9:.2f} GB, built in {seconds:.0f} s); "
                f"query plan: {plan[0][-1]}"
            )
            one_window(url, min(hour, size // per_hour // 2), suite, settings)  # warm the page cache once
            figures = one_window(url, min(hour, size // per_hour // 2), suite, settings)
            for key, value in figures.items():
                shown = f"{value:8.3f} s" if isinstance(value, float) else f"{value:>10}"
                print(f"  {key:<14}{shown}")
            if size == rows:
                ok = figures["total"] <= 2.0
                print(
                    f"one-hour window of {figures['rows']:,} rows in a {rows:,}-row log: {figures['total']:.2f} s "
                    f"(target <= 2 s: {'ok' if ok else 'MISSED'})"
                )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--per-hour", type=int, default=100_000)
    args = parser.parse_args()
    main(args.rows, args.per_hour)
