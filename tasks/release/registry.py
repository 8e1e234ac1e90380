"""The MLflow registry as the flows use it: versions, aliases, tags, contracts, gate reports,
benchmarks and monitoring windows, through one client per store (core.tracking). Registering a
new version is tasks/release/registration.py; the gateway's read-only view is serving/registry_reader.py.
Only aliases mark roles; registry stages are never used.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import mlflow.sklearn
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from configs.settings import Settings
from core import integrity
from core.errors import RegistryError
from core.refs import ModelRef
from core.stops import release_frames
from core.tracking import Store, client, close_idle_connections, experiment_id, registered_model
from core.vocabulary import Alias, Tag
from tasks.release import release_card

RELEASES_EXPERIMENT = "shipway-releases"  # one release-record run per registered model (tasks/release/record.py)


def connect(settings: Settings, create: bool = True, experiment: str | None = None) -> tuple[MlflowClient, str]:
    """The store's client (one per process, core.tracking) and the experiment id (created once).

    Readers pass create=False: looking at an embedded store that does not exist yet must not
    create one. `experiment` defaults to the training experiment of the profile.
    """
    store = Store.of(settings)
    mlflow_client = client(store, create=create)
    if experiment is None:
        return mlflow_client, experiment_id(store, settings.mlflow.experiment)
    return mlflow_client, experiment_id(store, experiment, subfolder=experiment)


def free_store(settings: Settings, exc: BaseException) -> None:
    """Let go of what `exc` may have left holding the store's lock, before a write on its way out: a
    cursor its frames keep open, a connection a stop cut off mid-commit (handed back to the pool with
    its transaction open). SQLite would make that write wait 20 s and fail, or, made on the same
    connection, commit the cut write with it."""
    release_frames(exc)
    close_idle_connections(Store.of(settings))


@contextmanager
def store_freed_on_the_way_out(settings: Settings) -> Iterator[None]:
    """`free_store` when the block raises: put innermost in a `with` whose exits write (MLflow's run
    ending FAILED), it runs before them."""
    try:
        yield
    except BaseException as exc:
        free_store(settings, exc)
        raise


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


def model_state(settings: Settings, name: str) -> tuple[dict[str, str], dict[str, str]]:
    """The aliases ({alias: version}) and the tags of registered model `name`, read together."""
    client, _ = connect(settings, create=False)
    model = _registered_model(client, settings, name)
    return {alias: str(version) for alias, version in model.aliases.items()}, dict(model.tags)


def get_version(settings: Settings, name: str, version: str) -> ModelVersion:
    client, _ = connect(settings, create=False)
    _registered_model(client, settings, name)
    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        raise RegistryError(f"version {version} of '{name}' not found") from None


def set_model_tag(settings: Settings, name: str, key: str, value: str) -> None:
    connect(settings)[0].set_registered_model_tag(name, key, value)


def delete_model_tag(settings: Settings, name: str, key: str) -> None:
    try:
        connect(settings)[0].delete_registered_model_tag(name, key)
    except MlflowException:  # already gone: deleting is idempotent here
        pass


def delete_alias(settings: Settings, name: str, alias: Alias) -> None:
    try:
        connect(settings)[0].delete_registered_model_alias(name, alias.value)
    except MlflowException:  # not set: nothing to delete
        pass


def log_window(
    settings: Settings,
    name: str,
    run_name: str,
    params: dict[str, str],
    metrics: dict[str, float],
    tags: dict[str, str],
    files: list[Path],
) -> str:
    """One monitoring window as a run of the monitoring experiment; returns its run id."""
    _, experiment_id = connect(settings, experiment=settings.monitoring.experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        mlflow.set_tags(tags | {"model": name})
        mlflow.log_params(params)
        mlflow.log_metrics({k: v for k, v in metrics.items() if v == v})  # NaN: nothing measured
        for path in files:
            mlflow.log_artifact(str(path))
    return run.info.run_id


def monitoring_history(settings: Settings, name: str, limit: int) -> list[dict[str, Any]]:
    """The latest `limit` monitoring windows of `name`, newest first: tags and metrics of each run."""
    client, experiment_id = connect(settings, experiment=settings.monitoring.experiment)
    escaped = name.replace("'", "\\'")
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.model = '{escaped}'",
        order_by=["attributes.start_time DESC"],
        max_results=limit,
    )
    return [
        {
            "run_id": r.info.run_id,
            "time": r.info.start_time,
            "tags": dict(r.data.tags),
            "metrics": dict(r.data.metrics),
            "params": dict(r.data.params),
        }
        for r in runs
    ]


def _registered_model(mlflow_client: MlflowClient, settings: Settings, name: str):
    return registered_model(mlflow_client, Store.of(settings), name)


def set_canary_share(settings: Settings, name: str, share: float) -> None:
    """The share of traffic the gateway sends to the Canary alias (a registered-model tag)."""
    if not 0.0 <= share <= 1.0:
        raise RegistryError(f"canary share must be between 0 and 1, got {share}")
    client, _ = connect(settings)
    _registered_model(client, settings, name)
    client.set_registered_model_tag(name, Tag.CANARY_SHARE, f"{share:g}")


def record_benchmark(
    settings: Settings, name: str, version: str, metrics: dict[str, float], tags: dict[str, str], files: list[Path]
) -> str:
    """Log a benchmark to the version's source run and tag the version; returns the run id."""
    client, _ = connect(settings, create=False)
    try:
        run_id = source_run(client, name, version)
    except MlflowException:
        raise RegistryError(f"model '{name}' has no version {version}") from None
    timestamp = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), timestamp, 0) for k, v in metrics.items()])
    for path in files:
        client.log_artifact(run_id, str(path), "benchmark")
    set_version_tags(settings, name, version, tags)
    return run_id


