"""Sensitive columns, part by part: the scrubbing of error text, the contract's hashed and dropped
columns, how a check compares them, the manifest and the input example (the whole journey is in
tests/journeys/test_sensitive_journey.py, the gateway in tests/serving/test_sensitive_gateway.py)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from configs.settings import GateSettings, Settings
from core.errors import ConfigError
from core.redaction import hash_value, scrub
from core.vocabulary import Verdict
from expectations import contract
from expectations.joint import JOINT
from serving.prediction_log import Redactor
from tasks.data.snapshot import profile
from tasks.gate.skew import Reference, gate
from tasks.training import sensitive

RULES = {"email": "hash", "ssn": "drop"}


def table(rows: int, seed: int, emails: str = "e") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "plan": rng.choice(["basic", "plus", "pro"], rows),
            "age": rng.integers(18, 80, rows).astype("int64"),
            "email": [f"PLANTED-{emails}{k}@x.org" for k in rng.integers(0, 30, rows)],
            "ssn": [f"PLANTED-{seed}-{i}" for i in range(rows)],
        }
    )


def configured(salt: str = "pepper") -> Settings:
    return Settings(serving={"sensitive_columns": RULES, "hash_salt": salt})


def suite_of(settings: Settings, frame: pd.DataFrame) -> dict:
    hashed, rules, check = sensitive.for_contract(frame, settings)
    built = contract.build_contract(
        hashed, GateSettings(), name="t", target=None, snapshot_id=None, sensitive=rules, hash_key_check=check
    )
    return contract.check(built, "t")


def as_logged(settings: Settings, frame: pd.DataFrame) -> pd.DataFrame:
    redact = Redactor(settings.serving.sensitive_columns, settings.serving.hash_salt)
    return pd.DataFrame.from_records(redact(frame.astype(object).to_dict("records")))


def test_scrub_keeps_the_words_and_hides_the_values():
    sklearn = "ValueError: Found unknown categories ['PLANTED-1', 'b'] in column 2 during transform"
    assert scrub(sklearn) == "ValueError: Found unknown categories <value> in column 2 during transform"
    assert scrub("could not convert string to float: 'x1'") == "could not convert string to float: <value>"
    assert scrub("nested [[1, 2], [3]] and {'a': 1}") == "nested <value> and <value>"
    assert scrub("bad ssn 123-45-6789 in row 0", ["123-45-6789", "0"]) == "bad ssn <value> in row 0"


def test_the_contract_holds_hashes_and_no_clear_value_and_checks_the_log_as_it_is():
    settings = configured()
    suite = suite_of(settings, table(2_000, 1))
    text = json.dumps(suite)
    assert "PLANTED" not in text
    assert hash_value(b"pepper", "PLANTED-e3@x.org") in text  # email's categories, as the log hashes them
    assert suite["meta"]["shipway"]["sensitive"] == RULES
    ssn = [e["type"] for e in suite["expectations"] if e["kwargs"].get("column") == "ssn"]
    assert ssn == ["expect_column_values_to_be_of_type", "expect_column_values_to_not_be_null"]
    reference = Reference(suite)
    clean = gate(as_logged(settings, table(800, 2)), reference, settings, "log", logged=True)
    assert clean.verdict is not Verdict.FAIL, clean.causes()
    assert clean.reference["sensitive_columns"] == {
        "email": "checked as hashed values",
        "ssn": "dropped from the prediction log: not checked",
    }
    drifted = gate(as_logged(settings, table(800, 3, emails="new")), reference, settings, "log", logged=True)
    assert drifted.verdict is Verdict.FAIL and drifted.columns_with(Verdict.FAIL) == ["email"]
    plain = gate(table(800, 4), reference, settings, "batch")  # shipway validate, the training gate: hashed here
    assert plain.verdict is not Verdict.FAIL, plain.causes()
    assert "PLANTED" not in json.dumps(plain.to_dict(), default=str)


def test_a_contract_hashed_under_another_salt_keeps_only_the_null_rate_check():
    suite = suite_of(configured("old-salt"), table(2_000, 1))
    now = configured("new-salt")
    report = gate(as_logged(now, table(800, 2)), Reference(suite), now, "log", logged=True)
    assert report.verdict is not Verdict.FAIL, report.causes()  # not 100% unseen hashes
    assert report.reference["sensitive_columns"]["email"].startswith("hashed under another serving.hash_salt")
    (email,) = [c for c in report.columns if c.name == "email"]
    assert [c.expectation for c in email.checks] == ["expect_column_values_to_not_be_null"]


def test_a_column_sensitive_only_since_training_is_checked_for_nulls_and_the_joint_check_goes_without_it():
    plain = contract.check(contract.build_contract(table(2_000, 1), GateSettings(), name="t", target=None,
                                                   snapshot_id=None), "t")  # fmt: skip
    settings = configured()
    view, _, notes = sensitive.for_check(plain, as_logged(settings, table(50, 2)), settings, logged=True)
    assert "PLANTED" in json.dumps(plain) and notes["email"].startswith("sensitive, with no hashed statistics")
    email = [e["type"] for e in view["expectations"] if e["kwargs"].get("column") == "email"]
    assert email == ["expect_column_values_to_not_be_null"]
    (joint,) = [e for e in view["expectations"] if e["type"] == JOINT]
    assert joint["kwargs"]["columns"] == ["plan", "age"]
    assert not [e for e in view["expectations"] if e["kwargs"].get("column") == "ssn"]


def test_the_manifest_and_the_input_example_hold_no_sensitive_value():
    frame = table(100, 1)
    shown = json.dumps(profile(frame, sensitive=list(RULES)))
    assert "PLANTED" not in shown and '"kind": "sensitive"' in shown
    example = sensitive.neutral_rows(frame.head(3), RULES)
    assert example["email"].tolist() == ["redacted"] * 3 and example["plan"].equals(frame["plan"].head(3))


def test_a_quality_slice_on_a_sensitive_column_is_refused():
    with pytest.raises(ValueError, match=r"quality.slices names 'email', which serving.sensitive_columns redacts"):
        Settings(serving={"sensitive_columns": {"email": "drop"}}, quality={"slices": ["email"]})
    with pytest.raises(ConfigError):
        Redactor({"email": "hash"}, "")
