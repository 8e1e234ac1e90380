"""Registering a trained model: an MLflow run (params, metrics, dataset, model, baseline, ONNX form)
and a registered model version created in one call with all of its lineage tags and its
description, so that no version is ever visible without them."""

from __future__ import annotations

import json
import signal
import sys
import sysconfig
import tempfile
import warnings
from dataclasses import dataclass
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

import mlflow
import mlflow.sklearn
import pandas as pd
from mlflow import MlflowClient
from mlflow.data.pandas_dataset import from_pandas
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature, infer_signature
from mlflow.models.model import ModelInfo
from mlflow.types import ColSpec, Schema, TensorSpec

from configs.settings import Settings
from core.integrity import sha256
from core.stops import signal_of
from core.vocabulary import Tag
from tasks.data.snapshot import Snapshot
from tasks.release import prediction_reference, record, registry
from tasks.release.lineage import CODE_DIR, GitLineage, config_hash, config_yaml, shipway_version
from tasks.release.registry import connect
from tasks.retries import run_logger, shipway_task
from tasks.training import seen_rows
from tasks.training.compile import compile_pipeline
from tasks.training.pipeline import TrainedModel, decision_threshold, headline
from tasks.training.sensitive import neutral_rows

MODEL_ARTIFACT = "model"
CONFIG_ARTIFACT = "config/resolved.yaml"
FEATURES_ARTIFACT = "config/features.json"
SEARCH_ARTIFACT = "search/candidates.json"
MAX_PARAM = 500  # longer values (hundreds of feature names) go to an artifact, not a param
BASELINE_ARTIFACT = "baseline"
ONNX_ARTIFACT = "onnx/model.onnx"
BASELINE_ONNX_ARTIFACT = "onnx/baseline.onnx"
SERVING_REQUIREMENTS = ("scikit-learn", "pandas", "numpy", "scipy", "skops")


@dataclass(frozen=True)
class Registered:
    name: str
    version: str
    run_id: str
    model_uri: str


def pip_requirements() -> list[str]:
    """Pinned serving requirements, stated so that MLflow need not infer them (it would load the model
    in a subprocess to)."""
    return [f"{dist}=={dist_version(dist)}" for dist in SERVING_REQUIREMENTS]


def trusted_types(model: Any) -> list[str]:
    """The types skops must be told to trust to load `model` again (numpy dtypes, tree nodes).

    Safe to trust here: the model was fitted in this process, not read from an outside file;
    the file stays protected by the registry, and snapshots by their content hash.
    """
    import skops.io  # slow to import: only registration needs it, not the gateway or the readers

    return sorted(skops.io.get_untrusted_types(data=skops.io.dumps(model)))


def dataset_schema(frame: pd.DataFrame) -> Schema | None:
    """The schema MLflow infers for a dataset, from the few rows that decide it: per column its
    first value and its first null. MLflow's own inference reads every value of each text column
    and looks for nulls value by value (seconds on a large snapshot); a snapshot's columns each
    hold one type (tasks.data.snapshot.canonicalize), so these rows give the same types and the same
    `required` flags."""
    nulls = frame.isna()
    rows = {*nulls.idxmin(), *nulls.idxmax()}  # per column the first value, and the first null (or row)
    return infer_signature(frame.loc[sorted(rows)]).inputs


