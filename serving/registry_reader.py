"""The gateway's read-only view of the MLflow registry: aliases, the canary share, and versions
loaded ready to serve (the ONNX form when its parity was checked at registration). Every file a
version is served from is checked against the sha256 recorded at registration (core/integrity.py).
The skew gate reads a version's contract through it too: `shipway validate` then needs no MLflow."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from configs.settings import Settings
from core import integrity
from core.errors import RegistryError
from core.integrity import ArtifactUnreadable
from core.refs import ModelRef
from core.tracking import Store, client, registered_model
from core.vocabulary import Tag
from serving.registry_tables import Artifacts, RegistryTables, Unreadable, VersionRow, model_info

NO_COLUMNS = "the gateway needs column names and types"


def parse_canary_share(tags: dict[str, str]) -> float:
    """The `canary_share` tag as a float in [0, 1]; absent means 0."""
    raw = tags.get(Tag.CANARY_SHARE)
    if raw is None:
        return 0.0
    try:
        share = float(raw)
    except ValueError:
        share = float("nan")
    if not 0.0 <= share <= 1.0:
        raise RegistryError(f"registered-model tag {Tag.CANARY_SHARE}={raw!r} is not a number between 0 and 1")
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
    predict_fn: str = "predict"  # the method MLflow's pyfunc calls (MLmodel python_function.predict_fn)
    example: bytes | None = None  # the body MLflow saved to score the model with (serving_input_example.json)


class RegistryReader:
    """Read-only registry access for the gateway, the shadow process, the benchmark and the skew gate.

    On a database store the aliases, tags and ONNX versions are read without MLflow (see
    serving/registry_tables.py); MLflow's client, imported on first need, reads the rest.
    """

    def __init__(self, settings: Settings):
        self.settings = settings
        self.store = Store.of(settings)
        self.tables = RegistryTables.of(self.store)
        self.artifacts = Artifacts(settings.s3)
        self._client: Any = None
        if self.tables is None:
            self.mlflow()  # a missing store fails here, as the tables do

    def mlflow(self) -> Any:
        """MLflow's client for this store, made on first need; making it also points MLflow's
        process-wide URIs (what `models:/` and `runs:/` resolve against) at this store."""
        if self._client is None:
            self._client = client(self.store, create=False)
        return self._client

    def state(self, name: str) -> ModelState:
        if self.tables is not None:
            return ModelState(*self.tables.state(name))
        model = registered_model(self.mlflow(), self.store, name)
        return ModelState({a: str(v) for a, v in model.aliases.items()}, dict(model.tags))

    def resolve(self, ref: ModelRef) -> str:
        """The version a reference names (NAME@ALIAS or NAME/VERSION)."""
        state = self.state(ref.name)
        if ref.version is not None:
            return ref.version
        if ref.alias not in state.aliases:
            held = ", ".join(f"{a} -> {v}" for a, v in sorted(state.aliases.items())) or "none"
            raise RegistryError(f"model '{ref.name}' has no alias '{ref.alias}' (aliases: {held})")
        return state.aliases[ref.alias]

    def versions(self, name: str) -> list[VersionRow]:
        """Every version of `name` with its tags, newest first (RegistryError: no such model)."""
        self.state(name)  # an unknown model is told with the models there are
        if self.tables is not None:
            found = self.tables.versions(name)
        else:
            escaped = name.replace("'", "\\'")
            found = [
                VersionRow(str(v.version), v.creation_timestamp, v.run_id, v.description, dict(v.tags))
                for v in self.mlflow().search_model_versions(f"name = '{escaped}'")
            ]
        return sorted(found, key=lambda v: int(v.version), reverse=True)

    def run_file(self, run_id: str, path: str) -> bytes | None:
        """The artifact `path` of run `run_id`, or None when the run has not written it."""
        if self.tables is not None:
            try:
                return self.artifacts.read(_under(self.tables.run_artifacts(run_id), path))
            except FileNotFoundError:
                return None
            except Exception:  # a store read by MLflow, or a failure MLflow tells as it always did
                pass
        from mlflow.exceptions import MlflowException

        with tempfile.TemporaryDirectory(prefix="shipway-") as tmp:
            try:
                return Path(self.mlflow().download_artifacts(run_id, path, tmp)).read_bytes()
            except (MlflowException, OSError):
                return None

    def version_tags(self, name: str, version: str) -> dict[str, str]:
        """A version's tags (RegistryError when the model or the version does not exist)."""
        if self.tables is not None:
            return self.tables.version(name, version)[0]
        from mlflow.exceptions import MlflowException

        registered_model(self.mlflow(), self.store, name)
        try:
            return dict(self.mlflow().get_model_version(name, version).tags)
        except MlflowException:
            raise RegistryError(f"model '{name}' has no version {version}") from None

    def contract(self, name: str, version: str, tags: dict[str, str]) -> dict[str, Any] | None:
        """The data contract logged with a version (tag expectation_suite), its sha256 checked
        (IntegrityError), or None when the version has none."""
        uri = tags.get(Tag.EXPECTATION_SUITE)
        if not uri:
            return None
        try:
            data = self._artifact_bytes(uri, name, version, integrity.CONTRACT)
        except ArtifactUnreadable as exc:
            raise RegistryError(
                f"version {version} of '{name}': cannot read its contract {uri}: {exc.__cause__}"
            ) from None
        integrity.check(data, tags, integrity.CONTRACT, name, version)
        return json.loads(data)

    def load(self, name: str, version: str) -> LoadedVersion:
        """The compiled ONNX form when its parity was checked at registration, else the model itself."""
        if self.tables is not None:
            tags, location = self.tables.version(name, version)
            if tags.get(Tag.SERVING_FORMAT) == "onnx" and tags.get(Tag.ONNX_MODEL_URI):
                try:
                    return self._load_onnx(name, version, tags, location)
                except Unreadable:
                    pass  # an artifact store MLflow reads for us
        return self._load_with_mlflow(name, version)

    def _load_onnx(self, name: str, version: str, tags: dict[str, str], location: str) -> LoadedVersion:
        info = model_info(self._read(_under(location, "MLmodel"), name, version, "MLmodel"))
        columns = _columns_of(info.inputs, f"models:/{name}/{version}")
        onnx = self._read(self._artifact_uri(tags[Tag.ONNX_MODEL_URI]), name, version, integrity.MODEL_ONNX)
        integrity.check(onnx, tags, integrity.MODEL_ONNX, name, version)
        example = None
        if info.serving_input_path:
            try:
                example = self.artifacts.read(_under(location, info.serving_input_path))
            except Exception:  # only a warm-up needs it: the signature stands in
                example = None
        return LoadedVersion(name, version, tags, columns, onnx, None, "onnx", info.predict_fn, example)

    def _read(self, uri: str, name: str, version: str, file: str) -> bytes:
        """A file this module reads itself (else Unreadable); a store that does not give it names the file."""
        try:
            return self.artifacts.read(uri)
        except Unreadable:
            raise
        except Exception as exc:  # gone, unreachable, refused: boto3's and the OS's errors alike
            raise ArtifactUnreadable(name, version, file, exc) from exc

    def _artifact_uri(self, uri: str) -> str:
        """`runs:/RUN_ID/PATH` as the URI of the file itself; other forms as they are."""
        if uri.startswith("runs:/") and self.tables is not None:
            run_id, _, path = uri.removeprefix("runs:/").partition("/")
            return _under(self.tables.run_artifacts(run_id), path)
        return uri

    def _artifact_bytes(self, uri: str, name: str, version: str, file: str) -> bytes:
        """One artifact file: read here when this module can (local disk, S3), else by MLflow."""
        try:
            return self._read(self._artifact_uri(uri), name, version, file)
        except Unreadable:
            import mlflow
            from mlflow.exceptions import MlflowException

            self.mlflow()
            try:
                return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri)).read_bytes()
            except (MlflowException, OSError) as exc:
                raise ArtifactUnreadable(name, version, file, exc) from exc

    def _load_with_mlflow(self, name: str, version: str) -> LoadedVersion:
        import mlflow
        from mlflow.exceptions import MlflowException

        try:
            mv = self.mlflow().get_model_version(name, version)
        except MlflowException:
            raise RegistryError(f"model '{name}' has no version {version}") from None
        uri = f"models:/{name}/{version}"
        info = mlflow.models.get_model_info(uri)
        columns = _columns(info, uri)
        tags = dict(mv.tags)
        predict_fn = info.flavors.get("python_function", {}).get("predict_fn", "predict")
        example = _serving_example(info, uri)
        if tags.get(Tag.SERVING_FORMAT) == "onnx" and tags.get(Tag.ONNX_MODEL_URI):
            onnx = self._artifact_bytes(tags[Tag.ONNX_MODEL_URI], name, version, integrity.MODEL_ONNX)
            integrity.check(onnx, tags, integrity.MODEL_ONNX, name, version)
            return LoadedVersion(name, version, tags, columns, onnx, None, "onnx", predict_fn, example)
        if "sklearn" in info.flavors:
            model = load_sklearn(uri, tags, integrity.MODEL_SKOPS, name, version)
            return LoadedVersion(name, version, tags, columns, None, model, "sklearn", predict_fn, example)
        model = mlflow.pyfunc.load_model(uri)
        return LoadedVersion(name, version, tags, columns, None, model, "pyfunc", predict_fn, example)

    def columns(self, name: str, version: str) -> list[Column]:
        """A version's input columns, from its signature alone (no model is loaded)."""
        uri = f"models:/{name}/{version}"
        if self.tables is not None:
            _, location = self.tables.version(name, version)
            try:
                return _columns_of(model_info(self.artifacts.read(_under(location, "MLmodel"))).inputs, uri)
            except Unreadable:
                pass
        import mlflow

        self.mlflow()
        return _columns(mlflow.models.get_model_info(uri), uri)

    def baseline(self, loaded: LoadedVersion) -> Any:
        """The heuristic baseline registered with a version: its ONNX bytes (tag baseline_onnx_uri),
        else the sklearn pipeline (tag baseline_model_uri), else None."""
        name, version, tags = loaded.name, loaded.version, loaded.tags
        onnx_uri = tags.get(Tag.BASELINE_ONNX_URI)
        if onnx_uri:
            data = self._artifact_bytes(onnx_uri, name, version, integrity.BASELINE_ONNX)
            return integrity.check(data, tags, integrity.BASELINE_ONNX, name, version)
        uri = tags.get(Tag.BASELINE_MODEL_URI)
        if not uri:
            return None
        self.mlflow()
        return load_sklearn(uri, tags, integrity.BASELINE_SKOPS, name, version)


