"""A gate report as files: JSON to read by program, a self-contained HTML page to browse, a PNG to look at.

All three are rendered from the GateReport alone (its checks carry GX-shaped results, with the
training and batch partitions of each distribution check), after the gate has decided.
"""

from __future__ import annotations

import base64
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.vocabulary import Verdict
from expectations.joint import JOINT
from expectations.text import LENGTHS
from tasks.gate.verdict import TABLE, ColumnReport, ExpectationResult, GateReport

MAX_PANELS = 12
MAX_BARS = 21  # categories drawn per panel (the gate's top 20 and the rest as one)
LABEL_CHARS = 28  # a label drawn in the picture: one line of at most this many characters
KEY_MEASURES = (
    "null_rate_delta",
    "mean_shift_sd",
    "std_ratio",
    "ks",
    "psi",
    "js",
    "out_of_range",
    "unseen_share",
    "length_ks",
    "token_coverage_drop",
)


@dataclass(frozen=True)
class ReportFiles:
    json: Path
    html: Path
    png: Path | None  # None when no column drifted: nothing to look at

    def paths(self) -> list[Path]:
        return [p for p in (self.json, self.html, self.png) if p is not None]


def write_report(report: GateReport, json_path: Path) -> ReportFiles:
    """`json_path`, and beside it the same name with .html (the report page) and .png (drifted columns)."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report.to_dict(), indent=2))
    png = json_path.with_suffix(".png")
    picture = png if render_picture(report, png) else None
    html = json_path.with_suffix(".html")
    html.write_text(render_data_docs(report, picture))
    return ReportFiles(json_path, html, picture)


_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1f2328;max-width:1200px}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:28px 0 8px} .muted{color:#656d76;font-size:13px}
table{border-collapse:collapse;width:100%;font-size:13px;margin-top:6px}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top} th{background:#f6f8fa}
.pass{color:#1a7f37;font-weight:600} .warn{color:#9a6700;font-weight:600} .fail{color:#cf222e;font-weight:600}
code{font-size:12px;background:#f6f8fa;padding:1px 4px;border-radius:4px;word-break:break-all}
details{margin:6px 0} summary{cursor:pointer} img{max-width:100%;border:1px solid #d0d7de}
"""


def render_data_docs(report: GateReport, picture: Path | None = None) -> str:
    """The report as one self-contained HTML page (inline style, the picture inlined, no script, no
    CDN): it reads the same offline, in MLflow's artifact viewer or opened from disk. It shows what
    GX's Data Docs validation page shows: each expectation, its arguments, the observed value, the verdict."""
    from html import escape

    def verdict(v: Verdict) -> str:
        return f'<span class="{v.value}">{v.value}</span>'

    reference = ", ".join(f"{k} {escape(str(v))}" for k, v in report.reference.items() if v) or "the contract"
    summary_rows = "".join(
        f"<tr><td>{escape(c.name)}</td><td>{verdict(c.verdict)}</td><td>{escape(c.reason)}</td>"
        f"<td>{escape(', '.join(f'{k} {v}' for k, v in table_rows_measures(c).items()))}</td></tr>"
        for c in report.columns
    )
    sections = []
    checks_by_column = [(TABLE, report.table)] + [
        (c.name, [k for k in c.checks if k.column != TABLE]) for c in report.columns
    ]
    for column, checks in checks_by_column:
        if not checks:
            continue
        rows = "".join(
            f"<tr><td><code>{escape(k.expectation)}</code></td><td><code>{escape(_brief(k.kwargs))}</code></td>"
            f"<td><code>{escape(_brief(k.result.get('observed_value')))}</code></td><td>{verdict(k.verdict)}</td>"
            f"<td>{escape(k.reason)}</td></tr>"
            for k in checks
        )
        worst = max((k.verdict for k in checks), key=lambda v: v.rank)
        sections.append(
            f"<details{' open' if worst != Verdict.PASS else ''}><summary><b>{escape(column)}</b> "
            f"{verdict(worst)} ({len(checks)} expectations)</summary><table><tr><th>expectation</th>"
            f"<th>arguments</th><th>observed</th><th>verdict</th><th>why</th></tr>{rows}</table></details>"
        )
    image = ""
    if picture is not None and picture.is_file():
        data = base64.b64encode(picture.read_bytes()).decode()
        image = (
            f'<h2>Drifted columns: training vs batch</h2><img alt="distributions" src="data:image/png;base64,{data}">'
        )
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>gate: {escape(report.batch)}</title>'
        f"<style>{_STYLE}</style></head><body>"
        f"<h1>Gate report: {escape(report.batch)}: {verdict(report.verdict)}</h1>"
        f'<p>{escape(report.reason)}</p><p class="muted">{report.rows:,} rows checked against {reference} '
        f"at {escape(report.created_at)} UTC in {report.seconds:.2f} s</p>"
        f"<h2>Columns</h2><table><tr><th>column</th><th>verdict</th><th>why</th><th>key measures</th></tr>"
        f"{summary_rows}</table>{image}<h2>Expectations</h2>{''.join(sections)}</body></html>"
    )


