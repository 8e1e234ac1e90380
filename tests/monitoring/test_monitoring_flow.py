"""The monitoring flow under a real Prefect server, on prediction-log rows a real gateway wrote."""

import time
from datetime import UTC, datetime, timedelta

import mlflow
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

from core.vocabulary import Alias, Tag
from flows.monitor import monitoring_flow
from serving.prediction_log import read_window
from serving.server import running
from tasks.data.demo_data import TARGET, Drift, generate
from tasks.promotion.traffic import Replay
from tasks.release.aliases import move
from tasks.release.registry import connect
from tests.conftest import register_versions, run_shipway, tuned, write_profile

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]
NAME = "churn-classifier"


@pytest.fixture
def production(small):
    """Version 1 in Production; windows judged from 50 requests, retraining after 2 breaches."""
    settings = tuned(small, monitoring={"min_requests": 50, "breach_windows": 2}, serving={"poll_interval_s": 0.3})
    register_versions(settings, 1)
    move(settings, NAME, {Alias.PRODUCTION: "1"}, actor="test", reason="setup")
    return settings


def serve_traffic(settings, frame, requests: int) -> None:
    """Send `requests` requests of `frame` through a real gateway; the log is flushed on stop."""
    with running(settings) as url:
        replay = Replay(url, frame, TARGET, feedback_share=1.0)
        replay.start()
        while replay.sent < requests:
            time.sleep(0.05)
        replay.stop()


def test_a_clean_window_is_logged_to_mlflow_with_its_figures_and_trend(production):
    serve_traffic(production, generate(1_000, seed=11), 300)
    result = monitoring_flow(NAME, window="10m", settings=production)
    assert result.version == "1" and result.requests >= 300
    assert result.drift in ("pass", "warn") and result.breaches == [] and result.retraining == ""
    run = mlflow.get_run(result.run_id)
    assert run.data.tags["breached"] == "false" and run.data.tags["drift"] == result.drift
    assert run.data.metrics["requests"] == result.requests
    assert 0.6 < run.data.metrics["accuracy"] <= 1.0  # feedback labels joined by request id
    files = {f.path for f in mlflow.MlflowClient().list_artifacts(result.run_id)}
    assert {"drift_report.json", "trend.png"} <= files
    with get_client(sync_client=True) as client:  # the run as Prefect's UI lists it: model and version
        labelled = FlowRunFilter(tags=FlowRunFilterTags(all_=[f"model:{NAME}", "version:1"]))
        assert any(r.name.startswith(f"monitor-{NAME}-v1-") for r in client.read_flow_runs(flow_run_filter=labelled))


def test_sustained_drift_breaches_and_triggers_retraining(production):
    drifted = generate(1_000, seed=12, drift=Drift(shift={"monthly_charges": 1.0}, null_rate={"age": 0.4}))
    serve_traffic(production, drifted, 300)
    first = monitoring_flow(NAME, window="10m", settings=production)
    assert first.drift == "fail" and any(b.startswith("input drift") for b in first.breaches)
    assert first.retraining == ""  # one window is not yet sustained (breach_windows = 2)
    second = monitoring_flow(NAME, window="10m", settings=production)
    assert "the deployment 'training/retrain' does not exist" in second.retraining  # none under the test server
    client, experiment = connect(production, experiment=production.monitoring.experiment)
    assert len(client.search_runs([experiment])) == 2


def test_only_the_window_asked_for_is_read(production):
    serve_traffic(production, generate(500, seed=13), 100)
    end = datetime.now(UTC)
    assert len(read_window(production.prediction_log.url, end - timedelta(minutes=10), end, NAME)) >= 100
    assert read_window(production.prediction_log.url, end - timedelta(days=2), end - timedelta(days=1), NAME).empty


