"""The installed `shipway` script as a user runs it: exit codes and one-line errors on stderr."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

SHIPWAY = str(Path(sys.executable).with_name("shipway"))


def run(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SHIPWAY_")}
    return subprocess.run([SHIPWAY, *args], cwd=cwd, env=clean | env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("args", "env", "stderr"),  # an unknown model name: tests/test_registry.py
    [
        (["train", "--data", "nowhere.csv"], {}, "shipway: error: cannot read nowhere.csv: no such file\n"),
        (
            ["train", "--data", "x.json"],
            {},
            "shipway: error: cannot read x.json: unsupported file type '.json' (use .csv or .parquet)\n",
        ),
        (["train", "--config", "missing.yaml"], {}, "shipway: error: config file not found: missing.yaml\n"),
        (
            ["status", "m"],
            {"SHIPWAY_TRAINING__TEST_SIZE": "2"},
            "shipway: error: environment variable SHIPWAY_TRAINING__TEST_SIZE: key 'training.test_size': "
            "Input should be less than 1 (got '2')\n",
        ),
        (
            ["status", "m"],
            {},
            "shipway: error: no MLflow store at {cwd}/.shipway/mlflow.db: nothing has been trained here yet (run shipway train)\n",
        ),
        (
            ["train", "--data", "demo:x"],
            {},
            "shipway: error: cannot read demo:x: a demo source is 'demo' or 'demo:SEED' with SEED a whole number\n",
        ),
        (["monitor", "--window", "5x"], {}, "shipway: error: window '5x' is not a duration like 30m, 1h or 2d\n"),
        (
            ["status", "m"],
            {"SHIPWAY_PROMOTION__CANARY_STEPS": "[0.5, 0.2]"},
            "shipway: error: environment variable SHIPWAY_PROMOTION__CANARY_STEPS: key 'promotion.canary_steps': "
            "Value error, must be growing shares in (0, 1], e.g. [0.05, 0.25, 0.5] (got [0.5, 0.2])\n",
        ),
        (
            ["approve", "nope"],
            {},
            "shipway: error: 'nope' is not a flow run id (shipway status NAME shows the one waiting)\n",
        ),
        (
            ["rollback", "m"],
            {},
            "shipway: error: no MLflow store at {cwd}/.shipway/mlflow.db: nothing has been trained here yet (run shipway train)\n",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line_on_stderr(tmp_path, args, env, stderr):
    done = run(*args, cwd=tmp_path, **env)
    assert done.returncode == 2
    assert done.stderr == stderr.format(cwd=tmp_path)
    assert "Traceback" not in done.stderr + done.stdout


def test_unknown_config_key_is_named(tmp_path):
    (tmp_path / "p.yaml").write_text("snapshots:\n  stor: /tmp/x\n")
    done = run("demo", "--config", "p.yaml", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr == "shipway: error: config file p.yaml: unknown key 'snapshots.stor'\n"


def test_bad_usage_exits_2(tmp_path):
    done = run("train", "--bogus", cwd=tmp_path)
    assert done.returncode == 2
    assert "No such option '--bogus'" in done.stderr
