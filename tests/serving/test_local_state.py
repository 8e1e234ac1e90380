"""The gateway's local state: a restarted gateway answers at once from the last good versions,
while the registry is down or slow, and follows the registry as soon as it answers."""

from __future__ import annotations

import json
import shutil
import time

import httpx
import pytest

from core.vocabulary import Alias
from serving import Column, LoadedVersion, RegistryReader
from serving.local_state import LocalState
from serving.schema import parse
from serving.server import running
from serving.shadow import _Models
from tasks.release.registry import set_alias
from tests.conftest import register_versions, tuned


@pytest.fixture
def served(small):
    """Two registered versions answering probabilities (what a version answers is kept too),
    Production -> 1, a fast poll; the local state under the temp dir."""
    fast = tuned(small, serving={"poll_interval_s": 0.1}, training={"predict_fn": "predict_proba"})
    (first, trained, _), (second, _, _) = register_versions(fast, 2)
    set_alias(fast, first.name, Alias.PRODUCTION, first.version)
    return fast, first, second, trained.X_holdout.head(5)


def predict(url: str, rows) -> httpx.Response:
    body = {"dataframe_split": rows.astype(object).where(rows.notna(), None).to_dict(orient="split", index=False)}
    return httpx.post(f"{url}/invocations", json=body, timeout=10)


def health(url: str) -> dict:
    return httpx.get(f"{url}/health", timeout=10).json()


def wait_for(check, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_restart_with_the_registry_down_answers_from_the_local_state(served):
    settings, first, _, rows = served
    with running(settings) as url:
        expected = predict(url, rows).json()
    state = LocalState.of(settings)
    assert state.aliases() == ({"Production": first.version}, 0.0)
    assert len(expected["predictions"][0]) == 2  # probabilities of both classes
    assert parse(state.load(first.version).example, "application/json").rows == 3  # its warm-up rows

    store = settings.mlflow.tracking_uri.removeprefix("sqlite:///")
    shutil.move(store, f"{store}.away")  # the registry is gone
    try:
        with running(settings) as url:
            assert httpx.get(f"{url}/ping", timeout=10).status_code == 200
            answer = predict(url, rows)
            assert answer.status_code == 200 and answer.json() == expected
            assert answer.headers["x-model-version"] == first.version
            doc = health(url)
            assert doc["status"] == "degraded" and "local state" in doc["problems"]["registry"]
            assert doc["last_poll_error"] is not None  # it keeps trying
    finally:
        shutil.move(f"{store}.away", store)


def test_after_a_restart_the_registry_wins_as_soon_as_it_answers(served):
    settings, first, second, rows = served
    with running(settings):
        pass  # leaves the local state: Production -> first
    set_alias(settings, first.name, Alias.PRODUCTION, second.version)  # moved while the gateway was down
    with running(settings) as url:
        wait_for(lambda: health(url)["serving"]["Production"]["version"] == second.version)
        doc = health(url)
        assert doc["problems"] == {} and doc["baseline"] == second.version
        assert predict(url, rows).headers["x-model-version"] == second.version
    assert LocalState.of(settings).aliases() == ({"Production": second.version}, 0.0)
    versions = {p.name for p in (LocalState.of(settings).dir / "versions").iterdir()}
    assert versions == {second.version}  # a version no alias names is not kept


def test_a_damaged_local_state_is_ignored_and_the_registry_decides(served):
    settings, first, _, rows = served
    with running(settings):
        pass
    state = LocalState.of(settings)
    (state.dir / "versions" / first.version / "model.onnx").write_bytes(b"not a model")
    with running(settings) as url:
        assert predict(url, rows).status_code == 200
        assert "registry" not in health(url)["problems"]


def test_local_state_is_kept_per_tracking_store_and_can_be_turned_off(served):
    settings, *_ = served
    other = LocalState(settings.serving.state_dir, "sqlite:////elsewhere/mlflow.db", settings.training.model_name)
    assert other.dir != LocalState.of(settings).dir and other.aliases() is None
    off = settings.model_copy(update={"serving": settings.serving.model_copy(update={"state_dir": ""})})
    assert LocalState.of(off) is None
    with running(off):
        pass
    assert not LocalState.of(settings).dir.exists()


def test_the_shadow_process_loads_a_version_the_gateway_kept_without_the_registry(served):
    settings, first, second, _ = served
    set_alias(settings, first.name, Alias.SHADOW, second.version)
    with running(settings) as url:
        wait_for(lambda: "Shadow" in health(url)["serving"])
    store = settings.mlflow.tracking_uri.removeprefix("sqlite:///")
    shutil.move(store, f"{store}.away")
    try:
        model = _Models(settings).get(second.version)
        assert not isinstance(model, str), model
        assert model.version == second.version and model.flavor == "onnx"
    finally:
        shutil.move(f"{store}.away", store)


def test_a_version_handed_over_as_kept_is_served_pinned_without_the_registry(served):
    """The benchmark's gateway: the version and baseline its caller loaded, no MLflow import, no registry."""
    settings, _, second, rows = served
    reader = RegistryReader(settings)
    loaded = reader.load(second.name, second.version)
    baseline = reader.baseline(loaded)
    store = settings.mlflow.tracking_uri.removeprefix("sqlite:///")
    shutil.move(store, f"{store}.away")
    try:
        with running(settings, kept=loaded, kept_baseline=baseline) as url:
            answer = predict(url, rows)
            assert answer.status_code == 200 and answer.headers["x-model-version"] == second.version
            doc = health(url)
            assert (
                doc["status"] == "ok" and doc["pinned_version"] == second.version and doc["baseline"] == second.version
            )
    finally:
        shutil.move(f"{store}.away", store)
    assert LocalState.of(settings).aliases() is None  # the caller's own local state is left alone


def test_the_local_state_keeps_how_a_version_answers(tmp_path):
    state = LocalState(tmp_path, "sqlite:///x.db", "m")
    columns = [Column("a", "double", True)]
    state.save_version(LoadedVersion("m", "3", {}, columns, b"graph", None, "onnx", "predict_proba"), None)
    assert state.load("3").predict_fn == "predict_proba"
    meta = state.dir / "versions" / "3" / "meta.json"
    older = {k: v for k, v in json.loads(meta.read_bytes()).items() if k != "predict_fn"}
    meta.write_text(json.dumps(older | {"tags": {"predict_fn": "predict_proba"}}))  # kept by an older shipway
    assert state.load("3").predict_fn == "predict_proba"


def test_a_first_start_answers_before_its_baseline_loads_and_keeps_both_once_it_has(served):
    """sklearn's import for the baseline would be most of a first start: it follows in the background."""
    settings, first, _, rows = served
    with running(settings) as url:
        assert predict(url, rows).headers["x-model-version"] == first.version
        wait_for(lambda: health(url)["baseline"] == first.version)
        wait_for(lambda: LocalState.of(settings).aliases() is not None)  # written once the version is kept whole
    state = LocalState.of(settings)
    assert state.aliases() == ({"Production": first.version}, 0.0)
    assert state.baseline(first.version) is not None
