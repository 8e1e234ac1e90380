"""The gate's verdict engine: checks' outcomes on one batch -> one verdict with its reasons.

A check's outcome says whether its effect passed the contract's fail (or warn) bound and, for a
statistical check, the p-value of that effect under "nothing changed". `decide` fails a check only
when both hold: the effect passes its bound AND its p-value is below `gate.alpha` split over all
tests of the batch (Bonferroni), so a 200-row batch does not fail on noise and a 100k-row batch
does not fail on trivia. Past `warn_fraction` of its bound at `gate.warn_alpha`, a check warns.
Deterministic checks (types, presence, a user's own expectations) carry no p-value and count as
they are. Columns are ordered failing first; the report is what the JSON, HTML and picture show.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from configs.settings import GateSettings
from core.plain import jsonable
from core.vocabulary import Verdict

TABLE = "(table)"
REPORT_ITEMS = 50  # a list in a written report keeps this many items, then says how many more there were
REPORT_CHARS = 200  # ... a string this many characters (a free text, a long category); reasons are whole


@dataclass
class ExpectationResult:
    """One expectation's outcome on one batch."""

    expectation: str
    column: str
    verdict: Verdict
    reason: str
    p_value: float | None  # None: a deterministic check (type, presence, a user's expectation)
    kwargs: dict[str, Any]
    result: dict[str, Any]  # GX-shaped result (observed_value, details): Data Docs render it


@dataclass
class ColumnReport:
    name: str
    verdict: Verdict
    reason: str
    measures: dict[str, Any] = field(default_factory=dict)
    checks: list[ExpectationResult] = field(default_factory=list)


@dataclass
class GateReport:
    verdict: Verdict
    reason: str
    batch: str
    rows: int
    reference: dict[str, Any]
    columns: list[ColumnReport]  # failing first, then warning, then passing
    table: list[ExpectationResult]
    thresholds: dict[str, Any]
    seconds: float
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def columns_with(self, verdict: Verdict) -> list[str]:
        return [c.name for c in self.columns if c.verdict == verdict]

    def causes(self, most: int = 5) -> str:
        """The verdict and what made it, for a one-line breach: each column at that verdict (the first
        `most`, then a count) with its strongest check in full and the names of the others, then the
        table's checks, e.g. "fail on 2 columns: balance (mean: 1381 outside [742.8, 939.3] ...; also
        spread, distribution), student (values: 10.1% not seen in training ...)"."""
        if self.verdict == Verdict.PASS:
            return self.verdict.value
        named = [c for c in self.columns if c.verdict == self.verdict]
        listed = [f"{c.name} ({_strongest(c.checks, self.verdict)})" for c in named[:most]]
        listed += [f"{len(named) - most} more"] if len(named) > most else []
        table = [c.reason for c in self.table if c.verdict == self.verdict and c.reason]
        on = f" on {len(named)} column{'s' if len(named) > 1 else ''}: {', '.join(listed)}" if named else ""
        head = f"{self.verdict.value}: {table.pop(0)}" if table and not on else f"{self.verdict.value}{on}"
        return "; ".join([head, *table])

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON values, its size bounded: a contract's thousand-value set or a free
        text quoted in a result must not make a 600-row batch's report megabytes."""
        return bounded(jsonable(asdict(self)))


@dataclass
class Outcome:
    """A check before its verdict: whether its effect passed the fail and warn bounds, and its p-value."""

    expectation: dict[str, Any]
    column: str
    fail: bool
    warn: bool
    p: float | None
    reason: str
    result: dict[str, Any]
    measures: dict[str, Any] = field(default_factory=dict)
    implicates: tuple[str, ...] = ()  # a table-level check's verdict also goes to these columns


def verdict_of(o: Outcome, alpha: float, warn_alpha: float) -> Verdict:
    """One outcome's verdict at the per-test levels: a fail needs its effect past the bound AND its p."""
    if o.p is None:
        return Verdict.FAIL if o.fail else Verdict.WARN if o.warn else Verdict.PASS
    if o.fail and o.p <= alpha:
        return Verdict.FAIL
    if (o.fail or o.warn) and o.p <= warn_alpha:
        return Verdict.WARN
    return Verdict.PASS


def failing_columns(outcomes: list[Outcome], settings: GateSettings, more_tests: int = 0) -> set[str]:
    """Columns `decide` would fail on these outcomes, were `more_tests` tests still to come."""
    tests = sum(o.p is not None for o in outcomes) + more_tests
    alpha = settings.alpha / max(tests, 1)
    return {o.column for o in outcomes if o.column != TABLE and verdict_of(o, alpha, alpha) == Verdict.FAIL}