def load_sklearn(uri: str, tags: dict[str, str], file: str, name: str, version: str) -> Any:
    """A scikit-learn model logged by MLflow (`models:/...`), loaded once its file's sha256 is the one
    recorded in `tags` for `file` (model.skops or baseline.skops) of version `version` of `name`.

    Downloaded first and checked before skops reads a byte of it; into a folder that stays, as MLflow's
    own load leaves it: a model's `code_paths` are imported from there, possibly after the load."""
    import mlflow
    import mlflow.sklearn
    from mlflow.exceptions import MlflowException

    try:
        local = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tempfile.mkdtemp(prefix="shipway-"))
        )
        pickled = mlflow.models.Model.load(str(local / "MLmodel")).flavors["sklearn"]["pickled_model"]
        data = (local / pickled).read_bytes()
    except (MlflowException, OSError, KeyError) as exc:
        raise ArtifactUnreadable(name, version, file, exc) from exc
    integrity.check(data, tags, file, name, version)
    return mlflow.sklearn.load_model(str(local))


def _serving_example(info: Any, uri: str) -> bytes | None:
    """The model's serving input example (logged with its input example), or None without one."""
    import mlflow
    from mlflow.exceptions import MlflowException

    path = (info.saved_input_example_info or {}).get("serving_input_path")
    if not path:
        return None
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{uri}/{path}")).read_bytes()
    except (MlflowException, OSError):  # only a warm-up needs it: the signature stands in
        return None


