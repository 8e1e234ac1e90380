"""From an approval to the promotion moving on: how long a reviewer's answer takes to act.

Run from the repository root:

    .venv/bin/python tests/benchmarks/bench_approval.py [--repeat 5]

In a temporary working directory (embedded profile, Prefect's temporary server as the CLI starts
it): one registered version, then `repeat` times a promotion of it that pauses for approval. The
clock starts when `shipway approve`'s call (flows.approval.answer) is made and stops when the
flow has left the pause (it deletes the `awaiting_approval` tag right after the pause returns),
watched every 5 ms. Target: <= 2 s (promotion.poll_seconds = 1).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main(repeat: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-approval-") as tmp:
        os.chdir(tmp)
        os.environ["SHIPWAY_DATA__DEMO_ROWS"] = "3000"
        from flows.prefect_server import TemporaryPrefectServer

        server = TemporaryPrefectServer()
        server.start()
        from configs.settings import load_settings
        from core.vocabulary import Alias, Tag
        from flows.approval import answer
        from flows.promote import promotion_flow
        from tasks.release.aliases import move
        from tasks.release.registry import delete_alias, model_state
        from tests.conftest import register_versions

        server.wait()
        settings = load_settings()
        name = settings.training.model_name
        register_versions(settings, 1)
        print(
            f"bench_approval: {repeat} promotions paused for approval, poll_seconds="
            f"{settings.promotion.poll_seconds:g}; {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"
        )
        delays = []
        for _ in range(repeat):
            delete_alias(settings, name, Alias.PRODUCTION)
            move(settings, name, {Alias.SHADOW: "1"}, actor="bench", reason="bench")
            flow = threading.Thread(target=promotion_flow, kwargs={"name": name}, daemon=True)
            flow.start()
            while Tag.AWAITING_APPROVAL not in model_state(settings, name)[1]:
                time.sleep(0.05)
            run_id = json.loads(model_state(settings, name)[1][Tag.AWAITING_APPROVAL])["run_id"]
            time.sleep(1.0)  # paused for a while, as a reviewer would take
            start = time.perf_counter()
            answer(run_id, approve=True, reviewer="bench", comment="")
            answered = time.perf_counter() - start
            while Tag.AWAITING_APPROVAL in model_state(settings, name)[1]:
                time.sleep(0.005)
            delays.append(time.perf_counter() - start)
            print(f"  approval -> flow moving on: {delays[-1]:.2f} s (the answer call itself {answered:.2f} s)")
            flow.join(60)
        median = statistics.median(delays)
        print(
            f"median {median:.2f} s, max {max(delays):.2f} s (target <= 2 s: {'ok' if max(delays) <= 2 else 'MISSED'})"
        )
        os.chdir(ROOT)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    main(parser.parse_args().repeat)
