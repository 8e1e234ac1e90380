"""The training statistics a data contract carries for the gate (an expectation's `meta.training`).

The contract builder writes them and the gate reads them through this one schema, so a renamed or
misspelt key fails when the suite is read instead of silently falling back to a default. Every
field is optional: a hand-written expectation has no training statistics, and the gate then
judges it by its bounds alone.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from core.errors import DataError


class Cdf(BaseModel):
    """Training CDF on a quantile grid: F(v) and F(v-) at each grid value (for the KS distance)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    values: list[float]
    at_or_below: list[float]
    below: list[float]


class JointReference(BaseModel):
    """The joint check's training sample (expectations/joint.py): rows x columns of one-byte codes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    columns: list[str]
    cuts: dict[str, list[float]]  # numeric column -> its training quantile cut points
    categories: dict[str, list[Any]]  # other column -> the categories it codes (by training frequency)
    codes: str  # base64 of the uint8 codes, row-major


class TextStats(BaseModel):
    """A free-text column's training vocabulary and how much of unseen text it covers (expectations/text.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vocabulary: list[str]  # the most frequent training tokens
    coverage: float  # mean share of a row's tokens in the vocabulary, on rows held out of it (k-fold)
    coverage_std: float  # its standard deviation over those rows
    rows: int  # the rows with tokens behind coverage and coverage_std


class TrainingStats(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rows: int | None = None  # training rows behind the expectation
    null_fraction: float | None = None
    mean: float | None = None
    std: float | None = None
    kurtosis: float | None = None
    values: list[float] | None = None  # the training quantiles at the expectation's levels
    cdf: Cdf | None = None
    distinct: int | None = None  # distinct training values
    shares: dict[str, float] | None = None  # share of the most frequent values (keys as JSON strings)
    other_max_share: float | None = None  # largest share a value outside `shares` can have
    other_share: float | None = None  # share of categories the contract does not list
    new_share: float | None = None  # share of values training never saw to expect (Good-Turing)
    joint: JointReference | None = None  # the joint check's training sample
    text: TextStats | None = None  # a free-text column's vocabulary and its held-out coverage
    earliest: str | None = None  # a datetime column's earliest training value (ISO 8601)
    latest: str | None = None  # and its latest

    def meta(self, **extra: Any) -> dict[str, Any]:
        """The expectation's `meta`: these statistics under `training`, beside `extra` keys."""
        return {**extra, "training": self.model_dump(exclude_none=True)}

    @classmethod
    def of(cls, expectation: dict[str, Any]) -> TrainingStats:
        """The statistics stored with an expectation (all None for a hand-written one)."""
        raw = (expectation.get("meta") or {}).get("training") or {}
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            error = exc.errors()[0]
            key = ".".join(str(p) for p in error["loc"])
            column = (expectation.get("kwargs") or {}).get("column", "(table)")
            raise DataError(
                f"contract expectation {expectation.get('type')} on column '{column}': "
                f"meta.training.{key}: {error['msg']}"
            ) from None
