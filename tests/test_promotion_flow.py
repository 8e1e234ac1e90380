"""The promotion flow under a real Prefect server, against a real gateway carrying replayed traffic."""

import dataclasses
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sklearn.dummy import DummyClassifier
from sklearn.pipeline import Pipeline

from configs.settings import load_settings
from core.errors import ShipwayError
from core.vocabulary import Alias, Tag
from flows.approval import AutoApprover, answer
from flows.promotion import PromotionRejected, promotion_flow
from serving.server import running
from tasks import registry
from tasks.aliases import history, move
from tasks.demo_data import TARGET, generate
from tasks.lineage import GitLineage
from tasks.registration import register
from tasks.registry import model_state
from tasks.snapshot import take_snapshot
from tasks.traffic import Replay
from tasks.training import preprocessor, split_features, train
from tests.conftest import mark_benchmarked

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]
NAME = "churn-classifier"
SHIPWAY = str(Path(sys.executable).with_name("shipway"))


@pytest.fixture
def fast(small, monkeypatch):
    """Promotion and gateway settings scaled for a test: small windows, quick polls."""
    for key, value in {
        "PROMOTION__MIN_REQUESTS": "60",
        "PROMOTION__MIN_LABELED": "30",
        "PROMOTION__STEP_SECONDS": "40",
        "PROMOTION__CANARY_STEPS": "[0.25, 0.5]",
        "PROMOTION__APPROVAL_TIMEOUT_SECONDS": "60",
        "SERVING__POLL_INTERVAL_S": "0.3",
        "DATA__DEMO_ROWS": "3000",
    }.items():
        monkeypatch.setenv(f"SHIPWAY_{key}", value)
    return load_settings()


@pytest.fixture
def versions_1_and_2(fast):
    """Version 1 in Production, version 2 (the same model, retrained) in Shadow."""
    snapshot = take_snapshot("demo", fast, TARGET)
    trained = train(snapshot.frame, TARGET, fast.training)
    lineage = GitLineage("a" * 40, "main", False)
    for _ in range(2):
        registered = register(trained, snapshot, lineage, fast)
        mark_benchmarked(fast, registered.name, registered.version)
    move(fast, NAME, {Alias.PRODUCTION: "1", Alias.SHADOW: "2"}, actor="test", reason="setup")
    return trained, snapshot


@pytest.fixture
def traffic(fast):
    """A real gateway on loopback with replayed demo traffic (and feedback labels) for the test."""
    with running(fast) as url:
        replay = Replay(url, generate(2_000, seed=7), TARGET, max_rate=400)
        replay.start()
        yield replay
        replay.stop()
    assert replay.statuses.get(200, 0) == replay.answered > 0


def Approver(settings, decisions: list[bool]) -> AutoApprover:
    return AutoApprover(settings, NAME, decisions, reviewer="rita", comment="looked at it")


