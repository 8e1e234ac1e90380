"""The examples under examples/, each run as a user runs it: copied to a fresh folder, its one
command (`./run.sh`: train, promote with the approval answered, one monitoring window) through the
installed `shipway`, then its Production version served by a real gateway."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pandas as pd
import pytest

from core.vocabulary import Alias, Tag, Task
from serving import running
from tests.conftest import BIN, ENV_PREFIX, REPO, embedded, tuned

EXAMPLES = REPO / "examples"
METRICS = {
    Task.REGRESSION: {"rmse", "mae", "r2"},
    Task.MULTICLASS: {"accuracy", "balanced_accuracy", "f1_macro", "log_loss", "roc_auc"},
    Task.BINARY: {"accuracy", "balanced_accuracy", "f1", "log_loss", "roc_auc"},
}
# Correctness here, not speed (bench_examples.py times them): a busy CI machine may take minutes to
# start the latency bench's gateway.
STARTUP_S = 600
CASES = {  # example: (model name, task, target, columns the model must not take)
    "diabetes-regression": ("diabetes-progression", Task.REGRESSION, "progression", []),
    "wine-multiclass": ("wine-cultivar", Task.MULTICLASS, "cultivar", ["sample_id"]),
    "own-pipeline": ("churn-own-pipeline", Task.BINARY, "churned", ["customer_id", "signed_up"]),
}


def run_example(example: str, root: Path) -> tuple[Path, subprocess.CompletedProcess]:
    """A copy of the example in `root`, its run.sh run there with the installed shipway first on PATH,
    no SHIPWAY_* variables and a Prefect home of its own."""
    folder = root / example
    shutil.copytree(EXAMPLES / example, folder, ignore=shutil.ignore_patterns(".shipway", "__pycache__"))
    shutil.copy2(EXAMPLES / "release.sh", root)  # the release steps every run.sh calls
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX) and k != "PREFECT_API_URL"}
    env |= {"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}", "PREFECT_HOME": str(root / "prefect-home")}
    env[f"{ENV_PREFIX}SERVING__STARTUP_TIMEOUT_S"] = str(STARTUP_S)
    done = subprocess.run(["./run.sh"], cwd=folder, env=env, capture_output=True, text=True, timeout=1800)
    return folder, done


@pytest.mark.slow
@pytest.mark.examples  # minutes each: not in the default run (pytest -m examples)
@pytest.mark.parametrize("example", list(CASES))
def test_an_example_runs_with_one_command_and_is_served(example, tmp_path, monkeypatch):
    name, task, target, excluded = CASES[example]
    folder, done = run_example(example, tmp_path)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert f"{name} version 1 is now Shadow" in done.stdout
    assert f"{name} version 1 is Production" in done.stdout
    assert "within limits" in done.stdout  # the monitoring window

    monkeypatch.chdir(folder)
    for var in [v for v in os.environ if v.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(var)
    settings = tuned(embedded(folder, folder / "shipway.yaml"), serving={"startup_timeout_s": STARTUP_S})
    from tasks.release.registry import versions

    found, aliases = versions(settings, name)
    assert aliases == {Alias.PRODUCTION.value: "1"}
    tags = found[0].tags
    assert tags[Tag.TASK] == task.value
    assert tags[Tag.QUALITY_GATE] == "passed"
    assert {f"metric_{m}" for m in METRICS[task]} <= set(tags), sorted(tags)

    table = pd.read_csv(folder / "data.csv")
    rows = table.drop(columns=[target, *excluded]).head(5)
    body = {"dataframe_split": {"columns": list(rows.columns), "data": rows.astype(object).to_numpy().tolist()}}
    with running(settings) as url:
        answer = httpx.post(f"{url}/invocations", json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        predictions = answer.json()["predictions"]
        if excluded:  # an excluded column is not a feature: ignored, as `mlflow models serve` ignores it
            sent = table.drop(columns=[target]).head(5)
            body = {"dataframe_split": {"columns": list(sent.columns), "data": sent.astype(object).values.tolist()}}
            with_excluded = httpx.post(f"{url}/invocations", json=body, timeout=60)
            assert with_excluded.status_code == 200, with_excluded.text
            assert with_excluded.json()["predictions"] == predictions
    assert len(predictions) == len(rows)
    if task is Task.REGRESSION:
        assert all(isinstance(p, float) for p in predictions), predictions
        assert all(table[target].min() / 2 < p < table[target].max() * 2 for p in predictions), predictions
    else:
        assert set(predictions) <= set(table[target].unique().tolist()), predictions
