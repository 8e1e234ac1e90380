"""Large batches through the gateway, with its default time allowance: who answers, and how fast.

Run from the repository root:

    .venv/bin/python tests/benchmarks/bench_batch.py [--rows 10000] [--batches 5] [--clients 2]

In a fresh temporary directory (embedded default profile, demo data): for each built-in estimator,
trains, registers and pins the version in a gateway subprocess (`serving.running(isolated=True)`)
with the default serving settings (timeout_ms 250, timeout_per_row_ms 0.5, baseline_max_rows 100;
only max_body_bytes raised to fit the body), then sends `--batches` `dataframe_split` bodies of
`--rows` rows from `--clients` clients at once. Prints per estimator: serving format, the batch
times (min / median / max), who answered (X-Model-Role, X-Fallback-Source) and how many answers
differ from the model's own predictions in this process (0 when the model answered: before the
allowance grew with the rows, a 10,000-row batch past 250 ms was answered by the heuristic baseline).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

ESTIMATORS = ["logistic_regression", "random_forest", "hist_gradient_boosting", "gradient_boosting"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--clients", type=int, default=2)
    args = parser.parse_args()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (2 cores, shared)")
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        rows = [measure(tmp, estimator, args.rows, args.batches, args.clients) for estimator in ESTIMATORS]
    print(f"\n{args.rows}-row batches, {args.clients} clients at once, default allowance "
          f"({rows[0]['allowance_ms']:g} ms for this size)")  # fmt: skip
    print(f"{'estimator':24} {'format':8} {'min s':>7} {'median s':>9} {'max s':>7} {'differing':>10}  answered by")
    for r in rows:
        print(f"{r['estimator']:24} {r['format']:8} {r['min_s']:7.3f} {r['median_s']:9.3f} {r['max_s']:7.3f} "
              f"{r['differing']:10d}  {r['answered_by']}")  # fmt: skip
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def measure(tmp: str, estimator: str, n_rows: int, batches: int, clients: int) -> dict:
    import httpx
    import pandas as pd
    from mlflow import MlflowClient

    from configs.settings import load_settings
    from serving import running
    from tasks.data.demo_data import TARGET
    from tasks.data.snapshot import take_snapshot
    from tasks.release.lineage import GitLineage
    from tasks.release.registration import register
    from tasks.training.pipeline import train

    settings = load_settings(cwd=Path(tmp))
    settings = settings.model_copy(
        update={
            "data": settings.data.model_copy(update={"demo_rows": 5_000}),
            "training": settings.training.model_copy(
                update={"model_name": f"batch-{estimator}", "estimator": estimator}
            ),
        }
    )
    snapshot = take_snapshot("demo", settings, TARGET)
    trained = train(snapshot.frame, TARGET, settings.training, settings.data)
    registered = register.fn(trained, snapshot, GitLineage("0" * 40, "bench", False), settings)
    tags = MlflowClient(settings.mlflow.tracking_uri).get_model_version(registered.name, registered.version).tags
    frame = pd.concat([trained.X_holdout] * (n_rows // len(trained.X_holdout) + 1)).head(n_rows)
    expected = trained.model.predict(frame).tolist()
    data = frame.astype(object).where(frame.notna(), None).values.tolist()
    body = orjson.dumps({"dataframe_split": {"columns": list(frame.columns), "data": data}})
    serving = settings.serving
    settings = settings.model_copy(
        update={"serving": serving.model_copy(update={"max_body_bytes": max(serving.max_body_bytes, len(body))})}
    )
    allowance_ms = serving.timeout_ms + n_rows * serving.timeout_per_row_ms

    def send(client: httpx.Client) -> tuple[float, httpx.Response]:
        started = time.perf_counter()
        answer = client.post("/invocations", content=body, headers={"Content-Type": "application/json"})
        return time.perf_counter() - started, answer

    with running(settings, pinned_version=registered.version, isolated=True) as url:
        with httpx.Client(base_url=url, timeout=120) as client, ThreadPoolExecutor(clients) as pool:
            send(client)  # warm
            results = list(pool.map(lambda _: send(client), range(batches * clients)))
    seconds = [s for s, _ in results]
    who = Counter(
        f"{a.status_code} {a.headers.get('x-model-role', '-')}/{a.headers.get('x-fallback-source', '-')}"
        for _, a in results
    )
    differing = sum(
        sum(p != e for p, e in zip(a.json()["predictions"], expected, strict=True))
        for _, a in results
        if a.status_code == 200
    )
    print(f"{estimator}: {tags['serving_format']}, {len(body) / 1e6:.1f} MB bodies, {dict(who)}")
    return {
        "estimator": estimator,
        "format": tags["serving_format"],
        "min_s": min(seconds),
        "median_s": statistics.median(seconds),
        "max_s": max(seconds),
        "differing": differing,
        "answered_by": ", ".join(f"{n} x {k}" for k, n in who.items()),
        "allowance_ms": allowance_ms,
    }


if __name__ == "__main__":
    main()
