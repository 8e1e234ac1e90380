"""`shipway bench`: where a model version's serving time goes, and whether it fits the budget.

In-process, the gateway's own code path is timed stage by stage on one-row requests: prepare
(parse the JSON body, check it against the signature, build the tensors or DataFrame),
forward (the model), finish (predictions to the JSON answer). Over HTTP, a gateway subprocess
pinned to the version answers the same bodies through loopback with its prediction log on
(a throwaway SQLite file, so benchmark traffic never mixes with real traffic), at concurrency
1 and 16. Figures go to the version's MLflow run (metrics, a latency histogram, the JSON
report) and to version tags latency_p50_ms / latency_p95_ms / latency_p99_ms (HTTP,
concurrency 1); the p99 budget then gates the release.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from configs.settings import Settings
from core.errors import GateError, RegistryError
from core.refs import ModelRef
from serving import LoadedVersion, RegistryReader, parse, running, servable
from tasks.retries import retry_on_io

SAMPLE_ROWS = 200
STAGES = ("prepare", "forward", "finish")
CONCURRENCY = (1, 16)


@dataclass
class BenchResult:
    name: str
    version: str
    serving_format: str
    in_process: dict[str, dict[str, float]]  # stage -> percentiles (ms)
    http: dict[str, dict[str, float]]  # "c1" / "c16" -> percentiles (ms) and throughput
    budget_p99_ms: float
    passed: bool
    run_id: str | None = None

    def tags(self) -> dict[str, str]:
        c1 = self.http["c1"]
        return {
            "latency_p50_ms": f"{c1['p50_ms']:.4g}",
            "latency_p95_ms": f"{c1['p95_ms']:.4g}",
            "latency_p99_ms": f"{c1['p99_ms']:.4g}",
            "latency_budget_p99_ms": f"{self.budget_p99_ms:g}",
            "latency_gate": "passed" if self.passed else "failed",
        }

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for stage, figures in self.in_process.items():
            out |= {f"bench_inprocess_{stage}_{k}": v for k, v in figures.items() if k.endswith("_ms")}
        for level, figures in self.http.items():
            out |= {f"bench_http_{level}_{k}": v for k, v in figures.items() if k != "requests"}
        return out


def sample_bodies(settings: Settings, tags: dict[str, str], columns: list[str], rows: int = SAMPLE_ROWS) -> list[bytes]:
    """One-row `dataframe_split` bodies drawn from the version's own training snapshot."""
    from tasks.snapshot import read_snapshot
    from tasks.storage import open_store

    uri, snapshot_id = tags.get("data_snapshot_uri"), tags.get("data_snapshot_id")
    if not uri or not snapshot_id:
        raise RegistryError("the version has no data_snapshot_uri tag: nothing to draw benchmark rows from")
    frame = read_snapshot(open_store(uri.rsplit("/", 1)[0], settings.s3), snapshot_id).frame
    sample = frame.sample(min(rows, len(frame)), random_state=0)[columns]
    bodies = []
    for values in sample.astype(object).where(sample.notna(), None).itertuples(index=False):
        bodies.append(orjson.dumps({"dataframe_split": {"columns": columns, "data": [list(values)]}}))
    return bodies


def in_process(servable, bodies: list[bytes], total: int) -> dict[str, dict[str, float]]:
    """Each stage of the gateway's path, timed per request."""

    times = {stage: np.empty(total) for stage in (*STAGES, "total")}
    for i in range(total + 50):
        body = bodies[i % len(bodies)]
        t0 = time.perf_counter()
        prepared = servable.prepare(servable.schema.coerce(parse(body, "application/json")))
        t1 = time.perf_counter()
        output = servable.forward(prepared)
        t2 = time.perf_counter()
        orjson.dumps({"predictions": servable.finish(output)})
        t3 = time.perf_counter()
        if i >= 50:  # warm-up excluded
            j = i - 50
            times["prepare"][j], times["forward"][j], times["finish"][j], times["total"][j] = (
                t1 - t0,
                t2 - t1,
                t3 - t2,
                t3 - t0,
            )
    return {stage: _percentiles(values) for stage, values in times.items()}


