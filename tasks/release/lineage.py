"""Where a model version came from: the git commit, branch and cleanliness of the user's project,
shipway's own version, and the resolved configuration (secrets removed) with its hash.

The project is the working directory, or, when `training.estimator` is an import path, the folder
of the module it names: the model is theirs, so is the commit that describes it.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any

import yaml

from configs.settings import Settings, TrainingSettings, is_import_path
from core.vocabulary import Tag

CODE_DIR = Path(__file__).resolve().parents[2]  # shipway's own checkout (or installed package)
SECRET_KEY = re.compile(r"(salt|password|passwd|secret|token|credential)", re.IGNORECASE)
URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][\w+.-]*://[^:/@\s]+):[^@/\s]+@")
REDACTED = "***"


@dataclass(frozen=True)
class GitLineage:
    commit: str  # 40 hex, or "unknown" when the code is not in a git checkout
    branch: str
    dirty: bool | None  # tracked files changed since the commit; None when unknown

    def tags(self) -> dict[str, str]:
        dirty = "unknown" if self.dirty is None else str(self.dirty).lower()
        return {Tag.GIT_COMMIT: self.commit, Tag.GIT_BRANCH: self.branch, Tag.GIT_DIRTY: dirty}


def git_lineage(code_dir: Path | None = None) -> GitLineage:
    """The commit of the git repository holding `code_dir` (default: the working directory).
    Untracked files (data, .shipway/) do not make it dirty."""
    code_dir = code_dir or Path.cwd()

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(code_dir), *args], capture_output=True, text=True, check=True)
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        branch = git("rev-parse", "--abbrev-ref", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        # No checkout (a container image): the commit it was built from, if the build stamped it.
        return GitLineage(
            commit=os.environ.get("GIT_COMMIT") or "unknown",
            branch=os.environ.get("GIT_BRANCH") or "unknown",
            dirty=None,
        )
    return GitLineage(commit=commit, branch=branch, dirty=dirty)


def project_dir(training: TrainingSettings) -> Path:
    """The user's project: the folder of the estimator's module for an import path, else the working directory."""
    if not is_import_path(training.estimator):
        return Path.cwd()
    from tasks.training.estimators import load_object

    module_name = training.estimator.partition(":")[0]
    load_object(training.estimator, training.code_path)
    source = getattr(sys.modules[module_name], "__file__", None)
    return Path(source).resolve().parent if source else Path.cwd()


def project_lineage(training: TrainingSettings) -> GitLineage:
    return git_lineage(project_dir(training))


def shipway_version() -> str:
    """shipway's release, and its commit when it runs from a checkout (e.g. 0.1.0+g1a2b3c4d5e6f)."""
    try:
        release = dist_version("shipway")
    except PackageNotFoundError:
        release = "unknown"
    own = git_lineage(CODE_DIR) if (CODE_DIR / ".git").exists() else None
    return f"{release}+g{own.commit[:12]}" if own and own.commit != "unknown" else release


def resolved_config(settings: Settings) -> dict[str, Any]:
    """The settings a run used, as plain data, with secrets (salts, passwords, URL credentials) removed."""
    return _redact(settings.model_dump(mode="json"))


def config_yaml(settings: Settings) -> str:
    return yaml.safe_dump(resolved_config(settings), sort_keys=True, allow_unicode=True)


def config_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _redact(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _redact(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, key) for v in value]
    if isinstance(value, str):
        if value and SECRET_KEY.search(key):
            return REDACTED
        return URL_PASSWORD.sub(rf"\g<head>:{REDACTED}@", value)
    return value