def mlflow_example(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows as MLflow's datetime type takes them: zone-aware times as naive UTC (MLflow refuses a
    zone), which is what the gateway hands the model and what its date parts read anyway."""
    zoned = [c for c in rows.columns if isinstance(rows[c].dtype, pd.DatetimeTZDtype)]
    return rows.assign(**{c: rows[c].dt.tz_convert("UTC").dt.tz_localize(None) for c in zoned}) if zoned else rows


def user_code_paths(types: list[str]) -> list[str]:
    """The user's packages or modules among a model's types, for MLflow's `code_paths`: MLflow copies
    them into the model and puts them on the import path wherever it is loaded (the gateway,
    `mlflow models serve` on another machine), so the model carries the very code it was trained with.

    The user's code is wherever the module was imported from, if that is not an installed package,
    the standard library or shipway itself: the working directory, `training.code_path`, an editable
    install or PYTHONPATH alike.
    """
    found: dict[str, None] = {}
    for name in types:
        module = sys.modules.get(name.split(".")[0])
        source = getattr(module, "__file__", None)
        if source is None:
            continue
        path = Path(source).resolve()
        path = path.parent if path.name == "__init__.py" else path
        if not _installed(path):
            found[str(path)] = None
    return list(found)


def nullable_columns(features: pd.DataFrame) -> set[str]:
    """The feature columns with a null anywhere in the training data."""
    return set(features.columns[features.isna().any()])


def signature(sample: pd.DataFrame, output: Any, nullable: set[str]) -> ModelSignature:
    """MLflow's signature inferred from `sample` (types), with a column optional exactly when it is
    in `nullable`: inferred from a 50-row sample alone, a column with 2% nulls would be required by
    one version and optional in the next, and the same request accepted by one and refused by the
    other."""
    inferred = infer_signature(sample, output)
    columns: list[ColSpec | TensorSpec] = [
        ColSpec(c.type, c.name, required=c.name not in nullable) for c in inferred.inputs.inputs
    ]
    return ModelSignature(Schema(columns), inferred.outputs, inferred.params)


def _installed(path: Path) -> bool:
    # shipway's own packages sit at the top of its checkout; its examples below it are users' code
    if path.parent == CODE_DIR or {"site-packages", "dist-packages"} & set(path.parts):
        return True
    libraries = {sysconfig.get_path(kind) for kind in ("stdlib", "platstdlib", "purelib", "platlib")}
    return any(path.is_relative_to(Path(library).resolve()) for library in libraries if library)


@shipway_task("register", io=True)
def register(
    trained: TrainedModel, snapshot: Snapshot, lineage: GitLineage, settings: Settings, unfinished: str | None = None
) -> Registered:
    """Log a training run (params, metrics, dataset, config, model, baseline) and register its version.
    `unfinished`: the version is born with this tag (the training flow's: its gates have not decided
    yet), so a version whose flow dies before they do never looks complete; a signal here says so."""
    client, experiment_id = connect(settings)
    training = settings.training
    name = training.model_name
    sample = trained.X_holdout.head(50)
    nullable = nullable_columns(snapshot.frame[trained.features])
    requirements = pip_requirements()
    config = config_yaml(settings)
    provenance: dict[str, str] = {Tag.SHIPWAY_VERSION: shipway_version(), Tag.CONFIG_HASH: config_hash(config)}
    features = ",".join(trained.features)
    with (
        mlflow.start_run(experiment_id=experiment_id, run_name=f"train-{snapshot.id[:12]}") as run,
        warnings.catch_warnings(),
        registry.store_freed_on_the_way_out(settings),  # before the run's end is written
    ):
        # MLflow hints that int columns cannot hold nulls at serving time; the data contract checks
        # nulls, so the hint is noise here, as is its note on how it reads a local dataset path.
        warnings.simplefilter("ignore", UserWarning)
        mlflow.set_tags(lineage.tags() | provenance | {"data_snapshot_id": snapshot.id})
        mlflow.log_params(
            {
                "estimator": training.estimator,
                "model_class": trained.estimator[:MAX_PARAM],
                "task": trained.task.value,
                "predict_fn": trained.predict_fn,
                "threshold": training.threshold,
                "decision_threshold": trained.threshold if trained.threshold is not None else "none",
                "preprocessing": training.preprocessing,
                **{f"param_{k}": v for k, v in training.params.items()},
                "seed": training.seed,
                "test_size": training.test_size,
                "target": trained.target,
                "time_column": settings.data.time_column or "",
                "features": features if len(features) <= MAX_PARAM else f"{len(trained.features)} columns",
                "baseline_rule": trained.baseline_rule,
            }
        )
        mlflow.log_text(config, CONFIG_ARTIFACT)
        mlflow.log_dict({"features": trained.features, "target": trained.target}, FEATURES_ARTIFACT)
        if trained.search is not None:
            mlflow.log_table(trained.search, artifact_file=SEARCH_ARTIFACT)
            best = trained.search.iloc[0]
            mlflow.log_params({f"search_best_{k}": best[k] for k in trained.search.columns if "__" in k})
        dataset = from_pandas(
            snapshot.frame, source=snapshot.uri, name=f"snapshot-{snapshot.id[:12]}", targets=trained.target
        )
        dataset.schema = dataset_schema(snapshot.frame)  # what MLflow would infer value by value
        mlflow.log_input(dataset, context="training")
        mlflow.log_dict(snapshot.manifest.model_dump(mode="json"), "snapshot/manifest.json")
        types = trusted_types(trained.model)
        model_info, model_sha256 = log_sklearn(
            trained.model,
            name=MODEL_ARTIFACT,
            signature=signature(sample, trained.serve(sample), nullable),
            input_example=mlflow_example(neutral_rows(trained.X_holdout.head(3), settings.serving.sensitive_columns)),
            pip_requirements=requirements,
            skops_trusted_types=types,
            pyfunc_predict_fn=trained.predict_fn,
            code_paths=user_code_paths(types) or None,
        )
        baseline_info, baseline_sha256 = log_sklearn(
            trained.baseline,
            name=BASELINE_ARTIFACT,
            signature=signature(sample, getattr(trained.baseline, trained.predict_fn)(sample), nullable),
            pip_requirements=requirements,
            skops_trusted_types=trusted_types(trained.baseline),
            pyfunc_predict_fn=trained.predict_fn,
        )
        # Logged after both models and linked to each its own: a run's metrics logged first would be
        # copied onto every model logged after them, the model's figures shown as the baseline's.
        mlflow.log_metrics(trained.metrics, model_id=model_info.model_id)
        mlflow.log_metrics(
            {f"baseline_{k}": v for k, v in trained.baseline_metrics.items()}
            | {f"baseline_training_{k}": v for k, v in trained.baseline_training.items()},
            model_id=baseline_info.model_id,
        )
        # The compiled form is what the gateway serves: parity-checked here, stored with the run.
        compiled = compile_pipeline(trained.model, trained.X_holdout, trained.predict_fn)
        # The baseline's too: a gateway serving ONNX then never imports scikit-learn.
        compiled_baseline = compile_pipeline(trained.baseline, trained.X_holdout, trained.predict_fn)
        # Each served file's hash, tagged with the version and checked wherever it is loaded
        # (core/integrity.py): each of the bytes uploaded, hashed before the upload.
        hashes: dict[str, str] = {
            Tag.MODEL_SHA256: model_sha256,
            Tag.BASELINE_MODEL_SHA256: baseline_sha256,
            **({Tag.ONNX_MODEL_SHA256: sha256(compiled.onnx)} if compiled.ok and compiled.onnx else {}),
            **(
                {Tag.BASELINE_ONNX_SHA256: sha256(compiled_baseline.onnx)}
                if compiled_baseline.ok and compiled_baseline.onnx
                else {}
            ),
        }
        # The rows it trained on, as keys: the next version's quality gate leaves them out of its comparison.
        columns = [*trained.features, trained.target]
        keys = seen_rows.keys_of(training_rows(trained, snapshot.frame), columns)
        # What it predicted on its holdout, and its calibration there: monitoring's reference (prediction
        # drift, performance estimated before labels come back), hashed like the served files.
        outputs = prediction_reference.build(
            trained.model, trained.X_holdout, trained.y_holdout, trained.task.value, trained.predict_fn
        ).dumps()
        hashes[Tag.PREDICTION_REFERENCE_SHA256] = sha256(outputs)
        files = [
            (compiled.onnx, ONNX_ARTIFACT),
            (compiled_baseline.onnx, BASELINE_ONNX_ARTIFACT),
            (outputs, prediction_reference.ARTIFACT),
        ]
        with tempfile.TemporaryDirectory() as tmp:
            for data, artifact in [*files, (seen_rows.dumps(keys, columns), seen_rows.ARTIFACT)]:
                if data is not None:
                    path = Path(tmp) / Path(artifact).name
                    path.write_bytes(data)
                    mlflow.log_artifact(str(path), str(Path(artifact).parent))
    tags: dict[str, str] = {
        **lineage.tags(),
        **provenance,
        "data_snapshot_id": snapshot.id,
        "data_snapshot_uri": snapshot.uri,
        "data_rows": str(snapshot.manifest.rows),
        Tag.TARGET: trained.target,
        Tag.TASK: trained.task.value,
        Tag.PREDICT_FN: trained.predict_fn,
        **({Tag.DECISION_THRESHOLD: decision_threshold(trained)} if trained.threshold_note else {}),
        **({Tag.TRAINING_POSITIVE_RATE: f"{trained.positive_rate:.6g}"} if trained.positive_rate is not None else {}),
        **({Tag.CLASSES: json.dumps(trained.classes)} if trained.classes is not None else {}),
        Tag.ESTIMATOR: training.estimator,
        "baseline_model_uri": baseline_info.model_uri,
        "baseline_rule": trained.baseline_rule,
        Tag.BASELINE_TRAINING_METRIC: _figures(trained.baseline_training),
        "serving_format": "onnx" if compiled.ok else "sklearn",
        "onnx_parity": compiled.status,
        **({"onnx_model_uri": f"runs:/{run.info.run_id}/{ONNX_ARTIFACT}"} if compiled.ok else {}),
        **(
            {Tag.BASELINE_ONNX_URI: f"runs:/{run.info.run_id}/{BASELINE_ONNX_ARTIFACT}"} if compiled_baseline.ok else {}
        ),
        **{f"metric_{k}": f"{v:.6g}" for k, v in trained.metrics.items()},
        **hashes,
    }
    first = _ensure_registered_model(client, name)
    try:
        created = client.create_model_version(
            name,
            source=model_info.model_uri,
            run_id=run.info.run_id,
            tags=tags | ({Tag.UNFINISHED: unfinished} if unfinished else {}),
            description=describe_release(name, trained, snapshot, lineage),
            model_id=model_info.model_id,
        )
        # the process that created the registered model creates its record: only one can have done so
        record_id = record.create_record(settings, name) if first else record.record_run(settings, name)
        registry.set_version_tags(settings, name, str(created.version), {Tag.RELEASE_RECORD: record_id})
        client.update_registered_model(name, description=describe_model(settings, trained, snapshot))
    except BaseException as exc:
        # found by its run: a signal may come while the store has created the version but not answered yet
        for made in client.search_model_versions(f"run_id = '{run.info.run_id}'") if unfinished else []:
            mark_unfinished(settings, name, str(made.version), exc, "register")
        raise
    run_logger().info("registered %s version %s (run %s)", name, created.version, run.info.run_id)
    return Registered(name, str(created.version), run.info.run_id, f"models:/{name}/{created.version}")


def log_sklearn(model: Any, name: str, **options: Any) -> tuple[ModelInfo, str]:
    """`mlflow.sklearn.log_model` (`options` are its own), and the sha256 of the model file it stores.
    A second serialization would not do: a skops file is a zip whose entries carry the time written."""
    hashing = _HashingSklearn()
    info = Model.log(
        artifact_path=None,
        name=name,
        flavor=hashing,
        flavor_name="mlflow.sklearn",  # the logged model's flavor, as mlflow.sklearn.log_model names it
        sk_model=model,
        serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
        **options,
    )
    return info, hashing.sha256


@dataclass
class _HashingSklearn:
    """mlflow.sklearn as the flavor `Model.log` saves with: it writes the model's folder locally, then
    uploads it as it is, so the model file hashed here is byte for byte the one the store keeps."""

    sha256: str = ""

    def save_model(self, path: str, mlflow_model: Model, **options: Any) -> None:
        mlflow.sklearn.save_model(path=path, mlflow_model=mlflow_model, **options)
        self.sha256 = sha256((Path(path) / mlflow_model.flavors["sklearn"]["pickled_model"]).read_bytes())


def mark_unfinished(settings: Settings, name: str, version: str, exc: BaseException, step: str) -> None:
    """Say on the version (tag `unfinished`, its release card) how its training ended before the verdicts.
    Called while `exc` unwinds: a failure here is logged, never raised in its place (the version keeps
    the mark it was created with, and stays unservable)."""
    registry.free_store(settings, exc)  # what the stop cut off may hold the lock this write needs
    try:
        registry.set_version_tags(settings, name, version, {Tag.UNFINISHED: how_it_ended(exc, step)})
    except Exception as error:
        run_logger().warning("version %s of %s keeps its first unfinished mark: %s", version, name, error)


def how_it_ended(exc: BaseException, step: str) -> str:
    """'stopped by SIGTERM during quality', 'failed during bench: OSError: ...'. A signal behind an error
    it caused (MLflow's "database is locked" while unwinding) is the stop."""
    signum = signal_of(exc)
    if signum is not None:
        return f"stopped by {signal.Signals(signum).name} during {step}"
    if not isinstance(exc, Exception):
        return f"stopped by {type(exc).__name__} during {step}"
    return f"failed during {step}: {type(exc).__name__}: {exc}"


def training_rows(trained: TrainedModel, frame: pd.DataFrame) -> pd.DataFrame:
    """The snapshot's rows the model was fitted on: all but its holdout."""
    return frame if trained.holdout_index is None else frame.drop(index=trained.holdout_index)


def describe_model(settings: Settings, trained: TrainedModel, snapshot: Snapshot) -> str:
    """The registered model's description: what it predicts, from which data, how a version ships."""
    name = settings.training.model_name
    features = ", ".join(f"`{f}`" for f in trained.features[:20]) + (" …" if len(trained.features) > 20 else "")
    steps = " → ".join(f"{s:.0%}" for s in settings.promotion.canary_steps)
    return (
        f"**{name}** predicts `{trained.target}` from {len(trained.features)} features ({features}).\n\n"
        f"Trained by shipway with `{settings.training.estimator}` on snapshots of `{snapshot.manifest.source}` "
        f"(latest: `{snapshot.id[:12]}`, {snapshot.manifest.rows:,} rows); every version carries its git "
        "commit, data snapshot, data contract and latency benchmark as tags.\n\n"
        "**How a version ships**: data gate, quality gate against a baseline and Production, latency budget, "
        "then alias `Shadow` (shadow analysis on live traffic) → a reviewer's approval → `Canary` at "
        f"{steps} of traffic (analysed at each step, rolled back automatically on a breach) → a second approval "
        "→ `Production`; the version it replaces keeps `Previous` for rollback (`shipway rollback`).\n\n"
        f"Audit trail (every alias move, every approval with its evidence): {record.link(settings, name)}."
    )


def describe_release(name: str, trained: TrainedModel, snapshot: Snapshot, lineage: GitLineage) -> str:
    metrics = ", ".join(f"{k} {v:.3f}" for k, v in trained.metrics.items())
    state = {True: "with uncommitted changes", False: "clean", None: "state unknown"}[lineage.dirty]
    return (
        f"{name}: {trained.estimator} ({trained.task.value}) predicting '{trained.target}' from "
        f"{len(trained.features)} features.\n\n"
        f"Data: snapshot {snapshot.id[:12]} ({snapshot.manifest.rows:,} rows, source {snapshot.manifest.source}).\n"
        f"Code: commit {lineage.commit[:12]} on {lineage.branch} ({state}).\n"
        f"Holdout: {metrics}.\n"
        f"Baseline rule '{trained.baseline_rule}' (chosen by {_figures(trained.baseline_training)} on the training "
        f"split): holdout {headline(trained.baseline_metrics)}."
    )


def _figures(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())


def _ensure_registered_model(client: MlflowClient, name: str) -> bool:
    """True if this call created the registered model (MLflow lets exactly one caller do that)."""
    try:
        client.get_registered_model(name)
        return False
    except MlflowException:
        try:
            client.create_registered_model(name)
            return True
        except MlflowException:  # created meanwhile by another process
            client.get_registered_model(name)
            return False