def table_rows_measures(col: ColumnReport) -> dict[str, Any]:
    return {k: _short(col.measures[k]) for k in KEY_MEASURES if col.measures.get(k) is not None}


def _brief(value: Any, limit: int = 300) -> str:
    text = json.dumps(_finite(value), default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_picture(report: GateReport, path: Path) -> bool:
    """Training vs batch distribution of each failing or warning column that has one; False if none."""
    joint = [c for c in report.table if c.expectation == JOINT and c.verdict != Verdict.PASS]
    found = [(col, _distribution(col)) for col in report.columns if col.verdict != Verdict.PASS]
    panels: list = [*joint, *[(col, check) for col, check in found if check is not None][: MAX_PANELS - len(joint)]]
    if not panels:
        return False
    import matplotlib

    matplotlib.use("Agg")
    # Every string drawn is data (a category, a review, a column or file name): none is mathtext,
    # so a "$" in a review is a dollar sign, not a ParseException; a glyph the font lacks is a box.
    with (
        matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}),
        warnings.catch_warnings(),
    ):
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        _draw(report, panels, path)
    return True


def _draw(report: GateReport, panels: list, path: Path) -> None:
    import matplotlib.pyplot as plt

    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        if isinstance(panel, ExpectationResult):
            _joint_panel(ax, panel)
            continue
        col, check = panel
        details = check.result["details"]
        expected, observed = details["expected_partition"], details["observed_partition"]
        if "bins" in expected:
            edges = np.asarray(expected["bins"], dtype="float64")
            widths = np.diff(edges)
            widths[widths == 0] = 1.0
            ax.stairs(
                np.asarray(expected["weights"]) / widths,
                edges,
                label="training",
                color="tab:blue",
                fill=True,
                alpha=0.35,
            )
            ax.stairs(np.asarray(observed["weights"]) / widths, edges, label="batch", color="tab:red", linewidth=1.8)
            below, above = observed.get("tail_weights", [0, 0])
            if below or above:
                ax.set_xlabel(f"batch outside the training range: {below:.1%} below, {above:.1%} above")
            ax.set_ylabel("density")
        else:
            labels = [label(v) for v in expected["values"][:MAX_BARS]]
            x = np.arange(len(labels))
            ax.bar(x - 0.2, expected["weights"][:MAX_BARS], 0.4, label="training", color="tab:blue", alpha=0.6)
            ax.bar(x + 0.2, observed["weights"][:MAX_BARS], 0.4, label="batch", color="tab:red", alpha=0.8)
            ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
            ax.set_ylabel("share")
        if check.expectation == LENGTHS:
            ax.set_xlabel(f"length in characters{'; ' if ax.get_xlabel() else ''}{ax.get_xlabel()}")
        color = "tab:red" if col.verdict == Verdict.FAIL else "tab:orange"
        ax.set_title(f"{label(col.name, 40)}: {col.verdict.value}", color=color, fontsize=11)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(f"{label(report.batch, 80)}: {report.verdict.value}: training vs batch", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def label(value: Any, limit: int = LABEL_CHARS) -> str:
    """A value as the picture draws it: one line (newlines and tabs as spaces), at most `limit` characters."""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _joint_panel(ax: Any, check: ExpectationResult) -> None:
    """The joint check: the pairs of columns whose correlation changed most, training vs batch."""
    details = check.result.get("details", {})
    pairs = details.get("changed_pairs", [])[:8]
    labels = [label(" ~ ".join(p["columns"]), 40) for p in pairs]
    y = np.arange(len(pairs))
    ax.barh(y - 0.2, [p["train"] for p in pairs], 0.4, label="training", color="tab:blue", alpha=0.6)
    ax.barh(y + 0.2, [p["batch"] for p in pairs], 0.4, label="batch", color="tab:red", alpha=0.8)
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("correlation (normal scores)")
    color = "tab:red" if check.verdict == Verdict.FAIL else "tab:orange"
    named = label(", ".join(details.get("implicated", [])) or "rows", 60)
    ax.set_title(f"joint: {named} (AUC {check.result.get('observed_value', 0):.2f})", color=color, fontsize=10)
    ax.legend(fontsize=8)


def _distribution(col: ColumnReport) -> ExpectationResult | None:
    return next((c for c in col.checks if "expected_partition" in c.result.get("details", {})), None)


def table_rows(report: GateReport) -> list[dict[str, Any]]:
    """One row per column, failing first: the Prefect table artifact and the CLI summary."""
    rows = []
    for col in report.columns:
        rows.append(
            {"column": col.name, "verdict": col.verdict.value, "reason": col.reason, **table_rows_measures(col)}
        )
    return rows


def _short(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) and math.isfinite(value) else value


def _finite(value: Any) -> Any:
    """GX's renderers and JSON both choke on inf and NaN: None stands for them."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
