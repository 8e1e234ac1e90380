"""What the model sees: the feature columns chosen from a snapshot, the holdout split (random or by
time), and the date parts a datetime feature becomes inside the Pipeline.

A snapshot keeps every column; `data.features` / `data.exclude` / `data.time_column` say which of
them are the model's inputs. Everything downstream (the model's signature, its contract, the gate,
the gateway) uses the features only, so an ID or a free-text column never becomes something every
client must send and every batch must match.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.feature_extraction.text import TfidfVectorizer

from core.errors import ConfigError, DataError

if TYPE_CHECKING:
    from scipy.sparse import spmatrix

    from configs.settings import DataSettings

DATE_PARTS = ("year", "month", "day", "weekday", "hour", "minute")


def choose_features(columns: Sequence[str], target: str, data: DataSettings) -> list[str]:
    """The feature columns, in order; every name the settings give must be a column of the data."""
    columns = list(columns)
    known = set(columns)
    shown = ", ".join(columns)
    for key, names in (
        ("data.features", data.features or []),
        ("data.exclude", data.exclude),
        ("data.time_column", [data.time_column] if data.time_column else []),
        ("data.text_columns", data.text_columns or []),
    ):
        for name in names:
            if name not in known:
                raise ConfigError(f"{key}: column '{name}' is not in the data (columns: {shown})")
    if data.features is not None:
        repeated = sorted({c for c in data.features if data.features.count(c) > 1})
        if repeated:
            raise ConfigError(f"data.features: column '{repeated[0]}' is listed twice")
        if target in data.features:
            raise ConfigError(f"data.features: column '{target}' is the target (data.target), not a feature")
        both = [c for c in data.features if c in data.exclude]
        if both:
            raise ConfigError(f"data.features: column '{both[0]}' is also in data.exclude; list it in one of them")
        return list(data.features)
    left_out = {target, *data.exclude, *([data.time_column] if data.time_column else [])}
    return [c for c in columns if c not in left_out]


def row_numbers(X: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """Integer columns holding a different value on every row, densely (their span at most twice the
    rows): a row number or an id exported with the table (R's `rownames`, pandas' `Unnamed: 0`), by
    column with its (lowest, highest) value. As a feature it teaches nothing general, and new rows fall
    outside its training range."""
    found = {}
    for name in X.columns:
        values = X[name]
        if len(values) < 20 or not pd.api.types.is_integer_dtype(values.dtype) or values.isna().any():
            continue
        low, high = int(values.min()), int(values.max())
        if high - low + 1 <= 2 * len(values) and values.is_unique:
            found[str(name)] = (low, high)
    return found


def holdout_split(
    frame: pd.DataFrame, test_size: float, seed: int, stratify: pd.Series | None, time_column: str | None
) -> tuple[pd.Index, pd.Index]:
    """Row labels of the training split and the holdout: the latest `test_size` share by
    `time_column` (an out-of-time test), else a seeded random split (stratified for classes)."""
    from sklearn.model_selection import train_test_split

    if time_column is None:
        try:
            train, test = train_test_split(frame.index, test_size=test_size, random_state=seed, stratify=stratify)
        except ValueError as exc:  # a holdout too small to hold every class
            raise DataError(f"cannot split {len(frame)} rows into training and holdout: {exc}") from None
        return pd.Index(train), pd.Index(test)
    order = sortable_time(frame[time_column], time_column)
    if order.isna().any():
        raise DataError(
            f"data.time_column: column '{time_column}' has {int(order.isna().sum())} empty values; "
            "every row needs a time to be put on one side of the out-of-time split"
        )
    ranked = order.sort_values(kind="stable").index
    n_test = int(np.ceil(len(ranked) * test_size))
    if not 0 < n_test < len(ranked):
        raise DataError(f"cannot split {len(frame)} rows by '{time_column}' with training.test_size {test_size}")
    return ranked[:-n_test], ranked[-n_test:]


def sortable_time(s: pd.Series, name: str) -> pd.Series:
    """A time column as values that sort by time: datetimes and numbers as they are, ISO text parsed."""
    if pd.api.types.is_datetime64_any_dtype(s.dtype) or (
        pd.api.types.is_numeric_dtype(s.dtype) and not pd.api.types.is_bool_dtype(s.dtype)
    ):
        return s
    try:
        return pd.to_datetime(s, format="ISO8601", utc=True)
    except (ValueError, TypeError):
        raise ConfigError(
            f"data.time_column: column '{name}' holds neither datetimes, numbers nor ISO 8601 dates "
            f"(e.g. {s.dropna().astype(str).iloc[0]!r})"
        ) from None


def is_datetime(s: pd.Series) -> bool:
    return pd.api.types.is_datetime64_any_dtype(s.dtype)


class _ColumnsOnly(TransformerMixin, BaseEstimator):
    """A transformer that learns nothing from the data but its columns' names."""

    def fit(self, X: Any, y: Any = None) -> Self:
        frame = _as_frame(X)
        self.feature_names_in_ = np.asarray([str(c) for c in frame.columns], dtype=object)
        self.n_features_in_ = frame.shape[1]
        return self


