"""Shared fixtures: real backends on loopback and in temp dirs, never mocks of them."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy
import yaml
from sqlalchemy.engine import Engine

from configs.settings import DEFAULT_PROFILE, ENV_PREFIX, Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SHIPWAY = str(BIN / "shipway")  # the installed command, run as a user runs it
PG_SERVER = "postgres@127.0.0.1:5432"  # trust auth, here and in CI
# Promotion and gateway settings scaled for a test: small windows, quick polls (see `tuned`).
QUICK_PROMOTION: dict[str, dict[str, Any]] = {
    "promotion": {
        "min_requests": 60,
        "min_labeled": 30,
        "step_seconds": 120,  # the longest a step waits: it moves on once min_requests are in
        "canary_steps": [0.25, 0.5],
        "approval_timeout_seconds": 60,
        # A p99 of 60 answers is their slowest one or two: a busy machine moves it by milliseconds
        # (seen in CI: canary 3.46 vs 0.98 ms). Latency is not these tests' subject; test_analysis's is.
        "latency_slack_ms": 50,
    },
    "serving": {"poll_interval_s": 0.3},
}
T = TypeVar("T")


def tuned(settings: Settings, **sections: dict[str, Any]) -> Settings:
    """`settings` with some keys changed, validated as a profile's would be (a misspelt key fails):
    `tuned(settings, promotion={"min_requests": 60}, serving={"poll_interval_s": 0.3})`."""
    update = {}
    for section, values in sections.items():
        current = getattr(settings, section)
        update[section] = type(current).model_validate(current.model_dump() | values)
    return settings.model_copy(update=update)


def wait_for(check: Callable[[], T], timeout: float = 15.0, what: str = "the condition", every: float = 0.05) -> T:
    """Poll until `check()` is truthy and return it (gateways, registries and flows move on their own time)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@contextmanager
def postgres_databases(*roles: str) -> Iterator[dict[str, str]]:
    """Fresh databases {role: name} on the local PostgreSQL, dropped afterwards.

    Skips the test when there is no PostgreSQL, except in CI, where it must run.
    """
    import psycopg

    try:
        admin = psycopg.connect(f"postgresql://{PG_SERVER}/test", autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432 as user postgres ({type(exc).__name__}); CI runs this test")
    suffix = uuid.uuid4().hex[:10]
    names = {role: f"shipway_{role}_{suffix}" for role in roles}
    with admin:
        for name in names.values():
            admin.execute(f"CREATE DATABASE {name}")
        try:
            yield names
        finally:
            for name in names.values():
                admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # servers may still hold a connection


def embedded(root: Path, profile: Path = DEFAULT_PROFILE) -> Settings:
    """A profile (the embedded default unless named) with its local state under `root`, whatever
    SHIPWAY_* variables say."""
    with pytest.MonkeyPatch.context() as mp:
        for var in [v for v in os.environ if v.startswith(ENV_PREFIX)]:
            mp.delenv(var)
        return load_settings(profile, cwd=root)


def write_profile(settings: Settings, path: Path) -> Path:
    """`settings` as a whole profile, for a command run with --config or SHIPWAY_CONFIG."""
    path.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    return path


def run_shipway(*args: str, cwd: Path, timeout: float = 120, **env: str | None) -> subprocess.CompletedProcess:
    """The installed command in `cwd`, with no SHIPWAY_* variables but those given (None: unset)."""
    merged = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)} | env
    clean = {k: v for k, v in merged.items() if v is not None}
    return subprocess.run([SHIPWAY, *args], cwd=cwd, env=clean, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The embedded default profile, with its state under a fresh temp dir (also the working dir,
    with no SHIPWAY_* variables, for commands a test runs in-process)."""
    monkeypatch.chdir(tmp_path)
    for var in [v for v in os.environ if v.startswith(ENV_PREFIX)]:
        monkeypatch.delenv(var)
    return embedded(tmp_path)


@pytest.fixture(scope="session")
def prefect_harness():
    """A real Prefect server on a temp SQLite DB, started once per session (~10 s)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no network here
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture
def small(settings: Settings) -> Settings:
    """The embedded default with a 3,000-row demo dataset: quick to snapshot, train and register."""
    return tuned(settings, data={"demo_rows": 3_000})


def register_versions(settings: Settings, count: int) -> list:
    """Train once on the demo data and register `count` versions of it, lineage fixed."""
    from tasks.data.demo_data import TARGET
    from tasks.data.snapshot import take_snapshot
    from tasks.release.lineage import GitLineage
    from tasks.release.registration import register
    from tasks.training.pipeline import train

    snapshot = take_snapshot("demo", settings, TARGET)
    trained = train(snapshot.frame, TARGET, settings.training)
    lineage = GitLineage(commit="a" * 40, branch="main", dirty=False)
    registered = [register.fn(trained, snapshot, lineage, settings) for _ in range(count)]
    for version in registered:
        mark_gated(settings, version.name, version.version)
    return [(version, trained, snapshot) for version in registered]


def mark_gated(settings: Settings, name: str, version: str) -> None:
    """Record a passing latency result and quality verdict, as `shipway bench` and the training flow's
    quality gate do, so the version may take an alias.

    The benchmark and the quality gate are tested in test_serving_parts and test_quality_flow; here
    they would only cost time.
    """
    from tasks.release.registry import set_version_tags

    gated = {"latency_gate": "passed", "latency_p99_ms": "1.0", "quality_gate": "passed"}
    set_version_tags(settings, name, str(version), gated)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def mlflow_models_serve(tracking_uri: str, model_uri: str, startup_s: float = 180) -> Iterator[str]:
    """A real `mlflow models serve -m MODEL_URI --env-manager local` on a free loopback port: the
    drop-in's reference, side by side with the gateway."""
    import httpx

    port = free_port()
    # mlflow execs `uvicorn` from PATH: the one of this interpreter.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri, PATH=path)
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri,
               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]  # fmt: skip
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + startup_s
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    out.seek(0)
                    raise AssertionError(f"mlflow models serve did not start:\n{out.read().decode()[-3000:]}")
                try:
                    if httpx.get(f"{url}/ping", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.2)
            yield url
        finally:
            os.killpg(proc.pid, signal.SIGTERM)  # its uvicorn child too
            proc.wait(timeout=30)


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server on loopback: boto3 talks real HTTP to it."""
    from moto.server import ThreadedMotoServer

    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A new bucket per test: UUID names instead of wiping state."""
    import boto3

    name = f"shipway-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


@contextmanager
def stop_inside_commits() -> Iterator[None]:
    """Ctrl-C at the first commit of any engine, where SQLAlchemy has closed its transaction but not yet
    asked the database to commit: how a SIGTERM in the register step left the store locked for good."""

    def stop(_conn: object) -> None:
        sqlalchemy.event.remove(Engine, "commit", stop)
        raise KeyboardInterrupt

    sqlalchemy.event.listen(Engine, "commit", stop)
    try:
        yield
    finally:
        if sqlalchemy.event.contains(Engine, "commit", stop):
            sqlalchemy.event.remove(Engine, "commit", stop)
