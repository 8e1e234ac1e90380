"""`shipway train` wall time, cold and warm, per step, and where the orchestration overhead goes.

Run from the repository root:

    .venv/bin/python tests/benchmarks/bench_train.py

Runs `shipway train --json` three times in one fresh temporary working directory: the first run
is cold (empty .shipway/: the snapshot is written, the MLflow database created; Prefect's own
database under PREFECT_HOME is shared and not reset), the second and third are warm (the snapshot is reused, the registry exists). Each run is a new process, in
Prefect's ephemeral mode (PREFECT_API_URL removed from the inherited environment), so the wall
time includes interpreter start, imports and the temporary Prefect server's start and stop.

Per run: the wall time, the step times from the JSON "timings" (snapshot, gate, train, register, quality,
contract, bench, alias; Prefect's per-task overhead included), their sum, and overhead = wall - sum of steps,
split by when Prefect's log lines arrive on stderr (flow run beginning and finishing; the
temporary server starts in its own process while the CLI imports). Then the import cost of the modules, each in a fresh
interpreter (best of 3). Target: warm run <= 15 s on a 2-core machine.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TARGET_WARM = 15.0
STEPS = ("snapshot", "gate", "train", "register", "quality", "contract", "bench", "alias")
# Milestones in Prefect's log on stderr, in the order they appear.
MILESTONES = {"flow begins": "Beginning flow run", "flow done": "' - Finished in state"}


def train_once(workdir: Path, env: dict[str, str]) -> dict:
    """One `shipway train --json`: wall time, step timings and when each milestone was seen."""
    seen: dict[str, float] = {}
    with tempfile.TemporaryFile("w+") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [str(BIN / "shipway"), "train", "--json"],
            cwd=workdir,
            env=env,
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
        )
        err = []
        for line in proc.stderr:
            err.append(line)
            for name, marker in MILESTONES.items():
                if marker in line and name not in seen and (name != "flow done" or "Flow run" in line):
                    seen[name] = time.perf_counter() - start
        proc.wait()
        wall = time.perf_counter() - start
        out.seek(0)
        stdout = out.read()
    if proc.returncode != 0:
        sys.exit(f"shipway train failed (exit {proc.returncode}):\n{''.join(err)[-3000:]}")
    result = json.loads(stdout[stdout.index("{") :])
    return {
        "wall": wall,
        "timings": result["timings"],
        "reused": result["snapshot_reused"],
        "version": result["version"],
        "seen": seen,
    }


def import_cost(statement: str, repeat: int = 3) -> float:
    """Best wall time of `python -c statement` in a fresh interpreter."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", statement], cwd=ROOT, check=True)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    shipway_vars = sorted(k for k in env if k.startswith("SHIPWAY_"))
    print(
        f"bench_train: `shipway train --json`, default profile (demo data), ephemeral Prefect; "
        f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"
    )
    print(
        f"  PREFECT_HOME={env.get('PREFECT_HOME', '~/.prefect')}"
        + (f"; inherited {', '.join(shipway_vars)}" if shipway_vars else "")
    )

    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        runs = [(label, train_once(Path(tmp), env)) for label in ("cold", "warm 1", "warm 2")]

    header = f"{'run':<8}{'wall':>7}" + "".join(f"{s:>10}" for s in STEPS) + f"{'steps':>8}{'overhead':>10}"
    print(f"\n{header}   (seconds)")
    for label, r in runs:
        steps = sum(r["timings"].get(s, 0.0) for s in STEPS)
        cells = "".join(f"{r['timings'].get(s, float('nan')):10.2f}" for s in STEPS)
        note = f"version {r['version']}, snapshot {'reused' if r['reused'] else 'written'}"
        print(f"{label:<8}{r['wall']:7.2f}{cells}{steps:8.2f}{r['wall'] - steps:10.2f}   {note}")

    print("\nwhere the wall time goes, from when Prefect's log lines arrived on stderr (seconds):")
    phases = ("start", "flow run", "exit")
    print(f"{'run':<8}" + "".join(f"{p:>14}" for p in phases))
    for label, r in runs:
        if len(r["seen"]) < len(MILESTONES):
            print(f"{label:<8} milestones missing from the log: {sorted(set(MILESTONES) - set(r['seen']))}")
            continue
        marks = [0.0, *(r["seen"][m] for m in MILESTONES), r["wall"]]
        print(f"{label:<8}" + "".join(f"{b - a:14.2f}" for a, b in itertools.pairwise(marks)))
    print(
        "  start: process start until the flow run begins (interpreter, imports, and meanwhile Prefect's\n"
        "  temporary server starting in its own process); flow run: the steps; exit: flush, server stop"
    )

    print("\nimport cost, fresh interpreter, best of 3 (includes ~interpreter start):")
    for statement in (
        "pass",
        "import prefect",
        "import mlflow",
        "import sklearn.pipeline",
        "import skops.io",
        "import flows.train",
    ):
        print(f"  python -c {statement!r:<26} {import_cost(statement):6.2f} s")

    warm = max(r["wall"] for label, r in runs if label.startswith("warm"))
    print(
        f"\nwarm wall (slower of the two) {warm:.2f} s: target <= {TARGET_WARM:.0f} s "
        f"{'ok' if warm <= TARGET_WARM else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
