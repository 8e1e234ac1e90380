"""A flow run named and tagged with the model and version it works on, once the version is known.

Prefect names a run when it starts, before a training run has registered its version or a
promotion has read which version is Shadow; so the run is renamed when the flow learns it:
`promote-churn-classifier-v3-1a2b3c4d` (the last part: which tracking store, as the start name
has it), tagged `model:churn-classifier` and `version:3`, which the Prefect UI filters on.
"""

from __future__ import annotations

from prefect import get_run_logger
from prefect.context import FlowRunContext, get_run_context

from configs.settings import Settings
from core.tracking import Store


def run_name(kind: str, name: str, settings: Settings, version: str | None = None) -> str:
    """KIND-MODEL[-vVERSION]-STORE."""
    return "-".join([kind, name, *([f"v{version}"] if version else []), Store.of(settings).key])


def label_run(kind: str, name: str, version: str, settings: Settings) -> None:
    """Rename the current flow run after `name` version `version` and tag it with both."""
    from prefect.client.orchestration import get_client

    context = get_run_context()
    if not isinstance(context, FlowRunContext) or context.flow_run is None:
        return
    run = context.flow_run
    labels = [f"model:{name}", f"version:{version}"]
    tags = [t for t in run.tags if not t.startswith(("model:", "version:"))] + labels
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(run.id, name=run_name(kind, name, settings, version), tags=tags)
    except Exception as exc:  # a label is worth a warning, never a failed training or promotion
        get_run_logger().warning("flow run %s not renamed after version %s: %s", run.id, version, exc)
