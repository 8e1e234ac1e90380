"""The user's own estimator: an import path into their project (a git repository of its own),
their own transformer class through skops and the gateway, a search, probabilities, and the
lineage of *their* commit with the resolved config."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pytest
import yaml
from mlflow import MlflowClient
from pydantic import SecretStr
from sklearn.datasets import load_breast_cancer, load_diabetes

from configs.settings import SearchSettings, Settings, TrainingSettings
from core.errors import ConfigError, DataError
from core.vocabulary import Alias, Task
from serving import running
from tasks.data.snapshot import take_snapshot
from tasks.release.lineage import CODE_DIR, project_lineage, resolved_config
from tasks.release.registration import register, user_code_paths
from tasks.release.registry import set_alias, versions
from tasks.training.pipeline import estimator_of, train
from tests.conftest import mlflow_models_serve

MODULE = """
import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler


class ClipOutliers(TransformerMixin, BaseEstimator):
    \"\"\"A transformer of the user's own: clips each column to its training 1st-99th percentiles.\"\"\"

    def fit(self, X, y=None):
        self.low_, self.high_ = np.percentile(X, 1, axis=0), np.percentile(X, 99, axis=0)
        return self

    def transform(self, X):
        return np.clip(np.asarray(X, dtype=float), self.low_, self.high_)


def make_pipeline(C=1.0):
    return Pipeline([("clip", ClipOutliers()), ("scale", StandardScaler()), ("lr", LogisticRegression(C=C))])


def broken(**params):
    raise RuntimeError("the factory broke")


def not_an_estimator(**params):
    return 3


class FailsToFit(BaseEstimator):
    def fit(self, X, y):
        raise ValueError("cannot fit this")

    def predict(self, X):
        return X


NOT_CALLABLE = 3
"""


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    """The user's project: its own git repository with its model code in a package."""
    repo = tmp_path / "acme"
    (repo / "acme_model").mkdir(parents=True)
    (repo / "acme_model" / "__init__.py").write_text("")
    (repo / "acme_model" / "pipelines.py").write_text(textwrap.dedent(MODULE))
    git(repo, "init", "-q", "-b", "research")
    git(repo, "-c", "user.name=u", "-c", "user.email=u@example.com", "add", ".")
    git(repo, "-c", "user.name=u", "-c", "user.email=u@example.com", "commit", "-q", "-m", "model code")
    yield repo
    forget("acme_model")  # the next test's project is another folder: it must import its own copy


def forget(package: str) -> None:
    for name in [n for n in sys.modules if n == package or n.startswith(f"{package}.")]:
        del sys.modules[name]


@pytest.fixture
def cancer():
    return load_breast_cancer(as_frame=True).frame


def own(settings: Settings, project: Path, **training) -> Settings:
    return settings.model_copy(
        update={
            "data": settings.data.model_copy(update={"target": "target"}),
            "training": settings.training.model_copy(
                update={"model_name": "cancer", "params": {}, "code_path": [str(project)], **training}
            ),
        }
    )


@pytest.mark.slow  # ~13 s: trains, registers and serves through a real gateway
def test_own_pipeline_with_own_transformer_registers_serves_and_names_the_users_commit(settings, project, cancer):
    s = own(settings, project, estimator="acme_model.pipelines:make_pipeline", params={"C": 0.5}, preprocessing="none")
    cancer.to_parquet("cancer.parquet")
    snapshot = take_snapshot("cancer.parquet", s, "target")
    trained = train(snapshot.frame, "target", s.training, s.data)
    assert trained.estimator == "Pipeline(ClipOutliers, StandardScaler, LogisticRegression)"
    assert estimator_of(trained.model).named_steps["lr"].C == 0.5
    assert "preprocess" not in trained.model.named_steps  # preprocessing: none hands over the raw frame

    lineage = project_lineage(s.training)
    assert lineage.commit == git(project, "rev-parse", "HEAD") and lineage.branch == "research"
    registered = register.fn(trained, snapshot, lineage, s)
    set_alias(s, registered.name, Alias.PRODUCTION, registered.version)
    tags = versions(s, registered.name)[0][0].tags
    assert (tags["git_commit"], tags["git_branch"], tags["git_dirty"]) == (lineage.commit, "research", "false")
    assert tags["shipway_version"].startswith("0.1.0")
    assert tags["serving_format"] == "sklearn"  # no ONNX converter for the user's class
    model_dir = Path(mlflow.artifacts.download_artifacts(registered.model_uri))
    assert (model_dir / "code" / "acme_model" / "pipelines.py").read_text() == textwrap.dedent(MODULE)

    # The gateway, a process of its own started in the user's project, loads the user's class.
    rows = trained.X_holdout.head(5)
    body = {"dataframe_split": {"columns": list(rows.columns), "data": rows.to_numpy().tolist()}}
    with running(s, isolated=True) as url:
        answer = httpx.post(f"{url}/invocations", json=body, timeout=30)
    assert answer.status_code == 200 and answer.headers["x-model-role"] == "production", answer.text
    assert answer.json()["predictions"] == trained.model.predict(rows).tolist()


