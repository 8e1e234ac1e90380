"""A gate report as files: JSON to read by program, GX Data Docs HTML to browse, a PNG to look at.

All three are rendered from the GateReport alone (its checks carry GX-shaped results, with the
training and batch partitions of each distribution check), after the gate has decided.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.vocabulary import Verdict
from expectations.joint import JOINT
from tasks.verdict import TABLE, Check, ColumnReport, GateReport

MAX_PANELS = 12
KEY_MEASURES = ("null_rate_delta", "mean_shift_sd", "std_ratio", "ks", "psi", "js", "out_of_range", "unseen_share")


@dataclass(frozen=True)
class ReportFiles:
    json: Path
    html: Path
    png: Path | None  # None when no column drifted: nothing to look at

    def paths(self) -> list[Path]:
        return [p for p in (self.json, self.html, self.png) if p is not None]


def write_report(report: GateReport, json_path: Path) -> ReportFiles:
    """`json_path`, and beside it the same name with .html (Data Docs) and .png (drifted columns)."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report.to_dict(), indent=2))
    html = json_path.with_suffix(".html")
    html.write_text(render_data_docs(report))
    png = json_path.with_suffix(".png")
    return ReportFiles(json_path, html, png if render_picture(report, png) else None)


def render_data_docs(report: GateReport) -> str:
    """The report as a GX Data Docs validation page, rendered by GX's own renderer."""
    from great_expectations.core import ExpectationSuiteValidationResult, ExpectationValidationResult
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration
    from great_expectations.render.renderer import ValidationResultsPageRenderer
    from great_expectations.render.view import DefaultJinjaPageView

    checks = [c for c in report.table] + [
        c
        for col in report.columns
        for c in col.checks
        if c.column != TABLE and c.expectation not in ("expect_table_columns_to_match_set", JOINT)
    ]
    results = [
        ExpectationValidationResult(
            success=c.verdict != Verdict.FAIL,
            expectation_config=ExpectationConfiguration(
                type=c.expectation, kwargs=c.kwargs, meta={"shipway": {"verdict": c.verdict.value, "reason": c.reason}}
            ),
            result=_finite(c.result),
        )
        for c in checks
    ]
    passed = sum(r.success for r in results)
    validation = ExpectationSuiteValidationResult(
        success=report.verdict != Verdict.FAIL,
        results=results,
        suite_name=str(report.reference.get("suite") or "contract"),
        statistics={
            "evaluated_expectations": len(results),
            "successful_expectations": passed,
            "unsuccessful_expectations": len(results) - passed,
            "success_percent": 100 * passed / len(results) if results else 100.0,
        },
        meta={
            "batch": report.batch,
            "verdict": report.verdict.value,
            "reason": report.reason,
            "reference": report.reference,
            "run_id": None,
        },
    )
    return DefaultJinjaPageView().render(ValidationResultsPageRenderer().render(validation))


def render_picture(report: GateReport, path: Path) -> bool:
    """Training vs batch distribution of each failing or warning column that has one; False if none."""
    joint = [c for c in report.table if c.expectation == JOINT and c.verdict != Verdict.PASS]
    panels = [(col, _distribution(col)) for col in report.columns if col.verdict != Verdict.PASS]
    panels = joint + [(col, check) for col, check in panels if check is not None][: MAX_PANELS - len(joint)]
    if not panels:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        if isinstance(panel, Check):
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
            labels = [str(v) for v in expected["values"]]
            x = np.arange(len(labels))
            ax.bar(x - 0.2, expected["weights"], 0.4, label="training", color="tab:blue", alpha=0.6)
            ax.bar(x + 0.2, observed["weights"], 0.4, label="batch", color="tab:red", alpha=0.8)
            ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
            ax.set_ylabel("share")
        color = "tab:red" if col.verdict == Verdict.FAIL else "tab:orange"
        ax.set_title(f"{col.name}: {col.verdict.value}", color=color, fontsize=11)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(f"{report.batch}: {report.verdict.value}: training vs batch", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def _joint_panel(ax: Any, check: Check) -> None:
    """The joint check: the pairs of columns whose correlation changed most, training vs batch."""
    details = check.result.get("details", {})
    pairs = details.get("changed_pairs", [])[:8]
    labels = [" ~ ".join(p["columns"]) for p in pairs]
    y = np.arange(len(pairs))
    ax.barh(y - 0.2, [p["train"] for p in pairs], 0.4, label="training", color="tab:blue", alpha=0.6)
    ax.barh(y + 0.2, [p["batch"] for p in pairs], 0.4, label="batch", color="tab:red", alpha=0.8)
    ax.set_yticks(y, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("correlation (normal scores)")
    color = "tab:red" if check.verdict == Verdict.FAIL else "tab:orange"
    named = ", ".join(details.get("implicated", [])) or "rows"
    ax.set_title(f"joint: {named} (AUC {check.result.get('observed_value', 0):.2f})", color=color, fontsize=10)
    ax.legend(fontsize=8)


def _distribution(col: ColumnReport) -> Check | None:
    return next((c for c in col.checks if "expected_partition" in c.result.get("details", {})), None)


def table_rows(report: GateReport) -> list[dict[str, Any]]:
    """One row per column, failing first: the Prefect table artifact and the CLI summary."""
    rows = []
    for col in report.columns:
        measures = {k: _short(col.measures[k]) for k in KEY_MEASURES if col.measures.get(k) is not None}
        rows.append({"column": col.name, "verdict": col.verdict.value, "reason": col.reason, **measures})
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