def test_monitor_command_exits_1_on_a_breach_and_names_it(production, tmp_path):
    serve_traffic(production, generate(500, seed=14, drift=Drift(shift={"monthly_charges": 1.5})), 200)
    config = write_profile(production, tmp_path / "profile.yaml")
    done = run_shipway("monitor", NAME, "--window", "10m", "--config", str(config), cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    # Other limits may breach first on a busy machine (latency p99): the drift must be among them.
    assert "shipway: error: monitoring: churn-classifier breached its limits: " in done.stderr
    assert "input drift: fail on " in done.stderr, done.stderr
    assert "monthly_charges (" in done.stderr and "; also " in done.stderr  # the drifted column, with its checks
    assert "input drift fail" in done.stdout


@pytest.fixture
def production_proba(small):
    """Version 1 served with predict_proba in Production, so the log keeps its probabilities."""
    settings = tuned(
        small,
        training={"predict_fn": "predict_proba"},
        monitoring={"min_requests": 50, "breach_windows": 2, "max_estimated_drop": 0.05},
        quality={"slices": ["contract"]},
        serving={"poll_interval_s": 0.3},
    )
    register_versions(settings, 1)
    move(settings, NAME, {Alias.PRODUCTION: "1"}, actor="test", reason="setup")
    return settings


def test_a_window_logs_prediction_drift_and_the_estimate_beside_the_realised_figures(production_proba):
    import json

    serve_traffic(production_proba, generate(1_000, seed=15), 300)
    result = monitoring_flow(NAME, window="10m", settings=production_proba)
    run = mlflow.get_run(result.run_id)
    metrics = run.data.metrics
    assert run.data.tags["estimate"] == "estimated"
    assert metrics["estimated_accuracy_low"] <= metrics["estimated_accuracy"] <= metrics["estimated_accuracy_high"]
    assert abs(metrics["estimated_accuracy"] - metrics["realised_accuracy"]) < 0.1  # ~300 labels: a wide band
    assert abs(metrics["estimated_roc_auc"] - metrics["realised_roc_auc"]) < 0.1
    assert metrics["prediction_psi"] < 0.2 and not any(b.startswith("prediction drift") for b in result.breaches)
    path = mlflow.artifacts.download_artifacts(run_id=result.run_id, artifact_path="slices.json")
    with open(path) as file:
        slices = json.load(file)
    assert {row["column"] for row in slices} == {"contract"} and sum(row["rows"] for row in slices) >= 300
    assert all("estimated_accuracy" in row and "realised_accuracy" in row for row in slices if row["rows"] >= 20)


def test_monitor_prints_the_estimate_and_prediction_drift_and_tags_the_version_for_the_gateway(
    production_proba, tmp_path
):
    import json

    serve_traffic(production_proba, generate(1_000, seed=16), 200)
    config = write_profile(production_proba, tmp_path / "profile.yaml")
    done = run_shipway("monitor", NAME, "--window", "10m", "--json", "--config", str(config), cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout[done.stdout.index("{\n") :])
    roc = result["estimate"]["roc_auc"]
    assert roc["low"] <= roc["estimated"] <= roc["high"] and roc["breach"] is False
    assert abs(roc["drop"] - (roc["holdout"] - roc["estimated"])) < 1e-9
    assert set(result["estimate"]) == {"accuracy", "roc_auc"} and result["not_estimable"] == ""
    assert 0 <= result["prediction_psi"] < 0.2 and result["prediction_drift"] == []
    assert result["by_version"] == {"1": result["requests"]}  # every request of the window answered by version 1
    tags = connect(production_proba)[0].get_model_version(NAME, "1").tags  # what the gateway's poll exports
    assert json.loads(tags[Tag.MONITORING_ESTIMATE])["roc_auc"]["drop"] == round(roc["drop"], 4)
    assert float(tags[Tag.MONITORING_PREDICTION_PSI]) == pytest.approx(result["prediction_psi"], rel=1e-3)

    done = run_shipway("monitor", NAME, "--window", "10m", "--config", str(config), cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "prediction drift vs the holdout: largest PSI " in done.stdout
    assert "performance before labels" in done.stdout and "roc_auc" in done.stdout and "95% band" in done.stdout
