import importlib.metadata
import json
import subprocess

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.data.pandas_dataset import from_pandas

from core.errors import RegistryError
from core.vocabulary import Alias
from tasks.data.snapshot import canonicalize
from tasks.release import registration
from tasks.release.lineage import GitLineage, git_lineage
from tasks.release.registration import register
from tasks.release.registry import set_alias, versions
from tests.conftest import REPO, register_versions


@pytest.fixture
def registered(small):
    return register_versions(small, 1)[0]


def test_version_carries_its_lineage_metrics_and_description(small, registered):
    reg, trained, snapshot = registered
    found, _ = versions(small, reg.name)
    (version,) = found
    tags = version.tags
    assert tags["git_commit"] == "a" * 40
    assert (tags["git_branch"], tags["git_dirty"]) == ("main", "false")
    assert tags["data_snapshot_id"] == snapshot.id
    assert tags["data_snapshot_uri"] == snapshot.uri
    assert tags["data_rows"] == "3000"
    assert float(tags["metric_roc_auc"]) == pytest.approx(trained.metrics["roc_auc"], rel=1e-5)
    assert tags["baseline_model_uri"].startswith("models:/m-")
    assert f"snapshot {snapshot.id[:12]}" in version.description
    assert "commit aaaaaaaaaaaa on main (clean)" in version.description
    run = mlflow.get_run(reg.run_id)
    assert run.data.metrics["roc_auc"] == pytest.approx(trained.metrics["roc_auc"])
    assert "baseline_roc_auc" in run.data.metrics
    assert run.data.params["estimator"] == "auto"
    assert run.data.params["model_class"] == "LogisticRegression"
    assert run.inputs.dataset_inputs[0].dataset.source.find(snapshot.id) >= 0
    inferred = from_pandas(snapshot.frame, source=snapshot.uri).schema  # MLflow's own, value by value
    assert json.loads(run.inputs.dataset_inputs[0].dataset.schema) == {"mlflow_colspec": inferred.to_dict()}


def test_the_dataset_schema_is_what_mlflow_infers_from_every_row():
    frame = canonicalize(
        pd.DataFrame(
            {
                "n": [1, None, 3] * 50,
                "i": [1, 2, 3] * 50,
                "s": ["x", "y", None] * 50,
                "b": [True, False, True] * 50,
                "t": pd.to_datetime([None, "2026-01-02", "2026-01-03"] * 50),
                "empty": [None] * 150,
            }
        )
    )
    assert registration.dataset_schema(frame) == from_pandas(frame, source="x.csv").schema


def test_the_registered_model_and_baseline_load_and_predict_as_trained(small, registered):
    reg, trained, _ = registered
    set_alias(small, reg.name, Alias.SHADOW, reg.version)
    rows = trained.X_holdout.head(25)
    loaded = mlflow.pyfunc.load_model(f"models:/{reg.name}@Shadow")
    np.testing.assert_array_equal(loaded.predict(rows), trained.model.predict(rows))
    assert loaded.metadata.get_input_schema().input_names() == list(rows.columns)
    baseline = mlflow.sklearn.load_model(versions(small, reg.name)[0][0].tags["baseline_model_uri"])
    np.testing.assert_array_equal(baseline.predict(rows), trained.baseline.predict(rows))


def test_the_model_and_its_baseline_each_carry_their_own_metrics_and_the_rule_its_choice(small, registered):
    """MLflow copies a run's metrics onto every model logged after them: the baseline's logged model
    showed the model's figures, and looked as good as the model."""
    reg, trained, _ = registered
    version = MlflowClient().get_model_version(reg.name, reg.version)
    baseline_id = version.tags["baseline_model_uri"].removeprefix("models:/")
    on = lambda model_id: {m.key: m.value for m in mlflow.get_logged_model(model_id).metrics}
    model_id = version.source.removeprefix("models:/")
    assert on(model_id) == pytest.approx(trained.metrics)
    own = {f"baseline_{k}": v for k, v in trained.baseline_metrics.items()}
    assert on(baseline_id) == pytest.approx(own | {"baseline_training_roc_auc": trained.baseline_training["roc_auc"]})
    assert on(baseline_id)["baseline_roc_auc"] < on(model_id)["roc_auc"]
    assert version.tags["baseline_rule"] == trained.baseline_rule == "contract in {month_to_month}"
    assert version.tags["baseline_training_metric"] == f"roc_auc {trained.baseline_training['roc_auc']:.4g}"
    assert f"Baseline rule '{trained.baseline_rule}' (chosen by roc_auc " in version.description


def test_aliases_move_and_versions_are_listed_newest_first(small, registered):
    reg, trained, snapshot = registered
    second = register.fn(trained, snapshot, GitLineage("b" * 40, "main", True), small)
    set_alias(small, reg.name, Alias.SHADOW, reg.version)
    set_alias(small, reg.name, Alias.SHADOW, second.version)
    found, aliases = versions(small, reg.name)
    assert [str(v.version) for v in found] == [second.version, reg.version]
    assert aliases == {"Shadow": second.version}
    assert found[0].tags["git_dirty"] == "true"


def test_unknown_model_names_the_known_ones(small, registered):
    with pytest.raises(RegistryError, match="registered model 'nope' not found .*registered models: churn-classifier"):
        versions(small, "nope")


def test_requirements_are_pinned_to_what_is_installed():
    import pandas
    import sklearn
    from packaging.requirements import Requirement

    pinned = {}
    for line in registration.pip_requirements():
        requirement = Requirement(line)
        (specifier,) = requirement.specifier  # exactly one: ==VERSION
        assert specifier.operator == "==", line
        pinned[requirement.name] = specifier.version
    assert set(pinned) == set(registration.SERVING_REQUIREMENTS)
    assert pinned == {name: importlib.metadata.version(name) for name in pinned}
    # and the libraries this process trains with are those very versions
    assert (pinned["scikit-learn"], pinned["pandas"]) == (sklearn.__version__, pandas.__version__)


def test_git_lineage_is_the_checkout_of_the_folder_it_is_given():
    lineage = git_lineage(REPO)
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert lineage.commit == head and len(head) == 40
    assert git_lineage(REPO.parent / "definitely-not-a-repo") == GitLineage("unknown", "unknown", None)


def test_outside_a_checkout_the_commit_stamped_into_the_image_is_used(monkeypatch, tmp_path):
    monkeypatch.setenv("GIT_COMMIT", "c" * 40)
    monkeypatch.setenv("GIT_BRANCH", "release")
    assert git_lineage(tmp_path) == GitLineage("c" * 40, "release", None)
