"""The artifact store's faults, injected for real: the files a version is served from changed (one byte
of the ONNX file flipped: the intercept's sign, the outside probe's repro; a truncated file), gone or
unreachable (the local artifact folder moved away, S3's server stopped), and the registry's store held
by another process. A file whose sha256 is not the one recorded at registration is never served and
is named; while the store cannot be read, the gateway keeps answering with what it has, `/health` and
`/metrics` say what is wrong, and it recovers once the fault clears.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx
import numpy as np
import pandas as pd
import pytest

from configs.settings import Settings
from core import integrity
from core.integrity import IntegrityError
from core.vocabulary import Alias, Tag
from serving.local_state import LocalState
from serving.models import Inputs, servable
from serving.onnx import session
from serving.registry_reader import RegistryReader, load_sklearn
from serving.server import running
from tasks.release.registry import delete_alias, delete_version_tag, get_version, load_contract, log_contract, set_alias
from tests.conftest import SHIPWAY, embedded, register_versions, tuned, wait_for, write_profile

FAULT_S = 60  # the longest wait for the gateway to notice a fault, or to recover once it cleared


@dataclass
class Served:
    settings: Settings
    name: str
    versions: tuple[str, str]
    rows: pd.DataFrame  # holdout rows


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Served:
    settings = tuned(
        embedded(tmp_path_factory.mktemp("artifacts")),
        data={"demo_rows": 3000},
        serving={"state_dir": "", "poll_interval_s": 0.2},
    )
    (first, trained, _), (second, _, _) = register_versions(settings, 2)
    set_alias(settings, first.name, Alias.PRODUCTION, first.version)
    return Served(settings, first.name, (first.version, second.version), trained.X_holdout.head(200))


@pytest.fixture
def restored(served: Served) -> Iterator[Served]:
    """The module's registry as a test found it: Production -> the first version, no other alias."""
    yield served
    set_alias(served.settings, served.name, Alias.PRODUCTION, served.versions[0])
    for alias in (Alias.PREVIOUS, Alias.CANARY, Alias.SHADOW):
        delete_alias(served.settings, served.name, alias)


def local(uri: str) -> Path:
    parsed = urlparse(uri)
    return Path(unquote(parsed.path) if parsed.scheme else uri)


def files_of(settings: Settings, name: str, version: str) -> dict[str, Path]:
    """Where each file of a version lies in the (local) artifact store."""
    import mlflow

    reader = RegistryReader(settings)
    assert reader.tables is not None
    tags, location = reader.tables.version(name, version)
    baseline_id = tags[Tag.BASELINE_MODEL_URI].removeprefix("models:/")
    return {
        integrity.MODEL_ONNX: local(reader._artifact_uri(tags[Tag.ONNX_MODEL_URI])),
        integrity.BASELINE_ONNX: local(reader._artifact_uri(tags[Tag.BASELINE_ONNX_URI])),
        integrity.MODEL_SKOPS: local(location) / "model.skops",
        integrity.BASELINE_SKOPS: local(mlflow.get_logged_model(baseline_id).artifact_location) / "model.skops",
    }


def flip_intercept_sign(data: bytes) -> bytes:
    """One byte changed: the sign bit of the positive class's intercept (float64, little-endian)."""
    import onnx
    from onnx.numpy_helper import to_array

    tensor = next(i for i in onnx.load_from_string(data).graph.initializer if i.name == "intercept")
    raw = to_array(tensor).astype("<f8").tobytes()
    at = data.find(raw)
    assert at >= 0 and data.find(raw, at + 1) == -1
    flipped = bytearray(data)
    flipped[at + len(raw) - 1] ^= 0x80
    return bytes(flipped)


def flip_a_byte(data: bytes) -> bytes:
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01
    return bytes(flipped)


@contextmanager
def changed(path: Path, how) -> Iterator[bytes]:
    """The file rewritten by `how(bytes) -> bytes` for the block, then put back; yields the original."""
    original = path.read_bytes()
    path.write_bytes(how(original))
    try:
        yield original
    finally:
        path.write_bytes(original)


@contextmanager
def moved_away(folder: Path) -> Iterator[None]:
    """The folder gone for the block (unreadable even to root), then back."""
    away = folder.with_name(folder.name + ".away")
    folder.rename(away)
    try:
        yield
    finally:
        away.rename(folder)


