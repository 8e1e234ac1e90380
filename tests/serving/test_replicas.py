"""Three gateway replicas behind HAProxy (health check GET /ping), one PostgreSQL prediction log and
one registry, carrying a whole promotion under replayed traffic; one replica is killed with SIGKILL
mid-canary. The recipe docs/operations.md describes, run for real."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest

from core.vocabulary import Alias
from flows.approval import AutoApprover
from flows.promote import promotion_flow
from serving import json_rows
from serving.prediction_log import read_window
from serving.server import running
from tasks.benchmark.loadgen import Connection, request_bytes
from tasks.data.demo_data import TARGET, generate
from tasks.release.aliases import history, move
from tests.conftest import PG_SERVER, QUICK_PROMOTION, free_port, postgres_databases, register_versions, tuned, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.usefixtures("prefect_harness")]

REPLICAS = 3
KEYS = 400  # the clients' request keys, cycled through
ROWS = 2001  # the rows they send, cycled through: fewer would look like drift to the shadow analysis's gate.
# Coprime with KEYS: each time around, a row comes with another key, so each arm's rows are a fresh random
# half, as independent requests are (at 2,000, a key always brought the same five rows: the canary's fixed
# half once breached 'predicted class shares' between two copies of one model).
# Enough requests per canary step for a whole cycle of keys after every replica took the share.
MIN_REQUESTS = 300
UP_S = 180  # three gateways and three Shadow processes starting at once on a loaded 2-core machine


def haproxy_config(port: int, backends: list[int]) -> str:
    servers = "\n".join(f"    server g{i} 127.0.0.1:{p} check" for i, p in enumerate(backends))
    # A refused connection (a replica just killed, before its checks fail) is tried on another one;
    # a request already sent to it is lost with it.
    return f"""global
    maxconn 512
defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    retries 3
    option redispatch 1
frontend gateways
    bind 127.0.0.1:{port}
    default_backend replicas