def test_shadow_canary_and_two_approvals_take_the_version_to_production(fast, versions_1_and_2, traffic):
    approver = Approver(fast, [True, True])
    approver.start()
    result = promotion_flow(NAME)
    approver.join(5)

    assert (result.version, result.previous) == ("2", "1")
    aliases, tags = model_state(fast, NAME)
    assert aliases == {"Production": "2", "Previous": "1"}
    assert tags["canary_share"] == "0"
    assert [request["stage"] for request in approver.seen] == ["shadow", "production"]
    stages = [json.loads(e)["stage"] for e in result.evidence]
    assert stages == ["shadow", "canary 25%", "canary 50%"]
    shares = [t.version for t in history(fast, NAME) if t.alias == "canary_share"]
    assert shares == ["0.25", "0.5", "0"]
    approval = json.loads(registry.get_version(fast, NAME, "2").tags["approval.production"])
    assert approval["approved"] and approval["reviewer"] == "rita"
    assert [e["stage"] for e in approval["evidence"]] == stages  # what the reviewer saw is recorded

    done = subprocess.run([SHIPWAY, "rollback", NAME, "--reason", "bad news"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "Production 2 -> 1 (bad news)" in done.stdout
    assert model_state(fast, NAME)[0] == {"Production": "1"}


def test_a_rejection_stops_the_promotion_and_production_stays(fast, versions_1_and_2, traffic):
    approver = Approver(fast, [False])
    approver.start()
    with pytest.raises(PromotionRejected, match="shadow approval rejected by rita: looked at it"):
        promotion_flow(NAME)
    assert model_state(fast, NAME)[0] == {"Production": "1"}  # the candidate left Shadow
    recorded = json.loads(registry.get_version(fast, NAME, "2").tags["approval.shadow"])
    assert recorded["approved"] is False and recorded["evidence"][0]["stage"] == "shadow"


def test_a_broken_canary_is_rolled_back_automatically(fast, versions_1_and_2, traffic, monkeypatch):
    trained, snapshot = versions_1_and_2
    X, y = split_features(snapshot.frame, TARGET)
    broken = Pipeline([("prep", preprocessor(X)), ("model", DummyClassifier(strategy="constant", constant=1))])
    bad = register(
        dataclasses.replace(trained, model=broken.fit(X, y)), snapshot, GitLineage("b" * 40, "main", False), fast
    )
    mark_benchmarked(fast, NAME, bad.version)
    monkeypatch.setenv("SHIPWAY_PROMOTION__MIN_AGREEMENT", "0")  # let it past Shadow: the canary must catch it
    approver = Approver(fast, [True])
    approver.start()
    with pytest.raises(PromotionRejected, match="canary 25% breached: .*predicted class shares: largest shift"):
        promotion_flow(NAME, version=bad.version)
    aliases, tags = model_state(fast, NAME)
    assert aliases == {"Production": "1"} and tags["canary_share"] == "0"
    assert "predicted class shares" in history(fast, NAME)[-1].reason


def test_an_unanswered_approval_times_out_as_a_rejection(fast, monkeypatch):
    monkeypatch.setenv("SHIPWAY_PROMOTION__APPROVAL_TIMEOUT_SECONDS", "2")
    from tests.conftest import register_versions

    register_versions(fast, 1)
    move(fast, NAME, {Alias.SHADOW: "1"}, actor="test", reason="setup")
    with pytest.raises(PromotionRejected, match="approval rejected by timeout: no answer in 2 s"):
        promotion_flow(NAME)  # nothing in Production: straight to the approval
    assert model_state(fast, NAME)[0] == {}
    assert Tag.AWAITING_APPROVAL not in model_state(fast, NAME)[1]


def test_two_promotions_of_one_model_never_interleave(fast):
    from tests.conftest import register_versions

    register_versions(fast, 1)
    move(fast, NAME, {Alias.SHADOW: "1"}, actor="test", reason="setup")
    first = threading.Thread(target=lambda: promotion_flow(NAME), daemon=True)
    first.start()
    deadline = time.monotonic() + 60
    while Tag.AWAITING_APPROVAL not in model_state(fast, NAME)[1]:
        assert time.monotonic() < deadline, "the first promotion never paused"
        time.sleep(0.2)
    waiting = json.loads(model_state(fast, NAME)[1][Tag.AWAITING_APPROVAL])
    with pytest.raises(
        PromotionRejected, match=f"another promotion of '{NAME}' is in progress \\(flow run {waiting['run_id']}\\)"
    ):
        promotion_flow(NAME)
    time.sleep(1.5)
    answer(waiting["run_id"], approve=True, reviewer="rita", comment="")
    first.join(60)
    assert model_state(fast, NAME)[0] == {"Production": "1"}


def test_a_promotion_cut_short_is_undone_and_the_next_one_starts_cleanly(fast, monkeypatch):
    from tests.conftest import register_versions

    register_versions(fast, 1)
    move(fast, NAME, {Alias.SHADOW: "1"}, actor="test", reason="setup")
    real_delete = registry.delete_alias

    def crash(settings, name, alias):  # the machine goes down between the alias moves of the last step
        raise ConnectionError("the tracking server went away")

    monkeypatch.setattr(registry, "delete_alias", crash)
    approver = Approver(fast, [True])
    approver.start()
    with pytest.raises(ConnectionError):
        promotion_flow(NAME)
    aliases, tags = model_state(fast, NAME)
    assert Tag.PROMOTION_PENDING in tags and aliases["Production"] == "1"  # half applied

    monkeypatch.setattr(registry, "delete_alias", real_delete)
    approver = Approver(fast, [True])
    approver.start()
    promotion_flow(NAME)
    assert model_state(fast, NAME)[0] == {"Production": "1"}
    assert any("did not finish" in t.reason for t in history(fast, NAME))


def test_approve_names_what_is_wrong_with_the_run_id(fast):
    with pytest.raises(ShipwayError, match="'nope' is not a flow run id"):
        answer("nope", approve=True, reviewer="r", comment="")
    with pytest.raises(ShipwayError, match="flow run 00000000-0000-0000-0000-000000000000 not found"):
        answer("00000000-0000-0000-0000-000000000000", approve=True, reviewer="r", comment="")


def test_status_lists_the_waiting_approval_and_the_history(fast):
    from tests.conftest import register_versions

    register_versions(fast, 1)
    move(fast, NAME, {Alias.SHADOW: "1"}, actor="alice", reason="trained")
    registry.set_model_tag(
        fast,
        NAME,
        Tag.AWAITING_APPROVAL,
        json.dumps({"run_id": "1234", "stage": "shadow", "version": "1", "since": "2026-11-25T20:00:00+00:00"}),
    )
    done = subprocess.run([SHIPWAY, "status", NAME], capture_output=True, text=True, cwd=Path.cwd())
    assert done.returncode == 0, done.stderr
    assert "waiting for approval: version 1 (shadow)" in done.stdout and "shipway approve 1234" in done.stdout
    assert "Shadow" in done.stdout and "by alice: trained" in done.stdout