def health(client: httpx.Client) -> dict:
    return client.get("/health").json()


def production(client: httpx.Client) -> str | None:
    return health(client)["serving"].get("Production", {}).get("version")


def answer(client: httpx.Client, rows: pd.DataFrame) -> httpx.Response:
    body = {"dataframe_split": rows.head(5).astype(object).where(rows.head(5).notna(), None).to_dict(orient="split")}
    body["dataframe_split"].pop("index")
    return client.post("/invocations", json=body)


def degraded_with(client: httpx.Client, *words: str) -> dict:
    return wait_for(
        lambda: (
            (h := health(client))["status"] in ("degraded", "unavailable")
            and all(w in (h["reason"] or "") for w in words)
            and h
        ),
        FAULT_S,
        f"/health to say {words}",
    )


def no_paths(shown: dict, *words: str) -> None:
    for word in ("/", *words):
        assert word not in str({k: v for k, v in shown.items() if k != "versions"}), word


# ---- recorded at registration, checked at load ------------------------------------------------


def test_every_served_file_has_its_sha256_recorded(served):
    tags = get_version(served.settings, served.name, served.versions[0]).tags
    files = files_of(served.settings, served.name, served.versions[0])
    for file, path in files.items():
        assert tags[integrity.TAG_OF[file]] == integrity.sha256(path.read_bytes()), file


@pytest.mark.parametrize("file", [integrity.MODEL_ONNX, integrity.BASELINE_ONNX])
def test_a_changed_onnx_file_is_refused_on_both_read_paths(served, file):
    name, version = served.name, served.versions[1]
    reader = RegistryReader(served.settings)
    how = flip_intercept_sign if file == integrity.MODEL_ONNX else flip_a_byte
    with changed(files_of(served.settings, name, version)[file], how):
        for read in (reader.load, reader._load_with_mlflow):  # the direct read and MLflow's
            with pytest.raises(IntegrityError) as raised:
                loaded = read(name, version)
                reader.baseline(loaded)
            assert str(raised.value) == (
                f"version {version} of '{name}': {file} does not match the sha256 recorded at registration "
                f"(tag {integrity.TAG_OF[file]}); not used"
            )
            assert raised.value.file == file
    assert reader.baseline(reader.load(name, version)) is not None  # put back: loads again


