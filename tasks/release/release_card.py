"""The facts of a release at a glance: a short markdown table at the top of the version's description.

The MLflow version page shows the description above everything else, while its tags sit in a
small box sorted by name; so the facts a reviewer looks for first (commit, snapshot, gates,
latency, who approved) are repeated here, rendered from the version's own tags whenever one of
them changes (tasks/release/registry.set_version_tags). The text below the table (what was trained on
what, holdout figures) is kept as it was written at registration.
"""

from __future__ import annotations

from collections.abc import Mapping

TITLE = "#### Release at a glance"
SEPARATOR = "\n\n---\n\n"
MAX_TAG_CHARS = 250  # a tag is a short fact; anything longer belongs in the release record
STAGES = ("shadow", "production")


def approval_tags(stage: str) -> tuple[str, str, str, str]:
    """The version tags of one approval stage: decision (approved/rejected/timeout), by, at, comment."""
    key = f"approval_{stage}"
    return key, f"{key}_by", f"{key}_at", f"{key}_comment"


CARD_TAGS = frozenset(
    {
        "git_commit",
        "git_branch",
        "git_dirty",
        "data_snapshot_id",
        "data_rows",
        "validation_status",
        "quality_gate",
        "latency_p99_ms",
        "latency_budget_p99_ms",
        "latency_gate",
        "release_record",
        "gate_override",
        "unfinished",
        *(tag for stage in STAGES for tag in approval_tags(stage)),
    }
)


def short(value: str, limit: int = MAX_TAG_CHARS) -> str:
    """A tag value cut to `limit` characters (the whole text goes to the release record)."""
    return value if len(value) <= limit else value[: limit - 1] + "…"


def render(tags: Mapping[str, str], about: str, record_link: str | None = None) -> str:
    """The description of a version: the card from `tags`, then `about`."""
    rows = [("training", f"**not finished**: {tags['unfinished']}")] if tags.get("unfinished") else []
    rows += [
        ("git commit", _commit(tags)),
        ("data snapshot", _snapshot(tags)),
        ("validation", tags.get("validation_status", "not checked yet")),
        ("quality gate", tags.get("quality_gate", "-")),
        ("latency p99", _latency(tags)),
        ("approvals", _approvals(tags)),
    ]
    if tags.get("gate_override"):
        rows.append(("gate override", tags["gate_override"]))
    if record_link:
        rows.append(("audit trail", record_link))
    table = "\n".join(f"| {label} | {_cell(value)} |" for label, value in rows)
    return f"{TITLE}\n\n| | |\n| --- | --- |\n{table}{SEPARATOR}{about}"


def about_of(description: str | None) -> str:
    """The registration text of a description, without its card."""
    text = description or ""
    if text.startswith(TITLE) and SEPARATOR in text:
        return text.split(SEPARATOR, 1)[1]
    return text


def _commit(tags: Mapping[str, str]) -> str:
    commit = tags.get("git_commit")
    if not commit:
        return "-"
    state = {"true": ", uncommitted changes", "false": ""}.get(tags.get("git_dirty", ""), "")
    return f"`{commit[:12]}` on {tags.get('git_branch', '?')}{state}"


def _snapshot(tags: Mapping[str, str]) -> str:
    snapshot = tags.get("data_snapshot_id")
    if not snapshot:
        return "-"
    rows = tags.get("data_rows")
    return f"`{snapshot[:12]}`" + (f" ({int(rows):,} rows)" if rows and rows.isdigit() else "")


def _latency(tags: Mapping[str, str]) -> str:
    p99 = tags.get("latency_p99_ms")
    if not p99:
        return "not measured yet"
    budget = tags.get("latency_budget_p99_ms")
    gate = tags.get("latency_gate")
    return f"{float(p99):.3g} ms" + (f" (budget {budget} ms: {gate})" if budget and gate else "")


def _approvals(tags: Mapping[str, str]) -> str:
    done = []
    for stage in STAGES:
        decision, by, at, comment = approval_tags(stage)
        if decision in tags:
            said = f": {tags[comment]}" if tags.get(comment) else ""
            done.append(f"{stage} {tags[decision]} by {tags.get(by, '?')} at {tags.get(at, '?')[:16]}{said}")
    return "; ".join(done) or "none yet"


def _cell(value: str) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")
