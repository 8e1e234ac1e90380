"""Commands that only look start fast: `shipway status` and `shipway validate` of a version's logged
contract import neither Prefect, MLflow, Great Expectations nor scikit-learn (each takes seconds to
import). Their times are tests/benchmarks/bench_cli.py's; here, what they load."""

import subprocess
import sys

import pytest

from core.vocabulary import Alias, Tag
from tasks.data.demo_data import TARGET, generate
from tasks.gate.skew import contract_for_snapshot
from tasks.release.aliases import move
from tasks.release.registry import delete_version_tag, log_contract
from tests.conftest import REPO, register_versions, write_profile

pytestmark = pytest.mark.slow

HEAVY = ("prefect", "mlflow", "great_expectations", "sklearn", "skl2onnx")

# The installed command's entry point, then the heavy packages it left loaded, on stderr's last line.
WRAPPER = f"""
import atexit, sys
atexit.register(lambda: print("loaded:", *sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r})),
                              file=sys.stderr))
sys.argv[0] = "shipway"
from flows.cli import main
main()
"""


def shipway(*args: str, cwd) -> tuple[subprocess.CompletedProcess, set[str]]:
    done = subprocess.run(
        [sys.executable, "-c", WRAPPER, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
        env={"PYTHONPATH": str(REPO), "PATH": ""},
    )  # fmt: skip
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("loaded:"), done.stderr[-2000:]
    return done, set(last.removeprefix("loaded:").split())


def test_status_and_validate_of_a_logged_contract_import_nothing_heavy(small, tmp_path):
    [(registered, trained, snapshot)] = register_versions(small, 1)
    name, version = registered.name, registered.version
    log_contract(small, name, version, contract_for_snapshot(small, snapshot, TARGET, trained.features))
    move(small, name, {Alias.PRODUCTION: version}, actor="test", reason="test")
    generate(28, seed=5).drop(columns=[TARGET]).to_csv(tmp_path / "batch.csv", index=False)
    config = str(write_profile(small, tmp_path / "profile.yaml"))
    validate = ("validate", "--model", f"{name}@Production", "--batch", "batch.csv", "--config", config)

    done, loaded = shipway("status", name, "--config", config, cwd=tmp_path)
    assert done.returncode == 0 and f"{name}: 1 version(s)" in done.stdout, done.stderr[-2000:]
    assert loaded == set()
    assert "expectation_suite_sha256" not in done.stdout  # the 64-character hashes stay out of the listing

    done, loaded = shipway(*validate, cwd=tmp_path)
    assert done.returncode == 0 and "batch.csv: pass" in done.stdout, done.stderr[-2000:]
    assert loaded == set()  # the contract's sha256 matched: GX does not check it again

    done, loaded = shipway("frobnicate", cwd=tmp_path)
    assert done.returncode == 2 and loaded == set()

    # A contract without its recorded hash is checked by GX, as before hashes.
    delete_version_tag(small, name, version, Tag.EXPECTATION_SUITE_SHA256)
    done, loaded = shipway(*validate, cwd=tmp_path)
    assert done.returncode == 0 and "batch.csv: pass" in done.stdout, done.stderr[-2000:]
    assert "great_expectations" in loaded and not loaded & {"prefect", "mlflow"}
