"""The core layer: one model-reference parser, the contract's typed training statistics, and the
import rule that keeps the gateway free of Prefect and the training code."""

import subprocess
import sys

import pytest

from core.errors import DataError, RegistryError
from core.refs import ModelRef
from core.vocabulary import Verdict
from expectations.training_stats import TrainingStats
from tests.conftest import REPO


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("churn@Production", ModelRef("churn", alias="Production")),
        ("churn/3", ModelRef("churn", version="3")),
        ("team/churn@Canary", ModelRef("team/churn", alias="Canary")),
        ("a@b/7", ModelRef("a@b", version="7")),
    ],
)
def test_model_references_parse_on_their_last_separator(text, expected):
    assert ModelRef.parse(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize("text", ["churn", "churn@", "@Production", "churn/", "churn/latest"])
def test_a_bad_model_reference_names_the_option_and_the_value(text):
    with pytest.raises(RegistryError) as info:
        ModelRef.parse(text, "--model")
    assert str(info.value) == (f"--model must be NAME@ALIAS or NAME/VERSION (e.g. churn@Production), got {text!r}")


def test_training_statistics_round_trip_through_an_expectation():
    stats = TrainingStats(rows=10, mean=1.5, std=0.5)
    expectation = {"type": "expect_column_mean_to_be_between", "meta": stats.meta(note="x")}
    assert expectation["meta"]["note"] == "x"
    assert TrainingStats.of(expectation) == stats
    assert TrainingStats.of({"type": "hand_written"}) == TrainingStats()


def test_a_renamed_training_statistic_is_an_error_not_a_silent_default():
    expectation = {
        "type": "expect_column_mean_to_be_between",
        "kwargs": {"column": "age"},
        "meta": {"training": {"rows": 10, "average": 1.5}},
    }
    with pytest.raises(DataError, match=r"column 'age': meta\.training\.average"):
        TrainingStats.of(expectation)


def test_verdicts_rank_pass_below_warn_below_fail():
    assert max([Verdict.WARN, Verdict.FAIL, Verdict.PASS], key=lambda v: v.rank) is Verdict.FAIL
    assert sorted(Verdict, key=lambda v: v.rank) == [Verdict.PASS, Verdict.WARN, Verdict.FAIL]


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("core.vocabulary", ("configs", "tasks", "serving", "flows", "expectations", "prefect", "mlflow")),
        ("core.tracking", ("configs", "tasks", "serving", "flows", "expectations", "prefect", "mlflow")),
        ("serving.server", ("tasks", "flows", "prefect", "sklearn", "mlflow")),
        ("serving.shadow", ("tasks", "flows", "prefect", "sklearn", "mlflow")),
        ("tasks.promotion.lease", ("prefect", "serving", "sklearn", "scipy.stats", "great_expectations")),
        ("flows.promote", ("serving", "sklearn", "scipy.stats", "great_expectations", "expectations")),
    ],
)
def test_import_layers(module, forbidden):
    """core imports no other package; the gateway and the shadow process load neither Prefect nor
    the training code (nor MLflow until they read the registry); `shipway promote` takes over a
    killed promotion with the registry client alone, and the promotion flow loads its analyses
    (scipy.stats, the skew gate, the log) only in the tasks that run them."""
    code = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    found = sorted({f for f in forbidden for m in loaded if m == f or m.startswith(f"{f}.")})
    assert not found, found


def test_no_two_modules_or_packages_share_a_name():
    """A name says which module it is: `registry` or `monitoring` in a traceback or an import means one thing."""
    names: dict[str, list[str]] = {}
    for package in ("core", "configs", "expectations", "flows", "serving", "tasks"):
        root = REPO / package
        for path in [root, *root.rglob("*")]:
            if path.is_dir() and (path / "__init__.py").is_file():
                names.setdefault(path.name, []).append(str(path.relative_to(REPO)) + "/")
            elif path.suffix == ".py" and path.stem not in ("__init__", "__main__"):
                names.setdefault(path.stem, []).append(str(path.relative_to(REPO)))
    assert {name: paths for name, paths in names.items() if len(paths) > 1} == {}
