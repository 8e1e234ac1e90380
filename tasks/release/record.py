"""The release record: one MLflow run per registered model holding its whole audit trail as tables.

Tags are short facts a person reads on the version page; the trail (every alias transition,
every approval with the evidence the reviewer saw, every override) grows with each promotion,
so it lives in a run of the `shipway-releases` experiment as tables in the format
`mlflow.log_table` writes (`mlflow.load_table` reads them back; the MLflow UI shows them as
tables). The registered model and each version link to it by one short tag, `release_record`
(the run id), so the model's tags stay bounded however many promotions happen. The run's
description (its note, markdown on the run page) shows the latest transitions and approvals.

Writes to one model's record are serialized by the model's step lock (tasks/release/steps.py).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from configs.settings import Settings
from core.vocabulary import Tag
from tasks.release import registry, status

EXPERIMENT = registry.RELEASES_EXPERIMENT
TRANSITIONS = status.TRANSITIONS
APPROVALS = "approvals.json"
OVERRIDES = "overrides.json"
COLUMNS = {
    TRANSITIONS: ["at", "alias", "version", "previous", "actor", "reason", "evidence"],
    APPROVALS: ["at", "version", "stage", "decision", "reviewer", "comment", "flow_run", "summary", "evidence"],
    OVERRIDES: ["at", "version", "kind", "by", "reason", "detail"],
}
LOGGED_TABLES = "mlflow.loggedArtifacts"  # where MLflow lists a run's tables (what log_table sets)
NOTE = "mlflow.note.content"  # the run's description in the UI (markdown)
NOTE_ROWS = 15


def record_run(settings: Settings, name: str) -> str:
    """The id of `name`'s record run; created when missing (a model registered before records existed)."""
    return existing_record(settings, name) or create_record(settings, name)


def existing_record(settings: Settings, name: str) -> str | None:
    return registry.model_state(settings, name)[1].get(Tag.RELEASE_RECORD)


def create_record(settings: Settings, name: str) -> str:
    """A new record run, linked from the model. Registration calls it once, from the process that
    created the registered model (MLflow lets only one do that), so two records never compete."""
    client, experiment = registry.connect(settings, experiment=EXPERIMENT)
    run = client.create_run(
        experiment,
        run_name=f"release record: {name}",
        tags={"model": name, NOTE: f"Release record of registered model **{name}**: nothing recorded yet."},
    )
    run_id = run.info.run_id
    client.set_terminated(run_id, status="FINISHED")  # a record, not a job: no spinner in the UI
    registry.set_model_tag(settings, name, Tag.RELEASE_RECORD, run_id)
    linked = registry.model_state(settings, name)[1].get(Tag.RELEASE_RECORD)
    if linked != run_id:  # another process linked its own meanwhile: use that one
        client.delete_run(run_id)
    return linked or run_id


def link(settings: Settings, name: str) -> str:
    """The record's address in the MLflow UI, as a markdown link (for descriptions)."""
    run_id = record_run(settings, name)
    experiment = registry.connect(settings, experiment=EXPERIMENT)[1]
    return f"[release record]({registry.ui_path(experiment, run_id)})"


def append(settings: Settings, name: str, table: str, rows: list[Mapping[str, object]]) -> None:
    """Add `rows` to `table` of the record (values kept as text, so versions stay "2", not 2.0)."""
    if not rows:
        return
    run_id = record_run(settings, name)
    client, _ = registry.connect(settings)
    columns = COLUMNS[table]
    data = _read(client, run_id, table) + [[_text(row.get(c)) for c in columns] for row in rows]
    client.log_dict(run_id, {"columns": columns, "data": data}, table)
    logged = json.loads(client.get_run(run_id).data.tags.get(LOGGED_TABLES, "[]"))
    if {"path": table, "type": "table"} not in logged:
        client.set_tag(run_id, LOGGED_TABLES, json.dumps([*logged, {"path": table, "type": "table"}]))
    tables = {t: _read(client, run_id, t) if t != table else data for t in (TRANSITIONS, APPROVALS)}
    client.set_tag(run_id, NOTE, _note(name, tables))


def read(settings: Settings, name: str, table: str) -> list[dict[str, str | None]]:
    """The rows of `table`, oldest first ([] when the model has no record or the table is empty)."""
    run_id = existing_record(settings, name)
    if run_id is None:
        return []
    client, _ = registry.connect(settings, create=False)
    columns = COLUMNS[table]
    return [dict(zip(columns, row, strict=False)) for row in _read(client, run_id, table)]


def _read(client: MlflowClient, run_id: str, table: str) -> list[list[str | None]]:
    with tempfile.TemporaryDirectory(prefix="shipway-record-") as tmp:
        try:
            path = client.download_artifacts(run_id, table, tmp)
        except (MlflowException, OSError):  # not written yet
            return []
        return json.loads(Path(path).read_text())["data"]


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _note(name: str, tables: Mapping[str, list[list[str | None]]]) -> str:
    """The run's description: the latest transitions and approvals, newest first."""

    def table(key: str, header: list[str], picks: list[int]) -> str:
        rows = tables[key][-NOTE_ROWS:][::-1]
        if not rows:
            return "none yet"
        lines = [f"| {' | '.join(header)} |", "|" + " --- |" * len(header)]
        for row in rows:
            cells = [str(row[i] if row[i] is not None else "-").replace("|", "\\|")[:120] for i in picks]
            lines.append(f"| {' | '.join(cells)} |")
        return "\n".join(lines)

    t, a = COLUMNS[TRANSITIONS], COLUMNS[APPROVALS]
    transitions = table(
        TRANSITIONS,
        ["at (UTC)", "alias", "from", "to", "by", "why"],
        [t.index(c) for c in ("at", "alias", "previous", "version", "actor", "reason")],
    )
    approvals = table(
        APPROVALS,
        ["at (UTC)", "version", "stage", "decision", "reviewer", "comment", "evidence"],
        [a.index(c) for c in ("at", "version", "stage", "decision", "reviewer", "comment", "summary")],
    )
    return (
        f"Release record of registered model **{name}**. The full tables are the artifacts "
        f"`{TRANSITIONS}`, `{APPROVALS}` and `{OVERRIDES}` (`mlflow.load_table` reads them).\n\n"
        f"#### Latest alias transitions\n\n{transitions}\n\n#### Latest approvals\n\n{approvals}\n"
    )