backend replicas
    balance roundrobin
    option httpchk GET /ping
    http-check expect status 200
    default-server inter 200ms fall 2 rise 1
{servers}
"""


def customer_keys() -> list[str]:
    """KEYS request keys, a quarter of them hashed below 0.25 and a quarter between 0.25 and 0.5 (the
    canary's side of the gateway's hash at shares 25% and 50%): a whole cycle of them should reach
    Canary in exactly the share's proportion, whatever the sample of customers."""
    strata: dict[int, list[str]] = {0: [], 1: [], 2: []}
    wanted = {0: KEYS // 4, 1: KEYS // 4, 2: KEYS // 2}
    n = 0
    while any(len(strata[s]) < wanted[s] for s in strata):
        key = f"customer-{n}"
        point = zlib.crc32(key.encode()) / 2**32
        stratum = 0 if point < 0.25 else 1 if point < 0.5 else 2
        if len(strata[stratum]) < wanted[stratum]:
            strata[stratum].append(key)
        n += 1
    keys = strata[0] + strata[1] + strata[2]
    random.Random(0).shuffle(keys)
    return keys


class Load(threading.Thread):
    """A client sending one-row requests through `url` as fast as answered, request key and id its own
    (`load-N`, keys cycled); a failed request (an error status, or the connection closed under it)
    is counted and the next goes on a new connection."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url = url
        self.keys = customer_keys()
        frame = generate(ROWS, seed=7).drop(columns=[TARGET])
        columns = list(frame.columns)
        self.bodies = [
            orjson.dumps({"dataframe_split": {"columns": columns, "data": [row]}}) for row in json_rows(frame)
        ]
        self.statuses: dict[int | str, int] = {}
        self.failed = 0
        self._halt = threading.Event()

    def run(self) -> None:
        connection: Connection | None = None
        n = 0
        while not self._halt.is_set():
            headers = {"X-Request-Id": f"load-{n}", "X-Request-Key": self.keys[n % KEYS]}
            try:
                connection = connection or Connection(self.url)
                status, _ = connection.send(
                    request_bytes(self.url, "/invocations", self.bodies[n % ROWS], headers=headers)
                )
            except (OSError, RuntimeError) as exc:
                status = type(exc).__name__
                connection = None
            self.statuses[status] = self.statuses.get(status, 0) + 1
            self.failed += status != 200
            n += 1

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


class Watch(threading.Thread):
    """Each live replica's /health every 0.1 s: what it serves, and its log's written rows."""

    def __init__(self, urls: list[str]):
        super().__init__(daemon=True)
        self.urls = urls
        self.live = set(range(len(urls)))
        self.samples: list[tuple[float, int, dict]] = []  # (time.time(), replica, /health)
        self._halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._halt.wait(0.1):
                for i in sorted(self.live):
                    try:
                        self.samples.append((time.time(), i, client.get(f"{self.urls[i]}/health").json()))
                    except httpx.HTTPError:
                        pass

    def latest(self, replica: int) -> dict | None:
        found = [doc for _, i, doc in reversed(self.samples) if i == replica]
        return found[0] if found else None

    def all_serve(self, share: float) -> bool:
        docs = [self.latest(i) for i in self.live]
        return all(d is not None and d["serving"].get("Canary") and d["canary_share"] == share for d in docs)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


def served(doc: dict) -> tuple:
    return (doc["serving"].get("Production", {}).get("version"), doc["serving"].get("Canary", {}).get("version"),
            doc["canary_share"])  # fmt: skip


def test_three_replicas_behind_haproxy_carry_a_promotion_and_one_killed_mid_canary_costs_its_in_flight_requests(
    small, tmp_path
):
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        if os.environ.get("CI"):
            raise AssertionError("haproxy is not installed: .ci/run installs it")
        pytest.skip("no haproxy (apt-get install -y haproxy); CI runs this test")
    with postgres_databases("log") as names, ExitStack() as stack:
        settings = tuned(
            small,
            promotion=QUICK_PROMOTION["promotion"] | {"min_requests": MIN_REQUESTS},
            serving={"poll_interval_s": 0.3, "log_flush_interval_s": 0.1, "state_dir": ""},
            prediction_log={"url": f"postgresql+psycopg://{PG_SERVER}/{names['log']}"},
        )
        name = settings.training.model_name
        register_versions(settings, 2)
        move(settings, name, {Alias.PRODUCTION: "1", Alias.SHADOW: "2"}, actor="test", reason="setup")

        gateways = [running(settings, isolated=True) for _ in range(REPLICAS)]
        # Started at once (each takes seconds to import and load), by threads that live as long as the
        # gateways: a child dies with the thread that started it (Linux's parent-death signal).
        pool = stack.enter_context(ThreadPoolExecutor(REPLICAS))
        urls = list(pool.map(lambda cm: cm.__enter__(), gateways))
        for cm in gateways:
            stack.push(cm.__exit__)
        port = free_port()
        config = tmp_path / "haproxy.cfg"
        config.write_text(haproxy_config(port, [int(u.rsplit(":", 1)[1]) for u in urls]))
        said = stack.enter_context((tmp_path / "haproxy.log").open("w"))
        balancer = subprocess.Popen([haproxy, "-f", str(config), "-db"], stdout=said, stderr=subprocess.STDOUT)
        stack.callback(lambda: (balancer.terminate(), balancer.wait(10)))
        front = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: _ok(f"{front}/ping"), 30, "HAProxy to answer")
        except AssertionError:
            raise AssertionError((tmp_path / "haproxy.log").read_text()) from None

        watch = Watch(urls)
        watch.start()
        stack.callback(watch.stop)
        # Traffic through the balancer, one keep-alive connection: at most one request in flight.
        replay = Load(front)
        replay.start()
        stack.callback(replay.stop)
        wait_for(lambda: all((d := watch.latest(i)) and d["shadow_process"]["state"] == "running"
                             for i in range(REPLICAS)), UP_S, "every replica's Shadow process")  # fmt: skip

        approver = AutoApprover(settings, name, [True, True], reviewer="rita", comment="replicas")
        approver.start()
        stack.callback(approver.stop)
        killed: dict[str, float | int] = {}

        def kill_one_mid_canary() -> None:
            wait_for(lambda: watch.all_serve(0.25), 300, "every replica to serve the 25% canary")
            keys_agree(urls, name)
            doc = watch.latest(REPLICAS - 1)
            killed["failed_before"] = replay.failed
            watch.live.discard(REPLICAS - 1)
            os.kill(doc["pid"], signal.SIGKILL)
            killed["at"] = time.time()

        killer = threading.Thread(target=kill_one_mid_canary, daemon=True)
        killer.start()
        result = promotion_flow(name, settings=settings)
        killer.join(10)
        time.sleep(1)  # the last rows' flush
        replay.stop()
        watch.stop()

        # The promotion finished: Production moved to 2, every surviving replica serves it.
        assert (result.version, result.previous) == ("2", "1")
        for i in range(REPLICAS - 1):
            assert served(watch.latest(i))[0] == "2"
        # The kill cost the request in flight to it, and at most one more (seen once in a fresh-clone
        # run: the next connection, before the balancer's retry moved it on); then it routed around it.
        assert "at" in killed, "no replica was killed mid-canary"
        assert killed["failed_before"] == 0 and replay.failed <= 2, replay.statuses
        assert replay.statuses[200] > 4 * MIN_REQUESTS

        moves = adoption(settings, name, watch, killed["at"])
        log = read_window(settings.prediction_log.url, datetime.now(UTC) - timedelta(hours=1),
                          datetime.now(UTC) + timedelta(minutes=1), model_name=name)  # fmt: skip
        log = log[log.role != "shadow"]
        evidence = {e["stage"]: e for e in map(orjson.loads, result.evidence)}
        for share in (0.25, 0.5):
            stage = evidence[f"canary {share:.0%}"]
            # Each analysis counted the rows of the log every replica writes: enough of both routes.
            assert min(stage["requests"]["canary"], stage["requests"]["production"]) >= MIN_REQUESTS
            observed = canary_share_over_a_cycle(log, moves, share)
            assert abs(observed - share) <= 0.02, (share, observed)
        wrote = {i: [doc["prediction_log"]["written"] for _, j, doc in watch.samples if j == i] for i in range(3)}
        assert all(w and w[-1] > w[0] for w in wrote.values()), "a replica wrote nothing to the shared log"


def keys_agree(urls: list[str], name: str) -> None:
    """A request key reaches the same version on every replica (asked directly, not through the balancer)."""
    body = orjson.dumps({"dataframe_split": _one_row()})
    answers: dict[str, set[str]] = {}
    with httpx.Client(timeout=10) as client:
        for k in range(40):
            key = f"key-{k}"
            for url in urls:
                answer = client.post(f"{url}/invocations", content=body,
                                     headers={"Content-Type": "application/json", "X-Request-Key": key})  # fmt: skip
                assert answer.status_code == 200
                answers.setdefault(key, set()).add(answer.headers["x-model-version"])
    assert all(len(v) == 1 for v in answers.values()), answers
    assert {v for versions in answers.values() for v in versions} == {"1", "2"}  # both routes were asked
    expected = {f"key-{k}": "2" if zlib.crc32(f"key-{k}".encode()) / 2**32 < 0.25 else "1" for k in range(40)}
    assert {k: next(iter(v)) for k, v in answers.items()} == expected


def adoption(settings, name: str, watch: Watch, killed_at: float) -> dict[float, tuple[float, float | None]]:
    """For each canary share the flow set: when every live replica served it, and when the next move came.
    Prints each replica's delay after each move of the registry (docs/operations.md quotes it)."""
    moves = [(datetime.fromisoformat(t.at).timestamp(), t) for t in history(settings, name)]
    shares = [(at, float(t.version)) for at, t in moves if t.alias == "canary_share"]
    windows: dict[float, tuple[float, float | None]] = {}
    for n, (at, share) in enumerate(shares):
        if share == 0:
            continue
        delays = {}
        for i in range(REPLICAS):  # the replica's own clock of the change, not the 0.1 s sampling
            seen = [doc for t, j, doc in watch.samples if j == i and t >= at and doc["canary_share"] == share]
            if seen:
                delays[i] = datetime.fromisoformat(seen[0]["routes_changed"]).timestamp() - at
            else:
                assert i == REPLICAS - 1 and killed_at < at + 5, f"replica {i} never served canary share {share}"
        print(f"canary share {share}: served by replicas {sorted(delays)} after {[f'{d:.2f}' for d in delays.values()]} s"
              f" (serving.poll_interval_s {settings.serving.poll_interval_s})")  # fmt: skip
        following = shares[n + 1][0] if n + 1 < len(shares) else None
        windows[share] = (at + max(delays.values()), following)
    return windows


def canary_share_over_a_cycle(log, moves, share: float) -> float:
    """Of the clients' requests from the first answered once every replica served `share`, a whole cycle
    of their keys (KEYS requests): the share the replicas routed to Canary."""
    start, end = moves[share]
    rows = log[log.request_id.str.startswith("load-")].copy()
    rows["n"] = rows.request_id.str.split("-").str[1].astype(int)
    ts = rows.ts.map(lambda t: t.timestamp())
    rows = rows[(ts >= start) & ((ts < end) if end is not None else True)].sort_values("n")
    assert len(rows) >= KEYS, f"only {len(rows)} requests at canary share {share}: fewer than a cycle of keys"
    first = int(rows.n.iloc[0])
    cycle = rows[(rows.n >= first) & (rows.n < first + KEYS)]
    return float((cycle.route == "canary").mean())


def _one_row() -> dict:
    frame = generate(1, seed=3).drop(columns=[TARGET])
    return {"columns": list(frame.columns), "data": json_rows(frame)}


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
