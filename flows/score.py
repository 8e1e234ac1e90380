"""The scoring flow: a batch scored by a model version on Dask, as the deployment `scoring/score`
runs it (`shipway score` calls the same function without Prefect, as `shipway validate` does)."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_table_artifact

from configs.settings import Settings, load_settings
from core.refs import ModelRef
from flows.artifacts import artifact_key
from flows.run_labels import label_run
from tasks.scoring.batch import ScoringResult, score


@flow(name="scoring", log_prints=True)
def scoring_flow(
    model: str, batch: str, out: str, config: str | None = None, settings: Settings | None = None
) -> ScoringResult:
    """Gate and score every partition of `batch` with `model` (NAME@ALIAS) into `out`, log the run.
    The CLI and tests pass `settings`; a deployment names its profile by `config` (or SHIPWAY_CONFIG)."""
    settings = settings or load_settings(config)
    result = score(settings, model, batch, out)
    label_run("score", result.model_name, result.version, settings)
    create_table_artifact(
        key=artifact_key("scoring", ModelRef.parse(model, "--model").name),
        table=[
            {
                "rows": result.rows,
                "partitions": result.partitions,
                "failed_partitions": len(result.failed),
                "seconds": round(result.seconds, 1),
                "rows_per_s": round(result.rows_per_s),
                "out": result.out,
                "mlflow_run": result.run_id,
            }
        ],
        description=f"{result.model_name} version {result.version} scored {batch}",
    )
    print(f"{result.model_name} v{result.version}: {result.rows:,} rows scored into {result.out}")
    return result
