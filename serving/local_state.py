"""The gateway's memory across restarts: the last good version of each alias, ready to serve.

After each poll that changed what it serves, the gateway writes what it loaded here (the ONNX
bytes, or the fitted model as skops, its columns and tags, the baseline) and which version
answered for which alias. A gateway that restarts serves from this at once (no MLflow import,
no registry round trip) and reads the registry in the background: its first poll swaps in
whatever the aliases say now. So a replica restarted while the registry is slow or down still
answers, and a restart takes the time of the imports, not of the registry.

The folder is keyed by the tracking store and the model, so projects sharing a machine never
read each other's state. Every file is written to a temporary name and renamed, and a version
folder is complete before state.json names it.

Every file read back is checked before it is served: an ONNX copy against the sha256 the registry
recorded (the version's tags, kept in meta.json), a skops copy (the gateway's own serialization)
against the sha256 written beside it in meta.json. A copy that does not match raises
IntegrityError; the router then forgets it (`forget`) and loads the registry's.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import orjson

from configs.settings import Settings
from core import integrity
from core.integrity import IntegrityError
from core.vocabulary import Tag
from serving.registry_reader import Column, LoadedVersion

log = logging.getLogger("shipway.serving")

STATE = "state.json"
META = "meta.json"
ONNX = integrity.MODEL_ONNX  # the copies bear the names integrity's errors give the files
MODEL = integrity.MODEL_SKOPS
EXAMPLE = "serving_input_example.json"
BASELINE = integrity.BASELINE_SKOPS
BASELINE_ONNX = integrity.BASELINE_ONNX


class LocalState:
    @classmethod
    def of(cls, settings: Settings) -> LocalState | None:
        """The profile's local state; None when `serving.state_dir` is empty (always start from the registry)."""
        if not settings.serving.state_dir:
            return None
        return cls(settings.serving.state_dir, settings.mlflow.tracking_uri, settings.training.model_name)

    def __init__(self, root: Path | str, tracking_uri: str, name: str):
        store = hashlib.sha256(tracking_uri.encode()).hexdigest()[:12]
        self.dir = Path(root) / store / name.replace("/", "_")

    # ---- write ------------------------------------------------------------------------------

    def save_version(self, loaded: LoadedVersion, baseline: Any) -> None:
        """Keep a loaded version (and its baseline) for the next start; pyfunc models are not kept."""
        if loaded.flavor == "pyfunc":
            return
        folder = self.dir / "versions" / loaded.version
        if (folder / META).is_file():
            return  # versions are immutable: written once
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=self._mkdir(self.dir / "versions")))
        try:
            hashes: dict[str, str] = {}  # the skops copies' own: their bytes are not the registry's
            if loaded.onnx is not None:
                (tmp / ONNX).write_bytes(loaded.onnx)
            else:
                hashes[MODEL] = _write_skops(tmp / MODEL, loaded.model)
            if isinstance(baseline, bytes):
                (tmp / BASELINE_ONNX).write_bytes(baseline)
            elif baseline is not None:
                hashes[BASELINE] = _write_skops(tmp / BASELINE, baseline)
            if loaded.example is not None:
                (tmp / EXAMPLE).write_bytes(loaded.example)
            meta = {"name": loaded.name, "version": loaded.version, "tags": loaded.tags, "flavor": loaded.flavor,
                    "columns": [asdict(c) for c in loaded.columns], "predict_fn": loaded.predict_fn,
                    "sha256": hashes}  # fmt: skip
            (tmp / META).write_bytes(orjson.dumps(meta))
            os.replace(tmp, folder)
        except OSError as exc:  # a full disk costs the next restart its head start, not an answer
            if (folder / META).is_file():  # another worker of `shipway serve --workers N` kept it first
                return
            log.warning("could not keep version %s in the local state %s: %s", loaded.version, self.dir, exc)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def save_aliases(self, aliases: dict[str, str], canary_share: float) -> None:
        """Which version answered for which alias; versions no alias names are removed."""
        try:
            _atomic_write(self.dir / STATE, orjson.dumps({"aliases": aliases, "canary_share": canary_share}))
            versions = self.dir / "versions"
            for folder in versions.iterdir() if versions.is_dir() else []:
                if folder.name not in aliases.values() and not folder.name.startswith(".tmp-"):
                    shutil.rmtree(folder, ignore_errors=True)
        except OSError as exc:
            log.warning("could not write the local state %s: %s", self.dir, exc)

    # ---- read -------------------------------------------------------------------------------

    def aliases(self) -> tuple[dict[str, str], float] | None:
        """The aliases and canary share last served, or None when nothing (usable) was kept."""
        try:
            state = orjson.loads((self.dir / STATE).read_bytes())
            return {str(a): str(v) for a, v in state["aliases"].items()}, float(state["canary_share"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def load(self, version: str) -> LoadedVersion:
        """A kept version (one kept by an older shipway has no predict_fn: its version tag says it),
        its files checked (IntegrityError)."""
        folder = self.dir / "versions" / version
        meta = orjson.loads((folder / META).read_bytes())
        columns = [Column(**c) for c in meta["columns"]]
        name, tags = meta["name"], meta["tags"]
        onnx = self._checked(folder, ONNX, meta) if meta["flavor"] == "onnx" else None
        model = None if onnx is not None else _read_skops(self._checked(folder, MODEL, meta), folder / MODEL)
        predict_fn = meta.get("predict_fn") or tags.get(Tag.PREDICT_FN, "predict")
        return LoadedVersion(
            name, version, tags, columns, onnx, model, meta["flavor"], predict_fn, self.example(version)
        )

    def example(self, version: str) -> bytes | None:
        """The version's serving input example, if it has one."""
        path = self.dir / "versions" / version / EXAMPLE
        return path.read_bytes() if path.is_file() else None

    def has(self, version: str) -> bool:
        return (self.dir / "versions" / version / META).is_file()

    def baseline(self, version: str) -> Any:
        """The version's baseline: ONNX bytes, a sklearn pipeline, or None; checked (IntegrityError)."""
        folder = self.dir / "versions" / version
        if not (folder / BASELINE_ONNX).is_file() and not (folder / BASELINE).is_file():
            return None
        meta = orjson.loads((folder / META).read_bytes())
        if (folder / BASELINE_ONNX).is_file():
            return self._checked(folder, BASELINE_ONNX, meta)
        return _read_skops(self._checked(folder, BASELINE, meta), folder / BASELINE)

    def verify(self, version: str) -> None:
        """Check every kept file of `version` (IntegrityError) without loading any."""
        folder = self.dir / "versions" / version
        meta = orjson.loads((folder / META).read_bytes())
        for file in (ONNX, MODEL, BASELINE_ONNX, BASELINE):
            if (folder / file).is_file():
                self._checked(folder, file, meta)

    def forget(self, version: str) -> None:
        """Remove a kept version that did not pass its check: the next load writes the registry's copy."""
        shutil.rmtree(self.dir / "versions" / version, ignore_errors=True)

    def _checked(self, folder: Path, file: str, meta: dict) -> bytes:
        """A kept file's bytes once they match: an ONNX copy is the registry's file (its recorded hash);
        a skops copy was written here (its hash in meta.json; a copy from before them is not checked)."""
        data = (folder / file).read_bytes()
        name, version, tags = meta["name"], meta["version"], meta["tags"]
        if file in (ONNX, BASELINE_ONNX):
            if integrity.TAG_OF[file] in tags:
                integrity.check(data, tags, file, name, version)
        elif file in meta.get("sha256", {}) and integrity.sha256(data) != meta["sha256"][file]:
            raise IntegrityError(name, version, file)
        return data

    def _mkdir(self, path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        return path


def _write_skops(path: Path, model: Any) -> str:
    """The model as skops, with the types it needs trusted: it was loaded from the registry, whose
    own copy is the trusted one; this copy lives in the gateway's private folder. Returns its sha256."""
    import skops.io

    data = skops.io.dumps(model)
    path.write_bytes(data)
    path.with_suffix(".trusted.json").write_bytes(orjson.dumps(skops.io.get_untrusted_types(data=data)))
    return integrity.sha256(data)


def _read_skops(data: bytes, trusted_of: Path) -> Any:
    import skops.io

    trusted = orjson.loads(trusted_of.with_suffix(".trusted.json").read_bytes())
    return skops.io.loads(data, trusted=trusted)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)
