"""`shipway bench`: where a model version's serving time goes, and whether it fits the latency budget.

In-process, the gateway's own code path is timed stage by stage on one-row requests: prepare
(parse the JSON body, check it against the signature, build the tensors or DataFrame),
forward (the model), finish (predictions to the JSON answer), and each request's CPU time beside
its wall time. Over HTTP, a gateway subprocess pinned to the version answers the same bodies
through loopback with its prediction log on (a throwaway SQLite file, so benchmark traffic never
mixes with real traffic), at concurrency 1 and 16, its own CPU time read around the requests.

A measurement takes its requests in rounds and stops once its answer is clear, after
serving.bench_seconds or at serving.bench_requests. `judge` turns measurements into the verdict,
the same on a quiet and a loaded machine (docs/configuration.md, "The benchmark's verdict"). Figures go to
the version's MLflow run (metrics, a latency histogram, the JSON report) and to version tags.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np
import orjson
import psutil
from prefect import get_run_logger
from threadpoolctl import threadpool_limits

from configs.settings import ServingSettings, Settings
from core.errors import GateError, RegistryError
from core.refs import ModelRef
from core.vocabulary import Tag
from serving import LoadedVersion, RegistryReader, Servable, json_rows, parse, running, servable
from tasks.retries import shipway_task

if TYPE_CHECKING:
    from rich.console import Console

SAMPLE_ROWS = 200
STAGES = ("prepare", "forward", "finish")
WARMUP = 10  # requests before each measurement: first calls pay for lazy imports and caches
ROUND = 50  # requests between looks at the figures so far
MIN_REQUESTS = 100  # the fewest requests a p99 rests on
CLEAR = 2.0  # a p99 under budget / CLEAR, or a median over the budget: more requests would not change the verdict
ATTEMPTS = 3  # a failing verdict is measured again, up to this many measurements in all, unless clearly over
LOADED = 1.0  # load average per core above which requests wait for a CPU: wall time then tells of the machine


@dataclass(frozen=True)
class Attempt:
    """One measurement of a version: what a client waited, what the gateway's path cost in CPU, the load."""

    http_p99_ms: float  # wall time over HTTP, concurrency 1: what a client waits
    cpu_p99_ms: float  # CPU time of the gateway's code path per request, in-process (the whole process's)
    overhead_ms: float  # the gateway's CPU per request beyond that path (HTTP, JSON, the log), a mean
    load: float  # 1-minute load average, the higher of the measurement's start and end
    cores: int

    @property
    def quiet_p99_ms(self) -> float:
        """The p99 a client would wait if no other work took the CPU from the gateway."""
        return self.cpu_p99_ms + self.overhead_ms

    @property
    def loaded(self) -> bool:
        return self.load / self.cores > LOADED

    @property
    def judged_ms(self) -> float:
        """The wall time; on a loaded machine, the CPU-time estimate when it is lower (the wait for a CPU removed)."""
        return min(self.http_p99_ms, self.quiet_p99_ms) if self.loaded else self.http_p99_ms


@dataclass(frozen=True)
class Verdict:
    passed: bool
    budget_ms: float
    judged: Attempt  # the best of the attempts
    attempts: int

    @property
    def on_cpu(self) -> bool:
        return self.judged.judged_ms < self.judged.http_p99_ms

    def text(self) -> str:
        a = self.judged
        within = "within" if self.passed else "is over"
        load = f"load {a.load:.1f} on {a.cores} cores"
        estimate = f"CPU-time estimate of the quiet p99 {a.quiet_p99_ms:.3g} ms"
        best = f"best of {self.attempts} measurements, " if self.attempts > 1 else ""
        if self.on_cpu:
            return f"HTTP p99 {a.http_p99_ms:.3f} ms at {load}: {estimate} {within} the latency budget of " \
                   f"{self.budget_ms:g} ms (serving.latency_budget_p99_ms; {best}judged on CPU time)"  # fmt: skip
        return f"HTTP p99 {a.http_p99_ms:.3f} ms {within} the latency budget of {self.budget_ms:g} ms " \
               f"(serving.latency_budget_p99_ms; {best}{load}, {estimate})"  # fmt: skip


