"""kill -9 of `shipway promote` at each stage: the next `shipway promote` takes over, with the aliases and
the canary share as they were before the killed promotion (issue 12, item 2). How fast is measured by
tests/benchmarks/bench_chaos.py, not here: a busy machine would fail a timed test, not slow code.

Real processes: each promotion is the `shipway` command in its own process (Prefect's ephemeral mode
on this test's own PREFECT_HOME), killed with SIGKILL; a real gateway carries replayed traffic.
"""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from configs.settings import load_settings
from core.errors import ShipwayError
from core.lifeline import GRACE_S
from core.vocabulary import Alias, Tag
from flows.resume import resume, running_api
from serving.server import running
from tasks.data.demo_data import TARGET, generate
from tasks.promotion.lease import STARTING
from tasks.promotion.traffic import Replay
from tasks.release.aliases import history, move
from tasks.release.registry import model_state
from tests.conftest import register_versions

pytestmark = [pytest.mark.slow, pytest.mark.chaos]
NAME = "churn-classifier"
SHIPWAY = str(Path(sys.executable).with_name("shipway"))


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory):
    return tmp_path_factory.mktemp("prefect-home")  # one database for the module: migrated once


@pytest.fixture
def fast(small, monkeypatch, prefect_home):
    for key, value in {
        "PROMOTION__MIN_REQUESTS": "60",
        "PROMOTION__MIN_LABELED": "30",
        "PROMOTION__STEP_SECONDS": "120",
        "PROMOTION__CANARY_STEPS": "[0.25, 0.5]",
        "PROMOTION__LEASE_SECONDS": "9",
        "PROMOTION__PROGRESS_SECONDS": "2",
        "SERVING__POLL_INTERVAL_S": "0.3",
        "DATA__DEMO_ROWS": "3000",
    }.items():
        monkeypatch.setenv(f"SHIPWAY_{key}", value)
    monkeypatch.setenv("PREFECT_HOME", str(prefect_home))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    return load_settings()


def promote(settings, log: Path | None = None) -> subprocess.Popen:
    """`shipway promote` in its own process, its output in a file (a pipe nobody reads would block it)."""
    log = log or Path.cwd() / f"promote-{time.monotonic_ns()}.log"
    print(f"shipway promote: output in {log}")
    with log.open("w") as out:
        return subprocess.Popen([SHIPWAY, "promote", NAME], cwd=Path.cwd(), stdout=out, stderr=subprocess.STDOUT)


