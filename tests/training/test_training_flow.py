"""The training flow under a real Prefect server (test harness) with MLflow on SQLite in a temp dir."""

import json
import subprocess

import pytest
from click.testing import CliRunner

from flows.cli import cli
from flows.train import alias_task, snapshot_task, training_flow
from tasks.data.demo_data import generate
from tasks.release.registration import register
from tasks.release.registry import versions
from tasks.training.pipeline import train_task
from tests.conftest import REPO, tuned, write_profile

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


@pytest.fixture
def quick(small):
    """3,000 demo rows and a short benchmark."""
    return tuned(small, serving={"bench_requests": 100})


def git(*args: str, repo=REPO) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout.strip()


def user_project(folder) -> None:
    """The working directory as the user's own git repository, with one commit."""
    (folder / "train.md").write_text("how we train\n")
    git("init", "-q", "-b", "main", repo=folder)
    git("-c", "user.name=u", "-c", "user.email=u@example.com", "add", "train.md", repo=folder)
    git("-c", "user.name=u", "-c", "user.email=u@example.com", "commit", "-q", "-m", "start", repo=folder)


def test_flow_registers_a_version_with_every_lineage_tag_and_makes_it_shadow(quick, tmp_path):
    user_project(tmp_path)
    result = training_flow(data="demo", settings=quick)
    assert (result.model_name, result.version) == ("churn-classifier", "1")
    assert set(result.timings) == {"snapshot", "gate", "train", "register", "quality", "contract", "bench", "alias"}
    found, aliases = versions(quick, result.model_name)
    assert aliases == {"Shadow": "1"}
    tags = found[0].tags
    # the lineage of the user's project (the working directory), not of shipway's own checkout
    assert tags["git_commit"] == git("rev-parse", "HEAD", repo=tmp_path) != git("rev-parse", "HEAD")
    assert (tags["git_branch"], tags["git_dirty"]) == ("main", "false")
    assert tags["shipway_version"].startswith("0.1.0") and len(tags["config_hash"]) == 64
    assert tags["task"] == "binary"
    assert tags["data_snapshot_id"] == result.snapshot_id
    assert tags["data_snapshot_uri"] == result.snapshot_uri
    assert tags["data_rows"] == "3000"
    assert {f"metric_{m}" for m in result.metrics} <= set(tags)
    assert {"latency_p50_ms", "latency_p95_ms", "latency_p99_ms"} <= set(tags) and tags["latency_gate"] == "passed"
    assert tags["serving_format"] == "onnx" and tags["onnx_parity"].startswith("passed")
    assert "unfinished" not in tags and "not finished" not in found[0].description  # its gates decided

    again = training_flow(data="demo", settings=quick)
    assert (again.version, again.snapshot_id, again.snapshot_reused) == ("2", result.snapshot_id, True)
    assert versions(quick, result.model_name)[1] == {"Shadow": "2"}


def test_only_io_tasks_retry():
    assert snapshot_task.retries > 0 and register.retries > 0 and alias_task.retries > 0
    assert train_task.retries == 0


def test_the_train_task_warns_of_a_row_number_among_the_features_it_chose(quick, caplog):
    frame = generate(600, seed=3).reset_index(names="Unnamed: 0")  # as read from a CSV written with its index
    train_task(frame, "churned", quick)
    said = "feature 'Unnamed: 0' holds a different integer on every one of the 600 rows, from 0 to 599"
    assert said in caplog.text
    caplog.clear()
    features = [c for c in frame.columns if c != "churned"]
    train_task(frame, "churned", tuned(quick, data={"features": features}))  # listed by the user: their choice
    assert "Unnamed: 0" in features and "holds a different integer" not in caplog.text


def test_cli_train_prints_name_version_and_snapshot_then_status_shows_lineage(quick, tmp_path):
    generate(2_000, seed=8).rename(columns={"churned": "left"}).to_csv(tmp_path / "customers.csv", index=False)
    config = ["--config", str(write_profile(quick, tmp_path / "profile.yaml"))]
    runner = CliRunner()
    trained = runner.invoke(
        cli, ["train", "--data", str(tmp_path / "customers.csv"), "--target", "left", "--json", *config]
    )
    assert trained.exit_code == 0, trained.output
    result = json.loads(trained.stdout)
    assert result["model_name"] == "churn-classifier" and result["version"] == "1"
    assert len(result["snapshot_id"]) == 64

    shown = runner.invoke(cli, ["train", "--data", str(tmp_path / "customers.csv"), "--target", "left", *config])
    assert shown.exit_code == 0
    assert "churn-classifier version 2 is now Shadow" in shown.stdout
    assert result["snapshot_id"] in shown.stdout and "reused" in shown.stdout

    status = runner.invoke(cli, ["status", "churn-classifier", *config])
    assert status.exit_code == 0
    assert "version 2 (Shadow) lineage" in status.stdout
    assert f"data_snapshot_id       {result['snapshot_id']}" in status.stdout
    assert "target                 left" in status.stdout
    listed = json.loads(runner.invoke(cli, ["status", "churn-classifier", "--json", *config]).stdout)
    assert [v["version"] for v in listed["versions"]] == ["2", "1"]
    assert listed["aliases"] == {"Shadow": "2"}


