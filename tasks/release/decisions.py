"""People's decisions on a release, kept twice: short facts on the version (its tags and release card)
and the whole decision, with the evidence it was taken on, in the model's release record."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from configs.settings import Settings
from tasks.release import record, registry
from tasks.release.release_card import approval_tags
from tasks.release.steps import serialized


def record_approval(
    settings: Settings,
    name: str,
    version: str,
    *,
    stage: str,
    decision: str,
    reviewer: str,
    comment: str,
    flow_run: str,
    evidence: list[dict],
) -> None:
    """`decision` is approved, rejected or timeout; `evidence` the analyses the reviewer was shown."""
    at = datetime.now(UTC).isoformat(timespec="seconds")
    key, by, when, said = approval_tags(stage)
    registry.set_version_tags(
        settings, name, version, {key: decision, by: reviewer, when: at} | ({said: comment} if comment else {})
    )
    summary = "; ".join(f"{e['stage']}: {'passed' if e['passed'] else 'BREACHED'}" for e in evidence) or "no traffic"
    row = {
        "at": at,
        "version": version,
        "stage": stage,
        "decision": decision,
        "reviewer": reviewer,
        "comment": comment,
        "flow_run": flow_run,
        "summary": summary,
        "evidence": json.dumps(evidence),
    }
    with serialized(settings, name, f"{reviewer}: {stage} approval of version {version}"):
        record.append(settings, name, record.APPROVALS, [row])


def record_override(
    settings: Settings, name: str, version: str, *, kind: str, by: str, reason: str, detail: str
) -> None:
    """A gate overridden by a person (e.g. `shipway train --force-gate --reason ...`)."""
    row = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "version": version,
        "kind": kind,
        "by": by,
        "reason": reason,
        "detail": detail,
    }
    with serialized(settings, name, f"{by}: {kind} override of version {version}"):
        record.append(settings, name, record.OVERRIDES, [row])
