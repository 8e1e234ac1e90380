"""The production profile for real: an MLflow tracking server on PostgreSQL with its artifacts
proxied to S3 (moto on loopback), a Prefect server on PostgreSQL, the prediction log on PostgreSQL.

One journey per module, on configs/production.yaml (its model section aside, see `_profile`)
pointed at this module's servers: train v1 -> promote v1 -> train v2 on another draw -> serve with
live traffic -> promote v2 -> monitor a window. The flows get the settings built here; the CLI reads
the same profile through SHIPWAY_* variables, as a deployment's environment gives them. The tests
then read each store directly to show where things went.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import httpx
import pytest
import yaml

from tests.conftest import BIN, PG_SERVER, QUICK_PROMOTION, REPO, embedded, free_port, postgres_databases, tuned

if TYPE_CHECKING:
    from configs.settings import Settings
    from flows.monitor import MonitoringResult
    from flows.promote import PromotionResult
    from flows.train import TrainingResult
    from tasks.promotion.traffic import Replay

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

NAME = "churn-classifier"
STARTUP_TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def databases() -> Iterator[dict[str, str]]:
    """Three fresh databases (MLflow, Prefect, prediction log), dropped at the end."""
    with postgres_databases("mlflow", "prefect", "predictions") as names:
        yield names


@pytest.fixture(scope="module")
def bucket(s3_endpoint: str) -> str:
    name = f"shipway-prod-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def servers(databases, s3_endpoint, bucket, tmp_path_factory) -> Iterator[dict[str, str]]:
    """The MLflow tracking server and the Prefect server, started side by side (both take seconds)."""
    tmp = tmp_path_factory.mktemp("servers")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "SHIPWAY_"))}
    mlflow_port, prefect_port = free_port(), free_port()
    mlflow_env = base | {"MLFLOW_S3_ENDPOINT_URL": s3_endpoint, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    prefect_env = base | {
        "PREFECT_HOME": str(tmp / "prefect-home"),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://{PG_SERVER}/{databases['prefect']}",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    mlflow_command = [
        str(BIN / "mlflow"),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(mlflow_port),
        "--backend-store-uri",
        f"postgresql+psycopg://{PG_SERVER}/{databases['mlflow']}",
        "--artifacts-destination",
        f"s3://{bucket}/mlflow",
        "--serve-artifacts",
        "--workers",
        "1",
    ]
    prefect_command = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)]
    with ExitStack() as stack:
        mlflow_up = stack.enter_context(_server("mlflow", mlflow_command, mlflow_env, tmp))
        prefect_up = stack.enter_context(_server("prefect", prefect_command, prefect_env, tmp))
        urls = {"mlflow": f"http://127.0.0.1:{mlflow_port}", "prefect": f"http://127.0.0.1:{prefect_port}/api"}
        mlflow_up(f"{urls['mlflow']}/health")
        prefect_up(f"{urls['prefect']}/health")
        yield urls


@contextmanager
def _server(name: str, command: list[str], env: dict[str, str], tmp: Path):
    """A server subprocess; yields a function that waits for its health URL. Its log names the failure."""
    log = tmp / f"{name}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp)

    def wait(url: str) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"{name} server exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError(
            f"{name} server did not answer {url} in {STARTUP_TIMEOUT_S:.0f} s:\n{log.read_text()[-3000:]}"
        )

    try:
        yield wait
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def _prefect_api(url: str) -> Iterator[None]:
    """Point Prefect at the server in this process, for this thread and for threads it starts
    (the approver answers from its own thread), the way prefect_test_harness does for its server."""
    import prefect.context
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.utilities.asyncutils import run_coro_as_sync

    async def drain() -> None:
        """Send what the flows logged while the server is up: at exit nothing could take it (and the
        log worker would retry for a minute)."""
        for pending in (APILogWorker.instance().drain(), EventsWorker.drain_all()):
            if inspect.isawaitable(pending):
                await pending

    with temporary_settings({PREFECT_API_URL: url}):
        with prefect.context._temporary_global_settings_context(prefect.context.get_settings_context()):
            try:
                yield
            finally:
                run_coro_as_sync(drain())


def _upload_demo(s3_endpoint: str, bucket: str, key: str, seed: int, rows: int = 3_000) -> str:
    import io

    from tasks.data.demo_data import generate

    buffer = io.BytesIO()
    generate(rows, seed=seed).to_parquet(buffer, index=False)
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").put_object(
        Bucket=bucket, Key=key, Body=buffer.getvalue()
    )
    return f"s3://{bucket}/{key}"


def _profile(folder: Path) -> Path:
    """configs/production.yaml with a small linear model (the profile's hist_gradient_boosting is
    served in its compiled ONNX form too, but trains slower): the path proven here is the one read
    from S3 through the tracking server."""
    profile = yaml.safe_load((REPO / "configs" / "production.yaml").read_text())
    profile["training"] |= {"estimator": "logistic_regression", "params": {"max_iter": 500}}
    path = folder / "production.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path


@dataclass
class Journey:
    env: dict[str, str]  # the SHIPWAY_* variables that point the profile at this module's servers, for the CLI
    settings: Settings
    trained: list[TrainingResult]
    promoted: list[PromotionResult]
    monitored: MonitoringResult
    replay: Replay
    seen: list[dict]  # the approval requests the approver answered


@pytest.fixture(scope="module")
def journey(servers, databases, s3_endpoint, bucket, tmp_path_factory) -> Journey:
    """The whole journey on the production profile, once for the module's tests."""
    from flows.approval import AutoApprover
    from flows.monitor import monitoring_flow
    from flows.promote import promotion_flow
    from flows.train import training_flow
    from serving.server import running
    from tasks.data.demo_data import TARGET, generate
    from tasks.promotion.traffic import Replay

    first = _upload_demo(s3_endpoint, bucket, "raw/churn.parquet", seed=11)
    # more rows, as a later export has: version 2 must pass the quality gate against version 1 on
    # its own holdout (two 3,000-row draws can differ by more than the gate's minimum effect)
    second = _upload_demo(s3_endpoint, bucket, "raw/churn-2.parquet", seed=12, rows=6_000)
    profile = _profile(tmp_path_factory.mktemp("profile"))
    servers_of_the_module = {
        "mlflow": {"tracking_uri": servers["mlflow"]},
        "s3": {"endpoint_url": s3_endpoint},
        "snapshots": {"store": f"s3://{bucket}/snapshots"},
        "data": {"source": first},
        "prefect": {"api_url": servers["prefect"]},
        "prediction_log": {"url": f"postgresql+psycopg://{PG_SERVER}/{databases['predictions']}"},
    }
    env = {"SHIPWAY_CONFIG": str(profile)} | {
        f"SHIPWAY_{section.upper()}__{key.upper()}": value
        for section, values in servers_of_the_module.items()
        for key, value in values.items()
    }
    work = tmp_path_factory.mktemp("work")
    # scaled for a test: small windows, quick polls, a short benchmark with room for a busy machine
    settings = tuned(
        embedded(work, profile),
        **servers_of_the_module,
        promotion=QUICK_PROMOTION["promotion"],
        # the production profile requires a token on /feedback
        serving=QUICK_PROMOTION["serving"]
        | {"bench_requests": 200, "latency_budget_p99_ms": 1000, "api_token": "journey-token"},
        monitoring={"min_requests": 60},
    )
    with pytest.MonkeyPatch.context() as mp, _prefect_api(servers["prefect"]):
        mp.chdir(work)  # subprocesses (the gateways) start here: nothing lands in the checkout
        trained = [training_flow(settings=settings)]
        approver = AutoApprover(settings, NAME, [True], reviewer="rita", comment="first release")
        approver.start()
        try:
            promoted = [promotion_flow(NAME, settings=settings)]
        finally:
            approver.stop()
        seen = list(approver.seen)
        trained.append(training_flow(data=second, settings=settings))
        with running(settings) as url:
            # Rows enough that none repeats (~7,000 requests): cycling 2,000 rows, the canary's sticky keys
            # sent the same few hundred customers again and again, which the gate rightly reads as
            # duplicated rows, not as the clean traffic this journey means to monitor.
            replay = Replay(url, generate(20_000, seed=13), TARGET, max_rate=400, api_token="journey-token")
            replay.start()
            approver = AutoApprover(settings, NAME, [True, True], reviewer="rita", comment="looked at it")
            approver.start()
            try:
                promoted.append(promotion_flow(NAME, settings=settings))
                approver.stop()
                seen += approver.seen
                monitored = monitoring_flow(NAME, window="1h", settings=settings)
            finally:
                approver.stop()
                replay.stop()
                replay.join(10)
    return Journey(env, settings, trained, promoted, monitored, replay, seen)