def judge(attempts: list[Attempt], budget_ms: float) -> Verdict:
    """Within the budget when an attempt's judged p99 is: its HTTP p99, or on a loaded machine the lower
    of that and its CPU-time estimate of the quiet p99. The best attempt counts: load only slows."""
    best = min(attempts, key=lambda a: a.judged_ms)
    return Verdict(best.judged_ms <= budget_ms, budget_ms, best, len(attempts))


def measure_again(attempts: list[Attempt], budget_ms: float) -> bool:
    """A failing verdict is measured again (a burst of other work passes) unless it is clearly over."""
    verdict = judge(attempts, budget_ms)
    return not verdict.passed and len(attempts) < ATTEMPTS and verdict.judged.judged_ms <= CLEAR * budget_ms


@dataclass
class BenchResult:
    name: str
    version: str
    serving_format: str
    in_process: dict[str, dict[str, float]]  # stage -> percentiles (ms), of the judged attempt
    http: dict[str, dict[str, float]]  # "c1" / "c16" -> percentiles (ms) and throughput
    verdict: Verdict
    run_id: str | None = None

    @property
    def passed(self) -> bool:
        return self.verdict.passed

    @property
    def budget_p99_ms(self) -> float:
        return self.verdict.budget_ms

    def tags(self) -> dict[str, str]:
        c1, judged = self.http["c1"], self.verdict.judged
        return {
            Tag.LATENCY_P50_MS: f"{c1['p50_ms']:.4g}",
            Tag.LATENCY_P95_MS: f"{c1['p95_ms']:.4g}",
            Tag.LATENCY_P99_MS: f"{c1['p99_ms']:.4g}",
            Tag.LATENCY_BUDGET_P99_MS: f"{self.budget_p99_ms:g}",
            Tag.LATENCY_GATE: "passed" if self.passed else "failed",
            Tag.LATENCY_CPU_P99_MS: f"{judged.quiet_p99_ms:.4g}",
            Tag.LATENCY_LOAD: f"{judged.load:.2f} on {judged.cores} cores",
            Tag.LATENCY_VERDICT: self.verdict.text()[:250],
        }

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for stage, figures in self.in_process.items():
            out |= {f"bench_inprocess_{stage}_{k}": v for k, v in figures.items() if k.endswith("_ms")}
        for level, figures in self.http.items():
            out |= {f"bench_http_{level}_{k}": v for k, v in figures.items() if k != "requests"}
        judged = self.verdict.judged
        return out | {
            "bench_quiet_p99_ms": judged.quiet_p99_ms,
            "bench_load_per_core": judged.load / judged.cores,
            "bench_attempts": float(self.verdict.attempts),
        }


def sample_bodies(settings: Settings, tags: dict[str, str], columns: list[str], rows: int = SAMPLE_ROWS) -> list[bytes]:
    """One-row `dataframe_split` bodies drawn from the version's own training snapshot."""
    from tasks.data.snapshot import read_snapshot
    from tasks.data.storage import open_store

    uri, snapshot_id = tags.get("data_snapshot_uri"), tags.get("data_snapshot_id")
    if not uri or not snapshot_id:
        raise RegistryError("the version has no data_snapshot_uri tag: nothing to draw benchmark rows from")
    frame = read_snapshot(open_store(uri.rsplit("/", 1)[0], settings.s3), snapshot_id).frame
    sample = frame.sample(min(rows, len(frame)), random_state=0)[columns]
    return [orjson.dumps({"dataframe_split": {"columns": columns, "data": [row]}}) for row in json_rows(sample)]


def rounds(take: Callable[[int], np.ndarray], budget_ms: float | None, settings: ServingSettings) -> np.ndarray:
    """Per-request figures (seconds; a row each, the first column decides) from `take(n)`, round after
    round until the answer is clear (no `budget_ms`: never), bench_seconds passed or bench_requests are in."""
    began, parts, taken = time.perf_counter(), [], 0
    while taken < settings.bench_requests:
        parts.append(take(min(ROUND, settings.bench_requests - taken)))
        taken += len(parts[-1])
        enough = taken >= MIN_REQUESTS
        if enough and (time.perf_counter() - began >= settings.bench_seconds or _clear(parts, budget_ms)):
            break
    return np.concatenate(parts)


