"""Alias moves as recorded, recoverable steps, against MLflow on SQLite in a temp dir."""

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from core.errors import RegistryError
from core.tracking import Store, client
from core.vocabulary import Alias, Tag
from tasks.release import record, registry
from tasks.release.aliases import alias_at, history, move, recover, rollback
from tasks.release.registry import model_state
from tests.conftest import register_versions


@pytest.fixture
def three(small):
    """Three versions of the same model, none with an alias."""
    return [registered for registered, _, _ in register_versions(small, 3)]


def test_moves_are_recorded_on_the_model_and_the_version_and_answer_who_held_an_alias_when(small, three):
    name = three[0].name
    before = datetime.now(UTC)
    move(small, name, {Alias.PRODUCTION: "1"}, actor="alice", reason="first release")
    middle = datetime.now(UTC)
    move(small, name, {Alias.PRODUCTION: "2", Alias.PREVIOUS: "1"}, actor="bob", reason="better", evidence="run 42")
    after = datetime.now(UTC)

    aliases, _ = model_state(small, name)
    assert aliases == {"Production": "2", "Previous": "1"}
    steps = history(small, name)
    assert [(t.alias, t.version, t.previous, t.actor) for t in steps] == [
        ("Production", "1", None, "alice"),
        ("Production", "2", "1", "bob"),
        ("Previous", "1", None, "bob"),
    ]
    assert alias_at(steps, Alias.PRODUCTION, before) is None
    assert alias_at(steps, Alias.PRODUCTION, middle) == "1"
    assert alias_at(steps, Alias.PRODUCTION, after) == "2"
    # the trail is a table of the model's release record, which MLflow itself reads back
    run_id = model_state(small, name)[1][Tag.RELEASE_RECORD]
    table = registry.connect(small)[0].load_table(_releases(small), record.TRANSITIONS, run_ids=[run_id])
    assert list(table["reason"]) == ["first release", "better", "better"]
    assert list(table["evidence"])[1] == "run 42"
    assert registry.get_version(small, name, "2").tags[Tag.RELEASE_RECORD] == run_id  # linked from the version


def test_the_model_tags_stay_bounded_however_many_moves_happen(small, three):
    name = three[0].name
    for i in range(6):
        move(small, name, {Alias.CANARY: str(1 + i % 3)}, actor="a", reason=f"step {i}", canary_share=0.1 * i)
    _, tags = model_state(small, name)
    assert set(tags) <= {"canary_share", "release_record"}
    assert len(history(small, name)) == 12
    for version in ("1", "2", "3"):
        found = registry.get_version(small, name, version)
        assert max(len(v) for v in found.tags.values()) <= 250
        assert found.description.startswith("#### Release at a glance")
        assert "[release record](#/experiments/" in found.description


def test_history_ignores_the_transition_tags_of_older_stores(small, three):
    name = three[0].name
    registry.set_model_tag(small, name, "transition.20250101T000000000000Z.Production", json.dumps({"alias": "x"}))
    move(small, name, {Alias.PRODUCTION: "1"}, actor="a", reason="r")
    assert [(t.alias, t.version) for t in history(small, name)] == [("Production", "1")]


def _releases(settings) -> str:
    return registry.connect(settings, experiment=record.EXPERIMENT)[1]


def test_moving_an_alias_to_where_it_is_records_nothing(small, three):
    name = three[0].name
    move(small, name, {Alias.SHADOW: "1"}, actor="a", reason="r")
    assert move(small, name, {Alias.SHADOW: "1"}, actor="a", reason="again") == []
    assert len(history(small, name)) == 1


@pytest.mark.parametrize(
    ("tag", "value", "message"),
    [
        ("validation_status", "fail", "failed its data gate"),
        ("latency_gate", "failed", "failed its latency budget"),
        ("quality_gate", "failed", "failed its quality gate"),
    ],
)
def test_a_version_that_failed_a_gate_never_gets_an_alias(small, three, tag, value, message):
    name = three[0].name
    registry.set_version_tags(small, name, "2", {tag: value})
    with pytest.raises(RegistryError, match=f"version 2 of 'churn-classifier' {message}"):
        move(small, name, {Alias.CANARY: "2"}, actor="a", reason="r")
    assert model_state(small, name)[0] == {}


@pytest.mark.parametrize("alias", [Alias.SHADOW, Alias.CANARY, Alias.PRODUCTION])
def test_a_version_with_no_latency_result_never_gets_an_alias(small, three, alias):
    name = three[0].name
    client(Store.of(small)).delete_model_version_tag(name, "2", "latency_gate")  # trained, never benchmarked
    with pytest.raises(
        RegistryError, match=r"version 2 of 'churn-classifier' has no recorded latency result .*missing"
    ):
        move(small, name, {alias: "2"}, actor="a", reason="r")
    assert model_state(small, name)[0] == {}
    assert move(small, name, {alias: "1"}, actor="a", reason="r")  # a benchmarked one still moves


