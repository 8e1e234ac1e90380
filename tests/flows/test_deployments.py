"""prefect.yaml for real: a `prefect server` on loopback, a process pool, deploy, a worker, one run."""

import os
import signal
import subprocess
from uuid import UUID

import httpx
import pandas as pd
import pytest

from tests.conftest import BIN, REPO, embedded, free_port, wait_for

pytestmark = pytest.mark.slow


def stop(process: subprocess.Popen) -> None:
    """Prefect's worker may ignore the first SIGTERM: interrupt, then kill."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        if process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture
def prefect_server(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
    }
    env.pop("PREFECT_PROFILES_PATH", None)
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def healthy():
            try:
                return httpx.get(f"{env['PREFECT_API_URL']}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, 120, "prefect server start", every=0.5)
        yield env
    finally:
        stop(server)


def prefect(env, *args, cwd=REPO):
    done = subprocess.run([str(BIN / "prefect"), *args], env=env, cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_deploys_with_schedules_and_monitoring_triggers_a_retraining_a_worker_runs(prefect_server, tmp_path):
    env = prefect_server
    prefect(env, "work-pool", "create", "shipway-process", "--type", "process")
    prefect(env, "--no-prompt", "deploy", "--all")

    from prefect.client.orchestration import SyncPrefectClient

    with SyncPrefectClient(env["PREFECT_API_URL"]) as client:
        deployments = {f"{client.read_flow(d.flow_id).name}/{d.name}": d for d in client.read_deployments()}
        assert set(deployments) == {"training/retrain", "promotion/promote", "monitoring/monitor", "scoring/score"}
        crons = {name: [s.schedule.cron for s in d.schedules] for name, d in deployments.items()}
        assert crons == {
            "training/retrain": ["0 3 * * *"],
            "promotion/promote": [],
            "monitoring/monitor": ["5 * * * *"],
            "scoring/score": [],
        }
        assert all(d.work_pool_name == "shipway-process" for d in deployments.values())

        state = tmp_path / "state"
        worker_env = {
            **env,
            "SHIPWAY_DATA__DEMO_ROWS": "3000",
            "SHIPWAY_MLFLOW__TRACKING_URI": f"sqlite:///{state}/mlflow.db",
            "SHIPWAY_MLFLOW__ARTIFACT_LOCATION": str(state / "artifacts"),
            "SHIPWAY_SNAPSHOTS__STORE": str(state / "snapshots"),
            "SHIPWAY_PREDICTION_LOG__URL": f"sqlite:///{state}/predictions.db",
        }
        worker = subprocess.Popen(
            [str(BIN / "prefect"), "worker", "start", "--pool", "shipway-process"],
            env=worker_env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            from prefect.deployments import run_deployment
            from prefect.settings import PREFECT_API_URL, temporary_settings

            from flows.monitor import trigger_retraining
            from tasks.data.demo_data import generate

            with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
                run_id = trigger_retraining(embedded(tmp_path))  # what a sustained monitoring breach does
            run = client.read_flow_run(UUID(run_id))
            assert run.deployment_id == deployments["training/retrain"].id
            final = wait_for(
                lambda: (s := client.read_flow_run(run.id).state) and s.is_final() and s,
                300,
                "the retraining run to finish",
                every=0.5,
            )
            assert final.is_completed(), final.message
            # the new Shadow version scores a batch through the scoring deployment, on the same worker
            batch = tmp_path / "batch.parquet"
            generate(2_000, seed=99, with_label=False).to_parquet(batch)
            with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
                scoring = run_deployment(
                    "scoring/score",
                    parameters={"model": "churn-classifier@Shadow", "batch": str(batch), "out": str(tmp_path / "out")},
                    timeout=0,
                )
            scored = wait_for(
                lambda: (s := client.read_flow_run(scoring.id).state) and s.is_final() and s,
                300,
                "the scoring run to finish",
                every=0.5,
            )
        finally:
            stop(worker)
    assert scored.is_completed(), scored.message
    assert (state / "mlflow.db").is_file() and any((state / "snapshots").iterdir())
    assert len(pd.read_parquet(tmp_path / "out")) == 2_000
