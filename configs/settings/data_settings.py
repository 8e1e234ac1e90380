"""`data:` the training data and which of its columns are features."""

from __future__ import annotations

from pydantic import Field

from configs.settings.base import Section


class DataSettings(Section):
    source: str = Field("demo", description="Training data: a CSV or Parquet file, s3://bucket/key, or 'demo'.")
    target: str = Field("churned", description="The label column.")
    demo_rows: int = Field(30_000, gt=0, description="Rows of the generated demo dataset.")
    features: list[str] | None = Field(
        None,
        description="The columns the model sees, in order. Empty: every column but the target, the excluded "
        "columns and the time column. Snapshots keep every column; the model's signature, its contract, the "
        "gate and the gateway use these only.",
    )
    exclude: list[str] = Field(
        default_factory=list,
        description="Columns never used as features (IDs, free text, leaks); they stay in the snapshot.",
    )
    time_column: str | None = Field(
        None,
        description="A datetime (or sortable) column: the latest training.test_size share of rows by it is the "
        "holdout (an out-of-time test). It is not a feature unless data.features lists it.",
    )
    text_columns: list[str] | None = Field(
        None,
        description="Feature columns of free text: TF-IDF inside the Pipeline and length and vocabulary "
        "statistics in the contract, instead of categories. Empty: the string columns that read as text "
        "(at least 20 values, half of them distinct, a median of 30+ characters and 4+ words); [] for none.",
    )