def test_a_version_never_judged_on_quality_never_gets_an_alias(small, three):
    name = three[0].name
    client(Store.of(small)).delete_model_version_tag(name, "2", "quality_gate")  # registered outside the flow
    with pytest.raises(RegistryError, match=r"version 2 of 'churn-classifier' has no quality verdict .*missing"):
        move(small, name, {Alias.SHADOW: "2"}, actor="a", reason="r")
    assert model_state(small, name)[0] == {}
    registry.set_version_tags(small, name, "2", {"quality_gate": "overridden"})  # --force-quality's verdict
    assert move(small, name, {Alias.SHADOW: "2"}, actor="a", reason="r")


def test_a_version_whose_model_cannot_load_never_gets_an_alias(small, three):
    name = three[0].name
    version = registry.get_version(small, name, "3")
    assert version.tags["serving_format"] == "onnx"  # what the gateway would load: the compiled form
    artifacts = Path(small.mlflow.artifact_location)
    (onnx,) = [p for p in artifacts.rglob("model.onnx") if version.run_id in str(p)]
    onnx.write_bytes(b"not a model")
    with pytest.raises(RegistryError, match="version 3 of 'churn-classifier': model.onnx does not match the sha256"):
        move(small, name, {Alias.PRODUCTION: "3"}, actor="a", reason="r")
    registry.delete_version_tag(small, name, "3", Tag.ONNX_MODEL_SHA256)  # as registered before the hashes
    with pytest.raises(RegistryError, match="version 3 of 'churn-classifier' cannot load"):
        move(small, name, {Alias.PRODUCTION: "3"}, actor="a", reason="r")
    assert model_state(small, name)[0] == {}


def test_a_step_cut_short_is_undone_on_the_next_move(small, three, monkeypatch):
    name = three[0].name
    move(small, name, {Alias.PRODUCTION: "1", Alias.CANARY: "2"}, actor="a", reason="setup", canary_share=0.25)
    real_delete = registry.delete_alias

    def crash_on_delete(*args):  # the process dies after Production and Previous moved
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(registry, "delete_alias", crash_on_delete)
    with pytest.raises(KeyboardInterrupt):
        move(
            small,
            name,
            {Alias.PRODUCTION: "2", Alias.PREVIOUS: "1", Alias.CANARY: None},
            actor="flow",
            reason="promote 2",
            canary_share=0.0,
        )
    aliases, tags = model_state(small, name)
    assert aliases["Production"] == "2" and Tag.PROMOTION_PENDING in tags  # half done, journaled

    monkeypatch.setattr(registry, "delete_alias", real_delete)
    restored = recover(small, name, actor="next run")
    aliases, tags = model_state(small, name)
    assert aliases == {"Production": "1", "Canary": "2"}
    assert tags[Tag.CANARY_SHARE] == "0.25"
    assert Tag.PROMOTION_PENDING not in tags
    assert {t.alias for t in restored} == {"Production", "Previous", "Canary", "canary_share"}
    assert "did not finish" in history(small, name)[-1].reason


def test_rollback_puts_previous_back_and_stops_the_canary(small, three):
    name = three[0].name
    move(
        small,
        name,
        {Alias.PRODUCTION: "2", Alias.PREVIOUS: "1", Alias.CANARY: "3"},
        actor="a",
        reason="r",
        canary_share=0.05,
    )
    rollback(small, name, actor="oncall", reason="errors up")
    aliases, tags = model_state(small, name)
    assert aliases == {"Production": "1"}
    assert tags[Tag.CANARY_SHARE] == "0"
    assert history(small, name)[-1].reason == "errors up"
    with pytest.raises(RegistryError, match="'churn-classifier' has no Previous version to roll back to"):
        rollback(small, name, actor="oncall", reason="again")


def test_every_experiment_shipway_creates_is_marked_for_model_development(small, three):
    client, _ = registry.connect(small, experiment=small.monitoring.experiment)  # training, releases, monitoring
    created = [e for e in client.search_experiments() if e.name != "Default"]  # Default is MLflow's own
    assert {e.name for e in created} == {small.mlflow.experiment, record.EXPERIMENT, small.monitoring.experiment}
    assert all(e.tags.get("mlflow.experimentKind") == "custom_model_development" for e in created)
    description = client.get_registered_model(three[0].name).description
    assert "predicts `churned`" in description and "How a version ships" in description
