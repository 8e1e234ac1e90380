"""`shipway serve --workers N`: N gateway processes on one port (SO_REUSEPORT), real uvicorn, real
registry. Each new connection goes to one worker; /health says which (`worker.index`)."""

from __future__ import annotations

import re
import socket
from datetime import UTC, datetime, timedelta

import httpx
import psutil
import pytest
from mlflow import MlflowClient

from core.vocabulary import Alias
from serving.prediction_log import read_window
from serving.server import GatewayError, running, serve
from tasks.release.registry import set_alias
from tests.conftest import embedded, free_port, register_versions, tuned, wait_for

pytestmark = pytest.mark.slow  # every test starts a supervisor and two workers that load the model

WORKERS_UP_S = 120  # two workers importing and loading at once on a loaded 2-core machine


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    settings = tuned(
        embedded(tmp_path_factory.mktemp("workers")),
        data={"demo_rows": 3000},
        serving={"poll_interval_s": 0.2, "log_flush_interval_s": 0.05, "state_dir": ""},
    )
    (production, trained, _), (shadow, _, _) = register_versions(settings, 2)
    set_alias(settings, production.name, Alias.PRODUCTION, production.version)
    return settings, trained.X_holdout, production.version, shadow.version


def logged(registry, tmp_path, **serving):
    settings = registry[0]
    return tuned(settings, prediction_log={"url": f"sqlite:///{tmp_path}/predictions.db"}, serving=serving)


def body(frame, i: int) -> dict:
    row = frame.iloc[i : i + 1]
    return {"dataframe_records": row.astype(object).where(row.notna(), None).to_dict(orient="records")}


def fresh(url: str, method: str, path: str, **kwargs) -> httpx.Response:
    """One request on a connection of its own: the kernel picks the worker per connection."""
    with httpx.Client(base_url=url, timeout=30) as client:
        return client.request(method, path, **kwargs)


def healths(url: str, n: int) -> dict[int, dict]:
    """Each worker's /health, found by asking until all `n` answered."""

    def found() -> dict[int, dict] | None:
        seen: dict[int, dict] = {}
        for _ in range(40):
            doc = fresh(url, "GET", "/health").json()
            seen[doc["worker"]["index"]] = doc
            if len(seen) == n:
                return seen
        return None

    return wait_for(found, WORKERS_UP_S, f"all {n} workers to answer")


def log_of(settings):
    now = datetime.now(UTC)
    return read_window(settings.prediction_log.url, now - timedelta(hours=1), now + timedelta(minutes=1))


def test_two_workers_answer_on_one_port_log_every_row_and_count_in_one_metrics(registry, tmp_path):
    settings = logged(registry, tmp_path)
    frame, production = registry[1], registry[2]
    with running(settings, workers=2) as url:
        healths(url, 2)  # both listening: connections are spread from here on
        answers = [fresh(url, "POST", "/invocations", json=body(frame, i)) for i in range(60)]
        assert {(a.status_code, a.headers["x-model-version"]) for a in answers} == {(200, production)}
        written = wait_for(
            lambda: (h := healths(url, 2)) and sum(d["prediction_log"]["written"] for d in h.values()) == 60 and h,
            30,
            "both workers to write their rows",
        )
        assert all(doc["prediction_log"]["written"] > 0 for doc in written.values()), "one worker answered all"
        assert {doc["pid"] for doc in written.values()} == {p.pid for p in _workers(written)}
        # Any worker's /metrics counts every worker's answers (prometheus_client's multiprocess mode).
        for _ in range(4):
            metrics = fresh(url, "GET", "/metrics").text
            pattern = rf'shipway_requests_total\{{model_version="{production}",role="production",status="200"\}} (\S+)'
            assert float(re.search(pattern, metrics).group(1)) == 60
    log = log_of(settings)
    assert len(log) == 60 and log.request_id.nunique() == 60
    assert set(log.request_id) == {a.headers["x-request-id"] for a in answers}


