"""How fast the CLI answers: bad input refused before Prefect starts, and `shipway approve`.

Run from the repository root:

    .venv/bin/python tests/benchmarks/bench_cli.py [--repeat 3]

In a temporary working directory (embedded profile, each command a fresh `shipway` process as a
user runs it), wall time of:
- `shipway approve nope` (not a flow run id) and `shipway train --data missing.csv`: target < 1 s;
- a usage error (`shipway frobnicate`, `shipway status --nope`), `shipway status NAME` (a
  registered model), `shipway validate --model NAME@Production` on a 28-row batch: target <= 3 s
  warm on a quiet machine (issue 22);
- `shipway approve RUN_ID` answering a real `shipway promote` paused for approval in another
  process: target <= 3 s on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
SHIPWAY = str(Path(sys.executable).with_name("shipway"))


CPU: dict[str, list[float]] = {}  # label -> CPU seconds (user + system) of each timed run


def timed(args: list[str], cwd: str) -> tuple[float, subprocess.CompletedProcess]:
    """Wall time of one run; its CPU time (user + system, on a shared machine the steadier figure)
    is kept in CPU under the command's arguments."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([SHIPWAY, *args], cwd=cwd, capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    CPU.setdefault(" ".join(args), []).append(cpu)
    return wall, done


def report(label: str, times: list[float], target: float, args: list[str] | None = None) -> None:
    worst = max(times)
    cpu = CPU.get(" ".join(args), [])[-len(times) :] if args else []
    print(
        f"  {label:<42} median {statistics.median(times):5.2f} s  max {worst:5.2f} s  "
        + (f"cpu {statistics.median(cpu):5.2f} s  " if cpu else "")
        + f"(target {'<' if target < 2 else '<='} {target:g} s: {'ok' if worst <= target else 'MISSED'})"
    )


def main(repeat: int) -> None:
    print(f"bench_cli: {repeat} runs each; {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="bench-cli-") as tmp:
        os.chdir(tmp)
        os.environ["SHIPWAY_DATA__DEMO_ROWS"] = "3000"
        bad_id, missing = [], []
        for _ in range(repeat):
            seconds, done = timed(["approve", "nope"], tmp)
            assert done.returncode == 2, done.stderr
            bad_id.append(seconds)
            seconds, done = timed(["train", "--data", "missing.csv"], tmp)
            assert done.returncode == 2, done.stderr
            missing.append(seconds)
        print(f"  ({done.stderr.strip()})")
        report("shipway approve nope", bad_id, 1.0, ["approve", "nope"])
        report("shipway train --data missing.csv", missing, 1.0, ["train", "--data", "missing.csv"])

        from configs.settings import load_settings
        from core.vocabulary import Alias, Tag
        from tasks.release.aliases import move
        from tasks.release.registry import delete_alias, model_state
        from tests.conftest import register_versions

        settings = load_settings()
        name = settings.training.model_name
        [(_, trained, snapshot)] = register_versions(settings, 1)
        from tasks.data.demo_data import TARGET, generate
        from tasks.gate.skew import contract_for_snapshot
        from tasks.release.registry import log_contract

        # Its contract, as the training flow logs it: validate checks against it, not one rebuilt.
        log_contract(settings, name, "1", contract_for_snapshot(settings, snapshot, TARGET, trained.features))
        move(settings, name, {Alias.PRODUCTION: "1"}, actor="bench", reason="bench")

        generate(28, seed=5).drop(columns=[TARGET]).to_csv("batch.csv", index=False)
        commands = {
            "shipway frobnicate (usage error)": (["frobnicate"], 2),
            "shipway status --nope (usage error)": (["status", "--nope"], 2),
            f"shipway status {name}": (["status", name], 0),
            "shipway validate --model NAME@Production (28 rows)": (
                ["validate", "--model", f"{name}@Production", "--batch", "batch.csv"], 0),
        }  # fmt: skip
        for label, (args, code) in commands.items():
            times = []
            for _ in range(repeat + 1):  # the first run warms the file cache: not counted
                seconds, done = timed(args, tmp)
                assert done.returncode == code, (args, done.returncode, done.stderr[-500:])
                times.append(seconds)
            report(label, times[1:], 3.0, args)
        delete_alias(settings, name, Alias.PRODUCTION)
        approvals = []
        for _ in range(repeat):
            delete_alias(settings, name, Alias.PRODUCTION)
            move(settings, name, {Alias.SHADOW: "1"}, actor="bench", reason="bench")
            promote = subprocess.Popen([SHIPWAY, "promote", name], cwd=tmp, stdout=subprocess.PIPE, text=True)
            deadline = time.monotonic() + 120
            while Tag.AWAITING_APPROVAL not in model_state(settings, name)[1]:
                assert time.monotonic() < deadline and promote.poll() is None, "the promotion never paused"
                time.sleep(0.1)
            run_id = json.loads(model_state(settings, name)[1][Tag.AWAITING_APPROVAL])["run_id"]
            time.sleep(1.0)  # paused for a while, as a reviewer would take
            seconds, done = timed(["approve", run_id, "--comment", "bench"], tmp)
            assert done.returncode == 0, done.stderr
            approvals.append(seconds)
            CPU.setdefault("approve RUN_ID", []).append(CPU.pop(f"approve {run_id} --comment bench")[0])
            promote.communicate(timeout=120)
            print(f"  shipway approve RUN_ID: {seconds:.2f} s (promote exit {promote.returncode})")
        report("shipway approve RUN_ID (a paused promote)", approvals, 3.0, ["approve", "RUN_ID"])
        os.chdir(ROOT)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    main(parser.parse_args().repeat)
