"""`shipway serve --workers N`: requests/s at concurrency 32 with 1 and 2 workers, and CPU per request.

Run from the repository root (needs `wrk`: `apt-get install -y wrk`):

    .venv/bin/python tests/benchmarks/bench_workers.py [--rounds 3] [--seconds 10]

In a fresh temporary directory: trains the demo churn pipeline (ONNX), sets Production, then for
each round starts the gateway with 1 worker and with 2 (alternating which goes first), real
alias routing and the SQLite prediction log on, and drives it with wrk (one thread, 32 keep-alive
connections, one-row `dataframe_split` bodies) for `--seconds` after a warm-up.

Measured fairly on a machine whose cores the load generator shares: wrk is C and spends a small
fraction of the gateway's CPU a request, and it is measured too: the CPU seconds of every gateway
process (supervisor, workers, their log-writer threads) and of wrk over the measured run, each
divided by the requests answered. Scaling is the ratio of requests/s, and, for a machine whose
cores are shared (by wrk, or other work), the capacity ratio: 2 cores' worth of the gateway's CPU
per request with 2 workers against one core's with 1 worker. Running more workers must not cost
CPU per request: with 2, at most 10% more than one worker's (less is no cost). Targets:
>= 1.7x requests/s with 2 workers on a 2-core machine; gateway CPU per request at most 10% above
one worker's.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import orjson  # noqa: E402
import psutil  # noqa: E402

TARGETS = {"scaling": 1.7, "cpu_per_request": 0.10}
CONCURRENCY = 32


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10, help="measured seconds of each run")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench_workers needs wrk: apt-get install -y wrk")
    print(f"load average before: {load()}  ({os.cpu_count()} CPUs, shared with other work)")
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        settings, body = prepare(Path(tmp))
        script = Path(tmp) / "post.lua"
        script.write_text(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = {orjson.dumps(body.decode()).decode()}\n"
        )
        figures: dict[int, list[dict]] = {1: [], 2: []}
        for r in range(args.rounds):
            for workers in (1, 2) if r % 2 == 0 else (2, 1):
                run = measure(settings, workers, script, args.seconds)
                figures[workers].append(run)
                print(f"round {r + 1} workers={workers}  {run['rps']:8.0f} req/s  p50 {run['p50_ms']:6.2f} ms  "
                      f"p99 {run['p99_ms']:6.2f} ms  gateway CPU {run['gateway_us']:6.1f} us/req  "
                      f"wrk CPU {run['wrk_us']:5.1f} us/req  errors {run['errors']}  load {run['load']}")  # fmt: skip
    report(figures)
    print(f"load average after: {load()}")


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
    snapshot = take_snapshot("demo", settings, TARGET)
    trained = train(snapshot.frame, TARGET, settings.training)
    production = register(trained, snapshot, git_lineage(), settings)
    set_alias(settings, production.name, Alias.PRODUCTION, production.version)
    row = trained.X_holdout.head(1)
    data = row.astype(object).where(row.notna(), None).values.tolist()
    return settings, orjson.dumps({"dataframe_split": {"columns": list(row.columns), "data": data}})


def measure(settings, workers: int, script: Path, seconds: int) -> dict:
    from serving.server import running

    with running(settings, isolated=True, workers=workers) as url:
        wait_for_workers(url, workers)
        gateway = psutil.Process().children(recursive=True)  # the supervisor and its workers (or the one process)
        wrk(url, script, 2)  # warm-up: connections, caches, the log's first writes
        before = cpu(gateway)
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        out = wrk(url, script, seconds)
        wall = time.perf_counter() - started
        gateway_s = cpu(gateway) - before
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    wrk_s = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": ms(re.search(r"50%\s+(\S+)", out).group(1)),
        "p99_ms": ms(re.search(r"99%\s+(\S+)", out).group(1)),
        "gateway_us": gateway_s / requests * 1e6,
        "wrk_us": wrk_s / requests * 1e6,
        "errors": int(errors.group(1)) if errors else 0,
        "wall_s": wall,
        "load": load(),
    }


def wrk(url: str, script: Path, seconds: int) -> str:
    command = ["wrk", "-t1", f"-c{CONCURRENCY}", f"-d{seconds}s", "--latency", "-s", str(script), f"{url}/invocations"]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def wait_for_workers(url: str, workers: int) -> None:
    """Until every worker answers (the first one up is enough for running())."""
    seen: set[int] = set()
    deadline = time.monotonic() + 120
    while len(seen) < workers and time.monotonic() < deadline:
        doc = httpx.get(f"{url}/health", headers={"Connection": "close"}).json()
        seen.add(doc["worker"]["index"] if doc["worker"] else 0)
    if len(seen) < workers:
        sys.exit(f"only workers {sorted(seen)} of {workers} answered")


def cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def report(figures: dict[int, list[dict]]) -> None:
    med = {w: {k: statistics.median(r[k] for r in runs) for k in ("rps", "gateway_us", "wrk_us", "p99_ms")}
           for w, runs in figures.items()}  # fmt: skip
    scaling = med[2]["rps"] / med[1]["rps"]
    cpu_change = med[2]["gateway_us"] / med[1]["gateway_us"] - 1
    for w, m in med.items():
        print(f"median workers={w}: {m['rps']:.0f} req/s, p99 {m['p99_ms']:.2f} ms, gateway CPU {m['gateway_us']:.1f} "
              f"us/req, wrk CPU {m['wrk_us']:.1f} us/req")  # fmt: skip
    print(f"scaling 2 vs 1 worker: {scaling:.2f}x (target >= {TARGETS['scaling']}x)  "
          f"{'OK' if scaling >= TARGETS['scaling'] else 'MISSED'}")  # fmt: skip
    # What 2 workers answer on 2 free cores against 1 worker on 1: on a machine whose cores other work and
    # wrk share, requests/s understates it, and the CPU each request costs does not depend on the sharing.
    capacity = 2 * med[1]["gateway_us"] / med[2]["gateway_us"]
    print(
        f"capacity 2 vs 1 worker (2 cores' worth of gateway CPU per request): {capacity:.2f}x (target >= "
        f"{TARGETS['scaling']}x)  {'OK' if capacity >= TARGETS['scaling'] else 'MISSED'}"
    )
    print(f"gateway CPU per request, 2 vs 1 worker: {cpu_change:+.1%} (target at most +{TARGETS['cpu_per_request']:.0%})"
          f"  {'OK' if cpu_change <= TARGETS['cpu_per_request'] else 'MISSED'}")  # fmt: skip


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
