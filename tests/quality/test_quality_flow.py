"""The quality gate in the training flow, under a real Prefect server (test harness) and MLflow on SQLite."""

import json

import pytest
from click.testing import CliRunner
from prefect.artifacts import Artifact

from core.errors import RegistryError
from core.vocabulary import Alias
from flows.cli import cli
from flows.train import training_flow
from tasks.quality.compare import TABLE_ARTIFACT
from tasks.release.aliases import move
from tasks.release.registry import connect, set_alias, versions

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


@pytest.fixture
def small(settings, monkeypatch):
    monkeypatch.setenv("SHIPWAY_DATA__DEMO_ROWS", "3000")
    monkeypatch.setenv("SHIPWAY_SERVING__BENCH_REQUESTS", "100")
    monkeypatch.setenv("SHIPWAY_QUALITY__SLICES", '["contract", "region"]')
    return settings


def table_of(settings, run_id: str):
    """The evaluation table as MLflow reads it back, and proof that it is logged as a table."""
    client, experiment = connect(settings)
    logged = json.loads(client.get_run(run_id).data.tags["mlflow.loggedArtifacts"])
    assert {"path": TABLE_ARTIFACT, "type": "table"} in logged
    return client.load_table(experiment, TABLE_ARTIFACT, run_ids=[run_id])


def test_the_gate_judges_each_version_logs_its_table_and_a_failure_takes_no_alias(small, monkeypatch):
    first = training_flow(data="demo")
    assert first.quality == "passed" and "quality" in first.timings
    tags = versions(small, first.model_name)[0][0].tags
    assert (tags["quality_gate"], tags["quality_metric"], tags["quality_reference"]) == (
        "passed",
        "roc_auc",
        "baseline",
    )
    evaluation = table_of(small, first.run_id)
    scopes = evaluation.set_index("scope")["verdict"]
    assert scopes["overall"] == "pass"
    assert scopes["contract=month_to_month"] == scopes["region missing"] == "not judged"  # nothing to compare with
    assert evaluation["production"].isna().all() and evaluation["baseline"].notna().all()
    assert "overall" in str(Artifact.get("quality-gate").data)
    set_alias(small, first.model_name, Alias.PRODUCTION, first.version)

    again = training_flow(data="demo")  # the same data and seed: a model as good as Production
    tags = versions(small, first.model_name)[0][0].tags
    assert (again.quality, tags["quality_reference"]) == ("passed", "churn-classifier/1")
    evaluation = table_of(small, again.run_id)
    overall = evaluation.iloc[0]
    assert (overall["scope"], overall["difference"], overall["verdict"]) == ("overall", 0.0, "pass")
    scopes = evaluation.set_index("scope")["verdict"]
    assert scopes["contract=month_to_month"] == "pass"  # 330 of 600 holdout rows
    assert scopes["region=west"] == scopes["region missing"] == "not judged"  # < quality.min_slice_rows

    monkeypatch.setenv("SHIPWAY_QUALITY__MIN", '{"roc_auc": 0.99}')
    stopped = CliRunner().invoke(cli, ["train", "--data", "demo"])
    assert stopped.exit_code == 1
    assert stopped.stderr.startswith(
        "shipway: error: quality gate: churn-classifier version 3 is registered without an alias: floor: roc_auc 0."
    )
    assert "below 0.99 (quality.min.roc_auc); table: " in stopped.stderr
    assert stopped.stderr.endswith("(override with --force-quality --reason TEXT)\n")
    assert stopped.stderr.count("\n") == 1
    found, aliases = versions(small, first.model_name)
    assert found[0].version == 3 and found[0].tags["quality_gate"] == "failed"
    assert "unfinished" not in found[0].tags  # refused by a gate is a verdict: the version is complete
    # what the data gate found is on it too, though its later steps never ran (the contract's, say)
    assert (found[0].tags["validation_status"], found[0].tags["gate_reference"]) == ("pass", "churn-classifier/1")
    assert aliases == {"Production": "1", "Shadow": "2"}
    with pytest.raises(RegistryError, match=r"version 3 of 'churn-classifier' failed its quality gate"):
        move(small, first.model_name, {Alias.SHADOW: "3"}, actor="test", reason="by hand")

    forced = training_flow(data="demo", force_quality=True, reason="a floor for next quarter's data")
    assert forced.quality == "overridden"
    tags = versions(small, first.model_name)[0][0].tags
    assert tags["quality_gate"] == "overridden"
    assert tags["quality_override"] == "a floor for next quarter's data"
    assert tags["quality_override_failures"] == "floor: roc_auc"
    assert {"quality_override_by", "quality_override_at"} <= set(tags)
    assert versions(small, first.model_name)[1]["Shadow"] == "4"
