"""Content hashes of the files a version is served from, recorded at registration, checked at load.

Each file a gateway or a flow loads for a version (its ONNX form, its scikit-learn model file, its
baseline in either form, its data contract) has its sha256 in a version tag beside the tag of its
URI (`onnx_model_uri` / `onnx_model_sha256`, ...): the tags live in the registry's database, the
files in the artifact store, so a file changed or damaged in the store (a flipped byte, a truncated
upload) no longer matches, and is refused rather than served. A version registered before these
tags loads as before, with one warning per process.

Files are named as the gateway's local state names its copies (`model.onnx`, `baseline.skops`, ...):
a name, never a path, so /health and an error line can show it.
"""

from __future__ import annotations

import hashlib
import logging

from core.errors import RegistryError
from core.vocabulary import Tag

log = logging.getLogger("shipway.integrity")

MODEL_ONNX = "model.onnx"
MODEL_SKOPS = "model.skops"
BASELINE_ONNX = "baseline.onnx"
BASELINE_SKOPS = "baseline.skops"
CONTRACT = "expectation_suite.json"
PREDICTION_REFERENCE = "prediction_reference.json"

TAG_OF = {
    MODEL_ONNX: Tag.ONNX_MODEL_SHA256,
    MODEL_SKOPS: Tag.MODEL_SHA256,
    BASELINE_ONNX: Tag.BASELINE_ONNX_SHA256,
    BASELINE_SKOPS: Tag.BASELINE_MODEL_SHA256,
    CONTRACT: Tag.EXPECTATION_SUITE_SHA256,
    PREDICTION_REFERENCE: Tag.PREDICTION_REFERENCE_SHA256,
}
HASH_TAGS = frozenset(TAG_OF.values())

_warned: set[tuple[str, str]] = set()  # (model, version) told once per process that it has no hashes


class IntegrityError(RegistryError):
    """A file whose content is not the one registered: never served, never used by a flow."""

    def __init__(self, name: str, version: str, file: str):
        self.name, self.version, self.file = name, str(version), file
        super().__init__(
            f"version {version} of '{name}': {file} does not match the sha256 recorded at registration "
            f"(tag {TAG_OF[file]}); not used"
        )


class ArtifactUnreadable(RegistryError):
    """A file of a version the artifact store did not give (gone, unreachable, refused)."""

    def __init__(self, name: str, version: str, file: str, exc: BaseException):
        self.name, self.version, self.file = name, str(version), file
        super().__init__(f"version {version} of '{name}': cannot read {file} from the artifact store ({_why(exc)})")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check(data: bytes, tags: dict[str, str], file: str, name: str, version: str) -> bytes:
    """`data` as read for `file` of the version with `tags`, once its hash is the one recorded (else
    IntegrityError); a version registered without hashes is let through with a one-time warning."""
    expected = tags.get(TAG_OF[file])
    if expected is None:
        unchecked(tags, name, version)
    elif sha256(data) != expected:
        raise IntegrityError(name, version, file)
    return data


def unchecked(tags: dict[str, str], name: str, version: str) -> None:
    """Warn once per process about a version with no recorded hashes (registered before them)."""
    key = (name, str(version))
    if key in _warned:
        return
    _warned.add(key)
    some = HASH_TAGS & tags.keys()
    why = "registered before shipway recorded them" if not some else "some of its sha256 tags were removed"
    log.warning("version %s of '%s' has no recorded sha256 of its files (%s): loaded unchecked", version, name, why)


def _why(exc: BaseException) -> str:
    """An artifact store's error in a few words, without the path, bucket or address."""
    code = getattr(exc, "response", {}).get("Error", {}).get("Code") if hasattr(exc, "response") else None
    if code:
        return f"{type(exc).__name__}: {code}"
    if isinstance(exc, FileNotFoundError):
        return "FileNotFoundError: no such file"
    if isinstance(exc, PermissionError):
        return "PermissionError: permission denied"
    return type(exc).__name__
