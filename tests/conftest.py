"""Shared fixtures: real backends on loopback and in temp dirs, never mocks of them."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from pathlib import Path

import pytest

from configs.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]


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
