"""The registry read straight from MLflow's tables, and a version's files from its artifact store.

Why: importing MLflow and building its SQL store (alembic, the ORM mappers) took most of a
gateway's start from the registry to its first /ping (docs/benchmarks.md). Aliases, tags and a
version's storage location are five small tables; the MLmodel file is YAML. So when the
tracking store is a database (SQLite, PostgreSQL) the gateway and the Shadow's process read
these with SQLAlchemy core, and read the ONNX form of a version from local disk or S3 directly.
Anything else (an MLflow server over HTTP, other artifact stores, a version not served as ONNX)
goes through MLflow, as before: `RegistryReader` decides. The tables are MLflow's own schema
(3.x, `workspace` column included); tests/serving/test_registry_tables.py reads the same stores with both
readers and fails on any difference, so an MLflow upgrade that moves them is caught.

A read never stays on a store that is gone: an SQLite store replaced under its path (a restore
moves a backup over it) is another file, which the next read opens (the open connection would
read the old one for ever), and after a failed read the next one opens a new connection (a store
unreadable at the gateway's start, or for a while, is read again once it can be).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import sqlalchemy as sa
import yaml

from core.errors import RegistryError
from core.s3 import s3_client, split_s3_uri
from core.tracking import Store, close_idle_connections, require_store

WORKSPACE = "default"  # MLflow's workspace for a store used without workspaces
DELETED = "Deleted_Internal"  # current_stage of a deleted version (MLflow keeps the row)
SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


class Unreadable(Exception):
    """An artifact URI this module does not read (MLflow does)."""


@dataclass(frozen=True)
class VersionRow:
    """A model version as `shipway status` shows it (the fields of MLflow's ModelVersion it reads)."""

    version: str
    creation_timestamp: int | None  # ms since the epoch
    run_id: str | None
    description: str | None
    tags: dict[str, str]


class RegistryTables:
    """Read-only queries on MLflow's registry tables."""

    @classmethod
    def of(cls, store: Store) -> RegistryTables | None:
        """The store's tables; None when the tracking store is not a database (an MLflow server), or
        when MLflow's workspaces are on (which workspace a client is in is MLflow's to say)."""
        scheme = store.tracking_uri.partition(":")[0].partition("+")[0]
        if scheme not in SQL_SCHEMES or os.environ.get("MLFLOW_ENABLE_WORKSPACES", "").lower() in ("1", "true"):
            return None
        require_store(store)
        return cls(store)

    def __init__(self, store: Store):
        self.store = store
        self.engine = sa.create_engine(store.tracking_uri, pool_pre_ping=True, pool_size=1, max_overflow=1)
        self._file: tuple[int, int] | None = None  # (device, inode) of the SQLite file last read

    def _rows(self, query: str, **params: Any) -> list[Any]:
        self._follow_the_file()
        try:
            with self.engine.connect() as conn:
                return list(conn.execute(sa.text(query), {"workspace": WORKSPACE, **params}))
        except sa.exc.SQLAlchemyError:
            self.engine.dispose()  # the next read on a new connection: this one may be on a broken or old file
            raise

    def _follow_the_file(self) -> None:
        """Open the file now at the store's path when it is not the one read so far (a restore moved a
        backup over it), and never create one where it is missing."""
        path = self.store.sqlite_file
        if path is None:
            return
        try:
            found = os.stat(path)
        except FileNotFoundError:
            self._file = None
            self.engine.dispose()
            require_store(self.store)  # raises: no store there (sqlite would create an empty one)
            raise
        identity = (found.st_dev, found.st_ino)
        if identity != self._file:
            if self._file is not None:
                close_idle_connections(self.store)
            self.engine.dispose()
            self._file = identity

    def state(self, name: str) -> tuple[dict[str, str], dict[str, str]]:
        """The model's aliases ({alias: version}) and registered-model tags."""
        if not self._rows("SELECT 1 FROM registered_models WHERE workspace = :workspace AND name = :name", name=name):
            known = [r[0] for r in self._rows("SELECT name FROM registered_models WHERE workspace = :workspace")]
            hint = f"; registered models: {', '.join(sorted(known))}" if known else "; nothing is registered yet"
            raise RegistryError(f"registered model '{name}' not found in {self.store.tracking_uri}{hint}")
        aliases = self._rows(
            "SELECT alias, version FROM registered_model_aliases WHERE workspace = :workspace AND name = :name",
            name=name,
        )
        tags = self._rows(
            'SELECT "key", value FROM registered_model_tags WHERE workspace = :workspace AND name = :name', name=name
        )
        return {a: str(v) for a, v in aliases}, {k: v for k, v in tags}

    def version(self, name: str, version: str) -> tuple[dict[str, str], str]:
        """A version's tags and where its files are (MLflow's download URI for `models:/NAME/VERSION`)."""
        number = int(version) if version.isdigit() else -1
        found = self._rows(
            "SELECT storage_location, source FROM model_versions WHERE workspace = :workspace AND name = :name "
            "AND version = :version AND (current_stage IS NULL OR current_stage != :deleted)",
            name=name,
            version=number,
            deleted=DELETED,
        )
        if not found:
            raise RegistryError(f"model '{name}' has no version {version}")
        location = found[0][0] or found[0][1]
        tags = self._rows(
            'SELECT "key", value FROM model_version_tags WHERE workspace = :workspace AND name = :name '
            "AND version = :version",
            name=name,
            version=number,
        )
        return {k: v for k, v in tags}, location

    def versions(self, name: str) -> list[VersionRow]:
        """Every version of `name` (deleted ones left out, as MLflow's search leaves them), with its tags."""
        rows = self._rows(
            "SELECT version, creation_time, run_id, description FROM model_versions WHERE workspace = :workspace "
            "AND name = :name AND (current_stage IS NULL OR current_stage != :deleted)",
            name=name,
            deleted=DELETED,
        )
        tags: dict[str, dict[str, str]] = {}
        for version, key, value in self._rows(
            'SELECT version, "key", value FROM model_version_tags WHERE workspace = :workspace AND name = :name',
            name=name,
        ):
            tags.setdefault(str(version), {})[key] = value
        return [VersionRow(str(v), created, run_id, about, tags.get(str(v), {})) for v, created, run_id, about in rows]

    def run_artifacts(self, run_id: str) -> str:
        """A run's artifact root (what `runs:/RUN_ID/...` resolves against)."""
        found = self._rows("SELECT artifact_uri FROM runs WHERE run_uuid = :run_id", run_id=run_id)
        if not found:
            raise RegistryError(f"run {run_id} not found in {self.store.tracking_uri}")
        return found[0][0]


class Artifacts:
    """Reads files under an artifact URI: a local path (file:// or plain) or s3://."""

    def __init__(self, s3: Any):
        self.s3 = s3  # a configs.S3Settings
        self._client: Any = None

    def read(self, uri: str) -> bytes:
        parsed = urlparse(uri)
        if parsed.scheme in ("", "file"):
            return Path(unquote(parsed.path) if parsed.scheme else uri).read_bytes()
        if parsed.scheme == "s3":
            if self._client is None:
                self._client = s3_client(self.s3)
            bucket, key = split_s3_uri(uri)
            return self._client.get_object(Bucket=bucket, Key=key)["Body"].read()
        raise Unreadable(uri)


@dataclass(frozen=True)
class ModelInfo:
    """The parts of an MLmodel file the gateway needs."""

    inputs: list[dict] | None  # the signature's input columns, as MLflow writes them
    predict_fn: str
    serving_input_path: str | None


def model_info(mlmodel: bytes) -> ModelInfo:
    info = yaml.safe_load(mlmodel) or {}
    return ModelInfo(
        inputs=json.loads((info.get("signature") or {}).get("inputs") or "null"),
        predict_fn=(info.get("flavors") or {}).get("python_function", {}).get("predict_fn", "predict"),
        serving_input_path=(info.get("saved_input_example_info") or {}).get("serving_input_path"),
    )
