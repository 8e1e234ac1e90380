"""How well the skew gate catches what breaks models, per batch size.

Run from the repository root:

    .venv/bin/python tests/benchmarks/bench_gate_scenarios.py [--sizes 200,1000,10000,100000] [--repeat 20] [--clean 30]
        [--joint-sizes 1000,10000] [--small 100]

The contract is built from a 30,000-row demo snapshot; each scenario of tests/gate/scenarios.py
is applied `--repeat` times per size (rotating over the columns it can break), and each of the
two clean scenarios (plain, integers as floats) `--clean` times per size. Printed per size:
detection rate (drift scenarios that fail the gate), right-column rate (of those, the failing
columns are exactly the broken ones), false-alarm rate (clean batches that fail), and the
0.25 sd shift separately. Targets: detection >= 95 %, false alarms <= 2 %, right column >= 90 %.

Then the joint skews (tests/gate/scenarios.py JOINT_SCENARIOS, on generated credit data whose columns
relate: a block of 2-3 columns from another row, one stale column; each --repeat times per
--joint-sizes) with detection, right columns (only the moved ones named), batches naming a column
nothing changed (at fail or warn) and false alarms on clean credit rows; targets >= 95 %, >= 90 %,
0 %, <= 1 %. The same on the held-out catalogue (HELD_OUT_SCENARIOS: motor policies, moderate
relations and an unrelated 25-level category), which the check was not tuned on. Last, clean random splits of scikit-learn's small
tables (100-500 training rows, target kept), --small seeds each: false alarms, target <= 2 %.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from configs.settings import GateSettings
from tests.gate.scenarios import (
    HELD_OUT_SCENARIOS,
    JOINT_SCENARIOS,
    SCENARIOS,
    SMALL_TABLES,
    credit_reference,
    policy_reference,
    reference,
    run,
    small_false_alarm,
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="200,1000,10000,100000")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--clean", type=int, default=30)
    parser.add_argument("--joint-sizes", default="1000,10000")
    parser.add_argument("--small", type=int, default=100, help="random splits per small real table")
    parser.add_argument("--detail", action="store_true", help="print every scenario's rates")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    settings = GateSettings()
    ref = reference(settings)
    print(f"load average before: {os.getloadavg()[0]:.2f} (2-core machine)")
    print(f"{'rows':>7}  {'detection':>10}  {'right col':>10}  {'false alarm':>12}  {'0.25 sd':>8}  {'s':>6}")
    for rows in sizes:
        start = time.perf_counter()
        drift = {"runs": 0, "failed": 0, "right": 0}
        clean = {"runs": 0, "failed": 0}
        separate = {"runs": 0, "failed": 0}
        for scenario in SCENARIOS:
            reps = args.repeat if scenario.drift else args.clean
            score = run(scenario, rows, reps, ref, settings)
            target = separate if scenario.separate else drift if scenario.drift else clean
            for key in target:
                target[key] += getattr(score, key)
            if args.detail:
                print(
                    f"    {scenario.name:<28} failed {score.failed}/{score.runs}  right column {score.right}/{score.runs}"
                )
        rate = lambda d, k: d[k] / d["runs"] if d["runs"] else float("nan")
        right = drift["right"] / drift["failed"] if drift["failed"] else float("nan")
        print(
            f"{rows:>7}  {rate(drift, 'failed'):>10.1%}  {right:>10.1%}  {rate(clean, 'failed'):>7.1%} of {clean['runs']:<3}"
            f"  {rate(separate, 'failed'):>8.1%}  {time.perf_counter() - start:>6.1f}"
        )
    for catalogue, joint_ref in [
        (JOINT_SCENARIOS, credit_reference(settings)),
        (HELD_OUT_SCENARIOS, policy_reference(settings)),
    ]:
        print(f"\n{'joint skews':<30} {'rows':>7}  {'failed':>8}  {'right cols':>10}  {'bystander':>9}  {'s/batch':>7}")
        for rows in [int(s) for s in args.joint_sizes.split(",") if s]:
            for scenario in catalogue:
                start = time.perf_counter()
                reps = args.repeat if scenario.drift else args.clean
                score = run(scenario, rows, reps, joint_ref, settings)
                right = f"{score.right / score.failed:>10.1%}" if scenario.drift and score.failed else f"{'-':>10}"
                print(
                    f"{scenario.name:<30} {rows:>7}  {score.failed / score.runs:>8.1%}  {right}  "
                    f"{score.bystander / score.runs:>9.1%}  {(time.perf_counter() - start) / reps:>7.3f}"
                )
    if args.small:
        print(f"\n{'small real table':<30} {'false alarms':>14}")
        for table in SMALL_TABLES:
            failed = [seed for seed in range(args.small) if small_false_alarm(table, seed, settings).verdict == "fail"]
            print(f"{table:<30} {len(failed) / args.small:>7.1%} of {args.small}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
