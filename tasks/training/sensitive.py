"""Sensitive columns on the training side: every check sees a sensitive column as the log keeps it.

`serving.sensitive_columns` hashes a column (HMAC-SHA256 keyed by serving.hash_salt, as
core/redaction.py states the rule) or drops it before the gateway logs a request. So that
monitoring and the shadow analysis can check what the log keeps, and no training value of such a
column is written in clear:

- the contract of a version (built here from its snapshot) holds a hashed column's statistics as
  hashed categories, computed under the same key the gateway hashes with (the same setting, from
  SHIPWAY_SERVING__HASH_SALT), with a fingerprint of the key (`meta.shipway.hash_key_check`); a
  dropped column keeps its type and null rate only, and no joint-check codes;
- a batch is checked (`for_check`) against a view of the contract: a column the log dropped is left
  out (not missing), a hashed one is compared as hashed categories (a plain batch, as the training
  gate and `shipway validate` read, is hashed first); a column whose contract cannot be compared
  to what the batch holds (hashed under another key, or not sensitive when the version was
  trained) keeps its null-rate check only. What was done is said in the report's reference.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from configs.settings import Settings
from core.redaction import DROP, HASH, hash_value, key_check
from expectations.joint import JOINT, decode
from expectations.training_stats import TrainingStats
from serving import json_rows

NOT_NULL = "expect_column_values_to_not_be_null"
COLUMN_SET = "expect_table_columns_to_match_set"


def rules(settings: Settings) -> dict[str, str]:
    return dict(settings.serving.sensitive_columns)


def key(settings: Settings) -> bytes:
    return settings.serving.hash_salt.get_secret_value().encode()


def hashed(frame: pd.DataFrame, columns: list[str], hash_key: bytes) -> pd.DataFrame:
    """`frame` with each of `columns` as the log keeps it hashed: the HMAC of the value as the
    gateway types it (JSON values, datetimes as ISO text without an offset), nulls kept."""
    columns = [c for c in columns if c in frame.columns]
    if not columns:
        return frame
    out = frame.copy()
    for column in columns:
        values = [row[0] for row in json_rows(frame[[column]])]
        out[column] = pd.Series(
            [None if v is None else hash_value(hash_key, v) for v in values], index=frame.index, dtype=object
        )
    return out


def for_contract(frame: pd.DataFrame, settings: Settings) -> tuple[pd.DataFrame, dict[str, str], str | None]:
    """The frame a contract is built from (hashed columns hashed), the rules, the key's fingerprint."""
    now = rules(settings)
    hashes = [c for c, rule in now.items() if rule == HASH]
    return hashed(frame, hashes, key(settings)), now, (key_check(key(settings)) if hashes else None)


def for_check(
    suite: dict[str, Any], batch: pd.DataFrame, settings: Settings, *, logged: bool
) -> tuple[dict[str, Any], pd.DataFrame, dict[str, str]]:
    """The contract and the batch as they compare, and per sensitive column what was checked.
    `logged`: the batch is the prediction log's (redacted by serving.sensitive_columns); else plain data."""
    meta = suite.get("meta", {}).get("shipway", {})
    then: dict[str, str] = dict(meta.get("sensitive") or {})
    now = rules(settings)
    if not (then or now):
        return suite, batch, {}
    current = key(settings)
    same_key = bool(current) and meta.get("hash_key_check") == key_check(current)
    absent, nulls_only, notes = set(), set(), {}
    to_hash = []
    for column in sorted({*then, *now}):
        state = now.get(column) if logged else None  # None: the batch holds the column's plain values
        if state == DROP:
            absent.add(column)
            notes[column] = "dropped from the prediction log: not checked"
        elif then.get(column) == HASH and same_key:
            if state is None:
                to_hash.append(column)
            notes[column] = "checked as hashed values"
        elif then.get(column) == HASH:
            nulls_only.add(column)
            notes[column] = "hashed under another serving.hash_salt than now: only its null rate is checked"
        elif then.get(column) == DROP and state is None:
            notes[column] = "sensitive when trained: only its type and null rate are checked"
        else:  # a plain contract (sensitive since), or a dropped column the log now hashes
            nulls_only.add(column)
            notes[column] = "sensitive, with no hashed statistics in this contract: only its null rate is checked"
    view = _without(suite, absent, nulls_only)
    if to_hash:
        batch = hashed(batch, to_hash, current)
    return view, batch, notes


def _without(suite: dict[str, Any], absent: set[str], nulls_only: set[str]) -> dict[str, Any]:
    """The suite without `absent` columns, and with only the null-rate check of `nulls_only` ones."""
    if not (absent or nulls_only):
        return suite
    out = copy.deepcopy(suite)
    kept = []
    for e in out.get("expectations", []):
        kwargs = e.get("kwargs", {})
        column = kwargs.get("column")
        if column in absent or (column in nulls_only and e.get("type") != NOT_NULL):
            continue
        if e.get("type") == COLUMN_SET:
            kwargs["column_set"] = [c for c in kwargs.get("column_set", []) if c not in absent]
        if e.get("type") == JOINT:
            e = _joint_without(e, absent | nulls_only)
            if e is None:
                continue
        kept.append(e)
    out["expectations"] = kept
    return out


def _joint_without(e: dict[str, Any], columns: set[str]) -> dict[str, Any] | None:
    """The joint check's sample without `columns` (None when fewer than two are left)."""
    stats = TrainingStats.of(e)
    reference = stats.joint
    if reference is None or not columns & set(reference.columns):
        return e
    keep = [i for i, c in enumerate(reference.columns) if c not in columns]
    if len(keep) < 2:
        return None
    names = [reference.columns[i] for i in keep]
    codes = np.ascontiguousarray(decode(reference)[:, keep])
    smaller = reference.model_copy(
        update={
            "columns": names,
            "cuts": {c: v for c, v in reference.cuts.items() if c in names},
            "categories": {c: v for c, v in reference.categories.items() if c in names},
            "codes": base64.b64encode(codes.tobytes()).decode("ascii"),
        }
    )
    out = copy.deepcopy(e)
    out["kwargs"]["columns"] = names
    out["meta"]["training"] = stats.model_copy(update={"joint": smaller}).model_dump(exclude_none=True)
    return out


def neutral_rows(frame: pd.DataFrame, sensitive: Mapping[str, str]) -> pd.DataFrame:
    """Rows a version keeps as its input example (MLmodel, the serving example, the warm-up call):
    a sensitive column's values replaced by a neutral value of its type, never a training value."""
    columns = [c for c in sensitive if c in frame.columns]
    if not columns:
        return frame
    out = frame.copy()
    for column in columns:
        out[column] = _neutral(frame[column])
    return out


def _neutral(s: pd.Series) -> pd.Series:
    if s.dtype == "bool":
        value: Any = False
    elif s.dtype.kind in "iuf":
        value = 0
    elif s.dtype.kind == "M":
        value = pd.Timestamp("2000-01-01", tz=getattr(s.dtype, "tz", None))
    else:
        value = "redacted"
    return pd.Series([value] * len(s), index=s.index).astype(s.dtype)