def test_the_users_code_goes_with_the_model_wherever_it_was_imported_from(tmp_path, monkeypatch):
    (tmp_path / "far_model").mkdir()
    (tmp_path / "far_model" / "__init__.py").write_text("class Thing:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # neither the working directory nor training.code_path
    monkeypatch.syspath_prepend(str(CODE_DIR / "examples" / "own-pipeline"))  # inside shipway's checkout
    import far_model  # noqa: F401
    import my_model.transformers  # noqa: F401

    try:
        shipped = user_code_paths(
            ["far_model.Thing", "my_model.transformers.ClippedLog", "numpy.float64", "collections.OrderedDict",
             "tasks.features.DateParts", "sklearn.linear_model._logistic.LogisticRegression"]
        )  # fmt: skip
    finally:
        forget("far_model")
        forget("my_model")
    assert shipped == [str(tmp_path / "far_model"), str(CODE_DIR / "examples" / "own-pipeline" / "my_model")]


def test_an_estimator_class_by_import_path_is_built_with_params(cancer):
    trained = train(
        cancer,
        "target",
        TrainingSettings(estimator="sklearn.neighbors:KNeighborsClassifier", params={"n_neighbors": 3}),
    )
    assert estimator_of(trained.model).n_neighbors == 3 and trained.metrics["accuracy"] > 0.9
    assert "preprocess" in trained.model.named_steps  # preprocessing: auto scales before the neighbours


@pytest.mark.parametrize(
    ("estimator", "params", "error", "message"),
    [
        (
            "acme_missing.model:make",
            {},
            ConfigError,
            "training.estimator acme_missing.model:make: cannot import acme_missing.model: ModuleNotFoundError",
        ),
        (
            "acme_model.pipelines:nope",
            {},
            ConfigError,
            "training.estimator acme_model.pipelines:nope: acme_model.pipelines has no attribute 'nope'",
        ),
        (
            "acme_model.pipelines:NOT_CALLABLE",
            {},
            ConfigError,
            "training.estimator acme_model.pipelines:NOT_CALLABLE is a int, not a class or a factory",
        ),
        (
            "acme_model.pipelines:broken",
            {},
            ConfigError,
            "training.estimator acme_model.pipelines:broken raised RuntimeError: the factory broke",
        ),
        (
            "acme_model.pipelines:not_an_estimator",
            {},
            ConfigError,
            "training.estimator acme_model.pipelines:not_an_estimator returned a int, not a scikit-learn estimator",
        ),
        (
            "acme_model.pipelines:make_pipeline",
            {"gamma": 1},
            ConfigError,
            "training.estimator acme_model.pipelines:make_pipeline: called with training.params: TypeError",
        ),
        (
            "acme_model.pipelines:FailsToFit",
            {},
            DataError,
            "training.estimator acme_model.pipelines:FailsToFit: fit failed: ValueError: cannot fit this",
        ),
        (
            "sklearn.linear_model:LinearRegression",
            {},
            ConfigError,
            "training.estimator sklearn.linear_model:LinearRegression is a regressor, but training.task is binary",
        ),
    ],
)
def test_errors_in_the_users_code_name_the_import_path(project, cancer, estimator, params, error, message):
    settings = TrainingSettings(estimator=estimator, params=params, code_path=[str(project)], preprocessing="none")
    with pytest.raises(error) as caught:
        train(cancer, "target", settings)
    assert str(caught.value).startswith(message)


def test_search_logs_every_candidate_and_registers_the_best(settings, cancer):
    search = SearchSettings(method="grid", params={"model__C": [0.01, 1.0, 100.0]}, cv=3, scoring="roc_auc")
    s = own(settings, Path("."), search=search)
    cancer.to_parquet("cancer.parquet")
    snapshot = take_snapshot("cancer.parquet", s, "target")
    trained = train(snapshot.frame, "target", s.training, s.data)
    assert len(trained.search) == 3 and list(trained.search["rank"]) == sorted(trained.search["rank"])
    assert trained.search.loc[0, "model__C"] == estimator_of(trained.model).C
    registered = register.fn(trained, snapshot, project_lineage(s.training), s)
    run = mlflow.get_run(registered.run_id)
    assert float(run.data.params["search_best_model__C"]) == trained.search.loc[0, "model__C"]
    table = json.loads(
        Path(mlflow.artifacts.download_artifacts(f"runs:/{registered.run_id}/search/candidates.json")).read_text()
    )
    assert len(table["data"]) == 3 and "mean_score" in table["columns"]

    with pytest.raises(ConfigError, match="training.search.params: the Pipeline has no parameter 'model__gamma'"):
        train(
            cancer,
            "target",
            s.training.model_copy(
                update={"search": s.training.search.model_copy(update={"params": {"model__gamma": [1]}})}
            ),
        )


def test_probabilities_are_served_as_mlflow_pyfunc_answers_them(settings, cancer):
    s = own(settings, Path("."), predict_fn="predict_proba")
    cancer.to_parquet("cancer.parquet")
    snapshot = take_snapshot("cancer.parquet", s, "target")
    trained = train(snapshot.frame, "target", s.training, s.data)
    registered = register.fn(trained, snapshot, project_lineage(s.training), s)
    set_alias(s, registered.name, Alias.PRODUCTION, registered.version)
    tags = versions(s, registered.name)[0][0].tags
    assert tags["predict_fn"] == "predict_proba" and json.loads(tags["classes"]) == [0, 1]
    rows = trained.X_holdout.head(6)
    pyfunc = mlflow.pyfunc.load_model(registered.model_uri).predict(rows)
    body = {"dataframe_split": {"columns": list(rows.columns), "data": rows.to_numpy().tolist()}}
    with running(s) as url:
        got = httpx.post(f"{url}/invocations", json=body, timeout=30).json()["predictions"]
    assert np.asarray(got).shape == (6, 2)
    if tags["serving_format"] == "sklearn":
        assert got == pyfunc.tolist()
    else:  # ONNX is kept only when its probabilities match sklearn's to 1e-9
        np.testing.assert_allclose(got, pyfunc, rtol=1e-9, atol=1e-12)


def test_the_resolved_config_is_logged_without_secrets_and_hashed(settings, cancer):
    s = own(settings, Path("."))
    s = s.model_copy(
        update={
            "serving": s.serving.model_copy(update={"hash_salt": SecretStr("pepper")}),
            "prediction_log": s.prediction_log.model_copy(update={"url": "postgresql://app:hunter2@db:5432/log"}),
        }
    )
    doc = resolved_config(s)
    assert doc["serving"]["hash_salt"] == "***"
    assert doc["prediction_log"]["url"] == "postgresql://app:***@db:5432/log"
    assert doc["training"]["model_name"] == "cancer"
    cancer.to_parquet("cancer.parquet")
    snapshot = take_snapshot("cancer.parquet", s, "target")
    registered = register.fn(
        train(snapshot.frame, "target", s.training, s.data), snapshot, project_lineage(s.training), s
    )
    text = Path(mlflow.artifacts.download_artifacts(f"runs:/{registered.run_id}/config/resolved.yaml")).read_text()
    assert "pepper" not in text and "hunter2" not in text
    assert yaml.safe_load(text) == doc
    tags = MlflowClient().get_model_version(registered.name, registered.version).tags
    assert tags["config_hash"] == hashlib.sha256(text.encode()).hexdigest()
    assert tags["task"] == Task.BINARY.value


@pytest.mark.slow
@pytest.mark.parametrize(
    ("shape", "training"),
    [
        ("labels at the chosen threshold", {}),
        ("probabilities", {"predict_fn": "predict_proba"}),
        ("probabilities, own pipeline", {"predict_fn": "predict_proba", "preprocessing": "none",
                                         "estimator": "acme_model.pipelines:make_pipeline"}),
        ("regression", {"estimator": "random_forest", "params": {"n_estimators": 20}}),
    ],
)  # fmt: skip
def test_the_gateway_answers_what_mlflow_models_serve_answers(settings, project, cancer, shape, training):
    frame = cancer if shape != "regression" else load_diabetes(as_frame=True, scaled=False).frame
    s = own(settings, project, **training)
    frame.to_parquet("table.parquet")
    snapshot = take_snapshot("table.parquet", s, "target")
    trained = train(snapshot.frame, "target", s.training, s.data)
    registered = register.fn(trained, snapshot, project_lineage(s.training), s)
    set_alias(s, registered.name, Alias.PRODUCTION, registered.version)
    serving_format = versions(s, registered.name)[0][0].tags["serving_format"]
    rows = trained.X_holdout.head(20)
    body = {"dataframe_split": {"columns": list(rows.columns), "data": rows.to_numpy().tolist()}}
    with (
        running(s) as gateway,
        mlflow_models_serve(s.mlflow.tracking_uri, f"models:/{registered.name}@Production") as reference,
    ):
        ours = httpx.post(f"{gateway}/invocations", json=body, timeout=60)
        theirs = httpx.post(f"{reference}/invocations", json=body, timeout=60)
    assert ours.status_code == theirs.status_code == 200, (ours.text, theirs.text)
    if serving_format == "sklearn" or not training:  # labels: exactly equal
        assert ours.json() == theirs.json()
    else:  # ONNX is kept only when its answers match sklearn's to 1e-9
        assert set(ours.json()) == set(theirs.json()) == {"predictions"}
        np.testing.assert_allclose(ours.json()["predictions"], theirs.json()["predictions"], rtol=1e-9, atol=1e-12)