@pytest.mark.parametrize("file", [integrity.MODEL_SKOPS, integrity.BASELINE_SKOPS])
def test_a_changed_sklearn_file_is_refused_before_skops_reads_it(served, file):
    name, version = served.name, served.versions[1]
    tags = get_version(served.settings, name, version).tags
    uri = f"models:/{name}/{version}" if file == integrity.MODEL_SKOPS else tags[Tag.BASELINE_MODEL_URI]
    with changed(files_of(served.settings, name, version)[file], lambda data: data[: len(data) // 2]):
        with pytest.raises(IntegrityError, match=f"version {version} of '{name}': {file} does not match"):
            load_sklearn(uri, dict(tags), file, name, version)
    assert load_sklearn(uri, dict(tags), file, name, version) is not None


def test_a_changed_contract_stops_the_flows_that_read_it(served):
    name, version = served.name, served.versions[1]
    uri = log_contract(served.settings, name, version, {"name": "suite", "expectations": []})
    found = get_version(served.settings, name, version)
    assert found.tags[Tag.EXPECTATION_SUITE_SHA256]
    assert load_contract(served.settings, found) == {"name": "suite", "expectations": []}
    run_root = RegistryReader(served.settings)._artifact_uri(uri)
    with changed(local(run_root), lambda data: data.replace(b"suite", b"suitf")):
        with pytest.raises(IntegrityError, match=f"version {version} of '{name}': expectation_suite.json does not"):
            load_contract(served.settings, found)


def test_a_version_registered_before_the_hashes_loads_with_one_warning(served, caplog):
    name, version = served.name, served.versions[1]
    tags = get_version(served.settings, name, version).tags
    hashes = {k: v for k, v in tags.items() if k in integrity.HASH_TAGS}
    try:
        for key in hashes:
            delete_version_tag(served.settings, name, version, key)
        reader = RegistryReader(served.settings)
        with caplog.at_level(logging.WARNING, logger="shipway.integrity"):
            for _ in range(3):
                loaded = reader.load(name, version)
                reader.baseline(loaded)
        warned = [r.getMessage() for r in caplog.records if r.name == "shipway.integrity"]
        assert warned == [
            f"version {version} of '{name}' has no recorded sha256 of its files (registered before shipway "
            "recorded them): loaded unchecked"
        ]
    finally:
        from tasks.release.registry import set_version_tags

        set_version_tags(served.settings, name, version, hashes)


def test_an_alias_never_moves_to_a_version_whose_file_changed(served):
    from tasks.release.aliases import check_servable
    from tests.conftest import mark_gated

    name, version = served.name, served.versions[1]
    mark_gated(served.settings, name, version)
    with changed(files_of(served.settings, name, version)[integrity.BASELINE_ONNX], flip_a_byte):
        with pytest.raises(IntegrityError, match="baseline.onnx does not match"):
            check_servable(served.settings, name, version)
    check_servable(served.settings, name, version)


def test_the_quality_gate_never_compares_with_a_production_whose_file_changed(served):
    """The training flow's comparison with Production: a Production whose model file changed is not
    loaded (as one that cannot load: a fixed model must still ship), and the reason names the file."""
    from tasks.quality.compare import incumbent

    name, first = served.name, served.versions[0]
    with changed(files_of(served.settings, name, first)[integrity.MODEL_SKOPS], flip_a_byte):
        found = incumbent(served.settings, name)
    assert found is not None and found.model is None
    assert found.error == (
        f"IntegrityError: version {first} of '{name}': model.skops does not match the sha256 recorded at "
        "registration (tag model_sha256); not used"
    )
    assert incumbent(served.settings, name).model is not None


def test_shipway_bench_refuses_a_changed_file_in_one_line(served, tmp_path):
    name, version = served.name, served.versions[1]
    profile = write_profile(served.settings, tmp_path / "profile.yaml")
    with changed(files_of(served.settings, name, version)[integrity.MODEL_ONNX], flip_intercept_sign):
        done = subprocess.run([SHIPWAY, "bench", "--config", str(profile), "--model", f"{name}/{version}"],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"shipway: error: version {version} of '{name}': model.onnx does not match the sha256 recorded at registration "
        "(tag onnx_model_sha256); not used"
    )


# ---- the gateway ------------------------------------------------------------------------------


def test_a_flipped_byte_is_never_served(restored):
    """The probe's repro: one byte of version 2's ONNX file edited (the intercept's sign), then
    Production moved to version 2. The edited file still loads and answers, differently."""
    served = restored
    first, second = served.versions
    path = files_of(served.settings, served.name, second)[integrity.MODEL_ONNX]
    with running(served.settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert production(client) == first
        with changed(path, flip_intercept_sign) as original:
            edited = [session(data) for data in (original, path.read_bytes())]
            assert all(edited)  # the edited graph is a valid model: only its hash gives it away
            honest, flipped = (_predict_all(s, served) for s in edited)
            assert np.mean(honest != flipped) > 0.05, "the flip must change answers for the test to mean anything"
            set_alias(served.settings, served.name, Alias.PRODUCTION, second)
            during = degraded_with(client, f"Production: version {second} failed to load: IntegrityError")
            assert answer(client, served.rows).headers["x-model-version"] == first  # still the last good one
            metrics = client.get("/metrics").text
        wait_for(lambda: production(client) == second, FAULT_S, "version 2 served once its file is back")
        after = health(client)
    assert (
        f"IntegrityError: version {second} of '{served.name}': model.onnx does not match the sha256 recorded at "
        f"registration (tag onnx_model_sha256); not used; still serving version {first}"
    ) in during["reason"]
    assert f'shipway_integrity_failures_total{{file="model.onnx",model_version="{second}"}}' in metrics
    no_paths(during)
    assert after["status"] == "ok"


def _predict_all(onnx_session, served: Served) -> np.ndarray:
    """The holdout rows' answers of an ONNX session, through the gateway's own input path."""
    import orjson

    from serving.models import Servable
    from serving.schema import JSON_TYPE, parse

    loaded = RegistryReader(served.settings).load(served.name, served.versions[0])
    model = Servable("x", "onnx", servable(loaded).schema, onnx_session, loaded.predict_fn)
    split = served.rows.astype(object).where(served.rows.notna(), None).to_dict(orient="split")
    split.pop("index")
    return np.asarray(Inputs(parse(orjson.dumps({"dataframe_split": split}), JSON_TYPE)).predict(model))


def test_a_truncated_file_at_start_is_not_served_and_previous_answers(restored):
    served = restored
    first, second = served.versions
    set_alias(served.settings, served.name, Alias.PRODUCTION, second)
    set_alias(served.settings, served.name, Alias.PREVIOUS, first)
    path = files_of(served.settings, served.name, second)[integrity.MODEL_ONNX]
    with changed(path, lambda data: data[: len(data) - 100]):
        with running(served.settings) as url, httpx.Client(base_url=url, timeout=30) as client:
            during = degraded_with(client, "model.onnx does not match")
            got = answer(client, served.rows)
            metrics = client.get("/metrics").text
    assert during["status"] == "degraded"
    assert f"no Production version is served: answering from Previous (version {first})" in during["reason"]
    assert (got.status_code, got.headers["x-model-version"], got.headers["x-fallback-source"]) == (
        200,
        first,
        "previous",
    )
    assert f'shipway_integrity_failures_total{{file="model.onnx",model_version="{second}"}}' in metrics
    no_paths(during)


def test_a_changed_baseline_is_not_served_and_said(restored):
    """A first start loads the versions, then their baselines in the background: the baseline whose
    file changed is left out of the fallback chain, and /health says so."""
    served = restored
    first = served.versions[0]
    with changed(files_of(served.settings, served.name, first)[integrity.BASELINE_ONNX], flip_a_byte):
        with running(served.settings) as url, httpx.Client(base_url=url, timeout=30) as client:
            during = degraded_with(client, "baseline: not served: IntegrityError", "baseline.onnx does not match")
            assert answer(client, served.rows).headers["x-model-version"] == first  # the model itself answers
            metrics = client.get("/metrics").text
    assert during["baseline"] is None
    assert f'shipway_integrity_failures_total{{file="baseline.onnx",model_version="{first}"}}' in metrics


def test_a_damaged_local_copy_is_replaced_by_the_registrys(restored, tmp_path):
    """The gateway's own copy (serving.state_dir) changed between two runs: counted, not served, and
    replaced by the registry's."""
    served = restored
    first = served.versions[0]
    settings = tuned(served.settings, serving={"state_dir": str(tmp_path / "state")})
    with running(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        wait_for(lambda: production(client) == first and health(client)["baseline"] == first, FAULT_S)
    kept = LocalState.of(settings)
    assert kept is not None
    copy = kept.dir / "versions" / first / "model.onnx"
    wait_for(copy.is_file, FAULT_S, "the local copy written")
    registered = files_of(served.settings, served.name, first)[integrity.MODEL_ONNX].read_bytes()
    copy.write_bytes(flip_intercept_sign(copy.read_bytes()))
    with running(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        wait_for(lambda: production(client) == first and health(client)["status"] == "ok", FAULT_S)
        metrics = client.get("/metrics").text
        assert answer(client, served.rows).status_code == 200
    assert f'shipway_integrity_failures_total{{file="model.onnx",model_version="{first}"}} 1.0' in metrics
    assert copy.read_bytes() == registered  # the registry's copy kept in its place


# ---- the artifact store unreachable -----------------------------------------------------------


def artifact_root(settings: Settings) -> Path:
    return Path(settings.mlflow.artifact_location)


def test_an_artifact_store_gone_at_start_is_said_and_read_once_back(restored):
    """No local state and no artifact store: nothing to serve (503), said; served once the store is back."""
    served = restored
    first = served.versions[0]
    root = artifact_root(served.settings)
    away = root.with_name(root.name + ".away")
    root.rename(away)
    try:
        with running(served.settings) as url, httpx.Client(base_url=url, timeout=30) as client:
            during = degraded_with(client, f"Production: version {first} failed to load", "artifact store")
            assert client.get("/ping").status_code == 503
            metrics = client.get("/metrics").text
            away.rename(root)
            wait_for(lambda: production(client) == first, FAULT_S, "Production once the store is back")
            after = health(client)
            assert answer(client, served.rows).status_code == 200
    finally:
        if away.exists():
            away.rename(root)
    assert during["status"] == "unavailable"
    assert (
        f"ArtifactUnreadable: version {first} of '{served.name}': cannot read MLmodel from the artifact store "
        "(FileNotFoundError: no such file)"
    ) in during["reason"]
    assert f'shipway_model_load_failures_total{{model_version="{first}"}}' in metrics
    no_paths(during)
    assert after["status"] == "ok"


def test_an_artifact_store_gone_at_an_alias_move_keeps_the_last_good_version(restored):
    served = restored
    first, second = served.versions
    with running(served.settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert production(client) == first
        with moved_away(artifact_root(served.settings)):
            set_alias(served.settings, served.name, Alias.PRODUCTION, second)
            during = degraded_with(client, f"version {second} of '{served.name}': cannot read", "still serving")
            assert answer(client, served.rows).headers["x-model-version"] == first
            assert client.get("/ping").status_code == 200
        wait_for(lambda: production(client) == second, FAULT_S, "the new version once the store is back")
        after = health(client)
    assert f"still serving version {first}" in during["reason"]
    no_paths(during)
    assert after["status"] == "ok"


HOLD = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
db.execute("ROLLBACK")
"""


def test_a_registry_store_held_by_another_process_is_said_while_the_gateway_answers(restored):
    """`BEGIN EXCLUSIVE` on MLflow's SQLite store for a while: the polls cannot read it, the answers go on."""
    served = restored
    path = local(served.settings.mlflow.tracking_uri.removeprefix("sqlite://"))
    with running(served.settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert production(client) == served.versions[0]
        holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)  # fmt: skip
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
            during = degraded_with(client, "registry: not readable for", "(OperationalError: locked)")
            assert answer(client, served.rows).status_code == 200
            metrics = client.get("/metrics").text
        finally:
            assert holder.stdin is not None
            holder.stdin.close()
            holder.wait(timeout=30)
        wait_for(lambda: health(client)["status"] == "ok", FAULT_S, "the registry read again")
    assert "shipway_registry_poll_errors_total" in metrics
    no_paths(during, "SELECT")


# ---- S3 ---------------------------------------------------------------------------------------


@pytest.mark.slow  # trains and registers two versions on S3
def test_s3_stopped_at_start_and_at_an_alias_move(tmp_path, s3_endpoint, monkeypatch):
    from moto.server import ThreadedMotoServer

    from tests.conftest import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    # MLflow's S3 endpoint is process-wide (set once per process): this test's own server is stopped,
    # so the variable is given back at teardown, not left to later tests of this worker.
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", endpoint)
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="shipway-faults")
    settings = tuned(
        embedded(tmp_path),
        data={"demo_rows": 3000},
        s3={"endpoint_url": endpoint},
        mlflow={"artifact_location": "s3://shipway-faults/mlflow"},
        serving={"state_dir": str(tmp_path / "state"), "poll_interval_s": 0.2},
    )
    try:
        (first, trained, _), (second, _, _) = register_versions(settings, 2)
        name = first.name
        set_alias(settings, name, Alias.PRODUCTION, first.version)
        with running(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
            wait_for(lambda: production(client) == first.version and health(client)["baseline"], FAULT_S)
        server.stop()  # S3 down: the next start serves its local state
        with running(settings) as url, httpx.Client(base_url=url, timeout=60) as client:
            wait_for(lambda: production(client) == first.version, FAULT_S)
            set_alias(settings, name, Alias.PRODUCTION, second.version)
            during = degraded_with(client, f"version {second.version} of '{name}': cannot read", "artifact store")
            assert answer(client, trained.X_holdout).headers["x-model-version"] == first.version
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            server.start()  # moto keeps its buckets in the process: the same store, back
            wait_for(lambda: production(client) == second.version, FAULT_S, "the new version once S3 is back")
            assert health(client)["status"] == "ok"
        assert "still serving version" in during["reason"]
        no_paths(during, "127.0.0.1", str(port))
    finally:
        server.stop()
