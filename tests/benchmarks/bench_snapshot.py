"""Snapshot throughput and peak memory on a 1,000,000-row x 20-column frame.

Run from the repository root:

    .venv/bin/python tests/benchmarks/bench_snapshot.py [--rows N] [--repeat K]

The frame (fixed seed): 14 float64 columns (4 with 2-5 % nulls), 3 int64 columns and 3 string
columns with 3-6 distinct values (one with 3 % nulls). Every measurement runs in a fresh
subprocess that builds the frame itself, so its peak RSS (getrusage ru_maxrss) is clean:

- snapshot:  tasks.data.snapshot.write_snapshot(df, "bench", LocalStore(tmp)) into an empty store;
- parts:     canonicalize, content_hash, profile, _write_parquet and the fsync of the file, timed
             one by one;
- again:     write_snapshot of the identical data into the same store (must write nothing);
- read:      read_snapshot (reads the Parquet file and re-hashes it).

Memory is reported as (peak RSS - RSS before the frame was built) / frame size, which includes
the frame itself, and as the extra over the RSS just before the measured call. The peak is
reset (/proc/self/clear_refs) before each measured call where the kernel allows it, so the
transient memory of building the frame does not count. MB = 10**6 bytes.
Targets: >= 100 MB/s of Parquet written, peak memory <= 3x the frame's in-memory size.
"""

from __future__ import annotations

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
MB = 1e6
TARGET_MBPS = 100.0
TARGET_MEMORY = 3.0


# --- worker side (runs in a fresh subprocess) ------------------------------------------------------


def build_frame(rows: int):
    """The benchmark frame, built column by column so that building it needs little extra memory."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(20240601)
    columns = {}
    for i in range(14):
        values = rng.normal(loc=i, scale=1 + i, size=rows)
        if i % 4 == 1:  # columns f01, f05, f09, f13: 2-5 % nulls
            values[rng.random(rows) < 0.02 + 0.01 * (i // 4)] = np.nan
        columns[f"f{i:02d}"] = values
    for i in range(3):
        columns[f"i{i}"] = rng.integers(0, 10 ** (i + 2), size=rows, dtype=np.int64)
    for i, levels in enumerate(
        (
            ["basic", "standard", "premium"],
            ["north", "south", "east", "west"],
            ["web", "mobile", "store", "phone", "partner", "other"],
        )
    ):
        values = np.array(levels, dtype=object)[rng.integers(0, len(levels), size=rows)]
        if i == 1:
            values[rng.random(rows) < 0.03] = None
        columns[f"s{i}"] = pd.Series(values, dtype="str")
    return pd.DataFrame(columns)


def rss_bytes() -> int:
    """Current resident set size."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def reset_peak() -> bool:
    """Reset the peak RSS to the current RSS (Linux >= 4.0); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return peak_bytes() <= rss_bytes() + 4 * 2**20


def measured(fn, *args):
    """(result, seconds, peak RSS during the call, RSS just before the call)."""
    before = rss_bytes()
    reset_peak()
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start, peak_bytes(), before


def worker(mode: str, store_dir: str, rows: int) -> dict:
    sys.path.insert(0, str(ROOT))
    import gc

    from tasks.data import snapshot as snap
    from tasks.data.storage import LocalStore

    store = LocalStore(Path(store_dir))
    rss0 = rss_bytes()
    if mode == "read":  # no frame to build: the read makes it
        snapshot_id = next(p.name for p in Path(store_dir).iterdir() if p.is_dir())
        result, seconds, peak, before = measured(snap.read_snapshot, store, snapshot_id)
        return {
            "frame_bytes": int(result.frame.memory_usage(deep=True).sum()),
            "rss_before_frame": rss0,
            "seconds": seconds,
            "peak": peak,
            "rss_before": before,
            "rows": len(result.frame),
        }
    df = build_frame(rows)
    gc.collect()
    out = {"frame_bytes": int(df.memory_usage(deep=True).sum()), "rss_before_frame": rss0, "peak_reset": reset_peak()}

    if mode in ("snapshot", "again"):
        result, seconds, peak, before = measured(snap.write_snapshot, df, "bench", store)
        out |= {
            "seconds": seconds,
            "peak": peak,
            "rss_before": before,
            "id": result.id,
            "created": result.created,
            "data_bytes": result.manifest.data_bytes,
        }
    elif mode == "parts":
        frame, out["canonicalize"], peak, before = measured(snap.canonicalize, df)
        out["peaks"] = {"canonicalize": (peak, before)}
        for name, fn in (("content_hash", snap.content_hash), ("profile", snap.profile)):
            _, out[name], peak, before = measured(fn, frame)
            out["peaks"][name] = (peak, before)
        path = Path(store_dir) / "parts.parquet"
        _, out["parquet_write"], peak, before = measured(snap._write_parquet, frame, path)
        out["peaks"]["parquet_write"] = (peak, before)
        out["parquet_bytes"] = path.stat().st_size
        start = time.perf_counter()  # LocalStore.staged fsyncs the file before renaming it
        with open(path, "rb+") as fh:
            os.fsync(fh.fileno())
        out["fsync"] = time.perf_counter() - start
        path.unlink()
    return out


# --- driver side (stays small: no pandas here, so its memory cannot leak into the workers) ---------


def run_worker(mode: str, store_dir: str, rows: int) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--worker", mode, store_dir, str(rows)], capture_output=True, text=True, cwd=ROOT
    )
    if done.returncode != 0:
        sys.exit(f"worker '{mode}' failed (exit {done.returncode}):\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def listing(root: str) -> dict[str, tuple[int, int]]:
    """Every file under root (hidden ones too) -> (size, mtime in ns)."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in Path(root).rglob("*") if p.is_file()
    }


