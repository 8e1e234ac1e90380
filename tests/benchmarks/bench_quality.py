"""Quality-gate time and peak memory on a 100k-row holdout with 3 slice columns.

Run from the repository root:

    .venv/bin/python tests/benchmarks/bench_quality.py [--rows 100000] [--repeat 3] [--tasks binary,multiclass,regression]

Each task runs in a fresh subprocess (clean peak RSS; /proc/self/clear_refs before each measured call).
The holdout has 6 numeric features, a categorical `region` (4 values and 2 % missing), a numeric
`age` (cut into 4 quantile bins) and a boolean `member`: the 3 slice columns, 12 slices in all.
Candidate and Production are scikit-learn Pipelines (scaling + one-hot + LogisticRegression or
Ridge) fitted on different draws; the baseline is a one-split tree (a median for regression).

- gate:        tasks.quality.compare.judge(...) with the default settings (1,000 paired resamples): the
               three models' predictions, point values of every scope, the bootstrap, the verdicts;
               the figure the target is about (median of --repeat calls after a warm-up on 1,000 rows);
- predictions: the same three models' answers as the gate reads them (predict_proba for roc_auc,
               predict for f1_macro and rmse), timed on their own; "rest" is the gate minus them;
- memory:      peak RSS during the gate minus RSS just before it (what the gate adds), and the
               holdout frame's own size for scale.
Target: gate <= 5 s at 100k rows with 3 slices.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TARGET_SECONDS = 5.0
MB = 1e6


def frame(rows: int, seed: int, task: str):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    X = pd.DataFrame({f"x{i}": rng.normal(size=rows) for i in range(6)})
    X["age"] = rng.integers(18, 90, rows)
    X["member"] = rng.random(rows) < 0.4
    X["region"] = pd.Series(rng.choice(["north", "south", "east", "west"], rows)).where(rng.random(rows) > 0.02)
    signal = X["x0"] + 0.7 * X["x1"] - 0.5 * X["x2"] + 0.3 * X["member"] + (X["age"] - 50) / 40
    if task == "regression":
        return X, pd.Series(100 + 20 * signal + rng.normal(scale=10, size=rows))
    if task == "multiclass":
        return X, pd.Series(np.array(["a", "b", "c"])[np.digitize(signal + rng.normal(size=rows), [-0.7, 0.7])])
    return X, pd.Series((rng.random(rows) < 1 / (1 + np.exp(-signal))).astype(int))


def models(task: str):
    from sklearn.compose import ColumnTransformer
    from sklearn.dummy import DummyRegressor
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler
    from sklearn.tree import DecisionTreeClassifier

    numeric = [*(f"x{i}" for i in range(6)), "age", "member"]
    prep = lambda: ColumnTransformer(
        [
            ("num", StandardScaler(), numeric),
            ("cat", make_pipeline(SimpleImputer(strategy="constant", fill_value="?"), OneHotEncoder()), ["region"]),
        ]
    )
    estimator = Ridge if task == "regression" else LogisticRegression
    rule = DummyRegressor(strategy="median") if task == "regression" else DecisionTreeClassifier(max_depth=1)
    fit = lambda seed: Pipeline([("prep", prep()), ("model", estimator())]).fit(*frame(20_000, seed, task))
    baseline = Pipeline([("pick", ColumnTransformer([("x0", "passthrough", ["x0"])])), ("model", rule)])
    return fit(1), fit(2), baseline.fit(*frame(20_000, 1, task))


def worker(task_name: str, rows: int, repeat: int) -> dict:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(Path(__file__).parent))
    import gc

    from bench_snapshot import peak_bytes, reset_peak, rss_bytes

    from configs.settings import QualitySettings
    from core.vocabulary import Task
    from tasks.quality.compare import Incumbent, judge
    from tasks.training.quality_metrics import METRICS, answers, encode

    task = Task(task_name)
    settings = QualitySettings(slices=["region", "age", "member"])
    candidate, production, baseline = models(task_name)
    incumbent = Incumbent(production, "1", task)
    X, y = frame(rows, 3, task_name)
    judge(candidate, baseline, incumbent, X.iloc[:1000], y.iloc[:1000], task, settings)  # warm-up
    gc.collect()
    seconds, peaks = [], []
    before = rss_bytes()
    for _ in range(repeat):
        reset_peak()
        start = time.perf_counter()
        report = judge(candidate, baseline, incumbent, X, y, task, settings)
        seconds.append(time.perf_counter() - start)
        peaks.append(peak_bytes())
    start = time.perf_counter()
    truth = encode(y, task, [candidate, baseline, production])
    for model in (candidate, production, baseline):  # what the gate asks each model, nothing more
        answers(model, X, truth, task, [METRICS[report.metric]])
    predictions = time.perf_counter() - start
    return {
        "task": task_name,
        "metric": report.metric,
        "seconds": seconds,
        "predictions": predictions,
        "extra": max(peaks) - before,
        "frame": int(X.memory_usage(deep=True).sum()),
        "scopes": len([r for r in report.rows if r.metric == report.metric]),
        "judged": round(settings.alpha / report.alpha_each),
        "verdict": "passed" if report.passed else "failed",
    }


def main(rows: int, repeat: int, tasks: list[str]) -> None:
    print(
        f"bench_quality: {rows:,}-row holdout, 3 slice columns, 1,000 paired resamples, median of {repeat}; "
        f"python {sys.version.split()[0]}, {os.cpu_count()} cores, load before {os.getloadavg()[0]:.2f}"
    )
    print(
        f"{'task':<11} {'metric':<9} {'gate s':>7} {'target':>7} {'predict s':>9} {'rest s':>7} "
        f"{'extra MB':>8} {'frame MB':>8} {'scopes':>6} {'judged':>6} {'verdict':>8}"
    )
    for task in tasks:
        done = subprocess.run(
            [sys.executable, __file__, "--worker", task, str(rows), str(repeat)],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        if done.returncode != 0:
            sys.exit(f"worker for {task} failed:\n{done.stderr}")
        r = json.loads(done.stdout.strip().splitlines()[-1])
        seconds = statistics.median(r["seconds"])
        print(
            f"{r['task']:<11} {r['metric']:<9} {seconds:>7.3f} {'ok' if seconds <= TARGET_SECONDS else 'MISSED':>7} "
            f"{r['predictions']:>9.3f} {seconds - r['predictions']:>7.3f} {r['extra'] / MB:>8.1f} "
            f"{r['frame'] / MB:>8.1f} {r['scopes']:>6} {r['judged']:>6} {r['verdict']:>8}"
        )
    print(f"load after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        print(json.dumps(worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
    else:
        parser = argparse.ArgumentParser()
        parser.add_argument("--rows", type=int, default=100_000)
        parser.add_argument("--repeat", type=int, default=3)
        parser.add_argument("--tasks", default="binary,multiclass,regression")
        args = parser.parse_args()
        main(args.rows, args.repeat, args.tasks.split(","))