def _clear(parts: list[np.ndarray], budget_ms: float | None) -> bool:
    if budget_ms is None:
        return False
    p50, p99 = np.percentile(np.concatenate(parts)[:, 0] * 1000, [50, 99])
    return bool(p99 <= budget_ms / CLEAR or p50 > budget_ms)


def in_process(
    model: Servable, bodies: list[bytes], budget_ms: float | None, settings: ServingSettings
) -> tuple[dict[str, dict[str, float]], np.ndarray]:
    """Each stage of the gateway's path, timed per request, and each request's CPU time (it decides)."""

    def timed(body: bytes) -> tuple[float, ...]:  # cpu, total, prepare, forward, finish
        c0, t0 = time.process_time(), time.perf_counter()
        prepared = model.prepare(model.schema.coerce(parse(body, "application/json")))
        t1 = time.perf_counter()
        output = model.forward(prepared)
        t2 = time.perf_counter()
        orjson.dumps({"predictions": model.finish(output)})
        t3, c3 = time.perf_counter(), time.process_time()
        return c3 - c0, t3 - t0, t1 - t0, t2 - t1, t3 - t2

    order = itertools.count()
    take = lambda n: np.array([timed(bodies[next(order) % len(bodies)]) for _ in range(n)])
    # One thread per library pool (OpenMP, BLAS): a one-row request gains nothing from more, and on a loaded
    # machine they spin waiting for each other, CPU time of the machine's making, not the model's.
    with _frozen_heap(), threadpool_limits(1):
        take(WARMUP)
        figures = rounds(take, budget_ms, settings)
    stages = {stage: _percentiles(figures[:, i]) for i, stage in enumerate(("cpu", "total", *STAGES))}
    return stages, figures[:, 0]


@contextmanager
def _frozen_heap() -> Iterator[None]:
    """The gateway freezes its heap at start (serving.models.freeze_heap); this process holds far more
    (a training flow's frames, MLflow, Prefect), whose full collection would land in some request's time."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def over_http(url: str, requests: list[bytes], budget_ms: float, settings: ServingSettings) -> tuple[np.ndarray, float]:
    """Latencies (seconds) at concurrency 1, and the gateway's CPU seconds over them."""
    from tasks.benchmark.loadgen import drive

    gateway = _listening(url)
    drive(url, requests, WARMUP, warmup=0)
    order = itertools.count()
    cpu = _cpu(gateway)

    def take(n: int) -> np.ndarray:
        start = next(order) * ROUND % len(requests)  # each round goes on through the bodies
        return drive(url, requests[start:] + requests[:start], n, warmup=0).latencies_s[:, None]

    latencies = rounds(take, budget_ms, settings)[:, 0]
    return latencies, _cpu(gateway) - cpu


def _listening(url: str) -> psutil.Process | None:
    """The child process serving `url` (its CPU time is the gateway's)."""
    port = urlsplit(url).port
    for child in psutil.Process().children(recursive=True):
        try:
            if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in child.net_connections("tcp")):
                return child
        except psutil.Error:
            continue
    return None


def _cpu(process: psutil.Process | None) -> float:
    if process is None:  # not ours to read (some platforms): the estimate goes without the gateway's overhead
        return 0.0
    times = process.cpu_times()
    return times.user + times.system