def wait_for(what: str, check, timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"never saw: {what}"
        time.sleep(0.2)
    return found


def lease(settings) -> dict | None:
    text = model_state(settings, NAME)[1].get(Tag.PROMOTION_LEASE)
    return json.loads(text) if text else None


def state(settings) -> tuple[dict, str | None]:
    aliases, tags = model_state(settings, NAME)
    return aliases, tags.get(Tag.CANARY_SHARE)


@dataclass(frozen=True)
class Takeover:
    """Seconds from the kill until: the dead promotion's moves were undone and its lease freed
    (`undone`), the next promotion held the lease (`held`), its flow run had adopted it (`flow`)."""

    undone: float
    held: float
    flow: float


def kill_and_take_over(settings, victim: subprocess.Popen, prefect_home: Path) -> tuple[Takeover, subprocess.Popen]:
    """SIGKILL the promotion and start the next one at once: the dead promotion's moves are undone (its
    lease freed), then the next one holds the lease, its flow run adopts it, and the dead run is Crashed."""
    dead = lease(settings)
    children = psutil.Process(victim.pid).children(recursive=True)  # its temporary Prefect server
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    killed = time.monotonic()
    successor = promote(settings)
    times: dict[str, float] = {}

    def run_id() -> str | None:
        run = (lease(settings) or {}).get("run_id")
        if run != dead["run_id"]:
            times.setdefault("undone", time.monotonic() - killed)
            if run is not None:
                times.setdefault("held", time.monotonic() - killed)
        return run

    wait_for("the next promotion taking the lease", lambda: run_id() not in (None, dead["run_id"]))
    wait_for("the next promotion's flow run adopting it", lambda: run_id() not in (None, dead["run_id"], STARTING))
    took = Takeover(times["undone"], times["held"], time.monotonic() - killed)
    # Its temporary Prefect server died with it: SIGTERM at once, then a graceful stop that the
    # lifeline ends after GRACE_S at the latest (once seen in CI still draining after 5 s).
    _, alive = psutil.wait_procs(children, timeout=GRACE_S + 5)
    assert not alive, f"outlived the killed promotion: {alive}"

    def crashed() -> bool:
        with sqlite3.connect(prefect_home / "prefect.db") as db:
            (state,) = db.execute("SELECT state_type FROM flow_run WHERE id = ?", (dead["run_id"],)).fetchone()
        return state == "CRASHED"

    wait_for("the dead promotion's flow run marked Crashed", crashed)
    print(
        f"kill -9 -> dead promotion undone in {took.undone:.1f} s, next promotion held the lease in {took.held:.1f} s, "
        f"its flow run in {took.flow:.1f} s"
    )
    return took, successor


def approve(api: str, run_id: str) -> bool:
    """The request is announced just before the flow pauses: False until the pause is there to answer."""
    try:
        resume(api, uuid.UUID(run_id), {"decision": "approve", "reviewer": "rita", "comment": ""})
    except ShipwayError:
        return False
    return True


def stop(process: subprocess.Popen) -> None:
    for child in psutil.Process(process.pid).children(recursive=True):
        child.kill()
    process.kill()
    process.wait()


@pytest.fixture
def in_production(fast):
    """Version 1 Production, version 2 Shadow, canary share 0, and live traffic through a real gateway."""
    register_versions(fast, 2)
    move(fast, NAME, {Alias.PRODUCTION: "1", Alias.SHADOW: "2"}, actor="test", reason="setup", canary_share=0.0)
    with running(fast) as url:
        replay = Replay(url, generate(2_000, seed=7), TARGET, max_rate=150)
        replay.start()
        yield fast
        replay.stop()


def test_killed_while_waiting_for_traffic(fast, prefect_home):
    register_versions(fast, 2)
    move(fast, NAME, {Alias.PRODUCTION: "1", Alias.SHADOW: "2"}, actor="test", reason="setup", canary_share=0.0)
    before = state(fast)
    victim = promote(fast)  # no traffic at all: the shadow analysis waits
    wait_for("the promotion waiting for traffic", lambda: (lease(fast) or {}).get("version") == "2")
    time.sleep(3)
    _, successor = kill_and_take_over(fast, victim, prefect_home)
    try:
        assert state(fast) == before
    finally:
        stop(successor)


def test_killed_while_paused_for_approval(fast, prefect_home):
    register_versions(fast, 1)
    move(fast, NAME, {Alias.SHADOW: "1"}, actor="test", reason="setup", canary_share=0.0)
    before = state(fast)
    victim = promote(fast)  # nothing in Production: straight to the approval
    wait_for("the approval request", lambda: Tag.AWAITING_APPROVAL in model_state(fast, NAME)[1])
    _, successor = kill_and_take_over(fast, victim, prefect_home)
    try:
        assert state(fast) == before
        waiting = wait_for("the new approval request", lambda: model_state(fast, NAME)[1].get(Tag.AWAITING_APPROVAL))
        assert json.loads(waiting)["run_id"] == lease(fast)["run_id"]  # the request of the dead run is gone
    finally:
        stop(successor)


def test_killed_mid_canary(in_production, prefect_home):
    settings = in_production
    before = state(settings)
    victim = promote(settings)
    waiting = wait_for("the shadow approval", lambda: model_state(settings, NAME)[1].get(Tag.AWAITING_APPROVAL))
    run_id = json.loads(waiting)["run_id"]
    api = wait_for("the paused promotion's Prefect API", lambda: running_api(run_id))
    wait_for("the approval taken", lambda: approve(api, run_id))
    wait_for(  # the step applied and its journal closed: the promotion waits for the canary's traffic
        "the first canary step",
        lambda: (
            state(settings) == ({"Production": "1", "Shadow": "2", "Canary": "2"}, "0.25")
            and Tag.PROMOTION_PENDING not in model_state(settings, NAME)[1]
        ),
    )
    _, successor = kill_and_take_over(settings, victim, prefect_home)
    try:
        assert state(settings) == before  # the canary lost its share and its alias
        assert "ended without finishing" in history(settings, NAME)[-1].reason
    finally:
        stop(successor)


def test_sigterm_while_waiting_for_traffic_ends_cleanly_and_undoes_the_promotion(fast, prefect_home):
    register_versions(fast, 2)
    move(fast, NAME, {Alias.PRODUCTION: "1", Alias.SHADOW: "2"}, actor="test", reason="setup", canary_share=0.0)
    before = state(fast)
    output = Path.cwd() / "stopped.log"
    promotion = promote(fast, output)  # no traffic: the shadow analysis waits
    wait_for("the promotion waiting for traffic", lambda: "waiting for traffic" in output.read_text())
    run_id = lease(fast)["run_id"]
    promotion.send_signal(signal.SIGTERM)
    assert promotion.wait(timeout=60) == 143  # documented in flows/cli.py
    said = output.read_text()
    assert "Traceback" not in said and said.rstrip().endswith("shipway: stopped by SIGTERM")
    assert lease(fast) is None and state(fast) == before
    with sqlite3.connect(prefect_home / "prefect.db") as db:
        (crashed,) = db.execute("SELECT state_type FROM flow_run WHERE id = ?", (run_id,)).fetchone()
    assert crashed == "CRASHED"
