"""The small parts of a release, without servers: the approval form, the release card, process owners."""

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from core.errors import ShipwayError
from core.owner import Owner
from core.tracking import Store
from flows.approval import Approval
from flows.resume import parse_run_id, run_input
from tasks.release import release_card


def test_the_approval_form_decides_nothing_for_the_reviewer():
    form = Approval.with_initial_data(description="| step | check | measured | limit | verdict |")
    schema = form.model_json_schema()
    assert {"decision", "reviewer"} <= set(schema["required"])  # no default decision, no anonymous one
    assert "default" not in schema["properties"]["decision"]
    assert schema["properties"]["decision"]["enum"] == ["approve", "reject"]
    with pytest.raises(ValidationError):
        Approval.model_validate({"reviewer": "rita"})  # no decision
    for nobody in ("", "   "):
        with pytest.raises(ValidationError):
            Approval.model_validate({"decision": "approve", "reviewer": nobody})
    decided = Approval.model_validate({"decision": "reject", "reviewer": "rita"})
    assert not decided.approved and decided.comment == ""


def test_the_terminal_answer_is_checked_before_anything_starts():
    with pytest.raises(ShipwayError, match="'nope' is not a flow run id"):
        parse_run_id("nope")
    with pytest.raises(ShipwayError, match="needs the reviewer's name"):
        run_input(approve=True, reviewer=" ", comment="")
    assert run_input(approve=False, reviewer="rita", comment="no") == {
        "decision": "reject",
        "reviewer": "rita",
        "comment": "no",
    }


def test_the_release_card_puts_the_facts_first_and_keeps_the_registration_text():
    tags = {
        "git_commit": "a" * 40,
        "git_branch": "main",
        "git_dirty": "false",
        "data_snapshot_id": "b" * 64,
        "data_rows": "3000",
        "validation_status": "pass",
        "latency_p99_ms": "3.214",
        "latency_budget_p99_ms": "50",
        "latency_gate": "passed",
        "approval_shadow": "approved",
        "approval_shadow_by": "rita",
        "approval_shadow_at": "2026-11-30T09:30:18+00:00",
    }
    text = release_card.render(tags, "churn-classifier: LogisticRegression ...", "[release record](#/x)")
    assert text.startswith(release_card.TITLE)
    for fact in (
        "`aaaaaaaaaaaa` on main",
        "`bbbbbbbbbbbb` (3,000 rows)",
        "| validation | pass |",
        "3.21 ms (budget 50 ms: passed)",
        "shadow approved by rita at 2026-11-30T09:30",
        "[release record](#/x)",
    ):
        assert fact in text
    assert release_card.about_of(text) == "churn-classifier: LogisticRegression ..."
    assert release_card.about_of(release_card.render({}, release_card.about_of(text))) == release_card.about_of(text)
    assert len(release_card.short("x" * 400)) == 250 and release_card.short("short") == "short"


def test_an_owner_is_alive_until_its_process_ends_even_if_its_pid_comes_back():
    me = Owner.current()
    assert me.alive() is True and Owner.from_dict(me.to_dict()) == me
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    them = Owner(me.host, me.boot, child.pid, 0)
    assert them.alive() is True
    child.kill()
    child.wait()
    assert them.alive() is False
    assert Owner(me.host, me.boot, os.getpid(), me.started + 1).alive() is False  # same pid, another process
    assert Owner("elsewhere", "x", 1, 1).alive() is None  # another machine: only a lease can tell


def test_the_store_key_tells_stores_apart():
    one, other = Store("sqlite:////a/mlflow.db"), Store("sqlite:////b/mlflow.db")
    assert len(one.key) == 8 and one.key != other.key and one.key == Store("sqlite:////a/mlflow.db").key
