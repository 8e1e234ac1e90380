"""Manual approval of a paused promotion: the form the Prefect UI renders, and the terminal's answer."""

from __future__ import annotations

import json
import threading
import time
from typing import Literal

from prefect.input import RunInput
from pydantic import Field

from configs.settings import Settings
from core.errors import ShipwayError
from core.vocabulary import Tag
from flows.resume import parse_run_id, resume, run_input
from tasks.release.registry import model_state


class Approval(RunInput):
    """The form on a paused promotion in the Prefect UI; `shipway approve` fills in the same fields.

    No field decides for the reviewer: the decision has no default and the reviewer must be named,
    so submitting the form untouched is refused instead of rejecting anonymously."""

    decision: Literal["approve", "reject"] = Field(description="Approve this step, or reject it: choose one.")
    reviewer: str = Field(min_length=1, max_length=200, pattern=r"\S", description="Who decides (required).")
    comment: str = Field("", max_length=2000, description="Why: recorded with the decision.")

    @property
    def approved(self) -> bool:
        return self.decision == "approve"


def answer(run_id: str, *, approve: bool, reviewer: str, comment: str, api_url: str | None = None) -> None:
    """Resume the paused promotion `run_id` with a decision; a clear error if it is not waiting.
    `api_url`: the Prefect API to use (default: the one this process's Prefect settings name)."""
    flow_run_id = parse_run_id(run_id)
    answer_input = run_input(approve=approve, reviewer=reviewer, comment=comment)
    if api_url is None:
        from prefect.settings import PREFECT_API_URL

        api_url = PREFECT_API_URL.value()
    if api_url:
        return resume(api_url, flow_run_id, answer_input)
    from prefect import get_client  # in-process ephemeral API: no address to call, Prefect's client it is
    from prefect.exceptions import ObjectNotFound
    from prefect.flow_runs import resume_flow_run

    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(flow_run_id)
        except ObjectNotFound:
            raise ShipwayError(f"flow run {run_id} not found on the Prefect API {client.api_url}") from None
    if run.state is None or not run.state.is_paused():
        state = run.state.name if run.state else "no state"
        raise ShipwayError(f"flow run {run_id} is not waiting for approval (state: {state})")
    resume_flow_run(flow_run_id, run_input=answer_input)


class AutoApprover(threading.Thread):
    """Answers each approval request of model `name` as it appears (the demo's reviewer, and tests').

    `decisions` are given in order, one per request; the requests seen are kept in `seen`. `stop()`
    ends it with decisions left (the promotion stopped before asking): it reads the registry until then.
    """

    def __init__(self, settings: Settings, name: str, decisions: list[bool], reviewer: str, comment: str):
        super().__init__(name="auto-approver", daemon=True)
        self.settings, self.name, self.decisions = settings, name, list(decisions)
        self.reviewer, self.comment = reviewer, comment
        self.seen: list[dict] = []
        self._stopped = threading.Event()

    def run(self) -> None:
        while self.decisions and not self._stopped.is_set():
            waiting = model_state(self.settings, self.name)[1].get(Tag.AWAITING_APPROVAL)
            request = json.loads(waiting) if waiting else None
            if request and request not in self.seen:
                self.seen.append(request)
                self._answer(request["run_id"], self.decisions.pop(0))
            self._stopped.wait(0.2)

    def stop(self, timeout: float = 5) -> None:
        """No more answers: the decisions left are dropped once the current one is given."""
        self._stopped.set()
        self.join(timeout)

    def _answer(self, run_id: str, approve: bool) -> None:
        """The tag is set just before the flow pauses: retry until the pause is there to answer."""
        deadline = time.monotonic() + 30
        while True:
            try:
                return answer(run_id, approve=approve, reviewer=self.reviewer, comment=self.comment)
            except ShipwayError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
