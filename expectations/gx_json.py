"""Great Expectations' suite format, written as plain JSON without importing GX.

Importing GX takes several seconds (most of the training flow's contract step did it only to
build dicts). A suite written here is what GX itself writes: GX leaves out a kwarg at its
default, and so does `expectation`; tests/gate/test_gate.py checks that GX reads a contract and writes
it back unchanged. GX is imported only where it runs: checking a suite, user suites, Data Docs.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

# The defaults GX drops from a written suite, for the kwargs shipway's expectations take.
GX_DEFAULTS: dict[str, Any] = {"mostly": 1.0, "exact_match": True, "tail_weight_holdout": 0, "min_auc": 0.55}


def expectation(kind: str, meta: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    """One expectation of type `kind` (e.g. expect_column_mean_to_be_between), as GX writes it."""
    kwargs = {k: v for k, v in kwargs.items() if k not in GX_DEFAULTS or v != GX_DEFAULTS[k]}
    return {"type": kind, "kwargs": kwargs, "meta": meta or {}, "severity": "critical"}


def suite(name: str, expectations: list[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    """A suite as GX's `ExpectationSuite.to_json_dict()` writes it."""
    return {
        "name": name,
        "id": None,
        "expectations": expectations,
        "meta": {**meta, "great_expectations_version": version("great_expectations")},
        "notes": None,
    }
