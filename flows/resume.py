"""Answering a paused promotion fast: the run id checked first, then plain HTTP to a Prefect API.

No Prefect import here, nor httpx (its import and its TLS context take longer than the answer):
three plain HTTP calls by the standard library. In Prefect's
ephemeral mode the paused promotion's own process runs a Prefect API on the shared database;
while it waits for an answer it notes that API's address under PREFECT_HOME, so `shipway
approve` resumes through it instead of starting a temporary server of its own.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
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


def prefect_home(home: str | Path | None = None) -> Path:
    """Prefect's home (its database in the embedded profile), found without importing Prefect."""
    return Path(home or os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()


def paused_note(run_id: str, home: str | Path | None = None) -> Path:
    """Where a paused promotion notes the Prefect API that can resume it."""
    return prefect_home(home) / PAUSED_DIR / f"{run_id}.json"


def note_paused(run_id: str, api_url: str, home: str | Path) -> Path:
    path = paused_note(run_id, home)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"api_url": api_url, "pid": os.getpid()}))
    return path


def running_api(run_id: str, home: str | Path | None = None) -> str | None:
    """The API noted by the paused promotion `run_id` (under Prefect home `home`), if it still answers."""
    try:
        api_url = json.loads(paused_note(run_id, home).read_text())["api_url"]
        _call("GET", f"{api_url}/health", timeout=1.0)
    except (OSError, ValueError, KeyError, urllib.error.URLError):
        return None
    return api_url


def resume(api_url: str, run_id: UUID, run_input: dict, where: str | None = None) -> None:
    """Resume the paused flow run with `run_input` (validated by Prefect against the run's form).
    `where`: the API as the reader knows it, when its address means nothing to them (a temporary one)."""
    try:
        state = _call("GET", f"{api_url}/flow_runs/{run_id}").get("state") or {}
        if state.get("type") != "PAUSED":
            state_name = state.get("name", "no state")
            raise ShipwayError(f"flow run {run_id} is not waiting for approval (state: {state_name})")
        result = _call("POST", f"{api_url}/flow_runs/{run_id}/resume", {"run_input": run_input})
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise ShipwayError(f"flow run {run_id} not found {where or f'on the Prefect API {api_url}'}") from None
        raise ShipwayError(f"the Prefect API {api_url} answered {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, TimeoutError) as exc:
        raise ShipwayError(f"the Prefect API {api_url} did not answer: {getattr(exc, 'reason', exc)}") from None
    if result.get("status") != "ACCEPT":
        reason = (result.get("details") or {}).get("reason", result.get("status"))
        raise ShipwayError(f"flow run {run_id} did not accept the answer: {reason}")


def _call(method: str, url: str, body: dict | None = None, timeout: float = 30.0) -> Any:
    """One JSON call to a Prefect API; HTTPError for a status >= 400."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"null")


def embedded_prefect() -> str:
    """Where the embedded profile's Prefect keeps its runs, for a message: its API is a temporary
    port of the command that started it."""
    return f"in the embedded Prefect (PREFECT_HOME {prefect_home()}): `shipway status NAME` shows the approval waiting"
