"""The contract as a GX suite people edit, the user's own expectations, bad batches, and the report files."""

import copy
import json
import re

import numpy as np
import pandas as pd
import pytest

from configs.settings import GateSettings
from core.errors import DataError
from core.vocabulary import Verdict
from expectations import contract
from tasks.data.demo_data import Drift, generate
from tasks.gate.contract_checks import validate
from tasks.gate.drift_report import table_rows, write_report
from tasks.gate.skew import report_paths, user_suites
from tests.conftest import tuned
from tests.gate.scenarios import reference


@pytest.fixture(scope="module")
def ref():
    return reference()


def expectation(suite: dict, kind: str, column: str) -> dict:
    return next(e for e in suite["expectations"] if e["type"] == kind and e["kwargs"].get("column") == column)


def test_the_contract_is_a_gx_suite_that_round_trips_through_json(ref, tmp_path):
    from great_expectations.core.expectation_suite import ExpectationSuite

    path = contract.save(ref.suite, tmp_path / "suite.json")
    loaded = contract.load(path)
    assert ExpectationSuite(**loaded) == ExpectationSuite(**ref.suite)
    kinds = {e["type"] for e in loaded["expectations"] if e["kwargs"].get("column") == "monthly_charges"}
    assert kinds == {
        "expect_column_values_to_be_in_type_list",
        "expect_column_values_to_not_be_null",
        "expect_column_values_to_be_between",
        "expect_column_mean_to_be_between",
        "expect_column_stdev_to_be_between",
        "expect_column_quantile_values_to_be_between",
        "expect_column_kl_divergence_to_be_less_than",
        "expect_column_most_common_value_to_be_in_set",
    }
    categorical = {e["type"] for e in loaded["expectations"] if e["kwargs"].get("column") == "plan"}
    assert "expect_column_values_to_be_in_set" in categorical and "expect_column_values_to_be_of_type" in categorical
    columns = loaded["expectations"][0]
    assert "churned" in columns["kwargs"]["column_set"] and columns["meta"]["optional"] == ["churned"]
    assert not any(e["kwargs"].get("column") == "churned" for e in loaded["expectations"])  # the label: no checks


def test_gx_writes_a_contract_back_as_shipway_wrote_it(ref):
    """The contract is built without importing GX: GX reading it and writing it back changes nothing,
    kwargs at GX's defaults included (mostly 1.0 with no tolerance, exact_match, min_auc)."""
    from great_expectations.core.expectation_suite import ExpectationSuite

    at_defaults = contract.build_contract(
        ref.frame.head(500),
        GateSettings(null_tolerance=0.0, range_tolerance=0.0),
        name="defaults",
        target="churned",
        snapshot_id=None,
        features=["age", "plan", "monthly_charges"],
    )
    assert (at_defaults["expectations"][0]["kwargs"]) == {
        "exact_match": False,
        "column_set": ["age", "plan", "monthly_charges", "churned"],
    }
    for suite in (ref.suite, at_defaults):
        contract.check(suite, "built")  # registers shipway's joint type with GX, as its own contexts do
        assert ExpectationSuite(**copy.deepcopy(suite)).to_json_dict() == suite


def test_thresholds_come_from_the_config(ref):
    frame = ref.frame
    strict = contract.build_contract(
        frame, GateSettings(mean_shift_sd=0.05, null_tolerance=0.01), name="s", target="churned", snapshot_id=None
    )
    mean = expectation(strict, "expect_column_mean_to_be_between", "age")
    assert mean["kwargs"]["max_value"] - mean["meta"]["training"]["mean"] == pytest.approx(
        0.05 * mean["meta"]["training"]["std"]
    )
    assert expectation(strict, "expect_column_values_to_not_be_null", "age")["kwargs"]["mostly"] == pytest.approx(0.99)


def test_a_hand_edited_suite_changes_the_verdict(ref, tmp_path):
    batch = generate(50_000, seed=11, drift=Drift(shift={"monthly_charges": 0.12}), with_label=False)
    assert "monthly_charges" not in validate(batch, ref.suite, GateSettings()).columns_with(Verdict.FAIL)

    edited = copy.deepcopy(ref.suite)
    mean = expectation(edited, "expect_column_mean_to_be_between", "monthly_charges")
    center, sd = mean["meta"]["training"]["mean"], mean["meta"]["training"]["std"]
    mean["kwargs"] |= {"min_value": center - 0.05 * sd, "max_value": center + 0.05 * sd}
    path = contract.save(edited, tmp_path / "edited.json")
    report = validate(batch, contract.load(path), GateSettings())
    assert report.columns_with(Verdict.FAIL) == ["monthly_charges"]
    assert "mean:" in report.columns[0].reason

    burst = generate(5_000, seed=12, drift=Drift(null_rate={"age": 0.4}), with_label=False)
    loose = copy.deepcopy(ref.suite)
    expectation(loose, "expect_column_values_to_not_be_null", "age")["kwargs"]["mostly"] = 0.5
    assert "age" in validate(burst, ref.suite, GateSettings()).columns_with(Verdict.FAIL)
    assert validate(burst, loose, GateSettings()).verdict != Verdict.FAIL


def test_a_broken_suite_is_named(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"name": "x", "expectations": [{"type": "expect_nothing_real", "kwargs": {}}]}))
    with pytest.raises(DataError, match=f"expectation suite {path} is invalid"):
        contract.load(path)
    path.write_text("{not json")
    with pytest.raises(DataError, match=f"cannot read expectation suite {path}"):
        contract.load(path)