def test_versions_and_aliases_are_in_the_mlflow_server(journey, servers):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=servers["mlflow"], registry_uri=servers["mlflow"])
    model = client.get_registered_model(NAME)
    assert model.aliases == {"Production": "2", "Previous": "1"}
    assert [t.version for t in journey.trained] == ["1", "2"]
    assert [(p.version, p.previous) for p in journey.promoted] == [("1", None), ("2", "1")]
    assert [request["stage"] for request in journey.seen] == ["shadow", "shadow", "production"]
    v2 = client.get_model_version(NAME, "2")
    assert v2.tags["serving_format"] == "onnx"  # the gateway served the compiled form, read from S3
    suite_run = v2.tags["expectation_suite"].removeprefix("runs:/").split("/")[0]  # runs:/<run>/contract/...
    # artifacts go through the tracking server's proxy: clients need no S3 credentials
    assert client.get_run(suite_run).info.artifact_uri.startswith("mlflow-artifacts:/")
    assert v2.tags["data_snapshot_uri"].startswith(f"{journey.settings.snapshots.store}/")


def test_the_cli_reads_the_same_profile(journey):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPWAY_")} | journey.env
    done = subprocess.run([str(BIN / "shipway"), "status", NAME, "--json"], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["aliases"] == {"Production": "2", "Previous": "1"}
    gates = {v["version"]: v["tags"]["validation_status"] for v in status["versions"]}
    assert gates == {t.version: t.gate for t in journey.trained} and gates["1"] == "not_gated"


def test_artifacts_and_snapshots_are_in_the_bucket(journey, s3_endpoint, bucket):
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for o in page.get("Contents", [])
    ]
    for result in journey.trained:
        assert f"snapshots/{result.snapshot_id}/manifest.json" in keys
        run_files = [k for k in keys if k.startswith("mlflow/") and f"/{result.run_id}/artifacts/" in k]
        assert any(k.endswith("contract/expectation_suite.json") for k in run_files), run_files
        assert any(k.endswith(".onnx") for k in run_files), run_files
    assert sum(k.startswith("mlflow/") and k.endswith("/MLmodel") for k in keys) == 4  # model + baseline, twice
    assert any(k.endswith("trend.png") or k.endswith("drift_report.json") for k in keys if k.startswith("mlflow/"))


