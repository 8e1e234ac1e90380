"""Where a model version came from: the git commit, branch and cleanliness of the training code."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

CODE_DIR = Path(__file__).resolve().parents[1]  # the checkout that holds flows/ and tasks/


@dataclass(frozen=True)
class GitLineage:
    commit: str  # 40 hex, or "unknown" when the code is not in a git checkout
    branch: str
    dirty: bool | None  # tracked files changed since the commit; None when unknown

    def tags(self) -> dict[str, str]:
        dirty = "unknown" if self.dirty is None else str(self.dirty).lower()
        return {"git_commit": self.commit, "git_branch": self.branch, "git_dirty": dirty}


def git_lineage(code_dir: Path = CODE_DIR) -> GitLineage:
    """The training code's commit. Untracked files (data, .shipway/) do not make it dirty."""

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
