"""Serving format and gateway HTTP latency of each built-in estimator, on tables from scikit-learn,
and of the own-pipeline example's Pipeline (its factory and transformer class, on its table).

Run from the repository root:

    .venv/bin/python tests/benchmarks/bench_estimators.py [--requests 1000]

In a fresh temporary directory (embedded default profile): for each built-in estimator and each
task it can do (binary on breast cancer, regression on diabetes), and for examples/own-pipeline's
factory (`preprocessing: none`, the code shipped with the model), trains, registers (ONNX when
skl2onnx converts it and parity holds, else sklearn), pins the version in a gateway subprocess
(`serving.running(isolated=True)`, prediction log on) and sends one-row `dataframe_split` bodies
from the holdout at concurrency 1 through the same keep-alive client as bench_serving.py. Prints
per estimator: task, serving format, train and register seconds, HTTP p50 / p99. The gateway's
timeout is raised to 10 s so that a slow model is measured rather than replaced by a fallback.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

OWN_PIPELINE = ROOT / "examples" / "own-pipeline"
CASES = [  # (estimator, params, table)
    ("logistic_regression", {"max_iter": 1000}, "breast_cancer"),
    ("random_forest", {"n_estimators": 100}, "breast_cancer"),
    ("hist_gradient_boosting", {}, "breast_cancer"),
    ("gradient_boosting", {}, "breast_cancer"),
    ("ridge", {}, "diabetes"),
    ("random_forest", {"n_estimators": 100}, "diabetes"),
    ("hist_gradient_boosting", {}, "diabetes"),
    ("gradient_boosting", {}, "diabetes"),
    ("my_model.pipeline:build", {"C": 0.5, "upper_quantile": 0.99}, "own_pipeline"),  # examples/own-pipeline
]
# the example Pipeline's keys, as its shipway.yaml states them (its target `churned` renamed `target`)
OWN_DATA = {"exclude": ["customer_id"], "time_column": "signed_up"}
OWN_TRAINING = {"preprocessing": "none", "code_path": [str(OWN_PIPELINE)]}


def table(name: str):
    import pandas as pd
    from sklearn.datasets import load_breast_cancer, load_diabetes

    if name == "breast_cancer":
        return load_breast_cancer(as_frame=True).frame
    if name == "own_pipeline":
        return pd.read_csv(OWN_PIPELINE / "data.csv", parse_dates=["signed_up"]).rename(columns={"churned": "target"})
    return load_diabetes(as_frame=True, scaled=False).frame


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (2 cores, shared)")
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        rows = [measure(tmp, i, *case, args.requests) for i, case in enumerate(CASES)]
    print(f"\n{'estimator':24} {'table':14} {'task':11} {'format':8} {'train s':>8} {'register s':>10} "
          f"{'p50 ms':>8} {'p99 ms':>8}")  # fmt: skip
    for r in rows:
        print(f"{r['estimator']:24} {r['table']:14} {r['task']:11} {r['format']:8} {r['train_s']:8.2f} "
              f"{r['register_s']:10.2f} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f}")  # fmt: skip
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def measure(tmp: str, i: int, estimator: str, params: dict, name: str, total: int) -> dict:
    from mlflow import MlflowClient

    from configs.settings import load_settings
    from serving import running
    from tasks.benchmark.loadgen import drive, request_bytes
    from tasks.data.snapshot import take_snapshot
    from tasks.release.lineage import GitLineage
    from tasks.release.registration import register
    from tasks.training.pipeline import train

    settings = load_settings(cwd=Path(tmp))
    own = name == "own_pipeline"
    settings = settings.model_copy(
        update={
            "data": settings.data.model_copy(update={"target": "target", **(OWN_DATA if own else {})}),
            "training": settings.training.model_copy(
                update={
                    "model_name": f"bench-{i}",
                    "estimator": estimator,
                    "params": params,
                    **(OWN_TRAINING if own else {}),
                }
            ),
            # the model's own time, not the fallback chain's: no answer is cut short on a busy machine
            "serving": settings.serving.model_copy(update={"timeout_ms": 10_000}),
        }
    )
    path = Path(tmp) / f"{name}.parquet"
    if not path.exists():
        table(name).to_parquet(path)
    snapshot = take_snapshot(str(path), settings, "target")
    started = time.perf_counter()
    trained = train(snapshot.frame, "target", settings.training, settings.data)
    trained_s = time.perf_counter() - started
    started = time.perf_counter()
    registered = register.fn(trained, snapshot, GitLineage("0" * 40, "bench", False), settings)
    register_s = time.perf_counter() - started
    tags = MlflowClient(settings.mlflow.tracking_uri).get_model_version(registered.name, registered.version).tags
    sample = trained.X_holdout.head(200)
    columns = list(sample.columns)
    bodies = [orjson.dumps({"dataframe_split": {"columns": columns, "data": [row]}}) for row in sample.values.tolist()]
    with running(settings, pinned_version=registered.version, isolated=True) as url:
        run = drive(url, [request_bytes(url, "/invocations", b) for b in bodies], total, 1).summary()
    print(f"{estimator} on {name}: {tags['serving_format']} ({tags['onnx_parity'][:90]}) p99 {run['p99_ms']:.3f} ms")
    return {
        "estimator": estimator,
        "table": name,
        "task": trained.task.value,
        "format": tags["serving_format"],
        "train_s": trained_s,
        "register_s": register_s,
        "p50_ms": run["p50_ms"],
        "p99_ms": run["p99_ms"],
    }


if __name__ == "__main__":
    main()
