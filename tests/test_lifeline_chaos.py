"""Children die with their parent (issue 12, item 8): kill -9 of the gateway ends its Shadow process,
kill -9 of a `shipway` command ends its temporary Prefect server. Real processes, real signals."""

import os
import signal
import subprocess
import sys
import textwrap

import httpx
import psutil
import pytest

from core.vocabulary import Alias
from serving.server import running
from tasks.aliases import move
from tasks.demo_data import generate
from tests.conftest import register_versions, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.chaos]
GONE_S = 5.0  # a child must be gone this long after its parent was killed


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_the_shadow_process_dies_with_a_killed_gateway(small):
    register_versions(small, 2)
    move(small, "churn-classifier", {Alias.PRODUCTION: "1", Alias.SHADOW: "2"}, actor="test", reason="setup")
    body = {"dataframe_records": generate(3, seed=1).drop(columns="churned").to_dict("records")}
    with running(small, isolated=True) as url:
        assert httpx.post(f"{url}/invocations", json=body, timeout=30).status_code == 200
        shadow = wait_for(lambda: httpx.get(f"{url}/health").json()["shadow_process"]["pid"], 30, "the shadow")
        gateway = psutil.Process(shadow).ppid()
        assert gateway != os.getpid()
        os.kill(gateway, signal.SIGKILL)
        wait_for(lambda: gone(shadow), GONE_S, "the shadow process to exit")


def test_the_temporary_prefect_server_dies_with_a_killed_cli(tmp_path):
    """The server the CLI starts in ephemeral mode (flows/prefect_server.py), once it answers."""
    script = textwrap.dedent(
        """
        from flows.prefect_server import TemporaryPrefectServer
        server = TemporaryPrefectServer()
        server.start()
        server.wait()
        print(server.process.pid, flush=True)
        input()
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"PREFECT_HOME": str(tmp_path)}
    cli = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    try:
        server = int(cli.stdout.readline())
        assert not gone(server)
        os.kill(cli.pid, signal.SIGKILL)
        cli.wait()
        wait_for(lambda: gone(server), GONE_S, "the temporary Prefect server to exit")
    finally:
        cli.kill()
