"""The picture of monitoring over time: drift, fallbacks and latency per window."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PANELS = (("drifted_columns", "drifted columns"), ("fallback_rate", "fallback rate"), ("latency_p99_ms", "p99 ms"))


def plot_trend(history: list[dict[str, Any]], current: dict[str, float], now: datetime, path: Path) -> bool:
    """Windows from `history` (newest first, as registry.monitoring_history gives) plus the current one."""
    import matplotlib

    matplotlib.use("Agg")  # headless: workers and CI have no display
    import matplotlib.pyplot as plt

    points = [(datetime.fromtimestamp(h["time"] / 1000, UTC), h["metrics"]) for h in reversed(history)]
    points.append((now, current))
    fig, axes = plt.subplots(len(PANELS), 1, figsize=(8, 6), sharex=True)
    for ax, (key, label) in zip(axes, PANELS, strict=False):
        xs = [t for t, m in points if key in m]
        ax.plot(xs, [m[key] for _, m in points if key in m], marker="o")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_title("monitoring windows over time")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.is_file()
