"""Alias moves of one model from several processes at once: serialized, never undoing a live step."""

import subprocess
import sys
from collections import defaultdict

import pytest

from core.errors import RegistryError
from core.vocabulary import Alias
from tasks.release.aliases import AliasMoved, history, move
from tasks.release.registry import model_state
from tests.conftest import register_versions

MOVER = """
import sys
from configs.settings import load_settings
from core.vocabulary import Alias
from tasks.release.aliases import move
settings = load_settings()
me, versions = sys.argv[1], sys.argv[2].split(",")
for i in range(int(sys.argv[3])):
    version = versions[i % len(versions)]
    move(settings, "churn-classifier", {Alias.CANARY: version, Alias.SHADOW: versions[(i + 1) % len(versions)]},
         actor=me, reason=f"{me} move {i}", canary_share=round(0.05 * (i % 10), 2))
print("done", me)
"""


@pytest.fixture
def three(small):
    return [registered for registered, _, _ in register_versions(small, 3)]


def test_the_loser_of_a_race_is_told_who_moved_the_alias(small, three):
    name = three[0].name
    move(small, name, {Alias.SHADOW: "1"}, actor="setup", reason="v1 trained")
    # two trainings both saw Shadow at version 1; the one that moves second learns the truth
    move(small, name, {Alias.SHADOW: "3"}, actor="training flow", reason="trained v3", expect={Alias.SHADOW: "1"})
    with pytest.raises(
        AliasMoved,
        match=r"Shadow of 'churn-classifier' moved from 1 to 3 by training flow at .* \(trained v3\); not moving it to version 2",
    ):
        move(small, name, {Alias.SHADOW: "2"}, actor="training flow", reason="trained v2", expect={Alias.SHADOW: "1"})
    assert model_state(small, name)[0] == {"Shadow": "3"}
    assert isinstance(AliasMoved("x"), RegistryError)  # exit 2 with one line, like every registry refusal


@pytest.mark.slow
@pytest.mark.chaos
@pytest.mark.parametrize("run", [1, 2, 3])
def test_two_processes_moving_aliases_at_once_never_undo_each_other(small, three, tmp_path, run):
    name = three[0].name
    movers = [
        subprocess.Popen(
            [sys.executable, "-c", MOVER, actor, versions, "15"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**__import__("os").environ, "SHIPWAY_DATA__DEMO_ROWS": "3000"},
        )
        for actor, versions in (("mover-a", "1,2"), ("mover-b", "2,3"))
    ]
    results = [p.communicate(timeout=600) for p in movers]
    for process, (_out, err) in zip(movers, results, strict=True):
        assert process.returncode == 0, err[-2000:]
        assert "UNIQUE constraint" not in err and "Traceback" not in err
    steps = history(small, name)
    assert not [t for t in steps if "did not finish" in t.reason]  # no live step was undone
    replayed: dict[str, str | None] = defaultdict(lambda: None)
    for t in steps:  # every transition starts where the one before it ended: nothing interleaved
        assert replayed[t.alias] == t.previous, (t, replayed[t.alias])
        replayed[t.alias] = t.version
    aliases, tags = model_state(small, name)
    assert {k: v for k, v in replayed.items() if v is not None and k != "canary_share"} == aliases
    assert replayed["canary_share"] == tags["canary_share"]
    assert {t.actor for t in steps} == {"mover-a", "mover-b"}
