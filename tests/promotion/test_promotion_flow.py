"""The promotion flow under a real Prefect server, against a real gateway carrying replayed traffic."""

import dataclasses
import json
import os
import threading
import time

import pytest
from sklearn.dummy import DummyClassifier
from sklearn.pipeline import Pipeline

from core.errors import ShipwayError
from core.tracking import Store
from core.vocabulary import Alias, Tag
from flows.approval import AutoApprover, answer
from flows.promote import PromotionRejected, promotion_flow
from serving.server import running
from tasks.data.demo_data import TARGET, generate
from tasks.data.snapshot import take_snapshot
from tasks.promotion.lease import PromotionBusy, held
from tasks.promotion.traffic import Replay
from tasks.release import record, registry
from tasks.release.aliases import history, move
from tasks.release.lineage import GitLineage
from tasks.release.registration import register
from tasks.release.registry import model_state
from tasks.training.pipeline import preprocessor, split_target, train
from tests.conftest import (
    QUICK_PROMOTION,
    mark_gated,
    register_versions,
    run_shipway,
    tuned,
    wait_for,
    write_profile,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]
NAME = "churn-classifier"


@pytest.fixture
def fast(small):
    """Promotion and gateway settings scaled for a test: small windows, quick polls."""
    return tuned(small, **QUICK_PROMOTION)


@pytest.fixture
def versions_1_and_2(fast):
    """Version 1 in Production, version 2 (the same model, retrained) in Shadow."""
    snapshot = take_snapshot("demo", fast, TARGET)
    trained = train(snapshot.frame, TARGET, fast.training)
    lineage = GitLineage("a" * 40, "main", False)
    for _ in range(2):
        registered = register.fn(trained, snapshot, lineage, fast)
        mark_gated(fast, registered.name, registered.version)
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


@pytest.fixture
def approve(fast):
    """Start a reviewer answering the test's promotions; stopped at the end, so that one left with
    decisions (its promotion stopped first) does not read the registry into the next test."""
    started = []

    def start(decisions: list[bool]) -> AutoApprover:
        approver = AutoApprover(fast, NAME, decisions, reviewer="rita", comment="looked at it")
        approver.start()
        started.append(approver)
        return approver

    yield start
    for approver in started:
        approver.stop()


