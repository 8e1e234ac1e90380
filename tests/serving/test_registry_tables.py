"""The gateway's direct read of MLflow's tables against MLflow's own client, on the same stores:
SQLite with local artifacts, SQLite with artifacts on S3 (moto's server), PostgreSQL. Any
difference (an MLflow upgrade that moved a table, a column, a file) fails here."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pandas as pd
import pytest

from core.errors import RegistryError
from core.tracking import Store, client
from core.vocabulary import Alias, Tag
from serving.registry_reader import RegistryReader
from serving.registry_tables import RegistryTables, VersionRow
from tasks.release import record
from tasks.release.aliases import history
from tasks.release.registry import load_contract, log_contract, set_alias, set_model_tag, set_version_tags
from tasks.release.status import model_status
from tests.conftest import PG_SERVER, REPO, postgres_databases, register_versions, tuned, write_profile


def _both_ways(settings, name: str, versions: list[str]) -> None:
    """Everything the direct reader answers equals what MLflow's client answers."""
    direct = RegistryReader(settings)
    assert direct.tables is not None
    mlflow_client = client(Store.of(settings), create=False)
    model = mlflow_client.get_registered_model(name)
    state = direct.state(name)
    assert state.aliases == {a: str(v) for a, v in model.aliases.items()}
    assert state.tags == dict(model.tags)
    listed = sorted(mlflow_client.search_model_versions(f"name = '{name}'"), key=lambda v: -int(v.version))
    assert direct.versions(name) == [
        VersionRow(str(v.version), v.creation_timestamp, v.run_id, v.description, dict(v.tags)) for v in listed
    ]
    assert model_status(settings, name).history == history(settings, name) != []  # `shipway status`'s read
    first = mlflow_client.get_model_version(name, versions[0])
    assert direct.contract(name, versions[0], direct.version_tags(name, versions[0])) == load_contract(
        settings, first
    )  # the skew gate's read, through MLflow's client to the reader
    assert direct.run_file(first.run_id, "contract/none.json") is None
    for version in versions:
        fast, slow = direct.load(name, version), direct._load_with_mlflow(name, version)
        assert fast.flavor == slow.flavor == "onnx"
        assert dataclasses.asdict(fast) == dataclasses.asdict(slow)
        assert direct.columns(name, version) == slow.columns


def _registered(settings, count: int = 2) -> tuple[str, list[str]]:
    registered = [v for v, _, _ in register_versions(settings, count)]
    name = registered[0].name
    set_alias(settings, name, Alias.PRODUCTION, registered[0].version)
    set_alias(settings, name, Alias.CANARY, registered[-1].version)
    set_model_tag(settings, name, Tag.CANARY_SHARE, "0.25")
    log_contract(settings, name, registered[0].version, {"name": "suite", "expectations": []})
    transition = {"at": "2026-01-01T00:00:00", "alias": "Production", "version": registered[0].version}
    record.append(settings, name, record.TRANSITIONS, [transition | {"actor": "test", "reason": "test"}])
    return name, [v.version for v in registered]


def test_the_direct_read_equals_mlflows_on_sqlite(small):
    name, versions = _registered(small)
    _both_ways(small, name, versions)


def test_a_version_not_served_as_onnx_is_loaded_by_mlflow(small):
    name, (version,) = _registered(small, 1)
    set_version_tags(small, name, version, {Tag.SERVING_FORMAT: "sklearn"})
    loaded = RegistryReader(small).load(name, version)
    assert loaded.flavor == "sklearn" and loaded.onnx is None
    example = json.loads(loaded.example)["dataframe_split"]
    rows = pd.DataFrame(example["data"], columns=example["columns"])
    assert set(loaded.model.predict(rows)) <= {0, 1}


def test_missing_things_are_named(small, tmp_path):
    name, (version,) = _registered(small, 1)
    reader = RegistryReader(small)
    with pytest.raises(RegistryError, match=rf"registered model 'nope' not found .*registered models: {name}$"):
        reader.state("nope")
    with pytest.raises(RegistryError, match=f"model '{name}' has no version 7"):
        reader.load(name, "7")
    client(Store.of(small)).delete_model_version(name, version)
    with pytest.raises(RegistryError, match=f"model '{name}' has no version {version}"):
        reader.load(name, version)
    nowhere = tuned(small, mlflow={"tracking_uri": f"sqlite:///{tmp_path}/none/mlflow.db"})
    with pytest.raises(RegistryError, match="no MLflow store at .*none/mlflow.db: nothing has been trained here yet"):
        RegistryReader(nowhere)
    assert not (tmp_path / "none").exists()  # a reader creates nothing


def test_an_mlflow_server_or_workspaces_are_read_through_mlflow(small, monkeypatch):
    assert RegistryTables.of(Store("http://127.0.0.1:5000")) is None
    db = Store.of(small)
    client(db)  # the store exists
    assert RegistryTables.of(db) is not None
    monkeypatch.setenv("MLFLOW_ENABLE_WORKSPACES", "true")
    assert RegistryTables.of(db) is None


@pytest.mark.slow
def test_the_direct_read_equals_mlflows_with_artifacts_on_s3(small, s3_endpoint, s3_bucket):
    on_s3 = tuned(small, s3={"endpoint_url": s3_endpoint}, mlflow={"artifact_location": f"s3://{s3_bucket}/mlflow"})
    name, versions = _registered(on_s3, 1)
    reader = RegistryReader(on_s3)
    assert reader.load(name, versions[0]).onnx is not None
    assert reader.artifacts._client is not None  # read from S3 by the reader itself, not by MLflow
    _both_ways(on_s3, name, versions)


@pytest.mark.slow
@pytest.mark.postgres
def test_the_direct_read_equals_mlflows_on_postgresql(small):
    with postgres_databases("mlflow") as db:
        on_pg = tuned(small, mlflow={"tracking_uri": f"postgresql+psycopg://{PG_SERVER}/{db['mlflow']}"})
        name, versions = _registered(on_pg)
        _both_ways(on_pg, name, versions)
        RegistryReader(on_pg).tables.engine.dispose()  # before the database is dropped


def test_serving_an_onnx_version_with_its_baseline_imports_neither_mlflow_nor_sklearn(small, tmp_path):
    """The point of the direct read and of the baseline's ONNX form: a gateway's first start reads,
    loads and warms both without MLflow's import (~1.5 s) or scikit-learn's (~1.5 s)."""
    name, (version,) = _registered(small, 1)
    profile = write_profile(small, tmp_path / "profile.yaml")
    code = f"""
import sys
from configs.settings import load_settings
from serving.models import Inputs, baseline_servable, servable
from serving.registry_reader import RegistryReader
reader = RegistryReader(load_settings({str(profile)!r}))
loaded = reader.load({name!r}, {version!r})
model = servable(loaded)
baseline = baseline_servable(loaded.version, model.schema, reader.baseline(loaded), loaded.predict_fn)
rows = model.schema.placeholder()
print(model.flavor, baseline.flavor, Inputs(rows).predict(model) is not None, Inputs(rows).predict(baseline) is not None)
print(sorted({{m.split(".")[0] for m in sys.modules}} & {{"mlflow", "sklearn", "skops", "scipy"}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out.splitlines() == ["onnx onnx True True", "[]"]
