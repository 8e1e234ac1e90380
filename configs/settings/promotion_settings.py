"""`promotion:` the shadow and canary stages and their verdicts."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from configs.settings.base import Section


class PromotionSettings(Section):
    canary_steps: list[float] = Field(
        [0.05, 0.25, 0.5], description="Canary traffic shares, in order; each is analysed before the next."
    )
    step_seconds: float = Field(
        300.0, gt=0, description="Longest a canary step (or the shadow window) waits for min_requests."
    )
    min_requests: int = Field(
        200, gt=0, description="Requests per model before any verdict: no verdict from a dozen requests."
    )
    min_labeled: int = Field(100, gt=0, description="Feedback labels per model before accuracy is compared.")
    approval_timeout_seconds: int = Field(
        86_400, gt=0, description="A manual approval not given in this time counts as a rejection."
    )
    poll_seconds: float = Field(1.0, gt=0, description="How often a paused promotion checks for an answer.")
    lease_seconds: float = Field(
        30.0,
        ge=3,
        description="A promotion renews its lease on the model every third of this; a promotion whose process "
        "died is taken over by the next one at the latest this long after its last renewal.",
    )
    progress_seconds: float = Field(
        15.0, gt=0, description="How often a promotion step waiting for traffic prints how far it is."
    )
    alpha: float = Field(
        0.01,
        gt=0,
        lt=1,
        description="Chance that a canary no worse than Production is rolled back (split over its tests).",
    )
    min_agreement: float = Field(
        0.8, ge=0, le=1, description="Shadow: least share of predictions equal to Production's."
    )
    max_error_rate: float = Field(
        0.01, ge=0, le=1, description="Shadow: highest share of failed predictions (its own failures, not refusals)."
    )
    max_shadow_refused: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Shadow: highest share of the requests Production answered that Shadow refuses as bad input "
        "(a stricter input contract, which would break those clients); unset: reported to the reviewer, not gated.",
    )
    max_error_rate_increase: float = Field(
        0.01, ge=0, le=1, description="Canary: error + fallback rate may exceed Production's by at most this."
    )
    max_latency_ratio: float = Field(1.5, ge=1, description="Canary: p99 at most this times Production's ...")
    latency_slack_ms: float = Field(2.0, ge=0, description="... or Production's plus this, whichever is larger.")
    max_prediction_shift: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Canary: largest allowed change in any predicted class's share (regression: the "
        "two-sample KS distance between the prediction distributions).",
    )
    max_accuracy_drop: float = Field(0.02, ge=0, le=1, description="Canary: largest allowed drop in accuracy.")
    regression_tolerance: float = Field(
        0.05,
        ge=0,
        description="Shadow, regression: two predictions agree when they differ by at most this "
        "(a share of Production's prediction, or an absolute amount: regression_tolerance_mode).",
    )
    regression_tolerance_mode: Literal["relative", "absolute"] = Field(
        "relative",
        description="relative: |shadow - production| <= tolerance x |production|; absolute: <= tolerance "
        "in the target's units (use it for targets near zero).",
    )
    max_mae_increase: float = Field(
        0.05,
        ge=0,
        description="Canary, regression: largest allowed growth of the mean absolute error on feedback "
        "labels, as a share of Production's (0.05: 5 %).",
    )

    @field_validator("canary_steps")
    @classmethod
    def _growing_shares(cls, steps: list[float]) -> list[float]:
        if not steps or any(not 0 < s <= 1 for s in steps) or steps != sorted(set(steps)):
            raise ValueError("must be growing shares in (0, 1], e.g. [0.05, 0.25, 0.5]")
        return steps
