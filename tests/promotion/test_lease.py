"""The promotion lease taken before the flow starts (`claimed`), adopted by the flow run (`held`), and
taken over when the process that claimed it was killed while starting up. A registered model without
versions is enough: the lease is a tag of the model; real processes for the kill."""

import os
import signal
import subprocess
import sys
import textwrap
import uuid

import pytest

from core.vocabulary import Tag
from tasks.promotion.lease import STARTING, PromotionBusy, claimed, held, read
from tasks.release import registry
from tests.conftest import REPO, embedded, stop_inside_commits, wait_for, write_profile


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return embedded(tmp_path_factory.mktemp("store"))  # one store for the module: created once


@pytest.fixture
def model(store):
    """A registered model of its own for each test: (settings, name)."""
    name = f"model-{uuid.uuid4().hex[:8]}"
    registry.connect(store)[0].create_registered_model(name)
    return store, name


def test_a_claimed_lease_is_held_at_once_and_refuses_a_second_promotion(model):
    with claimed(*model, actor="test", say=print) as dead:
        assert dead == []
        lease = read(*model)
        assert lease is not None and lease.run_id == STARTING and lease.owner.pid == os.getpid()
        with pytest.raises(PromotionBusy, match=f"in progress: a promotion starting up, pid {os.getpid()} on .*end$"):
            with claimed(*model, actor="second", say=print):
                pass
    assert read(*model) is None  # no flow took it: released


def test_the_flow_adopts_the_claimed_lease_under_its_run_id(model):
    with claimed(*model, actor="test", say=print):
        since = read(*model).since
        with held(*model, "run-1", "promote-x", actor="test", crashed=lambda *_: None) as lease:
            lease.promoting("1")
            found = read(*model)
            assert (found.run_id, found.run_name, found.version) == ("run-1", "promote-x", "1")
            assert found.since == since  # the same lease, not a second one
        assert read(*model) is None  # the flow ended: released by it
    assert read(*model) is None


def test_a_signal_before_the_flow_starts_frees_the_claim(model):
    with pytest.raises(KeyboardInterrupt):
        with claimed(*model, actor="test", say=print):
            raise KeyboardInterrupt
    assert Tag.PROMOTION_LEASE not in registry.model_state(*model)[1]


def test_a_stop_inside_a_commit_of_the_promotion_still_undoes_and_frees_the_lease(model):
    """The stop leaves the store locked by our own connection (tests/core/test_stops.py): unfreed,
    the undo would wait 20 s, fail, and leave the lease for the next promotion to take over."""
    settings, name = model
    client = registry.connect(settings)[0]
    with pytest.raises(KeyboardInterrupt):
        with held(settings, name, "run-1", "promote-x", actor="test", crashed=lambda *_: None, say=print):
            with stop_inside_commits():
                client.create_model_version(name, source="file:///nowhere")
    assert read(settings, name) is None
    assert client.search_model_versions(f"name = '{name}'") == []  # the cut write rolled back


@pytest.mark.slow
@pytest.mark.chaos
def test_a_promotion_killed_while_starting_up_is_taken_over_by_the_next(model, tmp_path):
    """kill -9 while the claiming process loads Prefect: the next claim finds its owner gone."""
    settings, name = model
    profile = write_profile(settings, tmp_path / "profile.yaml")
    script = textwrap.dedent(
        f"""
        import time
        from configs.settings import load_settings
        from tasks.promotion.lease import claimed
        with claimed(load_settings({str(profile)!r}), {name!r}, actor="victim"):
            print("claimed", flush=True)
            time.sleep(600)
        """
    )
    victim = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert victim.stdout.readline().strip() == "claimed"
        assert read(settings, name).owner.pid == victim.pid
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        said: list[str] = []
        with claimed(settings, name, actor="next", say=said.append) as dead:
            assert [(lease.owner.pid, lease.run_id) for lease, _ in dead] == [(victim.pid, STARTING)]
            assert "is gone" in dead[0][1]
            assert read(settings, name).owner.pid == os.getpid()
        assert said and "a promotion starting up" in said[0] and "ended without finishing" in said[0]
    finally:
        victim.kill()
        victim.wait()
    wait_for(lambda: read(settings, name) is None, 5, "the lease released")