# --- contracts and gate reports ---------------------------------------------------------------------

CONTRACT_ARTIFACT = "contract/expectation_suite.json"


def resolve(settings: Settings, reference: str) -> ModelVersion:
    """The version named by NAME@ALIAS or NAME/VERSION (e.g. churn-classifier@Production)."""
    ref = ModelRef.parse(reference)
    found, aliases = versions(settings, ref.name)
    version = aliases.get(ref.alias) if ref.alias else ref.version
    if version is None:
        known = ", ".join(f"{a} -> {v}" for a, v in sorted(aliases.items())) or "none"
        raise RegistryError(f"model '{ref.name}' has no alias '{ref.alias}' (aliases: {known})")
    match = [v for v in found if str(v.version) == str(version)]
    if not match:
        raise RegistryError(f"model '{ref.name}' has no version {version}")
    return match[0]


def log_contract(settings: Settings, name: str, version: str, suite: dict[str, Any]) -> str:
    """Log the version's data contract (GX suite JSON) with its run; tag the version with its URI and
    the file's sha256 (the hash first: a reader that sees the URI sees its hash)."""
    client, _ = connect(settings)
    run_id = source_run(client, name, version)
    text = json.dumps(suite, indent=2)  # as log_dict writes it, hashed as written
    client.log_text(run_id, text, CONTRACT_ARTIFACT)
    uri = f"runs:/{run_id}/{CONTRACT_ARTIFACT}"  # short, and valid wherever the artifacts move
    hashed: dict[str, str] = {Tag.EXPECTATION_SUITE_SHA256: integrity.sha256(text.encode())}
    set_version_tags(settings, name, version, hashed | {Tag.EXPECTATION_SUITE: uri})
    return uri


def load_contract(settings: Settings, version: ModelVersion) -> dict[str, Any] | None:
    """The contract logged with `version` (its sha256 checked: IntegrityError), or None without one."""
    from serving import RegistryReader  # the gateway's reader: not loaded by the lease and promote's start

    return RegistryReader(settings).contract(version.name, str(version.version), dict(version.tags))


