"""Every expectation type a contract emits is checked by the gate itself and documented: a type
emitted without a handler would be handed to GX silently, one without a row in docs/gate.md
would be a check nobody can read about."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from configs.settings import GateSettings
from expectations.contract import build_contract
from expectations.joint import JOINT
from tasks.data.demo_data import generate
from tasks.data.snapshot import canonicalize
from tasks.gate.contract_checks import HANDLERS
from tests.conftest import REPO

GATE_DOC = REPO / "docs" / "gate.md"


def every_kind_of_column(rows: int = 3_000) -> pd.DataFrame:
    """The demo's numeric and categorical columns, plus free text, a date and a bool."""
    rng = np.random.default_rng(0)
    frame = generate(rows, seed=1)
    words = np.array(
        [
            "the",
            "a",
            "model",
            "data",
            "gate",
            "check",
            "value",
            "row",
            "column",
            "train",
            "serve",
            "drift",
            "ship",
            "way",
        ]
    )
    frame["note"] = [" ".join(rng.choice(words, 8)) for _ in range(rows)]
    frame["signed_up"] = pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 365, rows), unit="D")
    frame["active"] = rng.random(rows) < 0.5
    return canonicalize(frame)


def test_every_expectation_type_the_contract_emits_has_a_handler_and_every_handler_is_used():
    suite = build_contract(
        every_kind_of_column(), GateSettings(), name="t", target="churned", snapshot_id=None, text_columns=["note"]
    )
    emitted = {e["type"] for e in suite["expectations"]}
    assert emitted - {JOINT} - set(HANDLERS) == set(), "emitted, but the gate has no handler: GX would run it"
    assert set(HANDLERS) - emitted == set(), "a handler no contract emits"


def test_every_checked_type_has_a_row_in_docs_gate():
    rows = re.findall(r"^\| `(expect_[a-z_]+)` \|", GATE_DOC.read_text(), flags=re.MULTILINE)
    assert len(rows) == len(set(rows))
    assert set(rows) == set(HANDLERS) | {JOINT}, "docs/gate.md's table of expectation types"