class DateParts(_ColumnsOnly):
    """Each datetime column as numbers: year, month, day, weekday, hour, minute (NaT -> NaN).

    It learns nothing from the data, so it needs no fitted statistic; it reads datetimes and ISO
    8601 text alike, since a JSON request carries a date as text.
    """

    def transform(self, X: Any) -> np.ndarray:
        frame = _as_frame(X)
        parts = []
        for name in frame.columns:
            stamps = pd.to_datetime(frame[name], format="ISO8601", errors="raise")
            if getattr(stamps.dt, "tz", None) is not None:
                stamps = stamps.dt.tz_convert("UTC").dt.tz_localize(None)
            for part in DATE_PARTS:
                parts.append(getattr(stamps.dt, part).astype("float64").to_numpy())
        return np.column_stack(parts) if parts else np.empty((len(frame), 0))

    def get_feature_names_out(self, input_features: Sequence[str] | None = None) -> np.ndarray:
        names = self.feature_names_in_ if input_features is None else input_features
        return np.asarray([f"{name}_{part}" for name in names for part in DATE_PARTS], dtype=object)


class TextTfidf(TfidfVectorizer):
    """TF-IDF of one free-text column (scikit-learn's TfidfVectorizer, its vocabulary bounded by
    `max_features`): a missing text reads as an empty one, and each feature is named `column:term`,
    so that the words two text columns share stay two features."""

    def fit(self, raw_documents: Any, y: Any = None) -> Self:
        self.fit_transform(raw_documents)
        return self

    def fit_transform(self, raw_documents: Any, y: Any = None) -> spmatrix:
        self.column_ = str(getattr(raw_documents, "name", None) or "text")
        return super().fit_transform(_texts(raw_documents))

    def transform(self, raw_documents: Any) -> spmatrix:
        return super().transform(_texts(raw_documents))

    def get_feature_names_out(self, input_features: Sequence[str] | None = None) -> np.ndarray:
        return np.asarray([f"{self.column_}:{term}" for term in super().get_feature_names_out()], dtype=object)

    # skops writes a dict entry by entry with its types: a large vocabulary made a large model, slow
    # to write and to load. Stored as one line per term, in index order, it is text.
    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())  # a copy: Python's own __getstate__ gives the live __dict__
        vocabulary = state.get("vocabulary_")
        if isinstance(vocabulary, dict) and not any("\n" in term for term in vocabulary):
            state["vocabulary_"] = "\n".join(sorted(vocabulary, key=vocabulary.__getitem__))
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if isinstance(state.get("vocabulary_"), str):
            terms = state["vocabulary_"].split("\n") if state["vocabulary_"] else []
            state = {**state, "vocabulary_": {term: i for i, term in enumerate(terms)}}
        super().__setstate__(state)


def _texts(X: Any) -> pd.Series:
    """One column of texts, a missing one as "": TfidfVectorizer refuses NaN."""
    column = X.iloc[:, 0] if isinstance(X, pd.DataFrame) else pd.Series(np.asarray(X, dtype=object).reshape(-1))
    return column.fillna("").astype(str)


class InSet(_ColumnsOnly):
    """One column as 1.0 where its value is one of `members` (or is missing, when `missing`), else
    0.0: a categorical rule of the baseline as the one number its single split reads. A value never
    seen in training is no member, so it gets the rule's else side."""

    def __init__(self, members: Sequence = (), missing: bool = False):
        self.members = members
        self.missing = missing

    def transform(self, X: Any) -> np.ndarray:
        column = _as_frame(X).iloc[:, 0]
        inside = column.isin(list(self.members)) | (column.isna() & self.missing)
        return inside.to_numpy(dtype=np.float64).reshape(-1, 1)


def _as_frame(X: Any) -> pd.DataFrame:
    return X if isinstance(X, pd.DataFrame) else pd.DataFrame(np.asarray(X, dtype=object))
