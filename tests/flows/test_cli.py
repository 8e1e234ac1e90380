"""`shipway` errors: exit codes and one line on stderr, never a traceback. Each case runs in-process
(click's runner, the same command group and error handling as the installed script); a few run the
installed script itself, which pays its start-up each time."""

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from core.vocabulary import Alias, Tag
from flows.cli import cli
from tasks.release.aliases import move
from tasks.release.registry import model_state
from tests.conftest import SHIPWAY, register_versions, run_shipway, wait_for

NAME = "churn-classifier"


@pytest.mark.parametrize(
    ("args", "env", "stderr"),  # an unknown model name: tests/release/test_registry.py
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
            "must be growing shares in (0, 1], e.g. [0.05, 0.25, 0.5] (got [0.5, 0.2])\n",
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
def test_bad_input_exits_2_with_one_line_on_stderr(settings, tmp_path, monkeypatch, args, env, stderr):
    # A Prefect API nobody answers: every case must fail before it needs one (and none starts a server).
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    done = CliRunner().invoke(cli, args)
    assert done.exit_code == 2
    assert done.stderr == stderr.format(cwd=tmp_path)
    assert done.exception is None or isinstance(done.exception, SystemExit)


def test_the_installed_script_says_one_line_and_no_traceback(tmp_path):
    done = run_shipway("train", "--data", "nowhere.csv", cwd=tmp_path)
    assert (done.returncode, done.stderr) == (2, "shipway: error: cannot read nowhere.csv: no such file\n")
    assert "Traceback" not in done.stdout


def test_unknown_config_key_is_named(tmp_path):
    (tmp_path / "p.yaml").write_text("snapshots:\n  stor: /tmp/x\n")
    done = run_shipway("demo", "--config", "p.yaml", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr == "shipway: error: config file p.yaml: unknown key 'snapshots.stor'\n"


@pytest.mark.parametrize(
    ("profile", "said"),
    [
        ("quality:\n  min: {macro_f1: 0.8}\n", "key 'quality.min': 'macro_f1' is spelled 'f1_macro' here"),
        ("quality:\n  metric: auc\n", "key 'quality.metric': 'auc' is spelled 'roc_auc' here"),
        (
            "quality:\n  min: {f1_macr: 0.8}\n",
            "key 'quality.min': unknown metric 'f1_macr' (metrics: roc_auc, log_loss, accuracy, balanced_accuracy, "
            "f1, precision, recall, f1_macro, precision_macro, recall_macro, rmse, mae, r2)",
        ),
        (
            "quality:\n  max: {rmse: lots}\n",
            "key 'quality.max.rmse': Input should be a valid number, unable to parse string as a number (got 'lots')",
        ),
        (
            "training:\n  task: binray\n",
            "key 'training.task': unknown value 'binray' (expected 'auto', 'binary', 'multiclass' or 'regression')",
        ),
        (
            "serving:\n  sensitive_columns: {email: hsh}\n",
            "key 'serving.sensitive_columns.email': unknown value 'hsh' (expected 'hash' or 'drop')",
        ),
    ],
)
def test_a_bad_profile_names_the_users_key_in_one_line(tmp_path, monkeypatch, profile, said):
    """Validation errors read as the user wrote the profile: its key, the value, what it could be."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.yaml").write_text(profile)
    done = CliRunner().invoke(cli, ["status", "m", "--config", "p.yaml"])
    assert (done.exit_code, done.stderr) == (2, f"shipway: error: config file p.yaml: {said}\n")
    assert "[key]" not in done.stderr and "Value error" not in done.stderr


def test_serve_on_a_port_in_use_says_so_in_one_line_before_loading_anything(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_shipway("serve", "--port", str(port), cwd=tmp_path)
    assert (done.returncode, done.stderr) == (
        2,
        f"shipway: error: cannot listen on 127.0.0.1:{port}: in use by another process "
        "(choose another with --port or serving.port)\n",
    )
    assert list(tmp_path.iterdir()) == []  # no prediction log opened, no registry read, no model loaded


@pytest.mark.parametrize(
    ("option", "said"),
    [
        (["--port", "99999"], "Invalid value for '--port': 99999 is not in the range 0<=x<=65535."),
        (["--port", "-1"], "Invalid value for '--port': -1 is not in the range 0<=x<=65535."),
        (
            ["--host", "999.1.1.1"],
            "shipway: error: cannot listen on 999.1.1.1:5001: name or service not known "
            "(choose another with --host or serving.host)",
        ),
    ],
)
def test_serve_on_an_impossible_port_or_host_says_which_in_one_line(tmp_path, option, said):
    """A port out of range was a bind() traceback (exit 1); a host that does not resolve was blamed on the port."""
    done = run_shipway("serve", *option, cwd=tmp_path)
    assert done.returncode == 2 and said in done.stderr and "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_bad_usage_exits_2(tmp_path):
    done = run_shipway("train", "--bogus", cwd=tmp_path)
    assert done.returncode == 2
    assert "No such option '--bogus'" in done.stderr


@pytest.mark.slow
def test_approve_answers_a_promotion_paused_in_another_process(small, tmp_path):
    """`shipway approve RUN_ID` as a reviewer runs it, beside a `shipway promote` paused for approval
    (Prefect's ephemeral mode): it resumes through the API the paused run noted, and the promotion
    moves on; a run that is not waiting is named as such."""
    register_versions(small, 1)
    move(small, NAME, {Alias.SHADOW: "1"}, actor="test", reason="setup")  # nothing in Production: one approval
    home = str(tmp_path / "prefect")  # ephemeral mode, a Prefect home of its own
    env = {"PREFECT_HOME": home, "PREFECT_API_URL": None}
    promote_env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"PREFECT_HOME": home}
    with (tmp_path / "promote.log").open("w") as out:
        promotion = subprocess.Popen(
            [SHIPWAY, "promote", NAME], cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, env=promote_env
        )
    try:
        waiting = wait_for(lambda: model_state(small, NAME)[1].get(Tag.AWAITING_APPROVAL), 180, "the approval request")
        run_id = json.loads(waiting)["run_id"]

        def answered() -> bool:  # the request is announced just before the flow pauses
            done = run_shipway("approve", run_id, "--reviewer", "rita", cwd=tmp_path, **env)
            assert done.returncode == 0 or "is not waiting for approval (state: Running)" in done.stderr, done.stderr
            return done.returncode == 0

        wait_for(answered, 60, "the approval taken", every=0.5)
        assert promotion.wait(timeout=180) == 0, (tmp_path / "promote.log").read_text()
    finally:
        promotion.kill()
    assert model_state(small, NAME)[0]["Production"] == "1"
    said = (tmp_path / "promote.log").read_text()
    assert "View at" not in said, said  # a link to the temporary server, gone once the command exits
    with sqlite3.connect(Path(home) / "prefect.db") as db:  # the run as Prefect's UI lists it
        [(run_name, tags)] = db.execute("SELECT name, tags FROM flow_run WHERE id = ?", (run_id,)).fetchall()
    assert run_name.startswith(f"promote-{NAME}-v1-"), run_name
    assert {f"model:{NAME}", "version:1"} <= set(json.loads(tags))
    again = run_shipway("approve", run_id, "--reviewer", "rita", cwd=tmp_path, **env)
    assert again.returncode == 2
    assert f"flow run {run_id} is not waiting for approval (state: Completed)" in again.stderr
    unknown = str(uuid.uuid4())  # a mistyped id: named, with where it was looked for, not a temporary port
    nobody = run_shipway("approve", unknown, "--reviewer", "rita", cwd=tmp_path, **env)
    assert nobody.returncode == 2, nobody.stderr
    assert f"flow run {unknown} not found in the embedded Prefect (PREFECT_HOME {home}): `shipway status NAME`" in (
        nobody.stderr
    )
    assert "http://" not in nobody.stderr


SWALLOWED_STOP = """
import os, signal, sys, time, weakref
from core.stops import signal_of
from flows.cli import install_signal_handlers

install_signal_handlers()

class Held: pass

def collected(_ref):  # as SQLAlchemy's weakref callbacks: Python drops what a callback raises
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(100_000):  # the handler runs here, inside the callback
        pass

held = Held()
ref = weakref.ref(held, collected)
try:
    del held
    for _ in range(100):
        time.sleep(0.02)
except BaseException as exc:
    print("stopped by", signal_of(exc))
    sys.exit(143)
print("ran on")
"""


def test_a_sigterm_raised_inside_a_garbage_collection_callback_still_stops_the_command():
    """The stop Python drops there (printed as "Exception ignored") is sent again: a `shipway train`
    once ran on after a SIGTERM that landed in SQLAlchemy's callback."""
    done = subprocess.run(
        [sys.executable, "-c", SWALLOWED_STOP], capture_output=True, text=True, timeout=60, cwd=Path.cwd()
    )
    assert done.returncode == 143, done.stdout + done.stderr
    assert done.stdout == f"stopped by {int(signal.SIGTERM)}\n"
    assert "Exception ignored" not in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_status_shows_each_versions_figure_of_the_quality_gates_metric(capsys):
    """A regression model's table shows rmse, not a roc_auc column of dashes (an outside probe's
    mosaicData::Weather); the newest version's metric names the column."""
    from flows.cli import _print_status
    from serving.registry_tables import VersionRow

    rows = [
        VersionRow(str(n), None, None, None, {"quality_metric": "rmse", "metric_rmse": rmse, "metric_r2": "0.99"})
        for n, rmse in ((2, "0.3612"), (1, "0.4001"))
    ]
    _print_status("weather", rows, {"Production": "1"})
    header, *lines = [line for line in capsys.readouterr().out.splitlines() if "rmse" in line or "0.36" in line]
    assert "rmse" in header and "roc_auc" not in header
    assert "0.3612" in lines[0]
