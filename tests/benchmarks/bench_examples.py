"""Each example under examples/ end to end, as a user runs it: wall time of training and of the first promotion.

Run from the repository root:

    .venv/bin/python tests/benchmarks/bench_examples.py [EXAMPLE ...]

Per example: a fresh copy in a temporary folder, then the installed `shipway` in it, each command a
new process in Prefect's ephemeral mode (its own PREFECT_HOME, so Prefect's database is created
too): `shipway train --data data.csv --json` (wall time, and the flow's step times from its JSON),
then `shipway promote NAME` with its approval answered by this script the way `shipway approve`
answers it (the paused run's own API), to Production. Prints one row per example.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from configs.settings import ENV_PREFIX, load_settings  # noqa: E402
from core.vocabulary import Tag  # noqa: E402
from flows.resume import resume, run_input, running_api  # noqa: E402
from tasks.release.registry import model_state  # noqa: E402

SHIPWAY = str(Path(sys.executable).with_name("shipway"))
EXAMPLES = {"diabetes-regression": "diabetes-progression", "wine-multiclass": "wine-cultivar",
            "own-pipeline": "churn-own-pipeline"}  # fmt: skip


def shipway(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [SHIPWAY, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def promote(folder: Path, name: str, env: dict[str, str]) -> float:
    """`shipway promote NAME`, each approval answered as it appears; its wall time."""
    settings = load_settings(folder / "shipway.yaml", cwd=folder)
    start = time.perf_counter()
    proc = shipway("promote", name, cwd=folder, env=env)
    answered = set()
    while proc.poll() is None:
        waiting = model_state(settings, name)[1].get(Tag.AWAITING_APPROVAL)
        request = json.loads(waiting) if waiting else None
        key = request and (request["run_id"], request["stage"])
        api = key and key not in answered and running_api(request["run_id"], env["PREFECT_HOME"])
        if api:
            resume(api, uuid.UUID(request["run_id"]), run_input(approve=True, reviewer="bench", comment=""))
            answered.add(key)
        time.sleep(0.2)
    out, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"shipway promote {name} failed ({proc.returncode}):\n{out[-2000:]}\n{err[-2000:]}")
    return time.perf_counter() - start


def bench(example: str, name: str, root: Path) -> dict:
    folder = root / example
    shutil.copytree(ROOT / "examples" / example, folder, ignore=shutil.ignore_patterns(".shipway", "__pycache__"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX) and k != "PREFECT_API_URL"}
    env |= {"SHIPWAY_CONFIG": "shipway.yaml", "PREFECT_HOME": str(root / f"prefect-{example}")}
    start = time.perf_counter()
    proc = shipway("train", "--data", "data.csv", "--json", cwd=folder, env=env)
    out, err = proc.communicate()
    train_s = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"shipway train failed for {example} ({proc.returncode}):\n{err[-3000:]}")
    timings = json.loads(out)["timings"]
    return {"train_s": train_s, "steps": timings, "promote_s": promote(folder, name, env)}


def main() -> None:
    chosen = sys.argv[1:] or list(EXAMPLES)
    print(f"{'example':<22} {'train':>8} {'promote':>8} {'total':>8}  train steps (s)")
    with tempfile.TemporaryDirectory(prefix="bench-examples-") as tmp:
        for example in chosen:
            r = bench(example, EXAMPLES[example], Path(tmp))
            steps = " ".join(f"{k} {v:.1f}" for k, v in r["steps"].items())
            total = r["train_s"] + r["promote_s"]
            print(f"{example:<22} {r['train_s']:>7.1f}s {r['promote_s']:>7.1f}s {total:>7.1f}s  {steps}", flush=True)
    print(f"load average at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