def test_user_expectations_in_the_expectations_folder_run_too(ref, settings, tmp_path):
    folder = tmp_path / "expectations"
    folder.mkdir()
    rules = {
        "name": "business-rules",
        "expectations": [
            {"type": "expect_column_values_to_be_between", "kwargs": {"column": "monthly_charges", "max_value": 100}},
            {"type": "expect_column_values_to_match_regex", "kwargs": {"column": "plan", "regex": "^[a-z]+$"}},
        ],
    }
    (folder / "rules.json").write_text(json.dumps(rules))
    settings = tuned(settings, gate={"expectations_dir": str(folder)})
    suites = user_suites(settings)
    assert [s["name"] for s in suites] == ["business-rules"]
    report = validate(generate(2_000, seed=5, with_label=False), ref.suite, GateSettings(), user_suites=suites)
    assert report.columns_with(Verdict.FAIL) == ["monthly_charges"]
    assert "expect_column_values_to_be_between failed" in report.columns[0].reason
    plan = next(c for c in report.columns if c.name == "plan")
    assert any(
        c.expectation == "expect_column_values_to_match_regex" and c.verdict == Verdict.PASS for c in plan.checks
    )


def bad_batches() -> dict[str, tuple[pd.DataFrame, str, str]]:
    clean = generate(500, seed=6, with_label=False)
    return {
        "no rows": (clean.iloc[:0], "(table)", "the batch has no rows"),
        "all nulls": (clean.assign(age=np.nan), "age", "nulls: every value is null"),
        "dates for numbers": (clean.assign(age=pd.Timestamp("2024-01-01")), "age", "type: dtype 'datetime64[us]'"),
        "numbers for categories": (clean.assign(plan=1.5), "plan", "type: dtype 'float64', the contract expects 'str'"),
        "mixed objects": (
            clean.assign(tenure_months=pd.Series(["a", 1] * 250, dtype=object)),
            "tenure_months",
            "type:",
        ),
        "missing columns": (clean[["age"]], "plan", "missing: the column is not in the batch"),
        "no columns": (pd.DataFrame(index=range(3)), "age", "missing: the column is not in the batch"),
        "repeated names": (pd.concat([clean, clean[["age"]]], axis=1), "(table)", "repeated column names: age"),
    }


@pytest.mark.parametrize("case", list(bad_batches()))
def test_bad_batches_get_a_report_not_a_traceback(ref, case, tmp_path):
    batch, column, reason = bad_batches()[case]
    report = validate(batch, ref.suite, GateSettings(), batch_name=case)
    assert report.verdict == Verdict.FAIL
    text = report.reason if column == "(table)" else next(c.reason for c in report.columns if c.name == column)
    assert reason in text
    files = write_report(report, tmp_path / "r.json")
    assert json.loads(files.json.read_text())["verdict"] == "fail"


def test_the_report_holds_verdict_columns_measures_and_reasons(ref, tmp_path):
    batch = generate(3_000, seed=7, drift=Drift(scale={"tenure_months": 1.5}), with_label=False)
    batch["support_calls"] = batch["support_calls"].astype("float64")  # harmless
    report = validate(batch, ref.suite, GateSettings(), batch_name="b.csv")
    files = write_report(report, tmp_path / "b.json")
    data = json.loads(files.json.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert data["verdict"] == "fail" and data["batch"] == "b.csv"
    first = data["columns"][0]
    assert first["name"] == "tenure_months" and first["verdict"] == "fail" and "spread" in first["reason"]
    assert {"ks", "psi", "js", "kl", "wasserstein_sd", "null_rate_delta", "out_of_range", "mean_shift_sd"} <= set(
        first["measures"]
    )
    assert all(c["verdict"] == "pass" and c["reason"] == "matches training" for c in data["columns"][1:])
    plan = next(c for c in data["columns"] if c["name"] == "plan")
    assert {"js", "psi", "chi2_p", "unseen_share"} <= set(plan["measures"])
    html = files.html.read_text()
    assert "<html" in html and "tenure_months" in html
    # self-contained: reads the same offline (MLflow's artifact viewer, a file opened from disk)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html) and "<script" not in html
    assert "data:image/png;base64," in html  # the picture travels inside the page
    assert files.png is not None and files.png.read_bytes()[:4] == b"\x89PNG"
    assert table_rows(report)[0]["column"] == "tenure_months"

    clean = write_report(
        validate(generate(300, seed=8, with_label=False), ref.suite, GateSettings()), tmp_path / "c.json"
    )
    assert clean.png is None and clean.html.is_file()


def test_report_paths_one_file_or_a_folder(tmp_path):
    assert report_paths(["a.csv"], tmp_path / "r.json", tmp_path) == [tmp_path / "r.json"]
    assert report_paths(["x/a.csv", "b.parquet"], tmp_path / "out", tmp_path) == [
        tmp_path / "out/a.json",
        tmp_path / "out/b.json",
    ]
    with pytest.raises(DataError, match="names a folder"):
        report_paths(["a.csv", "b.csv"], tmp_path / "r.json", tmp_path)
    with pytest.raises(DataError, match="share a file name"):
        report_paths(["x/a.csv", "y/a.csv"], None, tmp_path)
