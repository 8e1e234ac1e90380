"""Request reading time against body size: linear, whatever the body's shape. Run from the repository root:

    .venv/bin/python tests/benchmarks/bench_parser.py

For each shape a client (or an attacker) can send (many rows, many column names, long strings,
deep nesting, a CSV of many rows), bodies of growing size up to serving.max_body_bytes are read
the gateway's way (`parse`, then `Schema.coerce` against the demo model's columns, refusals
included) and timed in CPU seconds. Printed: CPU time per KiB at each size and the ratio of the
largest body's per-KiB cost to the smallest's (1.0 is linear; a quadratic step shows as a ratio
growing with size), and the worst body's CPU time against the 2 s target of issue 20.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from serving.registry_reader import Column
from serving.schema import BadInput, Schema, parse
from tests.serving.conformance import DEMO_ROWS, DEMO_TYPES

MAX_BODY = 1 << 20  # serving.max_body_bytes' default
SIZES = (16 << 10, 64 << 10, 256 << 10, 960 << 10)  # the largest with room for its framing under MAX_BODY
TARGET_CPU_S = 2.0
SCHEMA = Schema([Column(name, kind, True) for name, kind in DEMO_TYPES.items()])


def rows(size: int) -> bytes:
    row = list(DEMO_ROWS[0].values())
    n = size // len(json.dumps(row))
    return json.dumps({"dataframe_split": {"columns": list(DEMO_TYPES), "data": [row] * n}}).encode()


def column_names(size: int) -> bytes:
    n = size // 16  # '"c00000000", ' and '0, '
    return json.dumps({"dataframe_split": {"columns": [f"c{i:08d}" for i in range(n)], "data": [[0] * n]}}).encode()


def repeated_names(size: int) -> bytes:
    n = size // 10  # '"age", ' and '1, '
    return json.dumps({"dataframe_split": {"columns": ["age"] * n, "data": [[1] * n]}}).encode()


def long_strings(size: int) -> bytes:
    return json.dumps({"dataframe_records": [dict(DEMO_ROWS[0], plan="x" * size)]}).encode()


def deep_nesting(size: int) -> bytes:
    depth = size // 2
    return b'{"dataframe_records": [{"age": ' + b"[" * depth + b"]" * depth + b"}]}"


def csv_rows(size: int) -> bytes:
    line = ",".join(str(v) for v in DEMO_ROWS[0].values()) + "\n"
    return (",".join(DEMO_TYPES) + "\n" + line * (size // len(line))).encode()


SHAPES: dict[str, tuple[Callable[[int], bytes], str]] = {
    "rows (dataframe_split)": (rows, "application/json"),
    "column names": (column_names, "application/json"),
    "one name repeated": (repeated_names, "application/json"),
    "a long string": (long_strings, "application/json"),
    "deep nesting": (deep_nesting, "application/json"),
    "rows (CSV)": (csv_rows, "text/csv"),
}


def cpu_seconds(body: bytes, content_type: str, repeat: int = 3) -> tuple[float, str]:
    """The fastest of `repeat` reads, and how it ended (read, or the refusal's status)."""
    best, outcome = float("inf"), ""
    for _ in range(repeat):
        start = time.process_time()
        try:
            SCHEMA.coerce(parse(body, content_type))
            outcome = "read"
        except BadInput as refused:
            outcome = f"refused {refused.status}"
        best = min(best, time.process_time() - start)
    return best, outcome


def main() -> None:
    worst = 0.0
    print(f"{'shape':24} {'size KiB':>9} {'CPU ms':>9} {'us/KiB':>8}  outcome")
    for name, (make, content_type) in SHAPES.items():
        per_kib = []
        for size in SIZES:
            body = make(size)
            assert len(body) <= MAX_BODY, (name, len(body))
            seconds, outcome = cpu_seconds(body, content_type)
            worst = max(worst, seconds)
            per_kib.append(seconds * 1e6 / (len(body) / 1024))
            print(f"{name:24} {len(body) / 1024:9.0f} {seconds * 1e3:9.2f} {per_kib[-1]:8.2f}  {outcome}")
        print(f"{'':24} per-KiB cost, largest / smallest body: {per_kib[-1] / per_kib[0]:.2f}")
    verdict = "met" if worst <= TARGET_CPU_S else "NOT met"
    print(f"\nworst body: {worst:.3f} s of CPU, target <= {TARGET_CPU_S:g} s: {verdict}")


if __name__ == "__main__":
    main()
