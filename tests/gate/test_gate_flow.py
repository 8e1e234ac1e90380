"""The gate in the training flow, under a real Prefect server (test harness) and MLflow on SQLite."""

import json
import re
from pathlib import Path
from unittest.mock import ANY

import pytest
from click.testing import CliRunner
from prefect.artifacts import Artifact

from core.vocabulary import Alias
from flows.cli import cli
from flows.train import training_flow
from tasks.data.demo_data import Drift, generate
from tasks.release.registry import set_alias, versions
from tests.conftest import tuned, write_profile

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


def test_production_contract_gates_new_data_and_an_override_is_recorded(small, tmp_path):
    settings = tuned(small, serving={"bench_requests": 100})
    config = ["--config", str(write_profile(settings, tmp_path / "profile.yaml"))]
    first = training_flow(data="demo", settings=settings)
    assert first.gate == "not_gated"
    found, _ = versions(settings, first.model_name)
    assert found[0].tags["validation_status"] == "not_gated"
    assert found[0].tags["expectation_suite"] == first.contract_uri
    set_alias(settings, first.model_name, Alias.PRODUCTION, first.version)

    generate(3_000, seed=9, drift=Drift(shift={"age": 1.0})).to_csv(tmp_path / "drifted.csv", index=False)
    stopped = CliRunner().invoke(cli, ["train", "--data", str(tmp_path / "drifted.csv"), *config])
    assert stopped.exit_code == 1
    # The figures in the line itself (a probe found only the columns' names there): the strongest check.
    said, _, _ = stopped.stderr.partition("; report: ")
    assert said.startswith(
        "shipway: error: gate: the new data drifted from churn-classifier version 1 (Production): fail on 1 column: age ("
    ), stopped.stderr
    assert re.search(r"\d+(\.\d+)? outside \[\d", said), said
    assert stopped.stderr.count("\n") == 1
    report = Path(stopped.stderr.split("report: ")[1].split(" (override")[0])
    assert json.loads(report.read_text())["columns"][0] | {"checks": None, "measures": None} == {
        "name": "age",
        "verdict": "fail",
        "reason": ANY,
        "checks": None,
        "measures": None,
    }
    assert report.with_suffix(".png").is_file()
    assert [str(v.version) for v in versions(settings, first.model_name)[0]] == ["1"]  # nothing was trained
    assert "age" in str(Artifact.get("training-gate").data)

    no_reason = CliRunner().invoke(cli, ["train", "--data", str(tmp_path / "drifted.csv"), "--force-gate", *config])
    assert no_reason.exit_code == 2 and "--force-gate needs --reason TEXT" in no_reason.stderr

    forced = training_flow(
        data=str(tmp_path / "drifted.csv"), force_gate=True, reason="new market: older customers", settings=settings
    )
    assert (forced.version, forced.gate) == ("2", "overridden")
    tags = versions(settings, first.model_name)[0][0].tags
    assert tags["validation_status"] == "overridden"
    assert tags["gate_override"] == "new market: older customers"
    assert tags["gate_override_columns"] == "age"
    assert tags["gate_reference"] == "churn-classifier/1"
    assert {"gate_override_by", "gate_override_at"} <= set(tags)
    assert tags["expectation_suite"] == forced.contract_uri != first.contract_uri
