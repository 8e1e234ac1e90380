"""`shipway validate` as a user runs it: exit codes, report files, folders of batches, --reference, MLflow."""

import json

import pytest
from click.testing import CliRunner

from core.vocabulary import Alias
from flows.cli import cli
from tasks.data.demo_data import Drift, generate
from tasks.data.snapshot import write_snapshot
from tasks.data.storage import open_store
from tasks.gate.skew import contract_for_snapshot
from tasks.release.lineage import git_lineage
from tasks.release.registration import register
from tasks.release.registry import log_contract, set_alias, set_version_tags, versions
from tasks.training.pipeline import train
from tests.conftest import embedded, run_shipway, write_profile

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """The working dir: a snapshot, and version 1 of churn-classifier trained on it with its contract,
    as Production. Built once per module: training and registering take seconds."""
    home = tmp_path_factory.mktemp("validate")
    settings = embedded(home)
    snapshot = write_snapshot(generate(4_000, seed=1), "demo", open_store(settings.snapshots.store, settings.s3))
    registered = register.fn(train(snapshot.frame, "churned", settings.training), snapshot, git_lineage(), settings)
    log_contract(settings, registered.name, registered.version, contract_for_snapshot(settings, snapshot, "churned"))
    set_version_tags(settings, registered.name, registered.version, {"validation_status": "pass"})
    set_alias(settings, registered.name, Alias.PRODUCTION, registered.version)
    return home, settings, snapshot


@pytest.fixture
def batches(home, tmp_path, monkeypatch):
    """This test's batch files (absolute paths); commands run in the module's working dir."""
    monkeypatch.chdir(home[0])
    generate(400, seed=2, with_label=False).to_csv(tmp_path / "clean.csv", index=False)
    generate(400, seed=3, drift=Drift(shift={"tenure_months": 0.8}), with_label=False).to_parquet(
        tmp_path / "drift.parquet"
    )
    return tmp_path


def shipway(home, *args):
    return run_shipway(*map(str, args), cwd=home[0])


