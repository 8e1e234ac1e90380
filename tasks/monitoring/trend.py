"""The picture of monitoring over time: drift, fallbacks and latency per window, against their limits.

Each window is drawn over its own time range (a line from its start to its end, a dot at its
end), so one window alone fills the picture instead of sitting in a five-year axis; y axes start
at 0 and reach past the limit, drawn as a dashed red line, so a reader sees at once how close
each figure is to breaching.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from configs.settings import Settings

ESTIMATED = "estimated"
ESTIMATES = (("roc_auc", "tab:purple"), ("accuracy", "tab:green"))  # CBPE's figures, tasks/monitoring/estimate.py
PANELS = (  # metric, label, the setting (section, key) that limits it (None: any value is a breach)
    ("drifted_columns", "drifted columns", None),
    ("fallback_rate", "fallback rate", ("monitoring", "max_fallback_rate")),
    ("latency_p99_ms", "latency p99 (ms)", ("serving", "latency_budget_p99_ms")),
    ("prediction_psi", "prediction drift (PSI)", ("monitoring", "max_prediction_psi")),
    (ESTIMATED, "estimated (band) vs realised", None),  # its floor is per version: drawn from each window's
)


def trend_figure(
    history: list[dict[str, Any]],
    current: dict[str, float],
    start: datetime,
    end: datetime,
    settings: Settings,
) -> Figure:
    """Windows from `history` (newest first, as registry.monitoring_history gives) plus the current one
    (`start`..`end`), one panel per figure."""
    import matplotlib

    matplotlib.use("Agg")  # headless: workers and CI have no display
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    span = end - start
    windows = [_window(h, span) for h in reversed(history)] + [(start, end, current)]
    fig, axes = plt.subplots(len(PANELS), 1, figsize=(9, 10), sharex=True)
    for ax, (key, label, setting) in zip(axes, PANELS, strict=True):
        if key == ESTIMATED:
            _estimates(ax, windows, label)
            continue
        shown = [(s, e, m[key]) for s, e, m in windows if key in m and m[key] == m[key]]  # NaN: not measured
        for s, e, value in shown:
            _span(ax, s, e, value, "tab:blue")
            ax.plot([e], [value], "o", color="tab:blue")
        if len(shown) <= 3:  # few windows: say the figure itself
            for _, e, value in shown:
                ax.annotate(f"{value:.3g}", (mdates.date2num(e), value), textcoords="offset points", xytext=(6, 4))
        top = max([v for _, _, v in shown], default=0.0)
        if setting is not None:
            section, name = setting
            limit = float(getattr(getattr(settings, section), name))
            ax.axhline(limit, color="tab:red", linestyle="--", linewidth=1.2, label=f"limit {limit:g}")
            ax.legend(loc="upper left", fontsize=8)
            top = max(top, limit)
        else:
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(0, top * 1.25 if top > 0 else 1.0)
        _label(ax, label)
    first = min(s for s, _, _ in windows)
    margin = max((end - first) * 0.04, timedelta(minutes=1))
    axes[-1].set_xlim(first - margin, end + margin)
    locator = mdates.AutoDateLocator()
    axes[-1].xaxis.set_major_locator(locator)
    axes[-1].xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    axes[0].set_title(
        f"monitoring: {len(windows)} window(s), {first:%Y-%m-%d %H:%M}..{end:%Y-%m-%d %H:%M} UTC", fontsize=11
    )
    fig.tight_layout()
    return fig


def _estimates(ax: Any, windows: list[tuple[datetime, datetime, dict[str, float]]], label: str) -> None:
    """Estimated figures as lines with their band, realised ones (labels back) as crosses, and each
    window's floor (holdout minus monitoring.max_estimated_drop) as a dashed step of the same colour."""
    drawn: list[float] = []
    for metric, colour in ESTIMATES:
        key = f"estimated_{metric}"
        for s, e, m in windows:
            if key not in m:
                continue
            drawn += [m.get(f"{key}_low", m[key]), m.get(f"{key}_high", m[key]), m.get(f"{key}_floor", m[key])]
            drawn += [m[f"realised_{metric}"]] if f"realised_{metric}" in m else []
            ax.fill_between([s, e], m.get(f"{key}_low", m[key]), m.get(f"{key}_high", m[key]), color=colour, alpha=0.2)
            _span(ax, s, e, m[key], colour)
            if f"realised_{metric}" in m:
                ax.plot([e], [m[f"realised_{metric}"]], "x", color=colour, markersize=8)
            if f"{key}_floor" in m:
                ax.plot([s, e], [m[f"{key}_floor"]] * 2, color=colour, linestyle="--", linewidth=1.2)
        ax.plot([], [], color=colour, linewidth=2.5, label=f"estimated {metric} (x: realised; dashed: its floor)")
    if drawn:  # figures between 0.6 and 0.9: zoomed in on them and their floors, not 0..1
        ax.legend(loc="lower left", fontsize=8)
        ax.set_ylim(max(min(drawn) - 0.1, 0.0), min(max(drawn) + 0.03, 1.02))
    else:
        ax.text(0.5, 0.5, "not estimated (see the window's `estimate` tag)", transform=ax.transAxes, ha="center")
        ax.set_ylim(0, 1)
    _label(ax, label)


def _span(ax: Any, start: datetime, end: datetime, value: float, colour: str) -> None:
    """A window's figure, as a line over the window's own time range: every panel draws windows so."""
    ax.plot([start, end], [value, value], color=colour, linewidth=2.5, solid_capstyle="butt")


def _label(ax: Any, label: str) -> None:
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)


def plot_trend(
    history: list[dict[str, Any]],
    current: dict[str, float],
    start: datetime,
    end: datetime,
    settings: Settings,
    path: Path,
) -> bool:
    """The picture as a PNG (MLflow's artifact viewer shows it)."""
    import matplotlib.pyplot as plt

    fig = trend_figure(history, current, start, end, settings)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path.is_file()


def _window(run: dict[str, Any], span: timedelta) -> tuple[datetime, datetime, dict[str, float]]:
    """A logged window's own range: its `start`/`end` params when recorded, else its run time."""
    params = run.get("params", {})
    if "start" in params and "end" in params:
        return datetime.fromisoformat(params["start"]), datetime.fromisoformat(params["end"]), run["metrics"]
    end = datetime.fromtimestamp(run["time"] / 1000, UTC)
    return end - span, end, run["metrics"]
