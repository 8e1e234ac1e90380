"""The MLflow registry: the one module that talks to MlflowClient.

A model version is created in one call with all of its lineage tags and its description, so no
version is ever visible without them. Only aliases mark roles; registry stages are never used.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from enum import StrEnum
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

import mlflow
import mlflow.sklearn
import skops.io
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from configs.settings import Settings
from tasks.compile import compile_pipeline
from tasks.errors import RegistryError, retry_on_io
from tasks.lineage import GitLineage
from tasks.snapshot import Snapshot
from tasks.training import TrainedModel

MODEL_ARTIFACT = "model"
BASELINE_ARTIFACT = "baseline"
ONNX_ARTIFACT = "onnx/model.onnx"
CANARY_SHARE_TAG = "canary_share"
SERVING_REQUIREMENTS = ("scikit-learn", "pandas", "numpy", "scipy", "skops")


class Alias(StrEnum):
    SHADOW = "Shadow"
    CANARY = "Canary"
    PRODUCTION = "Production"
    PREVIOUS = "Previous"


@dataclass(frozen=True)
class Registered:
    name: str
    version: str
    run_id: str
    model_uri: str


def connect(settings: Settings, create: bool = True) -> tuple[MlflowClient, str]:
    """Point MLflow at the configured store; return a client and the experiment id (created once).

    Readers pass create=False: looking at an embedded store that does not exist yet must not
    create one.
    """
    if settings.s3.endpoint_url:  # MLflow's own boto3 client reads the endpoint from here
        os.environ.setdefault("MLFLOW_S3_ENDPOINT_URL", settings.s3.endpoint_url)
    mlflow_settings = settings.mlflow
    uri = mlflow_settings.tracking_uri
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        if not create and not db.is_file():
            raise RegistryError(f"no MLflow store at {db}: nothing has been trained here yet (run shipway train)")
        db.parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name(mlflow_settings.experiment)
    if experiment is not None:
        return client, experiment.experiment_id
    location = mlflow_settings.artifact_location or None
    if location and "://" not in location:
        location = Path(location).as_uri()
    try:
        return client, client.create_experiment(mlflow_settings.experiment, artifact_location=location)
    except MlflowException:  # created meanwhile by another process
        return client, client.get_experiment_by_name(mlflow_settings.experiment).experiment_id


def pip_requirements() -> list[str]:
    """Pinned serving requirements, stated so that MLflow need not infer them (4-5 s per model)."""
    return [f"{dist}=={dist_version(dist)}" for dist in SERVING_REQUIREMENTS]


def trusted_types(model: Any) -> list[str]:
    """The types skops must be told to trust to load `model` again (numpy dtypes, tree nodes).

    Safe to trust here: the model was fitted in this process, not read from an outside file;
    the file stays protected by the registry, and snapshots by their content hash.
    """
    return sorted(skops.io.get_untrusted_types(data=skops.io.dumps(model)))


def register(trained: TrainedModel, snapshot: Snapshot, lineage: GitLineage, settings: Settings) -> Registered:
    """Log a training run (params, metrics, dataset, model, baseline) and register its version."""
    client, experiment_id = connect(settings)
    training = settings.training
    name = training.model_name
    sample = trained.X_holdout.head(50)
    requirements = pip_requirements()
    with (
        mlflow.start_run(experiment_id=experiment_id, run_name=f"train-{snapshot.id[:12]}") as run,
        warnings.catch_warnings(),
    ):
        # MLflow hints that int columns cannot hold nulls at serving time; the data contract checks
        # nulls, so the hint is noise here, as is its note on how it reads a local dataset path.
        warnings.simplefilter("ignore", UserWarning)
        mlflow.set_tags(lineage.tags() | {"data_snapshot_id": snapshot.id})
        mlflow.log_params(
            {
                "estimator": training.estimator,
                **{f"param_{k}": v for k, v in training.params.items()},
                "seed": training.seed,
                "test_size": training.test_size,
                "target": trained.target,
                "features": ",".join(trained.features),
                "baseline_rule": trained.baseline_rule,
            }
        )
        mlflow.log_metrics(trained.metrics | {f"baseline_{k}": v for k, v in trained.baseline_metrics.items()})
        dataset = mlflow.data.from_pandas(
            snapshot.frame, source=snapshot.uri, name=f"snapshot-{snapshot.id[:12]}", targets=trained.target
        )
        mlflow.log_input(dataset, context="training")
        mlflow.log_dict(snapshot.manifest.model_dump(mode="json"), "snapshot/manifest.json")
        model_info = mlflow.sklearn.log_model(
            trained.model,
            name=MODEL_ARTIFACT,
            signature=infer_signature(sample, trained.model.predict(sample)),
            input_example=trained.X_holdout.head(3),
            pip_requirements=requirements,
            skops_trusted_types=trusted_types(trained.model),
        )
        baseline_info = mlflow.sklearn.log_model(
            trained.baseline,
            name=BASELINE_ARTIFACT,
            signature=infer_signature(sample, trained.baseline.predict(sample)),
            pip_requirements=requirements,
            skops_trusted_types=trusted_types(trained.baseline),
        )
        # The compiled form is what the gateway serves: parity-checked here, stored with the run.
        compiled = compile_pipeline(trained.model, trained.X_holdout)
        if compiled.ok:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / Path(ONNX_ARTIFACT).name
                path.write_bytes(compiled.onnx)
                mlflow.log_artifact(str(path), str(Path(ONNX_ARTIFACT).parent))
    tags = {
        **lineage.tags(),
        "data_snapshot_id": snapshot.id,
        "data_snapshot_uri": snapshot.uri,
        "data_rows": str(snapshot.manifest.rows),
        "target": trained.target,
        "estimator": training.estimator,
        "baseline_model_uri": baseline_info.model_uri,
        "baseline_rule": trained.baseline_rule,
        "serving_format": "onnx" if compiled.ok else "sklearn",
        "onnx_parity": compiled.status,
        **({"onnx_model_uri": f"runs:/{run.info.run_id}/{ONNX_ARTIFACT}"} if compiled.ok else {}),
        **{f"metric_{k}": f"{v:.6g}" for k, v in trained.metrics.items()},
    }
    _ensure_registered_model(client, name)
    created = client.create_model_version(
        name,
        source=model_info.model_uri,
        run_id=run.info.run_id,
        tags=tags,
        description=describe_release(name, trained, snapshot, lineage),
        model_id=model_info.model_id,
    )
    return Registered(name, str(created.version), run.info.run_id, f"models:/{name}/{created.version}")


def describe_release(name: str, trained: TrainedModel, snapshot: Snapshot, lineage: GitLineage) -> str:
    metrics = ", ".join(f"{k} {v:.3f}" for k, v in trained.metrics.items())
    baseline = ", ".join(f"{k} {v:.3f}" for k, v in trained.baseline_metrics.items() if k in ("roc_auc", "accuracy"))
    state = {True: "with uncommitted changes", False: "clean", None: "state unknown"}[lineage.dirty]
    return (
        f"{name}: {type(trained.model.named_steps['model']).__name__} predicting '{trained.target}' from "
        f"{len(trained.features)} features.\n\n"
        f"Data: snapshot {snapshot.id[:12]} ({snapshot.manifest.rows:,} rows, source {snapshot.manifest.source}).\n"
        f"Code: commit {lineage.commit[:12]} on {lineage.branch} ({state}).\n"
        f"Holdout: {metrics}.\n"
        f"Baseline rule '{trained.baseline_rule}': {baseline}."
    )


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(name)
        except MlflowException:  # created meanwhile by another process
            client.get_registered_model(name)


def set_alias(settings: Settings, name: str, alias: Alias, version: str) -> None:
    client, _ = connect(settings)
    client.set_registered_model_alias(name, alias.value, version)


def versions(settings: Settings, name: str) -> tuple[list[ModelVersion], dict[str, str]]:
    """All versions of `name`, newest first, and its aliases as {alias: version}."""
    client, _ = connect(settings, create=False)
    model = _registered_model(client, settings, name)
    escaped = name.replace("'", "\\'")
    found = client.search_model_versions(f"name = '{escaped}'")
    aliases = {alias: str(version) for alias, version in model.aliases.items()}
    return sorted(found, key=lambda v: int(v.version), reverse=True), aliases


def _registered_model(client: MlflowClient, settings: Settings, name: str):
    try:
        return client.get_registered_model(name)
    except MlflowException:
        known = sorted(m.name for m in client.search_registered_models())
        hint = f"; registered models: {', '.join(known)}" if known else "; nothing is registered yet"
        raise RegistryError(f"registered model '{name}' not found in {settings.mlflow.tracking_uri}{hint}") from None


def set_canary_share(settings: Settings, name: str, share: float) -> None:
    """The share of traffic the gateway sends to the Canary alias (a registered-model tag)."""
    if not 0.0 <= share <= 1.0:
        raise RegistryError(f"canary share must be between 0 and 1, got {share}")
    client, _ = connect(settings)
    _registered_model(client, settings, name)
    client.set_registered_model_tag(name, CANARY_SHARE_TAG, repr(float(share)))


def canary_share(settings: Settings, name: str) -> float:
    client, _ = connect(settings, create=False)
    return parse_canary_share(_registered_model(client, settings, name).tags)


def parse_canary_share(tags: dict[str, str]) -> float:
    """The `canary_share` tag as a float in [0, 1]; absent means 0."""
    raw = tags.get(CANARY_SHARE_TAG)
    if raw is None:
        return 0.0
    try:
        share = float(raw)
    except ValueError:
        share = float("nan")
    if not 0.0 <= share <= 1.0:
        raise RegistryError(f"registered-model tag {CANARY_SHARE_TAG}={raw!r} is not a number between 0 and 1")
    return share


@dataclass(frozen=True)
class ModelState:
    """What one poll of the registry sees: aliases ({alias: version}) and registered-model tags."""

    aliases: dict[str, str]
    tags: dict[str, str]


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # MLflow DataType name: long, integer, double, float, string, boolean, ...
    required: bool


@dataclass(frozen=True)
class LoadedVersion:
    """A version ready to serve: its input columns and either ONNX bytes or a loaded model."""

    name: str
    version: str
    tags: dict[str, str]
    columns: list[Column]
    onnx: bytes | None
    model: Any  # sklearn estimator (flavor "sklearn") or a pyfunc model; None when served as ONNX
    flavor: str  # "onnx", "sklearn" or "pyfunc"


class RegistryReader:
    """Read-only registry access for the gateway and the benchmark: one client, no writes."""

    def __init__(self, settings: Settings):
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars in a server's log
        self.settings = settings
        self.client, _ = connect(settings, create=False)

    def state(self, name: str) -> ModelState:
        model = _registered_model(self.client, self.settings, name)
        return ModelState({a: str(v) for a, v in model.aliases.items()}, dict(model.tags))

    def resolve(self, name: str, alias: str) -> str:
        state = self.state(name)
        if alias.isdigit():
            return alias
        if alias not in state.aliases:
            held = ", ".join(f"{a} -> {v}" for a, v in sorted(state.aliases.items())) or "none"
            raise RegistryError(f"model '{name}' has no alias '{alias}' (aliases: {held})")
        return state.aliases[alias]

    def load(self, name: str, version: str) -> LoadedVersion:
        """The compiled ONNX form when its parity was checked at registration, else the model itself."""
        try:
            mv = self.client.get_model_version(name, version)
        except MlflowException:
            raise RegistryError(f"model '{name}' has no version {version}") from None
        uri = f"models:/{name}/{version}"
        info = mlflow.models.get_model_info(uri)
        schema = info.signature.inputs if info.signature else None
        if schema is None or not schema.has_input_names():
            raise RegistryError(f"{uri} has no column signature: the gateway needs column names and types")
        columns = [Column(c.name, getattr(c.type, "name", str(c.type)), c.required) for c in schema.inputs]
        tags = dict(mv.tags)
        if tags.get("serving_format") == "onnx" and tags.get("onnx_model_uri"):
            onnx = Path(mlflow.artifacts.download_artifacts(artifact_uri=tags["onnx_model_uri"])).read_bytes()
            return LoadedVersion(name, version, tags, columns, onnx, None, "onnx")
        if "sklearn" in info.flavors:
            return LoadedVersion(name, version, tags, columns, None, mlflow.sklearn.load_model(uri), "sklearn")
        return LoadedVersion(name, version, tags, columns, None, mlflow.pyfunc.load_model(uri), "pyfunc")

    def baseline(self, loaded: LoadedVersion) -> Any:
        """The heuristic baseline registered with a version (tag baseline_model_uri), or None."""
        uri = loaded.tags.get("baseline_model_uri")
        return mlflow.sklearn.load_model(uri) if uri else None


def record_benchmark(
    settings: Settings, name: str, version: str, metrics: dict[str, float], tags: dict[str, str], files: list[Path]
) -> str:
    """Log a benchmark to the version's source run and tag the version; returns the run id."""
    client, _ = connect(settings, create=False)
    try:
        run_id = client.get_model_version(name, version).run_id
    except MlflowException:
        raise RegistryError(f"model '{name}' has no version {version}") from None
    timestamp = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), timestamp, 0) for k, v in metrics.items()])
    for path in files:
        client.log_artifact(run_id, str(path), "benchmark")
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    return run_id


@task(name="register", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_on_io, cache_policy=NO_CACHE)
def register_task(trained: TrainedModel, snapshot: Snapshot, lineage: GitLineage, settings: Settings) -> Registered:
    registered = register(trained, snapshot, lineage, settings)
    get_run_logger().info("registered %s version %s (run %s)", registered.name, registered.version, registered.run_id)
    return registered


@task(name="set-alias", retries=2, retry_delay_seconds=[1, 5], retry_condition_fn=retry_on_io, cache_policy=NO_CACHE)
def set_alias_task(settings: Settings, name: str, alias: Alias, version: str) -> None:
    set_alias(settings, name, alias, version)
    get_run_logger().info("%s@%s -> version %s", name, alias.value, version)
