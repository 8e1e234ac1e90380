"""Run the gateway on uvicorn (uvloop + httptools, with bounds on request heads: serving/protocol.py):
in the foreground, or for a test or benchmark.

`running(...)` starts a real server on loopback and stops it gracefully (the lifespan shutdown
drains the prediction log). In-process (a thread) is what tests need to reach the gateway's
state; `isolated=True` runs it as a subprocess so a benchmark client does not share its GIL.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn
import yaml

from configs.settings import ENV_PREFIX, Settings, load_settings
from core import lifeline
from core.errors import ConfigError, RegistryError, ShipwayError
from core.vocabulary import Alias
from serving.app import Gateway, create_app
from serving.local_state import LocalState
from serving.protocol import guarded
from serving.registry_reader import LoadedVersion, RegistryReader, unknown_sensitive_columns

# How long uvicorn lets requests under way finish after SIGTERM, before the log is drained
# (docker/k8s/gateway.yaml's grace period covers both).
GRACEFUL_SHUTDOWN_S = 10


class GatewayError(ShipwayError):
    """The gateway could not start."""


def uvicorn_config(app: Gateway, host: str, port: int) -> uvicorn.Config:
    serving = app.serving
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="uvloop",
        http=guarded(serving.header_timeout_s, serving.max_header_bytes),
        ws="none",  # no WebSocket endpoint: an upgrade request is plain HTTP, and no WebSocket library is imported
        timeout_keep_alive=round(serving.keep_alive_s),
        lifespan="on",
        access_log=False,  # every request is in the prediction log already
        log_level="warning",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )


def serve(settings: Settings, host: str, port: int, pinned_version: str | None = None) -> None:
    """Serve in the foreground until SIGINT/SIGTERM, then shut down gracefully."""
    sock = bound_socket(host, port)  # first: a taken port is said at once, not after the models loaded
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("shipway.serving").setLevel(logging.INFO)
    with sock:
        check_sensitive_columns(settings, pinned_version)
        server = uvicorn.Server(uvicorn_config(create_app(settings, pinned_version=pinned_version), host, port))
        server.run(sockets=[sock])
    if not server.started:
        raise GatewayError(f"the gateway did not start on {host}:{port} (see the log above)")


def bound_socket(host: str, port: int) -> socket.socket:
    """The gateway's socket, bound as uvicorn binds it. Not listening yet: until the models are loaded and
    uvicorn listens on it, a client's connection is refused (as before), never left waiting."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        why = "in use by another process" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc)).lower()
        message = f"cannot listen on {host}:{port}: {why} (choose another with --port or serving.port)"
        raise GatewayError(message) from None
    return sock


def check_sensitive_columns(settings: Settings, pinned_version: str | None = None) -> None:
    """Refuse to start when the Production version lacks a column serving.sensitive_columns names.

    No store or no Production yet: nothing to check against; the router reports it later in /health.
    """
    sensitive = settings.serving.sensitive_columns
    if not sensitive:
        return
    name = settings.training.model_name
    try:
        reader = RegistryReader(settings)
        version = pinned_version or reader.state(name).aliases.get(Alias.PRODUCTION.value)
        if version is None:
            return
        columns = [c.name for c in reader.columns(name, version)]
    except RegistryError:
        return
    unknown = unknown_sensitive_columns(sensitive, columns)
    if unknown:
        raise ConfigError(
            f"serving.sensitive_columns names {', '.join(map(repr, unknown))}, which version {version} of '{name}' "
            f"(Production) does not have (its columns: {', '.join(columns)})"
        )


@contextmanager
def running(
    settings: Settings,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    pinned_version: str | None = None,
    isolated: bool = False,
    kept: LoadedVersion | None = None,
    kept_baseline: Any = None,
) -> Iterator[str]:
    """A real gateway on `host:port` (0: a free port) for the block; yields its base URL.

    `kept`: a version this process has loaded already (and `kept_baseline`, its baseline), served
    pinned from a local state holding it, so that the gateway starts without MLflow's import or a
    registry read (the benchmark).
    """
    port = port or _free_port(host)
    with tempfile.TemporaryDirectory() as tmp:
        if kept is not None:
            state_dir = Path(tmp) / "state"
            serving = settings.serving.model_copy(update={"state_dir": str(state_dir)})
            settings = settings.model_copy(update={"serving": serving})
            local = LocalState(state_dir, settings.mlflow.tracking_uri, settings.training.model_name)
            local.save_version(kept, kept_baseline)
            pinned_version = kept.version
        if isolated:
            with _subprocess(settings, host, port, pinned_version, Path(tmp)) as url:
                yield url
            return
        app = create_app(settings, pinned_version=pinned_version)
        server = uvicorn.Server(uvicorn_config(app, host, port))
        thread = threading.Thread(target=server.run, name=f"gateway-{port}", daemon=True)
        thread.start()
        deadline = time.monotonic() + settings.serving.startup_timeout_s
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                raise GatewayError(f"the gateway did not start on {host}:{port}")
            time.sleep(0.01)
        try:
            yield f"http://{host}:{port}"
        finally:
            server.should_exit = True
            thread.join(timeout=60)


def _secrets_env(settings: Settings) -> dict[str, str]:
    secrets = {"HASH_SALT": settings.serving.hash_salt, "API_TOKEN": settings.serving.api_token}
    return {f"{ENV_PREFIX}SERVING__{k}": v.get_secret_value() for k, v in secrets.items() if v.get_secret_value()}


@contextmanager
def _subprocess(settings: Settings, host: str, port: int, pinned_version: str | None, tmp: Path) -> Iterator[str]:
    profile = tmp / "profile.yaml"
    profile.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    command = lifeline.command("serving", "--config", str(profile), "--host", host, "--port", str(port))
    if pinned_version:
        command += ["--pinned-version", pinned_version]
    # The profile holds every setting already: SHIPWAY_* variables would override it again, e.g. point
    # the benchmark's gateway at the production prediction log instead of its own scratch one.
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env |= _secrets_env(settings)  # the profile dump shows secrets as **********
    log_file = tmp / "gateway.log"
    with log_file.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=os.getcwd(), env=env)
    url = f"http://{host}:{port}"
    try:
        _wait_until_up(url, proc, log_file, settings.serving.startup_timeout_s)
        yield url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # uvicorn's graceful shutdown: the log is drained
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_until_up(url: str, proc: subprocess.Popen, log_file: Path, timeout_s: float) -> None:
    import httpx  # the client side only: the gateway itself never needs it

    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=1.0) as client:  # one client: each new one loads the CA store again
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = log_file.read_text()[-2000:]
                raise GatewayError(f"the gateway exited with code {proc.returncode} before answering:\n{tail}")
            try:
                if client.get(f"{url}/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
    proc.kill()
    raise GatewayError(f"the gateway at {url} did not answer within {timeout_s:.0f} s (serving.startup_timeout_s)")


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> None:
    """`python -m serving`: the gateway for a profile, optionally pinned to one version."""
    parser = argparse.ArgumentParser(prog="python -m serving")
    parser.add_argument("--config", required=True)
    parser.add_argument("--host", default=None)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--pinned-version", default=None)
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    try:
        serve(settings, args.host or settings.serving.host, args.port or settings.serving.port, args.pinned_version)
    except ShipwayError as exc:
        sys.exit(f"shipway: error: {exc}")
