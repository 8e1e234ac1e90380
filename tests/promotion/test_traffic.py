"""Replayed traffic held by a condition (the demo's: a promotion waiting for approval) sends nothing while
held and resumes after (issue 20, item 11), against a real gateway."""

import threading

import httpx
import pytest

from core.vocabulary import Alias
from serving.server import running
from tasks.data.demo_data import TARGET, generate
from tasks.promotion.traffic import Replay
from tasks.release.aliases import move
from tests.conftest import register_versions, wait_for

pytestmark = pytest.mark.slow  # a registered version and a gateway
NAME = "churn-classifier"


def answered(url: str) -> float:
    """The /invocations requests the gateway has answered (its Prometheus counter, all labels)."""
    lines = httpx.get(f"{url}/metrics", timeout=10).text.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith("shipway_requests_total{"))


def test_a_held_replay_sends_nothing_until_its_condition_clears(small):
    register_versions(small, 1)
    move(small, NAME, {Alias.PRODUCTION: "1"}, actor="test", reason="setup")
    hold, broken = threading.Event(), threading.Event()
    asked: list[bool] = []
    told: list[bool] = []

    def holding() -> bool:
        asked.append(hold.is_set())
        if broken.is_set():
            raise ConnectionError("the registry went away")
        return hold.is_set()

    with running(small) as url:
        replay = Replay(url, generate(200, seed=3), TARGET, hold=holding, on_hold=told.append)
        replay.start()
        try:
            wait_for(lambda: replay.sent >= 20, 60, "replayed traffic")
            hold.set()
            wait_for(lambda: replay.held, 30, "the replay to hold")
            sent, seen = replay.sent, answered(url)
            assert seen == sent  # the gateway counts what the replay sent
            broken.set()  # a condition that cannot be read leaves the replay as it was
            looked = len(asked)
            wait_for(lambda: len(asked) >= looked + 3, 30, "three more looks at the condition")
            assert replay.is_alive() and replay.held
            assert (replay.sent, answered(url)) == (sent, seen)  # nothing sent while held
            broken.clear()
            hold.clear()
            wait_for(lambda: replay.sent >= sent + 20, 60, "traffic again")
        finally:
            replay.stop()
    assert told == [True, False] and not replay.held
    assert replay.statuses == {200: replay.sent}  # a new connection after the hold: every request answered