def over_http(
    settings: Settings, loaded: LoadedVersion, baseline: Any, bodies: list[bytes], total: int
) -> tuple[dict, dict[str, np.ndarray]]:
    from tasks.loadgen import drive, request_bytes

    with tempfile.TemporaryDirectory() as tmp:
        isolated = settings.model_copy(
            update={"prediction_log": settings.prediction_log.model_copy(update={"url": f"sqlite:///{tmp}/bench.db"})}
        )
        # The gateway gets the version and its baseline (its fallback chain whole) as loaded here: it
        # starts without MLflow's import or the registry.
        # Meanwhile (it starts in a process of its own) this one imports pyplot for the histogram, done
        # before the load generator runs: an import would take the GIL from it.
        plotting = threading.Thread(target=_pyplot, name="import-pyplot", daemon=True)
        plotting.start()
        with running(isolated, isolated=True, kept=loaded, kept_baseline=baseline) as url:
            plotting.join()
            requests = [request_bytes(url, "/invocations", body) for body in bodies]
            figures, latencies = {}, {}
            for level in CONCURRENCY:
                run = drive(url, requests, total, level)
                figures[f"c{level}"] = run.summary()
                latencies[f"c{level}"] = run.latencies_s
    return figures, latencies


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def histogram(result: BenchResult, latencies: dict[str, np.ndarray], path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    c1 = latencies["c1"] * 1000
    upper = float(np.percentile(c1, 99.9))
    ax.hist(np.clip(c1, 0, upper), bins=80, color="#3b75af")
    for label, key, style in (("p50", "p50_ms", "-"), ("p95", "p95_ms", "--"), ("p99", "p99_ms", ":")):
        value = result.http["c1"][key]
        ax.axvline(value, color="black", linestyle=style, label=f"{label} {value:.3f} ms")
    if result.budget_p99_ms <= upper * 1.5:
        ax.axvline(result.budget_p99_ms, color="red", label=f"budget p99 {result.budget_p99_ms:g} ms")
    ax.set_xlabel("latency over HTTP, one-row requests, concurrency 1 (ms)")
    ax.set_ylabel("requests")
    ax.set_title(f"{result.name} version {result.version} ({result.serving_format}) through the gateway")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def bench(settings: Settings, ref: str, record: bool = True) -> BenchResult:
    """Benchmark NAME@ALIAS (or NAME/VERSION) and record it with the version in MLflow."""
    from tasks.registry import record_benchmark

    model_ref = ModelRef.parse(ref, "--model")
    name = model_ref.name
    reader = RegistryReader(settings)
    version = reader.resolve(model_ref)
    loaded = reader.load(name, version)
    model = servable(loaded)
    bodies = sample_bodies(settings, loaded.tags, [c.name for c in loaded.columns])
    total = settings.serving.bench_requests
    stages = in_process(model, bodies, total)
    http, latencies = over_http(settings, loaded, reader.baseline(loaded), bodies, total)
    budget = settings.serving.latency_budget_p99_ms
    result = BenchResult(name, version, model.flavor, stages, http, budget, http["c1"]["p99_ms"] <= budget)
    if record:
        with tempfile.TemporaryDirectory() as tmp:
            files = [histogram(result, latencies, Path(tmp) / "latency_histogram.png"), Path(tmp) / "benchmark.json"]
            files[1].write_text(json.dumps(asdict(result), indent=2))
            result.run_id = record_benchmark(settings, name, version, result.metrics(), result.tags(), files)
    return result


def check_budget(result: BenchResult) -> None:
    """The latency gate: HTTP p99 (one-row requests, concurrency 1) within the configured budget."""
    if not result.passed:
        raise GateError(
            f"{result.name} version {result.version}: HTTP p99 {result.http['c1']['p99_ms']:.3f} ms is over "
            f"the latency budget of {result.budget_p99_ms:g} ms (serving.latency_budget_p99_ms)"
        )


def _percentiles(seconds: np.ndarray) -> dict[str, float]:
    ms = seconds * 1000
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99), "max_ms": float(ms.max())}


@task(name="bench", retries=1, retry_delay_seconds=[5], retry_condition_fn=retry_on_io, cache_policy=NO_CACHE)
def bench_task(settings: Settings, name: str, version: str) -> BenchResult:
    result = bench(settings, f"{name}/{version}")
    check_budget(result)
    c1, c16 = result.http["c1"], result.http["c16"]
    get_run_logger().info(
        "version %s (%s) over HTTP: p50 %.3f ms, p99 %.3f ms (budget %g), %.0f req/s at concurrency 16",
        version, result.serving_format, c1["p50_ms"], c1["p99_ms"], result.budget_p99_ms, c16["throughput_rps"],
    )  # fmt: skip
    return result


def print_bench(result: BenchResult, console) -> None:
    from rich.table import Table

    console.print(f"[bold]{result.name}[/] version [bold]{result.version}[/] served as {result.serving_format}")
    stages = Table(title="in-process, one-row requests (ms)", title_justify="left")
    for header in ("stage", "p50", "p95", "p99", "max"):
        stages.add_column(header, justify="left" if header == "stage" else "right")
    for stage, f in result.in_process.items():
        stages.add_row(stage, *(f"{f[k]:.3f}" for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms")))
    console.print(stages)
    http = Table(title="over HTTP through the gateway, prediction log on (ms)", title_justify="left")
    for header in ("concurrency", "p50", "p95", "p99", "max", "req/s"):
        http.add_column(header, justify="right")
    for level, f in result.http.items():
        figures = (f"{f[k]:.3f}" for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms"))
        http.add_row(level.removeprefix("c"), *figures, f"{f['throughput_rps']:.0f}")
    console.print(http)
    verdict = "[green]within[/]" if result.passed else "[red]over[/]"
    console.print(f"p99 {result.http['c1']['p99_ms']:.3f} ms is {verdict} the budget of {result.budget_p99_ms:g} ms")
    if result.run_id:
        console.print(f"recorded in run {result.run_id} (metrics, benchmark/latency_histogram.png) and version tags")
