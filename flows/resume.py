"""Answering a paused promotion fast: the run id checked first, then plain HTTP to a Prefect API.

No Prefect import here (a second or more on its own), and httpx only when a call is made. In
Prefect's ephemeral mode the paused promotion's own process runs a Prefect API on the shared
database; while it waits for an answer it notes that API's address under PREFECT_HOME, so
`shipway approve` resumes through it instead of starting a temporary server of its own (~10 s).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from uuid import UUID

from core.errors import ShipwayError

PAUSED_DIR = "shipway-paused"


def parse_run_id(run_id: str) -> UUID:
    try:
        return UUID(run_id)
    except ValueError:
        raise ShipwayError(f"'{run_id}' is not a flow run id (shipway status NAME shows the one waiting)") from None


def run_input(*, approve: bool, reviewer: str, comment: str) -> dict:
    """The answer as the approval form (flows/approval.Approval) takes it."""
    if not reviewer.strip():
        raise ShipwayError("a decision needs the reviewer's name (--reviewer NAME)")
    return {"decision": "approve" if approve else "reject", "reviewer": reviewer, "comment": comment}


def paused_note(run_id: str, home: str | Path | None = None) -> Path:
    """Where a paused promotion notes the Prefect API that can resume it."""
    base = Path(home or os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()
    return base / PAUSED_DIR / f"{run_id}.json"


def note_paused(run_id: str, api_url: str, home: str | Path) -> Path:
    path = paused_note(run_id, home)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"api_url": api_url, "pid": os.getpid()}))
    return path


def running_api(run_id: str, home: str | Path | None = None) -> str | None:
    """The API noted by the paused promotion `run_id` (under Prefect home `home`), if it still answers."""
    import httpx

    try:
        api_url = json.loads(paused_note(run_id, home).read_text())["api_url"]
        httpx.get(f"{api_url}/health", timeout=1.0).raise_for_status()
    except (OSError, ValueError, KeyError, httpx.HTTPError):
        return None
    return api_url


def resume(api_url: str, run_id: UUID, run_input: dict) -> None:
    """Resume the paused flow run with `run_input` (validated by Prefect against the run's form)."""
    import httpx

    with httpx.Client(base_url=api_url, timeout=30.0) as client:
        found = client.get(f"/flow_runs/{run_id}")
        if found.status_code == 404:
            raise ShipwayError(f"flow run {run_id} not found on the Prefect API {api_url}")
        found.raise_for_status()
        state = found.json().get("state") or {}
        if state.get("type") != "PAUSED":
            raise ShipwayError(
                f"flow run {run_id} is not waiting for approval (state: {state.get('name', 'no state')})"
            )
        answer = client.post(f"/flow_runs/{run_id}/resume", json={"run_input": run_input})
        answer.raise_for_status()
        result = answer.json()
    if result.get("status") != "ACCEPT":
        reason = (result.get("details") or {}).get("reason", result.get("status"))
        raise ShipwayError(f"flow run {run_id} did not accept the answer: {reason}")
