"""One MLflow client per tracking store, reused: connecting resolves the store and the experiment
once per process, not at every call site."""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import RegistryError

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import RegisteredModel


@dataclass(frozen=True)
class Store:
    """Where MLflow keeps runs and models (the profile's `mlflow` and `s3` sections)."""

    tracking_uri: str
    artifact_location: str = ""
    s3_endpoint_url: str | None = None

    @classmethod
    def of(cls, settings: Any) -> Store:
        """The store of a `configs.Settings` (duck-typed: core imports no other shipway package)."""
        return cls(settings.mlflow.tracking_uri, settings.mlflow.artifact_location, settings.s3.endpoint_url)

    @property
    def key(self) -> str:
        """A short, stable name of the store (8 hex of its URI's sha256): run names say which store."""
        return hashlib.sha256(self.tracking_uri.encode()).hexdigest()[:8]

    @property
    def sqlite_file(self) -> Path | None:
        uri = self.tracking_uri
        return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


MODEL_DEVELOPMENT = {"mlflow.experimentKind": "custom_model_development"}  # MLflow's training view, not GenAI's

_lock = threading.Lock()
_clients: dict[Store, MlflowClient] = {}
_experiments: dict[tuple[Store, str], str] = {}


def client(store: Store, create: bool = True) -> MlflowClient:
    """The store's client. Readers pass create=False: looking at an embedded store that does not
    exist yet must not create one."""
    if not create:
        require_store(store)
    elif store.sqlite_file is not None:
        store.sqlite_file.parent.mkdir(parents=True, exist_ok=True)
    with _lock:
        found = _clients.get(store)
        if found is None:
            import mlflow
            from mlflow import MlflowClient

            if store.s3_endpoint_url:  # MLflow's own boto3 client reads the endpoint from here
                os.environ.setdefault("MLFLOW_S3_ENDPOINT_URL", store.s3_endpoint_url)
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars in logs
            found = _clients[store] = MlflowClient(tracking_uri=store.tracking_uri, registry_uri=store.tracking_uri)
        # mlflow.start_run and the models:/ URIs read the process-wide URIs: keep them on this store.
        import mlflow

        mlflow.set_tracking_uri(store.tracking_uri)
        mlflow.set_registry_uri(store.tracking_uri)
    return found


def require_store(store: Store) -> None:
    """Raise when an embedded store does not exist: a reader must not create one."""
    db = store.sqlite_file
    if db is not None and not db.is_file():
        raise RegistryError(f"no MLflow store at {db}: nothing has been trained here yet (run shipway train)")


def close_idle_connections(store: Store) -> None:
    """Close the connections MLflow's stores keep idle for `store`, if they have made any: they keep one
    engine per URI for the life of the process (the class-level `_engine_map`). Needed when an SQLite
    file was replaced under its path (a pooled connection would read the old one for ever), and after
    a stop: one cut inside SQLAlchemy's commit, before the database's own, hands the connection back to
    its pool with its transaction open, and SQLite's lock with it, against every later write."""
    for module in ("mlflow.store.tracking.sqlalchemy_store", "mlflow.store.model_registry.sqlalchemy_store"):
        store_class = getattr(sys.modules.get(module), "SqlAlchemyStore", None)
        engine = getattr(store_class, "_engine_map", {}).get(store.tracking_uri)
        if engine is not None:
            engine.dispose()  # connections in use are left to their users


def experiment_id(store: Store, name: str, subfolder: str | None = None) -> str:
    """The id of experiment `name`, created once (marked as model development, not GenAI) with its
    artifacts under the store's artifact location (`subfolder` of it, when given)."""
    key = (store, name)
    if key in _experiments:
        return _experiments[key]
    from mlflow.exceptions import MlflowException

    mlflow_client = client(store)
    found = mlflow_client.get_experiment_by_name(name)
    if found is None:
        location = store.artifact_location or None
        if location and "://" not in location:
            location = Path(location).as_uri()
        if location and subfolder:
            location = f"{location.rstrip('/')}/{subfolder}"
        try:  # the kind is set in the same call: an experiment is never seen without it
            found_id = mlflow_client.create_experiment(name, artifact_location=location, tags=MODEL_DEVELOPMENT)
        except MlflowException:  # created meanwhile by another process
            created = mlflow_client.get_experiment_by_name(name)
            assert created is not None, f"experiment {name} neither created nor found"
            found_id = created.experiment_id
    else:
        found_id = found.experiment_id
    _experiments[key] = found_id
    return found_id


def registered_model(mlflow_client: MlflowClient, store: Store, name: str) -> RegisteredModel:
    """The registered model `name`, or an error that lists what is registered."""
    from mlflow.exceptions import MlflowException

    try:
        return mlflow_client.get_registered_model(name)
    except MlflowException:
        known = sorted(m.name for m in mlflow_client.search_registered_models())
        hint = f"; registered models: {', '.join(known)}" if known else "; nothing is registered yet"
        raise RegistryError(f"registered model '{name}' not found in {store.tracking_uri}{hint}") from None