def test_prediction_log_rows_are_in_postgresql(journey, databases):
    import psycopg

    with psycopg.connect(f"postgresql://{PG_SERVER}/{databases['predictions']}") as conn:
        by_role = dict(conn.execute("SELECT role, count(*) FROM predictions GROUP BY role").fetchall())
        answers = conn.execute("SELECT request_id, model_version FROM predictions WHERE role <> 'shadow'").fetchall()
    assert by_role["shadow"] >= 60 and by_role["canary"] >= 60, by_role
    # every answer the live traffic got is logged once, and nothing else is (not the benchmark's requests)
    assert len(answers) == journey.replay.answered
    assert all(request_id.startswith("replay-") for request_id, _ in answers)
    assert {version for _, version in answers} == {"1", "2"}


def test_the_monitoring_window_is_a_run_of_the_monitoring_experiment(journey, servers):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=servers["mlflow"])
    experiment = client.get_experiment_by_name("shipway-monitoring")
    run = client.get_run(journey.monitored.run_id)
    assert run.info.experiment_id == experiment.experiment_id
    assert run.data.tags["version"] == "2" and run.data.tags["model"] == NAME
    assert journey.monitored.requests >= 60 and run.data.metrics
    assert journey.monitored.drift in {"pass", "warn"}  # the same generator: no breaking drift


def test_the_flow_runs_are_in_the_prefect_server(journey, servers):
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with SyncPrefectClient(servers["prefect"]) as client:
        runs = client.read_flow_runs()
        flows = {f.id: f.name for f in client.read_flows()}
        report = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"monitoring-{NAME}"]))
        )
    completed = sorted(flows[r.flow_id] for r in runs if r.state and r.state.is_completed())
    assert completed == ["monitoring", "promotion", "promotion", "training", "training"]
    assert len(report) == 1 and "input drift vs contract" in report[0].data
