"""Shared fixtures: real backends on loopback and in temp dirs, never mocks of them."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from configs.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
PG_SERVER = "postgres@127.0.0.1:5432"  # trust auth, here and in CI


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


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The embedded default profile, with its state under a fresh temp dir (the working dir)."""
    monkeypatch.chdir(tmp_path)
    for var in [v for v in os.environ if v.startswith("SHIPWAY_")]:
        monkeypatch.delenv(var)
    return load_settings(cwd=tmp_path)


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
    return settings.model_copy(update={"data": settings.data.model_copy(update={"demo_rows": 3_000})})


def register_versions(settings: Settings, count: int) -> list:
    """Train once on the demo data and register `count` versions of it, lineage fixed."""
    from tasks.demo_data import TARGET
    from tasks.lineage import GitLineage
    from tasks.registration import register
    from tasks.snapshot import take_snapshot
    from tasks.training import train

    snapshot = take_snapshot("demo", settings, TARGET)
    trained = train(snapshot.frame, TARGET, settings.training)
    lineage = GitLineage(commit="a" * 40, branch="main", dirty=False)
    registered = [register(trained, snapshot, lineage, settings) for _ in range(count)]
    for version in registered:
        mark_benchmarked(settings, version.name, version.version)
    return [(version, trained, snapshot) for version in registered]


def mark_benchmarked(settings: Settings, name: str, version: str) -> None:
    """Record a passing latency result, as `shipway bench` does, so the version may take an alias.

    The benchmark itself is tested in test_serving_parts; here it would only cost time.
    """
    from tasks.registry import set_version_tags

    set_version_tags(settings, name, str(version), {"latency_gate": "passed", "latency_p99_ms": "1.0"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
