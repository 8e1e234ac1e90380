"""Run the gateway on uvicorn (uvloop + httptools, with bounds on request heads: serving/protocol.py):
in the foreground, or for a test or benchmark.

`serve(..., workers=N)` with N > 1 runs N gateway processes on one port: each worker binds its own
socket with SO_REUSEPORT and the kernel spreads new connections over them (one Python process
uses one core: the GIL). The process `serve` runs in supervises them: it checks the port and the
configuration once, creates the prediction log's tables once (N workers creating them at once
would race), makes the Unix socket over which the workers hand worker 0 their mirrored requests
(one Shadow process per host: serving/shadow.py) and the folder their metrics share
(serving/metrics.py), then starts the workers as children that die with it (core/lifeline.py).
SIGTERM or SIGINT to it is passed on once to each worker, which drains its prediction log;
a worker that exits on its own stops the others, and the supervisor exits with an error for the
process manager to restart the gateway whole, as it restarts a one-process gateway.

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
from dataclasses import replace
from pathlib import Path
from typing import Any

import uvicorn
import yaml

from configs.settings import ENV_PREFIX, Settings, load_settings
from core import lifeline
from core.errors import ConfigError, RegistryError, ShipwayError
from core.vocabulary import Alias
from serving.app import Gateway, Worker, create_app
from serving.local_state import LocalState
from serving.metrics import MULTIPROC_DIR
from serving.prediction_log import engine
from serving.protocol import guarded
from serving.registry_reader import LoadedVersion, RegistryReader, unknown_sensitive_columns

log = logging.getLogger("shipway.serving")

MAX_DEFAULT_WORKERS = 8  # serving.workers 0: one per CPU, but no more (each loads every served model)
WAIT_S = 0.2  # how often the supervisor looks at its workers

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


def serve(settings: Settings, host: str, port: int, pinned_version: str | None = None, workers: int = 1) -> None:
    """Serve in the foreground until SIGINT/SIGTERM, then shut down gracefully; `workers` processes."""
    sock = bound_socket(host, port)  # first: a taken port is said at once, not after the models loaded
    _log_to_stderr()
    if workers > 1:
        sock.close()  # the workers bind their own, with SO_REUSEPORT (this one, without, would refuse them)
        check_sensitive_columns(settings, pinned_version)
        supervise(settings, host, port, pinned_version, workers)
        return
    with sock:
        check_sensitive_columns(settings, pinned_version)
        _run(create_app(settings, pinned_version=pinned_version), sock, host, port)


def _log_to_stderr() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("shipway.serving").setLevel(logging.INFO)


def _run(app: Gateway, sock: socket.socket, host: str, port: int) -> None:
    server = uvicorn.Server(uvicorn_config(app, host, port))
    server.run(sockets=[sock])
    if not server.started:
        raise GatewayError(f"the gateway did not start on {host}:{port} (see the log above)")


def default_workers(configured: int) -> int:
    """serving.workers, or for 0 one per CPU this process may use, at most MAX_DEFAULT_WORKERS."""
    return configured or min(len(os.sched_getaffinity(0)), MAX_DEFAULT_WORKERS)


def supervise(settings: Settings, host: str, port: int, pinned_version: str | None, workers: int) -> None:
    """N workers on host:port until SIGTERM/SIGINT (see the module's docstring)."""
    try:
        engine(settings.prediction_log.url).dispose()  # the tables, once
    except Exception as exc:  # the workers create them once the database can be used
        log.warning("prediction log: cannot create its tables yet (%s); the workers will", type(exc).__name__)
    with tempfile.TemporaryDirectory(prefix="shipway-gateway-") as run_dir:
        metrics_dir = Path(run_dir) / "metrics"
        metrics_dir.mkdir()
        shadow_path = str(Path(run_dir) / "shadow.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(shadow_path)
        listener.listen(workers)  # the others may connect before worker 0 accepts: they wait in the backlog
        profile = _write_profile(settings, Path(run_dir))
        env = _worker_env(settings) | {MULTIPROC_DIR: str(metrics_dir)}
        procs: list[subprocess.Popen] = []
        for index in range(workers):
            command = lifeline.command("serving", "--config", str(profile), "--host", host, "--port", str(port),
                                       "--worker", f"{index}/{workers}", "--shadow-socket", shadow_path)  # fmt: skip
            if pinned_version:
                command += ["--pinned-version", pinned_version]
            fds: tuple[int, ...] = ()
            if index == 0:
                command += ["--shadow-fd", str(listener.fileno())]
                fds = (listener.fileno(),)
            # A process group of its own: Ctrl-C in a terminal reaches the supervisor only, which passes one
            # SIGTERM on (a second signal would cut uvicorn's graceful shutdown, and the log's drain, short).
            procs.append(subprocess.Popen(command, env=env, pass_fds=fds, process_group=0))
        listener.close()
        log.info("gateway: %d workers on %s:%d (pids %s)", workers, host, port, ", ".join(str(p.pid) for p in procs))
        failed, received = _wait_for_workers(procs)
    if failed is not None:
        index, code = failed
        raise GatewayError(
            f"gateway worker {index} exited with code {code} (see the log above); the other workers were stopped"
        )
    if received is not None:  # ended as one gateway process ends on it (the command: exit 143 on SIGTERM)
        signal.raise_signal(received)


def _wait_for_workers(procs: list[subprocess.Popen]) -> tuple[tuple[int, int] | None, int | None]:
    """Until every worker has exited: a signal is passed on to each once; returns the first worker to exit
    on its own, which stops the others (its index and exit code), and the signal that stopped them."""
    stopping = False
    failed: tuple[int, int] | None = None
    received: list[int] = []

    def stop(signum: int = 0, frame: object = None) -> None:
        nonlocal stopping
        if signum:
            received.append(signum)
        if not stopping:
            stopping = True
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)

    before = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    while True:
        codes = [proc.poll() for proc in procs]  # every one: a worker that exited is reaped
        if None not in codes:
            for sig, handler in before.items():
                signal.signal(sig, handler)
            return failed, (received[0] if received else None)
        exited = [(i, code) for i, code in enumerate(codes) if code is not None]
        if exited and not stopping:
            failed = exited[0]
            stop()
        time.sleep(WAIT_S)


def _write_profile(settings: Settings, folder: Path) -> Path:
    """The resolved settings for a child process (its secrets go by `_worker_env`)."""
    profile = folder / "profile.yaml"
    profile.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    return profile


def _worker_env(settings: Settings) -> dict[str, str]:
    # The profile holds every setting already: SHIPWAY_* variables would override it again, e.g. point
    # the benchmark's gateway at the production prediction log instead of its own scratch one.
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX) and k != MULTIPROC_DIR}
    return env | _secrets_env(settings)  # the profile dump shows secrets as **********