def log_gate_report(
    settings: Settings,
    files: list[Path],
    verdict: str,
    *,
    name: str,
    version: str | None,
    folder: str,
    tags: dict[str, str] | None = None,
    status_tag: str = "validation_status",
) -> str:
    """Log report files under `folder` of the version's run (or of a new `gate-...` run when the data
    never became a version), and set `status_tag` plus `tags` on the version. Returns the run id."""
    client, experiment_id = connect(settings)
    if version is None:
        run = client.create_run(
            experiment_id, run_name=f"gate-{folder}", tags={"model": name, "validation_status": verdict}
        )
        run_id = run.info.run_id
    else:
        run_id = source_run(client, name, version)
    for path in files:
        client.log_artifact(run_id, str(path), artifact_path=f"validation/{folder}")
    if version is None:
        client.set_terminated(run_id, status="FAILED" if verdict == "fail" else "FINISHED")
    else:
        set_version_tags(settings, name, version, {status_tag: verdict, **(tags or {})})
    return run_id


def source_run(client: MlflowClient, name: str, version: str) -> str:
    """The run a version was logged from (every version shipway registers has one)."""
    run_id = client.get_model_version(name, version).run_id
    if run_id is None:
        raise RegistryError(f"version {version} of '{name}' has no source run")
    return run_id


def set_version_tags(settings: Settings, name: str, version: str, tags: dict[str, str]) -> None:
    """Tags are short facts: a value over 250 characters is cut (the whole text belongs in the release
    record). A change to a fact of the release card rewrites the card atop the version's description."""
    client, _ = connect(settings)
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, release_card.short(str(value)))
    if release_card.CARD_TAGS & tags.keys():
        refresh_card(settings, name, version)


def delete_version_tag(settings: Settings, name: str, version: str, key: str) -> None:
    """Remove a tag of the version (absent: nothing to do), the release card with it."""
    client, _ = connect(settings)
    try:
        client.delete_model_version_tag(name, str(version), key)
    except MlflowException:
        return
    if key in release_card.CARD_TAGS:
        refresh_card(settings, name, version)


def ui_path(experiment: str, run_id: str) -> str:
    """A run's page in the MLflow UI, in its model-training view: MLflow 3.17's UI picks GenAI or
    model training from this parameter (or the last choice in the browser), not from the experiment."""
    return f"#/experiments/{experiment}/runs/{run_id}?workflowType=machine_learning"


def refresh_card(settings: Settings, name: str, version: str) -> None:
    """The version's description: its release card (tasks/release/release_card.py), then its registration text."""
    client, _ = connect(settings)
    found = client.get_model_version(name, str(version))
    run_id = found.tags.get(Tag.RELEASE_RECORD)
    link = None
    if run_id:
        experiment = connect(settings, experiment=RELEASES_EXPERIMENT)[1]
        link = f"[release record]({ui_path(experiment, run_id)}): every alias move and approval"
    text = release_card.render(found.tags, release_card.about_of(found.description), link)
    if text != found.description:
        client.update_model_version(name, str(version), description=text)


def alias_version(settings: Settings, name: str, alias: Alias) -> str | None:
    """The version `alias` points at, or None when the store, the model or the alias does not exist yet."""
    try:
        client, _ = connect(settings, create=False)
    except RegistryError:  # nothing trained here yet
        return None
    try:
        return str(client.get_model_version_by_alias(name, alias.value).version)
    except MlflowException:
        return None


def probability_classes(settings: Settings, name: str, versions_seen: Iterable[str]) -> dict[str, list]:
    """{version: classes} for the versions among `versions_seen` that answer probability rows
    (tag predict_fn = predict_proba): what tasks.promotion.analysis.predicted_classes needs."""
    found = {}
    for version in {str(v) for v in versions_seen if v is not None and v == v}:
        try:
            tags = get_version(settings, name, version).tags
        except RegistryError:
            continue
        if tags.get(Tag.PREDICT_FN) == "predict_proba" and tags.get(Tag.CLASSES):
            found[version] = json.loads(tags[Tag.CLASSES])
    return found
