"""The gateway side by side with `mlflow models serve`: same model version, same client, same bodies.

Run from the repository root:

    .venv/bin/python tests/benchmarks/bench_serving.py [--rounds 3] [--requests 1000] [--shadow-only]

(the Shadow's overhead is measured over at least 10 rounds of 8,000 requests)

In a fresh temporary directory: trains the demo churn pipeline (imputers, scaler, one-hot
encoder, logistic regression), registers it (compiled to ONNX, parity-checked), sets
Production, then starts both servers as subprocesses on loopback: the shipway gateway (real
alias routing, prediction log on, SQLite) and `mlflow models serve --env-manager local` on
models:/churn-classifier@Production. The same keep-alive socket client (tasks/benchmark/loadgen.py) sends
the same one-row `dataframe_split` bodies to each, alternating servers within every round, at
concurrency 1 and 16. Prints per-round figures, the medians over rounds, and the ratios.

Then: predictions of both servers and of mlflow.pyfunc on 500 holdout rows (must be equal);
the gateway's p99 with and without a Shadow version attached, alternating (overhead); the
ONNX parity tag. The Shadow runs in its own process (serving/shadow.py), warmed up first;
each measurement starts with its backlog empty. Targets: gateway p50 <= 0.7 ms, p99 <= 1.5
ms; >= 12x lower p50/p99 and >= 12x throughput at concurrency 16 than mlflow; Shadow raises
p99 by <= 10%.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import orjson  # noqa: E402

from tests.conftest import mlflow_models_serve  # noqa: E402

TARGETS = {"p50_ms": 0.7, "p99_ms": 1.5, "ratio": 12.0, "shadow_overhead": 0.10}
SHADOW_ROUNDS, SHADOW_REQUESTS = 10, 8000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=1000, help="requests per measurement")
    parser.add_argument("--shadow-only", action="store_true", help="only the shadow overhead (no mlflow comparison)")
    args = parser.parse_args()
    print(f"load average before: {fmt_load()}  (2-core machine shared with other work)")
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        settings, name, versions, holdout = prepare(Path(tmp))
        compare(settings, name, versions, holdout, args.rounds, args.requests, args.shadow_only)
    print(f"load average after: {fmt_load()}")


def prepare(tmp: Path):
    from configs.settings import load_settings
    from core.vocabulary import Alias
    from tasks.data.demo_data import TARGET
    from tasks.data.snapshot import take_snapshot
    from tasks.release.lineage import git_lineage
    from tasks.release.registration import register
    from tasks.release.registry import set_alias
    from tasks.training.pipeline import train

    settings = load_settings(cwd=tmp)
    settings = settings.model_copy(update={"serving": settings.serving.model_copy(update={"poll_interval_s": 0.5})})
    started = time.perf_counter()
    snapshot = take_snapshot("demo", settings, TARGET)
    trained = train(snapshot.frame, TARGET, settings.training)
    production = register.fn(trained, snapshot, git_lineage(), settings)
    shadow = register.fn(trained, snapshot, git_lineage(), settings)
    set_alias(settings, production.name, Alias.PRODUCTION, production.version)
    print(f"trained and registered {production.name} versions {production.version} and {shadow.version} "
          f"in {time.perf_counter() - started:.1f} s")  # fmt: skip
    return settings, production.name, (production.version, shadow.version), trained.X_holdout


def compare(
    settings, name: str, versions: tuple[str, str], holdout, rounds: int, total: int, shadow_only: bool
) -> None:
    from mlflow import MlflowClient

    from serving.server import running
    from tasks.benchmark.loadgen import drive, request_bytes

    production, shadow = versions
    client = MlflowClient(settings.mlflow.tracking_uri)
    print(f"ONNX parity of version {production}: {client.get_model_version(name, production).tags['onnx_parity']}")
    sample = holdout.sample(200, random_state=0)
    columns = list(sample.columns)
    bodies = [orjson.dumps({"dataframe_split": {"columns": columns, "data": [row]}})
              for row in sample.astype(object).where(sample.notna(), None).values.tolist()]  # fmt: skip
    if shadow_only:
        with running(settings, isolated=True) as gateway:
            requests = [request_bytes(gateway, "/invocations", b) for b in bodies]
            shadow_overhead(settings, client, name, shadow, gateway, requests, rounds, total, drive)
        return
    with (
        running(settings, isolated=True) as gateway,
        mlflow_models_serve(settings.mlflow.tracking_uri, f"models:/{name}@Production") as reference,
    ):
        servers = {"gateway": gateway, "mlflow": reference}
        requests = {k: [request_bytes(url, "/invocations", b) for b in bodies] for k, url in servers.items()}
        check_predictions(servers, name, holdout, settings)
        figures: dict[tuple[str, int], list[dict]] = {}
        for r in range(rounds):
            for level in (1, 16):
                for server in ("gateway", "mlflow") if r % 2 == 0 else ("mlflow", "gateway"):
                    run = drive(servers[server], requests[server], total, level).summary()
                    figures.setdefault((server, level), []).append(run)
                    print(f"round {r + 1} {server:7} c={level:<2} p50 {run['p50_ms']:7.3f} ms  p95 {run['p95_ms']:7.3f}  "
                          f"p99 {run['p99_ms']:7.3f}  max {run['max_ms']:7.3f}  {run['throughput_rps']:7.0f} req/s")  # fmt: skip
        report(figures)
        shadow_overhead(settings, client, name, shadow, gateway, requests["gateway"], rounds, total, drive)


def check_predictions(servers: dict[str, str], name: str, holdout, settings) -> None:
    import mlflow

    rows = holdout.head(500)
    expected = mlflow.pyfunc.load_model(f"models:/{name}@Production").predict(rows).tolist()
    body = {"dataframe_split": {"columns": list(rows.columns),
                                "data": rows.astype(object).where(rows.notna(), None).values.tolist()}}  # fmt: skip
    for server, url in servers.items():
        got = httpx.post(f"{url}/invocations", json=body, timeout=60).json()["predictions"]
        verdict = (
            "equal" if got == expected else f"DIFFER in {sum(a != b for a, b in zip(got, expected, strict=False))} rows"
        )
        print(f"predictions of {server} vs mlflow.pyfunc on {len(rows)} holdout rows: {verdict}")


def report(figures: dict[tuple[str, int], list[dict]]) -> None:
    def median(server: str, level: int, key: str) -> float:
        return statistics.median(run[key] for run in figures[(server, level)])

    print("\nmedian over rounds       gateway      mlflow   mlflow/gateway")
    for level in (1, 16):
        for key in ("p50_ms", "p95_ms", "p99_ms", "throughput_rps"):
            g, m = median("gateway", level, key), median("mlflow", level, key)
            ratio = g / m if key == "throughput_rps" else m / g
            print(f"c={level:<2} {key:16} {g:10.3f}  {m:10.3f}   {ratio:8.1f}x")
    g1 = {k: median("gateway", 1, k) for k in ("p50_ms", "p99_ms")}
    ok = g1["p50_ms"] <= TARGETS["p50_ms"] and g1["p99_ms"] <= TARGETS["p99_ms"]
    print(
        f"target gateway p50 <= {TARGETS['p50_ms']} ms, p99 <= {TARGETS['p99_ms']} ms (c=1): {'met' if ok else 'NOT met'}"
    )
    ratios = [median("mlflow", 1, "p50_ms") / g1["p50_ms"], median("mlflow", 1, "p99_ms") / g1["p99_ms"],
              median("gateway", 16, "throughput_rps") / median("mlflow", 16, "throughput_rps")]  # fmt: skip
    print(f"target >= {TARGETS['ratio']:g}x (p50, p99, throughput c=16): "
          f"{', '.join(f'{r:.1f}x' for r in ratios)}: {'met' if min(ratios) >= TARGETS['ratio'] else 'NOT met'}")  # fmt: skip


def shadow_overhead(settings, client, name, shadow, url, requests, rounds, total, drive) -> None:
    """Production's p99 with and without a Shadow, alternating. The Shadow runs in a process of
    its own: it is started and warmed up before the first measurement, and every measurement
    starts with its backlog empty, so that no run pays for another's mirrored requests. A 10%
    difference of p99s needs long runs: at least SHADOW_ROUNDS of SHADOW_REQUESTS each."""
    rounds, total = max(rounds, SHADOW_ROUNDS), max(total, SHADOW_REQUESTS)
    from core.vocabulary import Alias
    from tasks.release.registry import set_alias

    def health() -> dict:
        return httpx.get(f"{url}/health").json()

    def settle(attached: bool) -> None:
        deadline = time.monotonic() + 120
        while ("Shadow" in (doc := health())["serving"]) != attached or doc["shadow_process"]["backlog"]:
            if time.monotonic() > deadline:
                sys.exit(f"the gateway did not settle: {doc}")
            time.sleep(0.1)

    gateway = gateway_process()
    set_alias(settings, name, Alias.SHADOW, shadow)
    settle(True)
    drive(url, requests, 2000, 1)  # starts the shadow process, which loads the version
    settle(True)
    p50, p99 = {False: [], True: []}, {False: [], True: []}
    cpu_us = {False: [], True: []}  # gateway CPU per request: what a Shadow costs it, whatever the load
    main_us = {False: [], True: []}  # of which the event loop's thread: the answers wait for it
    shadow_us = []  # the shadow process's CPU per mirrored request
    for r in range(rounds):
        for attached in (False, True) if r % 2 == 0 else (True, False):
            if attached:
                set_alias(settings, name, Alias.SHADOW, shadow)
            elif "Shadow" in client.get_registered_model(name).aliases:
                client.delete_registered_model_alias(name, "Shadow")
            settle(attached)
            before, main_before, shadow_before = process_cpu(gateway), main_thread_cpu(gateway), shadow_cpu(gateway)
            run = drive(url, requests, total, 1).summary()
            p99[attached].append(run["p99_ms"])
            p50[attached].append(run["p50_ms"])
            cpu_us[attached].append((process_cpu(gateway) - before) / (total + 50) * 1e6)
            main_us[attached].append((main_thread_cpu(gateway) - main_before) / (total + 50) * 1e6)
            if attached:
                settle(True)
                shadow_us.append((shadow_cpu(gateway) - shadow_before) / (total + 50) * 1e6)
    without, with_ = statistics.median(p99[False]), statistics.median(p99[True])
    overhead = with_ / without - 1
    print(f"\nshadow (version {shadow}, ONNX) attached: gateway p99 {with_:.3f} ms vs {without:.3f} ms without "
          f"({overhead:+.1%}); rounds {[round(x, 3) for x in p99[True]]} vs {[round(x, 3) for x in p99[False]]}")  # fmt: skip
    print(
        f"gateway p50 {statistics.median(p50[True]):.3f} ms with Shadow, {statistics.median(p50[False]):.3f} ms without"
    )
    print(f"gateway CPU per request: {statistics.median(cpu_us[True]):.0f} us with Shadow, "
          f"{statistics.median(cpu_us[False]):.0f} us without (log writes included); "
          f"event-loop thread {statistics.median(main_us[True]):.0f} vs {statistics.median(main_us[False]):.0f} us")  # fmt: skip
    print(f"shadow process ({health()['shadow_process']['state']}, idle priority): "
          f"{statistics.median(shadow_us):.0f} us CPU per mirrored request, its log row included")  # fmt: skip
    print(f"target shadow raises p99 by <= {TARGETS['shadow_overhead']:.0%}: "
          f"{'met' if overhead <= TARGETS['shadow_overhead'] else 'NOT met'}")  # fmt: skip


def gateway_process():
    """The gateway subprocess started by serving.server.running(isolated=True)."""
    import psutil

    children = [p for p in psutil.Process().children() if "serving" in " ".join(p.cmdline())]
    return children[0]


def process_cpu(process) -> float:
    return sum(process.cpu_times()[:2])


def shadow_cpu(gateway) -> float:
    """CPU seconds of the gateway's shadow process (its only child; 0 before it starts)."""
    return sum(process_cpu(child) for child in gateway.children())


def main_thread_cpu(process) -> float:
    """CPU seconds of the process's main thread (the event loop), whose id is the process id."""
    return next(t.user_time + t.system_time for t in process.threads() if t.id == process.pid)


def fmt_load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