def test_a_clean_batch_exits_0_and_writes_the_report(home, batches):
    done = shipway(
        home,
        "validate",
        "--model",
        "churn-classifier@Production",
        "--batch",
        batches / "clean.csv",
        "--report",
        batches / "r.json",
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((batches / "r.json").read_text())
    assert report["verdict"] in ("pass", "warn")
    snapshot = home[2]
    assert report["reference"] == {
        "suite": f"churn-classifier-{snapshot.id[:12]}",
        "model": "churn-classifier",
        "version": "1",
        "snapshot_id": snapshot.id,
    }
    assert (batches / "r.html").is_file()
    tags = versions(home[1], "churn-classifier")[0][0].tags
    assert "last_check_status" not in tags  # not recorded without --record
    assert tags["expectation_suite"].endswith("contract/expectation_suite.json")


def test_a_drifted_batch_exits_1_naming_the_column(home, batches):
    done = shipway(
        home, "validate", "--model", "churn-classifier@Production", "--batch", batches / "drift.parquet", "--json"
    )
    assert done.returncode == 1
    assert done.stderr == f"shipway: error: gate: 1 of 1 batch(es) failed: {batches / 'drift.parquet'}\n"
    [report] = json.loads(done.stdout)
    assert report["verdict"] == "fail"
    assert [c["name"] for c in report["columns"] if c["verdict"] == "fail"] == ["tenure_months"]
    assert any(f.endswith("drift.png") and f.startswith(str(home[0] / ".shipway/reports")) for f in report["files"])
    assert versions(home[1], "churn-classifier")[0][0].tags["validation_status"] == "pass"  # its training gate's


def test_a_recorded_check_of_a_drifted_batch_leaves_the_version_promotable(home, batches):
    """A drifted batch is news about the data, not about the version: it may still take an alias."""
    from tasks.release.aliases import check_servable
    from tasks.release.registry import alias_version

    settings = home[1]
    version = alias_version(settings, "churn-classifier", Alias.PRODUCTION)
    set_version_tags(settings, "churn-classifier", version, {"latency_gate": "passed", "quality_gate": "passed"})
    done = shipway(
        home, "validate", "--model", "churn-classifier@Production", "--batch", batches / "drift.parquet", "--record"
    )
    assert done.returncode == 1
    tags = versions(settings, "churn-classifier")[0][0].tags
    assert (tags["validation_status"], tags["last_check_status"]) == ("pass", "fail")
    check_servable(settings, "churn-classifier", version)  # no RegistryError: the check did not block it
    done = shipway(home, "validate", "--reference", home[2].id, "--batch", batches / "drift.parquet", "--record")
    assert done.returncode == 2 and "--record needs --model" in done.stderr


def test_a_folder_of_batches_gets_one_report_each_and_a_snapshot_can_be_the_reference(home, batches):
    folder = batches / "batches"
    folder.mkdir()
    (batches / "clean.csv").rename(folder / "monday.csv")
    (batches / "drift.parquet").rename(folder / "tuesday.parquet")
    done = shipway(home, "validate", "--reference", home[2].id, "--batch", folder, "--report", batches / "out")
    assert done.returncode == 1
    assert sorted(p.name for p in (batches / "out").glob("*.json")) == ["monday.json", "tuesday.json"]
    assert json.loads((batches / "out/monday.json").read_text())["verdict"] != "fail"
    assert json.loads((batches / "out/tuesday.json").read_text())["verdict"] == "fail"
    assert f"{folder / 'tuesday.parquet'}: fail 1 column failed: tenure_months" in done.stdout
    assert f"2 batches: 1 pass, 0 warn, 1 fail\n  reports in {batches / 'out'}" in done.stdout  # counts, not every path


@pytest.mark.parametrize(
    ("args", "stderr"),
    [
        (["--batch", "clean.csv"], "give exactly one of --model NAME@ALIAS and --reference SNAPSHOT_ID"),
        (
            ["--model", "churn-classifier@Canary", "--batch", "clean.csv"],
            "shipway: error: model 'churn-classifier' has no alias 'Canary' (aliases: Production -> 1)\n",
        ),
        (
            ["--model", "churn-classifier", "--batch", "clean.csv"],
            "shipway: error: model reference must be NAME@ALIAS or NAME/VERSION (e.g. churn@Production), "
            "got 'churn-classifier'\n",
        ),
        (
            ["--model", "churn-classifier@Production", "--batch", "nowhere.csv"],
            "shipway: error: cannot read nowhere.csv: no such file\n",
        ),
        (
            ["--model", "churn-classifier@Production", "--batch", "empty.csv"],
            "shipway: error: cannot read empty.csv: the file is empty\n",
        ),
        (
            [
                "--model",
                "churn-classifier@Production",
                "--batch",
                "clean.csv",
                "--batch",
                "drift.parquet",
                "--report",
                "r.json",
            ],
            "shipway: error: --report r.json: with 2 batches, --report names a folder, not a .json file\n",
        ),
        (["--reference", "0" * 64, "--batch", "clean.csv"], "shipway: error: snapshot 000000000000 not found in"),
    ],
)
def test_bad_usage_or_unreadable_input_exits_2(home, batches, monkeypatch, args, stderr):
    monkeypatch.chdir(batches)
    monkeypatch.setenv("SHIPWAY_CONFIG", str(profile(home)))
    (batches / "empty.csv").write_text("")
    done = CliRunner().invoke(cli, ["validate", *args])
    assert done.exit_code == 2
    assert stderr in done.stderr
    assert done.exception is None or isinstance(done.exception, SystemExit)


def profile(home):
    """The module's settings as a profile, for commands run in another directory."""
    root, settings, _ = home
    return write_profile(settings, root / "profile.yaml")


def test_a_batch_with_no_rows_is_a_failed_report_not_an_error(home, batches, monkeypatch):
    monkeypatch.setenv("SHIPWAY_CONFIG", str(profile(home)))
    (batches / "header.csv").write_text("age,plan\n")
    done = CliRunner().invoke(
        cli,
        [
            "validate",
            "--reference",
            home[2].id,
            "--batch",
            str(batches / "header.csv"),
            "--report",
            str(batches / "h.json"),
        ],
    )
    assert done.exit_code == 1
    assert done.stderr == f"shipway: error: gate: 1 of 1 batch(es) failed: {batches / 'header.csv'}\n"
    assert "the batch has no rows" in json.loads((batches / "h.json").read_text())["reason"]