def test_every_worker_mirrors_to_the_hosts_one_shadow_process(registry, tmp_path):
    settings = logged(registry, tmp_path)
    frame, production, shadow = registry[1], registry[2], registry[3]
    set_alias(settings, settings.training.model_name, Alias.SHADOW, shadow)
    try:
        with running(settings, workers=2) as url:
            wait_for(lambda: all(d["serving"].get("Shadow") for d in healths(url, 2).values()), 30, "Shadow loaded")
            answers = [fresh(url, "POST", "/invocations", json=body(frame, i)) for i in range(40)]
            assert {a.status_code for a in answers} == {200}

            def settled():
                docs = healths(url, 2)
                owner = docs[0]["shadow_process"]
                written = sum(d["prediction_log"]["written"] for d in docs.values())
                return owner["state"] == "running" and owner["backlog"] == 0 and written == 40 and docs

            docs = wait_for(settled, 120, "the Shadow process to predict every mirrored request")
            assert docs[1]["shadow_process"]["state"] == "forwarding to worker 0"
            shadows = [p for w in _workers(docs) for p in w.children(recursive=True) if _is_shadow(p)]
            assert [p.pid for p in shadows] == [docs[0]["shadow_process"]["pid"]]
            wait_for(lambda: (log_of(settings).role == "shadow").sum() == 40, 30, "the shadow rows")
    finally:
        MlflowClient(settings.mlflow.tracking_uri).delete_registered_model_alias(
            registry[0].training.model_name, "Shadow"
        )
    log = log_of(settings).set_index(["request_id", "role"])
    ids = {a.headers["x-request-id"] for a in answers}
    assert {i for i, role in log.index if role == "shadow"} == ids  # both workers' requests mirrored
    assert set(log.xs("shadow", level="role").model_version) == {shadow}
    assert set(log.xs("production", level="role").model_version) == {production}


def test_sigterm_drains_every_workers_queued_rows(registry, tmp_path):
    # Nothing is written before the stop: every row is still queued when SIGTERM arrives.
    settings = logged(registry, tmp_path, log_flush_interval_s=600, log_batch_size=10_000)
    frame = registry[1]
    with running(settings, workers=2) as url:
        healths(url, 2)
        answers = [fresh(url, "POST", "/invocations", json=body(frame, i)) for i in range(40)]
        docs = healths(url, 2)
        assert {d["prediction_log"]["written"] for d in docs.values()} == {0}
        assert all(d["prediction_log"]["pending"] > 0 for d in docs.values()), "one worker answered all"
    # running() sent the supervisor SIGTERM and waited for it
    log = log_of(settings)
    assert set(log.request_id) == {a.headers["x-request-id"] for a in answers}


def test_the_workers_die_with_the_supervisor_even_killed_and_a_worker_that_dies_stops_the_gateway(registry, tmp_path):
    settings = logged(registry, tmp_path)
    with running(settings, workers=2) as url:
        workers = _workers(healths(url, 2))
        supervisor = psutil.Process(workers[0].ppid())
        assert supervisor.pid == workers[1].ppid()
        workers[1].kill()  # a worker that dies on its own: the other is stopped, the supervisor exits 1
        assert wait_for(lambda: _exit_code(supervisor), 60, "the supervisor to exit") == 1
        psutil.wait_procs(workers, timeout=30)
        assert not any(w.is_running() for w in workers)
    with running(settings, workers=2) as url:
        workers = _workers(healths(url, 2))
        psutil.Process(workers[0].ppid()).kill()  # SIGKILL: no cleanup ran in the supervisor
        _, alive = psutil.wait_procs(workers, timeout=60)
        assert alive == []


def test_a_second_gateway_cannot_join_the_port_of_a_running_one(registry, tmp_path):
    settings = logged(registry, tmp_path)
    port = free_port()
    with running(settings, port=port, workers=2) as url:
        healths(url, 2)
        with pytest.raises(GatewayError, match=f"cannot listen on 127.0.0.1:{port}: in use by another process"):
            serve(settings, "127.0.0.1", port, workers=2)
        with socket.socket() as plain, pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))


def _workers(docs: dict[int, dict]) -> list[psutil.Process]:
    return [psutil.Process(docs[i]["pid"]) for i in sorted(docs)]


def _is_shadow(proc: psutil.Process) -> bool:
    try:
        return "serving.shadow" in proc.cmdline()
    except psutil.NoSuchProcess:
        return False


def _exit_code(proc: psutil.Process) -> int | None:
    """The exit code of a child of this process once it has exited (reaped here)."""
    try:
        return proc.wait(0)
    except psutil.TimeoutExpired:
        return None