def serve_worker(
    settings: Settings, host: str, port: int, worker: Worker, pinned_version: str | None, shadow_fd: int | None
) -> None:
    """One worker of several: its own socket on the shared port (SO_REUSEPORT)."""
    _log_to_stderr()
    if shadow_fd is not None:
        worker = replace(worker, shadow_listener=socket.socket(fileno=shadow_fd))
    with bound_socket(host, port, reuse_port=True) as sock:
        _run(create_app(settings, pinned_version=pinned_version, worker=worker), sock, host, port)


def bound_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """The gateway's socket, bound as uvicorn binds it. Not listening yet: until the models are loaded and
    uvicorn listens on it, a client's connection is refused (as before), never left waiting. `reuse_port`:
    one of several workers' sockets on one port (the kernel spreads connections over the listening ones)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        why = "in use by another process" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc)).lower()
        # A port in use or reserved is the port's fault; an address that does not resolve, or is not
        # this machine's, is the host's.
        key = "port" if exc.errno in (errno.EADDRINUSE, errno.EACCES) else "host"
        message = f"cannot listen on {host}:{port}: {why} (choose another with --{key} or serving.{key})"
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
    workers: int = 1,
    kept: LoadedVersion | None = None,
    kept_baseline: Any = None,
) -> Iterator[str]:
    """A real gateway on `host:port` (0: a free port) for the block; yields its base URL.

    `workers` > 1 runs `serve(..., workers=N)` in a subprocess (isolated).
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
        if isolated or workers > 1:
            with _subprocess(settings, host, port, pinned_version, Path(tmp), workers) as url:
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
def _subprocess(
    settings: Settings, host: str, port: int, pinned_version: str | None, tmp: Path, workers: int = 1
) -> Iterator[str]:
    profile = _write_profile(settings, tmp)
    command = lifeline.command("serving", "--config", str(profile), "--host", host, "--port", str(port))
    if pinned_version:
        command += ["--pinned-version", pinned_version]
    if workers > 1:
        command += ["--workers", str(workers)]
    env = _worker_env(settings)
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
    parser.add_argument("--workers", type=int, default=1)
    # A worker of `serve(..., workers=N)`: its index/N, worker 0's Unix socket for mirrored requests, and
    # (worker 0) the socket's listening fd.
    parser.add_argument("--worker", default=None)
    parser.add_argument("--shadow-socket", default=None)
    parser.add_argument("--shadow-fd", type=int, default=None)
    args = parser.parse_args(argv)
    settings = load_settings(args.config)
    host, port = args.host or settings.serving.host, args.port or settings.serving.port
    try:
        if args.worker is not None:
            index, count = map(int, args.worker.split("/"))
            worker = Worker(index, count, args.shadow_socket)
            serve_worker(settings, host, port, worker, args.pinned_version, args.shadow_fd)
        else:
            serve(settings, host, port, args.pinned_version, args.workers)
    except ShipwayError as exc:
        sys.exit(f"shipway: error: {exc}")
