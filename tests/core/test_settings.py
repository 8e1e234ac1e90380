from pathlib import Path

import pytest

from configs.settings import PROFILES, load_settings
from core.errors import ConfigError


def test_default_profile_keeps_all_state_under_dot_shipway(settings, tmp_path):
    home = tmp_path / ".shipway"
    assert settings.mlflow.tracking_uri == f"sqlite:///{home}/mlflow.db"
    assert settings.mlflow.artifact_location == str(home / "artifacts")
    assert settings.snapshots.store == str(home / "snapshots")
    assert settings.prediction_log.url == f"sqlite:///{home}/predictions.db"
    assert settings.prefect.api_url is None  # ephemeral mode


def test_every_local_path_is_made_absolute_against_the_working_directory(settings, tmp_path):
    profile = tmp_path / "mine.yaml"
    profile.write_text(
        "training:\n  code_path: [src, /opt/lib]\nmlflow:\n  artifact_location: s3://bucket/runs\n"
        "prediction_log:\n  url: postgresql://db/log\n"
    )
    loaded = load_settings(profile, cwd=tmp_path / "work")
    work = tmp_path / "work"
    assert loaded.training.code_path == [str(work / "src"), "/opt/lib"]
    assert (loaded.gate.report_dir, loaded.gate.expectations_dir) == (
        str(work / ".shipway" / "reports"),
        str(work / "expectations"),
    )
    assert loaded.serving.state_dir == str(work / ".shipway" / "serving-state")
    assert loaded.mlflow.tracking_uri == f"sqlite:///{work}/.shipway/mlflow.db"
    # URLs are left as they are
    assert (loaded.mlflow.artifact_location, loaded.prediction_log.url) == ("s3://bucket/runs", "postgresql://db/log")


def test_production_profile_points_at_servers(tmp_path):
    prod = load_settings(PROFILES / "production.yaml", cwd=tmp_path)
    assert prod.mlflow.tracking_uri.startswith("http")
    assert prod.snapshots.store.startswith("s3://")
    assert prod.s3.endpoint_url
    assert prod.prediction_log.url.startswith("postgresql")
    assert prod.prefect.api_url.startswith("http")


def test_environment_overrides_nested_keys(settings, monkeypatch, tmp_path):
    monkeypatch.setenv("SHIPWAY_TRAINING__ESTIMATOR", "random_forest")
    monkeypatch.setenv("SHIPWAY_TRAINING__SEED", "7")
    monkeypatch.setenv("SHIPWAY_SNAPSHOTS__STORE", "s3://bucket/snaps")
    loaded = load_settings(cwd=tmp_path)
    assert loaded.training.estimator == "random_forest"
    assert loaded.training.seed == 7
    assert loaded.snapshots.store == "s3://bucket/snaps"
    assert loaded.training.model_name == settings.training.model_name  # the rest of the profile stays


def test_config_path_from_environment(settings, monkeypatch, tmp_path):
    profile = tmp_path / "mine.yaml"
    profile.write_text("training:\n  model_name: mine\n")
    monkeypatch.setenv("SHIPWAY_CONFIG", str(profile))
    assert load_settings(cwd=tmp_path).training.model_name == "mine"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("training:\n  estimater: x\n", "unknown key 'training.estimater'"),
        ("nonsense: 1\n", "unknown key 'nonsense'"),
        ("training:\n  seed: many\n", "key 'training.seed': Input should be a valid integer"),
        ("training:\n  estimator: svm\n", "key 'training.estimator'"),
        ("training:\n  test_size: 1.5\n", "key 'training.test_size'"),
        ("training: [1, 2\n", "is not valid YAML at line"),
        ("- a\n- b\n", "must hold a mapping of keys"),
    ],
)
def test_bad_profile_is_one_line_naming_the_key(settings, tmp_path, text, message):
    profile = tmp_path / "bad.yaml"
    profile.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_settings(profile, cwd=tmp_path)
    assert message in str(caught.value)
    assert str(profile) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_bad_environment_variable_is_named(settings, monkeypatch, tmp_path):
    monkeypatch.setenv("SHIPWAY_TRAINING__SEED", "abc")
    with pytest.raises(ConfigError, match="environment variable SHIPWAY_TRAINING__SEED: key 'training.seed'"):
        load_settings(cwd=tmp_path)


def test_missing_profile(settings, tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nowhere.yaml"):
        load_settings(Path(tmp_path / "nowhere.yaml"), cwd=tmp_path)


def test_hashing_needs_a_secret_salt_that_never_shows(settings, monkeypatch, tmp_path):
    monkeypatch.setenv("SHIPWAY_SERVING__SENSITIVE_COLUMNS", '{"age": "hash", "email": "drop"}')
    with pytest.raises(ConfigError, match=r"serving.sensitive_columns hashes 'age' but serving.hash_salt is empty"):
        load_settings(cwd=tmp_path)
    monkeypatch.setenv("SHIPWAY_SERVING__HASH_SALT", "s3cret-pepper")
    loaded = load_settings(cwd=tmp_path)
    assert loaded.serving.hash_salt.get_secret_value() == "s3cret-pepper"
    for shown in (repr(loaded), str(loaded.serving), loaded.model_dump_json(), str(loaded.model_dump(mode="json"))):
        assert "s3cret-pepper" not in shown
    monkeypatch.setenv("SHIPWAY_SERVING__SENSITIVE_COLUMNS", '{"email": "drop"}')
    monkeypatch.delenv("SHIPWAY_SERVING__HASH_SALT")
    assert load_settings(cwd=tmp_path).serving.sensitive_columns == {"email": "drop"}  # dropping needs no key


def test_the_production_profile_requires_an_api_token_from_the_environment(monkeypatch, tmp_path):
    prod = load_settings(PROFILES / "production.yaml", cwd=tmp_path)
    assert prod.serving.require_api_token and not prod.serving.api_token.get_secret_value()
    monkeypatch.setenv("SHIPWAY_SERVING__API_TOKEN", "from-env")
    prod = load_settings(PROFILES / "production.yaml", cwd=tmp_path)
    assert prod.serving.api_token.get_secret_value() == "from-env" and "from-env" not in prod.model_dump_json()


def test_quality_metrics_take_the_names_the_runs_log(settings, tmp_path):
    profile = tmp_path / "mine.yaml"
    profile.write_text(
        "quality:\n  metric: f1_macro\n  min: {f1_macro: 0.5, precision_macro: 0.4}\n  max: {log_loss: 1}\n"
    )
    quality = load_settings(profile, cwd=tmp_path).quality
    assert (quality.metric, quality.min, quality.max) == (
        "f1_macro",
        {"f1_macro": 0.5, "precision_macro": 0.4},
        {"log_loss": 1},
    )