def memory(r: dict, peak: int, before: int, target: bool = False) -> str:
    frame = r["frame_bytes"]
    whole, extra = (peak - r["rss_before_frame"]) / frame, (peak - before) / frame
    verdict = f" (target <= {TARGET_MEMORY:.0f}x: {'ok' if whole <= TARGET_MEMORY else 'MISSED'})" if target else ""
    return (
        f"peak RSS {peak / MB:5.0f} MB: {whole:4.2f}x the frame incl. the frame{verdict}, "
        f"+{extra:4.2f}x over the RSS before the call"
    )


def main(rows: int, repeat: int) -> None:
    print(
        f"bench_snapshot: {rows:,} rows x 20 columns, {repeat} run(s) per figure, median shown; "
        f"python {sys.version.split()[0]}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-snapshot-") as tmp:
        runs = []
        for _ in range(repeat):  # each run into an empty store
            store = tempfile.mkdtemp(dir=tmp)
            runs.append(run_worker("snapshot", store, rows))
        first = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
        parts = [run_worker("parts", tmp, rows) for _ in range(repeat)]

        frame_mb = first["frame_bytes"] / MB
        total = statistics.median(r["seconds"] for r in runs)
        step = {
            k: statistics.median(p[k] for p in parts)
            for k in ("canonicalize", "content_hash", "profile", "parquet_write", "fsync")
        }
        parquet_mb = first["data_bytes"] / MB
        mbps = parquet_mb / step["parquet_write"]
        print(f"\nframe in memory        {frame_mb:8.1f} MB (memory_usage(deep=True))")
        all_runs = ", ".join(f"{r['seconds']:.2f}" for r in runs)
        print(f"write_snapshot (new)   {total:8.2f} s   all runs: {all_runs}")
        for name, seconds in step.items():
            print(f"  {name:<20} {seconds:8.2f} s   {100 * seconds / sum(step.values()):3.0f} % of the parts")
        print(f"  {'sum of the parts':<20} {sum(step.values()):8.2f} s")
        print(
            f"Parquet written        {parquet_mb:8.1f} MB ({first['data_bytes']:,} bytes), "
            f"{first['data_bytes'] / first['frame_bytes']:.2f}x the frame"
        )
        print(
            f"Parquet write speed    {mbps:8.1f} MB/s of Parquet (file / _write_parquet time; "
            f"target >= {TARGET_MBPS:.0f}: {'ok' if mbps >= TARGET_MBPS else 'MISSED'})"
        )
        print(
            f"snapshot throughput    {frame_mb / total:8.1f} MB/s of frame (frame / write_snapshot time; "
            f"{'ok' if frame_mb / total >= TARGET_MBPS else 'below'} 100), "
            f"{parquet_mb / total:.1f} MB/s of Parquet over the whole snapshot"
        )
        print(f"memory, write_snapshot {memory(first, first['peak'], first['rss_before'], target=True)}")
        if not first["peak_reset"]:
            print("  (peak RSS could not be reset: it may include building the frame)")
        print("memory per part (peak during the part; the parts run one after the other in one subprocess):")
        for name, (peak, before) in parts[0]["peaks"].items():
            print(f"  {name:<20} {memory(parts[0], peak, before)}")

        # The identical data again, into the store that already holds it.
        store = next(str(p) for p in Path(tmp).iterdir() if p.is_dir())
        before = listing(store)
        again = run_worker("again", store, rows)
        after = listing(store)
        same = before == after
        print(
            f"\nwrite_snapshot (again) {again['seconds']:8.2f} s   created={again['created']}, same id: "
            f"{again['id'] == first['id']}, files unchanged ({len(after)} files, sizes + mtimes): {same}"
            f"  -> {'wrote nothing' if same and not again['created'] else 'WROTE SOMETHING'}"
        )
        print(f"  {memory(again, again['peak'], again['rss_before'])}")

        read = run_worker("read", store, rows)
        print(
            f"read_snapshot          {read['seconds']:8.2f} s   (read + canonicalize + re-hash, {read['rows']:,} rows)"
        )
        print(f"  {memory(read, read['peak'], read['rss_before'])}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        print(json.dumps(worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
    else:
        import argparse

        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        parser.add_argument("--rows", type=int, default=1_000_000)
        parser.add_argument("--repeat", type=int, default=1, help="runs of the new snapshot and of the parts")
        args = parser.parse_args()
        main(args.rows, args.repeat)