def test_shadow_canary_and_two_approvals_take_the_version_to_production(
    fast, versions_1_and_2, traffic, tmp_path, approve
):
    approver = approve([True, True])
    result = promotion_flow(NAME, settings=fast)

    assert (result.version, result.previous) == ("2", "1")
    aliases, tags = model_state(fast, NAME)
    assert aliases == {"Production": "2", "Previous": "1"}
    assert tags["canary_share"] == "0"
    assert [request["stage"] for request in approver.seen] == ["shadow", "production"]
    stages = [json.loads(e)["stage"] for e in result.evidence]
    assert stages == ["shadow", "canary 25%", "canary 50%"]
    shares = [t.version for t in history(fast, NAME) if t.alias == "canary_share"]
    assert shares == ["0.25", "0.5", "0"]
    tags = registry.get_version(fast, NAME, "2").tags
    assert (tags["approval_production"], tags["approval_production_by"]) == ("approved", "rita")
    assert max(len(v) for v in tags.values()) <= 250  # short facts; the evidence is in the release record
    approval = record.read(fast, NAME, record.APPROVALS)[-1]
    assert (approval["stage"], approval["decision"], approval["reviewer"]) == ("production", "approved", "rita")
    assert [e["stage"] for e in json.loads(approval["evidence"])] == stages  # what the reviewer saw is recorded

    config = write_profile(fast, tmp_path / "profile.yaml")
    done = run_shipway("rollback", NAME, "--reason", "bad news", "--config", str(config), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Production 2 -> 1 (bad news)" in done.stdout
    assert model_state(fast, NAME)[0] == {"Production": "1"}


def test_a_rejection_stops_the_promotion_and_production_stays(fast, versions_1_and_2, traffic, approve):
    approve([False])
    with pytest.raises(PromotionRejected, match="shadow approval rejected by rita: looked at it"):
        promotion_flow(NAME, settings=fast)
    assert model_state(fast, NAME)[0] == {"Production": "1"}  # the candidate left Shadow
    assert registry.get_version(fast, NAME, "2").tags["approval_shadow"] == "rejected"
    recorded = record.read(fast, NAME, record.APPROVALS)[-1]
    assert recorded["decision"] == "rejected" and json.loads(recorded["evidence"])[0]["stage"] == "shadow"


def test_a_broken_canary_is_rolled_back_automatically(fast, versions_1_and_2, traffic, approve):
    trained, snapshot = versions_1_and_2
    X, y = split_target(snapshot.frame, TARGET, [c for c in snapshot.frame.columns if c != TARGET])
    broken = Pipeline([("prep", preprocessor(X)), ("model", DummyClassifier(strategy="constant", constant=1))])
    bad = register.fn(
        dataclasses.replace(trained, model=broken.fit(X, y)), snapshot, GitLineage("b" * 40, "main", False), fast
    )
    mark_gated(fast, NAME, bad.version)
    lenient = tuned(fast, promotion={"min_agreement": 0})  # let it past Shadow: the canary must catch it
    approve([True])
    with pytest.raises(PromotionRejected, match="canary 25% breached: .*predicted class shares: largest shift"):
        promotion_flow(NAME, version=bad.version, settings=lenient)
    aliases, tags = model_state(fast, NAME)
    assert aliases == {"Production": "1"} and tags["canary_share"] == "0"
    assert "predicted class shares" in history(fast, NAME)[-1].reason


def test_an_unanswered_approval_times_out_as_a_rejection(fast):
    register_versions(fast, 1)
    move(fast, NAME, {Alias.SHADOW: "1"}, actor="test", reason="setup")
    impatient = tuned(fast, promotion={"approval_timeout_seconds": 2})
    with pytest.raises(PromotionRejected, match="approval rejected by timeout: no answer in 2 s"):
        promotion_flow(NAME, settings=impatient)  # nothing in Production: straight to the approval
    assert model_state(fast, NAME)[0] == {}
    assert Tag.AWAITING_APPROVAL not in model_state(fast, NAME)[1]


def test_two_promotions_of_one_model_never_interleave(fast):
    register_versions(fast, 1)
    move(fast, NAME, {Alias.SHADOW: "1"}, actor="test", reason="setup")
    first = threading.Thread(target=lambda: promotion_flow(NAME, settings=fast), daemon=True)
    first.start()
    wait_for(lambda: Tag.AWAITING_APPROVAL in model_state(fast, NAME)[1], 60, "the first promotion to pause", 0.2)
    waiting = json.loads(model_state(fast, NAME)[1][Tag.AWAITING_APPROVAL])
    holder = f"flow run {waiting['run_id']} \\(promote-{NAME}-{Store.of(fast).key}\\)"  # names the store too
    with pytest.raises(
        PromotionBusy, match=f"another promotion of '{NAME}' is in progress: {holder}, pid {os.getpid()}"
    ):
        promotion_flow(NAME, settings=fast)
    time.sleep(1.5)
    answer(waiting["run_id"], approve=True, reviewer="rita", comment="")
    first.join(60)
    assert model_state(fast, NAME)[0] == {"Production": "1"}


def test_a_promotion_cut_short_is_undone_and_the_next_one_starts_cleanly(fast, monkeypatch, approve):
    register_versions(fast, 1)
    move(fast, NAME, {Alias.SHADOW: "1"}, actor="test", reason="setup")
    real_delete = registry.delete_alias

    def crash(settings, name, alias):  # the machine goes down between the alias moves of the last step
        raise ConnectionError("the tracking server went away")

    monkeypatch.setattr(registry, "delete_alias", crash)
    approve([True])
    with pytest.raises(ConnectionError):
        promotion_flow(NAME, settings=fast)
    aliases, tags = model_state(fast, NAME)
    assert Tag.PROMOTION_PENDING in tags and aliases["Production"] == "1"  # half applied

    monkeypatch.setattr(registry, "delete_alias", real_delete)
    approve([True])
    promotion_flow(NAME, settings=fast)
    assert model_state(fast, NAME)[0] == {"Production": "1"}
    assert any("did not finish" in t.reason for t in history(fast, NAME))


def test_approve_names_what_is_wrong_with_the_run_id(fast):
    with pytest.raises(ShipwayError, match="'nope' is not a flow run id"):
        answer("nope", approve=True, reviewer="r", comment="")
    with pytest.raises(ShipwayError, match="flow run 00000000-0000-0000-0000-000000000000 not found"):
        answer("00000000-0000-0000-0000-000000000000", approve=True, reviewer="r", comment="")


def test_status_lists_the_waiting_approval_and_the_history(fast, tmp_path):
    register_versions(fast, 1)
    move(fast, NAME, {Alias.SHADOW: "1"}, actor="alice", reason="trained")
    registry.set_model_tag(
        fast,
        NAME,
        Tag.AWAITING_APPROVAL,
        json.dumps({"run_id": "1234", "stage": "shadow", "version": "1", "since": "2026-11-25T20:00:00+00:00"}),
    )
    done = run_shipway("status", NAME, "--config", str(write_profile(fast, tmp_path / "profile.yaml")), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "waiting for approval: version 1 (shadow)" in done.stdout and "shipway approve 1234" in done.stdout
    assert "Shadow" in done.stdout and "by alice: trained" in done.stdout


def test_a_promotion_stopped_by_a_signal_puts_back_what_it_moved_and_frees_its_lease(small):
    """SIGTERM mid-canary reaches the lease as Prefect's TerminationSignal, Ctrl-C as KeyboardInterrupt."""
    register_versions(small, 2)
    move(small, NAME, {Alias.PRODUCTION: "1", Alias.SHADOW: "2"}, actor="test", reason="setup", canary_share=0.0)
    before = model_state(small, NAME)
    with pytest.raises(KeyboardInterrupt):
        with held(small, NAME, "run-1", "promote-test", actor="test", crashed=lambda *_: None) as lease:
            lease.promoting("2")
            move(small, NAME, {Alias.CANARY: "2"}, actor="test", reason="canary step 25%", canary_share=0.25)
            raise KeyboardInterrupt
    aliases, tags = model_state(small, NAME)
    assert aliases == before[0] and tags[Tag.CANARY_SHARE] == "0"
    assert Tag.PROMOTION_LEASE not in tags
    assert "ended without finishing (it was stopped (KeyboardInterrupt))" in history(small, NAME)[-1].reason
