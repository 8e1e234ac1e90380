"""Prefect's temporary server for the embedded profile, started before the heavy imports.

In ephemeral mode Prefect starts a temporary API server on the first API call, after MLflow,
scikit-learn and skops are imported: the server's start on top of the imports, in series.
Starting the same server (the command Prefect itself runs for ephemeral mode) as the very first
thing the CLI does lets both happen at once on a 2-core machine. Its state is Prefect's usual
database under PREFECT_HOME, so paused runs, history and other processes see the same runs.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request

from core import lifeline
from core.errors import ShipwayError

STARTUP_TIMEOUT = 90.0  # seconds; a first start migrates a fresh database, slow under load


class TemporaryPrefectServer:
    """`start()` returns at once; `wait()` blocks until the API answers; stopped at exit."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.api_url = ""

    def start(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.api_url = f"http://127.0.0.1:{port}/api"
        env = {
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            **os.environ,  # no telemetry unless asked for
            "PREFECT_UI_ENABLED": "0",
            "PREFECT__SERVER_EPHEMERAL": "1",
            "PREFECT__SERVER_FINAL": "1",
        }
        self.process = subprocess.Popen(
            lifeline.command(  # killed with the CLI (even by kill -9), the server goes too
                "uvicorn",
                "--factory",
                "prefect.server.api.server:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "error",
                "--lifespan",
                "on",
            ),
            env=env,
            # Its own session: a signal to the CLI's process group (Ctrl-C, a service manager's SIGTERM)
            # must not stop the API under the flow run, which still has to record how it ended; the CLI
            # stops it at exit, the lifeline if the CLI is killed.
            start_new_session=True,
        )
        atexit.register(self.stop)
        os.environ["PREFECT_API_URL"] = self.api_url
        # No UI runs on it and it stops with the command: Prefect's "View at <link>" would lead nowhere.
        os.environ["PREFECT_UI_URL"] = ""

    def wait(self) -> None:
        assert self.process is not None, "start() the server first"
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ShipwayError(f"Prefect's temporary server exited with code {self.process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise ShipwayError(f"Prefect's temporary server did not answer on {self.api_url} in {STARTUP_TIMEOUT:.0f} s")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
