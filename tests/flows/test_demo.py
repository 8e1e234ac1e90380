"""The README's first command, `shipway demo`, as a user runs it: the installed command in a fresh
directory, its own Prefect (ephemeral mode), nothing set up beforehand."""

import json
import os

import pytest
from mlflow import MlflowClient

from tasks.release.release_card import approval_tags
from tests.conftest import run_shipway

pytestmark = pytest.mark.slow
NAME = "churn-classifier"


def test_the_demo_takes_version_2_to_production_and_says_where_to_look(tmp_path):
    # No Prefect server of the user's or of the test session: the demo starts its own.
    prefect = dict.fromkeys([k for k in os.environ if k.startswith("PREFECT_")]) | {
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    done = run_shipway("demo", cwd=tmp_path, timeout=900, **prefect)
    assert done.returncode == 0, done.stderr[-3000:]
    said = " ".join(done.stdout.split())  # the console wraps long lines at its width
    for line in [
        f"trained {NAME} version 1 (gate: not_gated); it is Shadow",
        "nothing is in Production yet: promoting it directly",
        "trained version 2 on fresh data (demo:44; gate against Production: ",
        "replaying demo traffic with feedback labels; promoting version 2",
        f"{NAME} version 2 is Production after shadow analysis, two approvals and 3 canary steps",
        f"shipway status {NAME}",
        "shipway ui then open the link it prints",
        "prefect server start then open http://127.0.0.1:4200",
    ]:
        assert line in said, line

    store = f"sqlite:///{tmp_path}/.shipway/mlflow.db"
    model = MlflowClient(tracking_uri=store, registry_uri=store).get_registered_model(NAME)
    assert {alias: str(version) for alias, version in model.aliases.items()} == {"Production": "2", "Previous": "1"}
    status = run_shipway("status", NAME, "--json", cwd=tmp_path, **prefect)
    assert status.returncode == 0, status.stderr
    listed = json.loads(status.stdout)
    assert listed["aliases"] == {"Production": "2", "Previous": "1"}
    versions = {v["version"]: v["tags"] for v in listed["versions"]}
    assert versions["2"]["validation_status"] in {"pass", "warn"}
    key, by, _, _ = approval_tags("production")
    assert versions["2"][key] == "approved" and versions["2"][by]  # the demo's own approval, with its reviewer
    assert {"snapshots", "artifacts", "predictions.db"} <= {p.name for p in (tmp_path / ".shipway").iterdir()}
