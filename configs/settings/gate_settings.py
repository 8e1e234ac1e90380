"""`gate:` the skew gate's bounds and significance."""

from __future__ import annotations

from pydantic import Field

from configs.settings.base import LocalPath, Section


class GateSettings(Section):
    """The skew gate. A check fails when its effect passes the contract's bound AND sampling noise
    cannot explain it (a test at `alpha`, Bonferroni-split over all tests of the batch), so a
    200-row batch does not fail on noise and a 100k-row batch does not fail on trivia."""

    alpha: float = Field(
        0.001, gt=0, lt=1, description="Chance that a clean batch fails the gate (split over all tests)."
    )
    warn_alpha: float = Field(0.05, gt=0, lt=1, description="Significance level of a warning (split over all tests).")
    warn_fraction: float = Field(
        0.5, gt=0, le=1, description="A check warns when its effect passes this fraction of the fail bound."
    )
    null_tolerance: float = Field(0.05, ge=0, le=1, description="Null rate allowed above training, absolute.")
    range_tolerance: float = Field(0.01, ge=0, le=1, description="Share of values allowed outside the training range.")
    date_horizon: float = Field(
        1.0,
        ge=0,
        description="How far past training's latest date a batch's dates may lie, as a multiple of training's date "
        "span (latest minus earliest): a model's recency. 1: a model trained on a year of data accepts dates up to "
        "a year past its last.",
    )
    mean_shift_sd: float = Field(0.2, gt=0, description="Mean shift allowed, in training standard deviations.")
    stdev_ratio: float = Field(1.2, gt=1, description="Factor the standard deviation may grow or shrink by.")
    quantile_band: float = Field(
        0.05, gt=0, lt=0.5, description="Quantile bands: a batch quantile q may sit between training q-band and q+band."
    )
    bins: int = Field(24, ge=4, le=200, description="Training-quantile bins of the divergence check.")
    kl_threshold: float = Field(0.05, gt=0, description="KL divergence (batch || training) allowed on those bins.")
    unseen_tolerance: float = Field(0.02, ge=0, le=1, description="Share of unseen categories allowed.")
    text_coverage_drop: float = Field(
        0.1,
        gt=0,
        le=1,
        description="Free text: drop allowed in the share of a value's tokens found in the training vocabulary, "
        "below training's own held-out share (absolute).",
    )
    text_vocabulary: int = Field(
        5000, gt=0, description="Free text: the most frequent training tokens a contract keeps per text column."
    )
    point_mass_share: float = Field(
        0.03,
        gt=0,
        le=1,
        description="Share by which one value may be more frequent than in training (stuck), and share of "
        "training values that may lie beyond a batch's largest or smallest value (clipped, tail cut off).",
    )
    max_categories: int = Field(
        1000, gt=0, description="Categories a contract lists per column; rarer ones count as other."
    )
    joint_sample_rows: int = Field(
        2000,
        ge=0,
        le=20_000,
        description="Training rows the contract keeps for the joint check (relations between columns), and "
        "the most batch rows that check compares with them; 0 leaves the joint check out of new contracts.",
    )
    joint_min_auc: float = Field(
        0.55,
        gt=0.5,
        lt=1,
        description="Joint check: held-out AUC of the training-vs-batch classifier at which rows count as "
        "changed (0.5: indistinguishable); a fail also needs its p-value below the split alpha.",
    )
    report_dir: LocalPath = Field(".shipway/reports", description="Where drift reports go when --report is not given.")
    expectations_dir: LocalPath = Field(
        "expectations", description="Folder of the user's own GX suites (*.json); the gate runs them too."
    )