def test_cli_trains_a_numeric_only_table_from_scikit_learn(small, tmp_path):
    """Breast cancer: 30 numeric columns with spaces in their names, a 0/1 target; served by ONNX."""
    from sklearn.datasets import load_breast_cancer

    load_breast_cancer(as_frame=True).frame.to_csv(tmp_path / "cancer.csv", index=False)
    (tmp_path / "cancer.yaml").write_text("data:\n  target: target\ntraining:\n  model_name: cancer\n")
    runner = CliRunner()
    result = runner.invoke(
        cli, ["train", "--data", str(tmp_path / "cancer.csv"), "--config", str(tmp_path / "cancer.yaml"), "--json"]
    )
    assert result.exit_code == 0, result.output
    trained = json.loads(result.stdout)
    assert trained["task"] == "binary" and trained["metrics"]["roc_auc"] > 0.95
    tags = versions(small, "cancer")[0][0].tags
    assert (tags["serving_format"], tags["task"], tags["validation_status"]) == ("onnx", "binary", "not_gated")


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        ("", [], "cannot read {path}: the file is empty"),
        ("a,b,churned\n", [], "data has no rows"),
        ("a,b\n1,2\n", [], "target column 'churned' is not in {path} (columns: a, b)"),
        ("a,b\n1,2\n3,2\n", ["--target", "b"], "target column 'b' holds a single class (2); nothing to learn"),
        ("a,b\n1,x\n3,y\n5,y\n", ["--target", "b"], "class 'x' of target 'b' has only 1 row (training.task: auto"),
        (
            "a,b\n1,2\n3,4\n5,4\n",
            ["--target", "b", "--config", "{dir}/classifier.yaml"],
            "training.estimator logistic_regression does classification, but training.task is regression",
        ),
        (
            "a,b\n1,x\n3,y\n5,y\n",
            ["--target", "b", "--config", "{dir}/exclude.yaml"],
            "data.exclude: column 'id' is not in the data (columns: a, b)",
        ),
    ],
)
def test_cli_bad_data_exits_2_with_one_line(settings, tmp_path, content, args, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    (tmp_path / "exclude.yaml").write_text("data:\n  exclude: [id]\n")
    (tmp_path / "classifier.yaml").write_text("training:\n  estimator: logistic_regression\n")
    result = CliRunner().invoke(cli, ["train", "--data", str(path), *[a.format(dir=tmp_path) for a in args]])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"shipway: error: {message.format(path=path)}")
    assert result.stderr.count("\n") == 1


def test_a_stop_after_the_version_exists_but_before_register_returns_is_written_on_it(quick, monkeypatch):
    """The store has created the version and `register` is finishing (its task run closing) when Ctrl-C
    lands: the flow finds the version by its run's `unfinished` mark and says how it ended."""
    import flows.train

    def registered_then_stopped(*args, **kwargs):
        register.fn(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(flows.train, "register", registered_then_stopped)
    with pytest.raises(KeyboardInterrupt):
        training_flow(data="demo", settings=quick)
    found, aliases = versions(quick, quick.training.model_name)
    assert [str(v.version) for v in found] == ["1"] and aliases == {}
    assert found[0].tags["unfinished"] == "stopped by SIGINT during register"


def test_a_stop_while_the_verdicts_clear_the_mark_is_written_on_it(quick, monkeypatch):
    """Ctrl-C after the benchmark, as the flow clears the version's first mark (seen in CI under load:
    the version kept "has not reached its gates' verdicts" and the flow a RuntimeError)."""
    import flows.train

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(flows.train.registry, "delete_version_tag", stopped)
    with pytest.raises(KeyboardInterrupt):
        training_flow(data="demo", settings=quick)
    found, aliases = versions(quick, quick.training.model_name)
    assert aliases == {}
    assert found[0].tags["unfinished"] == "stopped by SIGINT during alias"