def decide(
    outcomes: list[Outcome], settings: GateSettings, batch_name: str, rows: int, reference: dict, start: float
) -> GateReport:
    """The batch's report: each outcome judged at the Bonferroni-split levels, grouped by column,
    the worst verdict overall. `start` (perf_counter) times the whole check for the report."""
    tests = sum(o.p is not None for o in outcomes)
    alpha, warn_alpha = settings.alpha / max(tests, 1), settings.warn_alpha / max(tests, 1)
    by_column: dict[str, ColumnReport] = {}
    table: list[ExpectationResult] = []
    for o in outcomes:
        verdict = verdict_of(o, alpha, warn_alpha)
        reason = o.reason if o.p is None else f"{o.reason} (p={o.p:.1e})" if verdict != Verdict.PASS else ""
        check = ExpectationResult(
            o.expectation.get("type", "?"),
            o.column,
            verdict,
            reason if verdict != Verdict.PASS else "",
            o.p,
            o.expectation.get("kwargs", {}),
            o.result,
        )
        if o.column == TABLE:
            table.append(check)
            for name in o.implicates if verdict != Verdict.PASS else ():
                column = by_column.setdefault(name, ColumnReport(name, Verdict.PASS, ""))
                column.checks.append(replace(check, column=name))
            continue
        report = by_column.setdefault(o.column, ColumnReport(o.column, Verdict.PASS, ""))
        report.checks.append(check)
        report.measures |= o.measures
    for report in by_column.values():
        report.verdict = max((c.verdict for c in report.checks), key=lambda v: v.rank, default=Verdict.PASS)
        ranked = sorted((c for c in report.checks if c.verdict != Verdict.PASS), key=lambda c: -c.verdict.rank)
        report.reason = "; ".join(c.reason for c in ranked) or "matches training"
    ordered = sorted(by_column.values(), key=lambda r: (-r.verdict.rank, r.name))
    table_verdict = max((c.verdict for c in table), key=lambda v: v.rank, default=Verdict.PASS)
    verdict = max([table_verdict, *(r.verdict for r in ordered)], key=lambda v: v.rank)
    return GateReport(
        verdict=verdict,
        reason=_summary(verdict, table, ordered),
        batch=batch_name,
        rows=rows,
        reference=reference,
        columns=ordered,
        table=table,
        thresholds={
            "alpha": settings.alpha,
            "warn_alpha": settings.warn_alpha,
            "tests": tests,
            "alpha_per_test": alpha,
            "warn_alpha_per_test": warn_alpha,
        },
        seconds=round(time.perf_counter() - start, 4),
    )


def _summary(verdict: Verdict, table: list[ExpectationResult], columns: list[ColumnReport]) -> str:
    if verdict == Verdict.PASS:
        return "the batch matches the contract"
    parts = [c.reason for c in table if c.verdict == verdict and c.column == TABLE and c.reason]
    named = [c.name for c in columns if c.verdict == verdict]
    if named:
        noun = "column" if len(named) == 1 else "columns"
        parts.append(f"{len(named)} {noun} {'failed' if verdict == Verdict.FAIL else 'warned'}: {', '.join(named)}")
    return "; ".join(parts)


def _strongest(checks: list[ExpectationResult], verdict: Verdict) -> str:
    """The most certain check at `verdict` in full (deterministic first, then by p), the others by name."""
    ranked = sorted((c for c in checks if c.verdict == verdict), key=lambda c: (c.p_value is not None, c.p_value or 0))
    others = [re.split(r"[:(]", c.reason)[0].strip() for c in ranked[1:]]
    return ranked[0].reason + (f"; also {', '.join(others)}" if others else "")


def bounded(value: Any) -> Any:
    """JSON values with every list cut to REPORT_ITEMS items (then "… N more") and every string to
    REPORT_CHARS characters (then "… (N characters)"), but for the reasons: the gate writes them
    short, quoting values by their first few characters."""
    if isinstance(value, dict):
        return {k: v if k == "reason" else bounded(v) for k, v in value.items()}
    if isinstance(value, list):
        kept = [bounded(v) for v in value[:REPORT_ITEMS]]
        return [*kept, f"… {len(value) - REPORT_ITEMS} more"] if len(value) > REPORT_ITEMS else kept
    if isinstance(value, str) and len(value) > REPORT_CHARS:
        return f"{value[:REPORT_CHARS]}… ({len(value)} characters)"
    return value