def _load() -> float:
    return os.getloadavg()[0]


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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
    from tasks.benchmark.loadgen import drive, request_bytes
    from tasks.release.registry import record_benchmark

    model_ref = ModelRef.parse(ref, "--model")
    name = model_ref.name
    reader = RegistryReader(settings)
    version = reader.resolve(model_ref)
    loaded = reader.load(name, version)
    model = servable(loaded)
    bodies = sample_bodies(settings, loaded.tags, [c.name for c in loaded.columns])
    budget, serving = settings.serving.latency_budget_p99_ms, settings.serving
    # Meanwhile the gateway starts (in a process of its own) this one imports pyplot for the histogram, done
    # before any request is timed: an import would take the GIL from the measurement.
    plotting = threading.Thread(target=_pyplot, name="import-pyplot", daemon=True)
    plotting.start()
    with _gateway(settings, loaded, reader.baseline(loaded)) as url:
        plotting.join()
        requests = [request_bytes(url, "/invocations", body) for body in bodies]
        measured: list[tuple[Attempt, dict, np.ndarray]] = []
        while not measured or measure_again([m[0] for m in measured], budget):
            load = _load()
            stages, cpu = in_process(model, bodies, budget, serving)
            c1, gateway_cpu = over_http(url, requests, budget, serving)
            overhead_ms = max(0.0, (gateway_cpu / len(c1) - float(cpu.mean())) * 1000)
            http_p99 = float(np.percentile(c1, 99) * 1000)
            attempt = Attempt(http_p99, stages["cpu"]["p99_ms"], overhead_ms, max(load, _load()), _cores())
            measured.append((attempt, stages, c1))
        verdict = judge([m[0] for m in measured], budget)
        _, stages, c1 = next(m for m in measured if m[0] is verdict.judged)
        rate = len(c1) / float(c1.sum())  # throughput, not judged: as many requests as bench_seconds allow
        c16 = drive(url, requests, int(np.clip(rate * serving.bench_seconds, 32, serving.bench_requests)), 16)
    http = {"c1": _percentiles(c1) | {"throughput_rps": rate}, "c16": c16.summary()}
    result = BenchResult(name, version, model.flavor, stages, http, verdict)
    if record:
        with tempfile.TemporaryDirectory() as tmp:
            latencies = {"c1": c1, "c16": c16.latencies_s}
            files = [histogram(result, latencies, Path(tmp) / "latency_histogram.png"), Path(tmp) / "benchmark.json"]
            files[1].write_text(json.dumps(asdict(result), indent=2))
            result.run_id = record_benchmark(settings, name, version, result.metrics(), result.tags(), files)
    return result


@contextmanager
def _gateway(settings: Settings, loaded: LoadedVersion, baseline: Any) -> Iterator[str]:
    """A gateway subprocess serving the version and its baseline (its fallback chain whole) as loaded here,
    so it starts without MLflow's import or the registry, with a throwaway prediction log."""
    with tempfile.TemporaryDirectory() as tmp:
        log = settings.prediction_log.model_copy(update={"url": f"sqlite:///{tmp}/bench.db"})
        isolated = settings.model_copy(update={"prediction_log": log})
        with running(isolated, isolated=True, kept=loaded, kept_baseline=baseline) as url:
            yield url


def check_budget(result: BenchResult) -> None:
    """The latency gate: see `judge`."""
    if not result.passed:
        raise GateError(f"{result.name} version {result.version}: {result.verdict.text()}")


def _percentiles(seconds: np.ndarray) -> dict[str, float]:
    ms = seconds * 1000
    p50, p95, p99 = np.percentile(ms, [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99), "max_ms": float(ms.max()),
            "requests": float(len(ms))}  # fmt: skip


# A task of its own: `bench` measures any reference (`shipway bench`); the flow's step also applies the budget.
@shipway_task("bench", io=True, retries=1, retry_delay_seconds=[5])
def bench_task(settings: Settings, name: str, version: str) -> BenchResult:
    result = bench(settings, f"{name}/{version}")
    check_budget(result)
    get_run_logger().info(
        "version %s (%s): %s; %.0f req/s at concurrency 16",
        version, result.serving_format, result.verdict.text(), result.http["c16"]["throughput_rps"],
    )  # fmt: skip
    return result


def print_bench(result: BenchResult, console: Console) -> None:
    from rich.table import Table

    console.print(f"[bold]{result.name}[/] version [bold]{result.version}[/] served as {result.serving_format}")
    stages = Table(title="in-process, one-row requests (ms; cpu: the CPU time of the whole path)", title_justify="left")
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
    console.print(("[green]" if result.passed else "[red]") + result.verdict.text() + "[/]", highlight=False)
    if result.run_id:
        console.print(f"recorded in run {result.run_id} (metrics, benchmark/latency_histogram.png) and version tags")