def _columns(info: Any, uri: str) -> list[Column]:
    schema = info.signature.inputs if info.signature else None
    if schema is None or not schema.has_input_names():
        raise RegistryError(f"{uri} has no column signature: {NO_COLUMNS}")
    return [Column(c.name, getattr(c.type, "name", str(c.type)), c.required) for c in schema.inputs]


def _columns_of(inputs: list[dict] | None, uri: str) -> list[Column]:
    """Columns from the MLmodel file's signature JSON; columns of nested types (array, object, map)
    are left to MLflow, whose names for them the gateway's schema uses."""
    if not inputs or not all("name" in c for c in inputs):
        raise RegistryError(f"{uri} has no column signature: {NO_COLUMNS}")
    if any(not isinstance(c.get("type"), str) or c["type"] in ("array", "object", "map", "any") for c in inputs):
        raise Unreadable(uri)
    return [Column(c["name"], c["type"], c.get("required", True)) for c in inputs]


def _under(root: str, path: str) -> str:
    return f"{root.rstrip('/')}/{path}"


def unknown_sensitive_columns(sensitive: Iterable[str], columns: Iterable[str]) -> list[str]:
    """Names in serving.sensitive_columns a version does not have: a typo there would redact nothing."""
    have = set(columns)
    return sorted(c for c in sensitive if c not in have)
