"""`monitoring:` the limits of a window of the prediction log, and what a sustained breach starts."""

from __future__ import annotations

from pydantic import Field

from configs.settings.base import Section


class MonitoringSettings(Section):
    window: str = Field("1h", description="Default window of the prediction log per monitoring run (30m, 1h, 1d).")
    min_requests: int = Field(100, gt=0, description="Requests in a window before its rates can breach a limit.")
    max_fallback_rate: float = Field(0.02, ge=0, le=1, description="Highest share of answers from the fallback chain.")
    max_error_rate: float = Field(
        0.005, ge=0, le=1, description="Highest share of requests every fallback failed (503)."
    )
    max_rejected_rate: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Highest share of requests refused as bad input (4xx): clients sending skewed data.",
    )
    min_accuracy: float | None = Field(
        None, ge=0, le=1, description="Lowest accuracy on feedback labels; empty: not checked."
    )
    max_mae: float | None = Field(
        None, ge=0, description="Highest mean absolute error on feedback labels (regression); empty: not checked."
    )
    max_estimated_drop: float | None = Field(
        0.05,
        ge=0,
        le=1,
        description="Largest drop of a performance figure estimated without labels (CBPE: accuracy, ROC AUC; "
        "versions served with predict_proba) below its holdout value at registration; empty: not checked.",
    )
    max_prediction_psi: float = Field(
        0.2,
        gt=0,
        description="Population stability index above which the served class shares or scores drift from the "
        "version's holdout predictions (a breach when the chi-square test also rejects at gate.alpha).",
    )
    breach_windows: int = Field(3, gt=0, description="Windows in a row that must breach before retraining starts.")
    experiment: str = Field("shipway-monitoring", description="MLflow experiment holding one run per window.")
    retrain_deployment: str = Field(
        "training/retrain", description="Prefect deployment (flow/deployment) triggered on a sustained breach."
    )
