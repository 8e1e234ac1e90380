"""The user's own code on the import path: the working directory and `training.code_path`.

Training imports `training.estimator` from there; the gateway, the shadow process and the
benchmark load models that may hold the user's own classes, so they need the same path.
"""

from __future__ import annotations

import sys
from pathlib import Path


def importable(code_path: list[str]) -> None:
    """The working directory and each folder of `code_path` on sys.path, first, once each."""
    for folder in [*reversed(code_path), str(Path.cwd())]:
        if folder not in sys.path:
            sys.path.insert(0, folder)
