"""The prediction log's writer: CPU and wall time per row as its table grows, with the gateway's
generated request ids (UUIDv7, growing with time) against uniformly random ones (uuid4 hex).

Run from the repository root:

    .venv/bin/python tests/benchmarks/bench_log_writer.py [--rounds 4] [--rows 50000] [--postgres]

Each round queues --rows one-row predictions (the demo's ten columns, a two-class answer) and
writes them with the writer's own code (`PredictionLog.flush`: batches of serving.log_batch_size
rows, one executemany and one commit each) into the same table, so round k writes into a table of
k x --rows rows. CPU is this process's (the writer runs in the gateway beside the event loop,
holding the GIL for its Python part). SQLite in a temporary directory; with --postgres also the
local PostgreSQL (database `test`, a fresh table per run).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from serving import request_ids  # noqa: E402
from serving.prediction_log import Prediction, PredictionLog, Redactor  # noqa: E402
from serving.schema import Batch  # noqa: E402

ROW = {"age": [41.0], "tenure_months": [12.0], "monthly_charges": [55.3], "total_charges": [600.1],
       "support_calls": [2.0], "data_usage_gb": [3.3], "region": ["north"], "plan": ["basic"],
       "contract": ["monthly"], "payment_method": ["card"]}  # fmt: skip
IDS: dict[str, Callable[[], str]] = {"uuid7 (generated)": request_ids.new, "uuid4": lambda: uuid.uuid4().hex}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--postgres", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        urls = {"sqlite": lambda kind: f"sqlite:///{tmp}/{kind[:5]}.db"}
        if args.postgres:
            from tests.conftest import PG_SERVER, postgres_databases

            with postgres_databases("uuid7", "uuid4") as names:
                urls["postgresql"] = lambda kind: f"postgresql+psycopg://{PG_SERVER}/{names[kind[:5]]}"
                run(urls, args)
        else:
            run(urls, args)


def run(urls: dict[str, Callable[[str], str]], args: argparse.Namespace) -> None:
    for backend, url in urls.items():
        for kind, new_id in IDS.items():
            log = PredictionLog(url(kind), queue_size=args.rows, batch_size=500, flush_interval_s=0.5,
                                redact=Redactor({}, ""))  # fmt: skip
            log.start(writer_thread=False)
            for r in range(args.rounds):
                for _ in range(args.rows):
                    log.add(Prediction(new_id(), datetime.now(UTC), "churn", "1", "production", None,
                                       Batch(ROW, 1), [[0.3, 0.7]], 0.2, None, "production"))  # fmt: skip
                wall, cpu = time.perf_counter(), time.process_time()
                log.flush()
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                print(f"{backend:10} {kind:18} rows {r * args.rows:>9,} -> {(r + 1) * args.rows:>9,}: "
                      f"CPU {cpu / args.rows * 1e6:5.1f} us/row, wall {wall / args.rows * 1e6:5.1f} us/row",
                      flush=True)  # fmt: skip
            log.close()


if __name__ == "__main__":
    main()
