"""Shadow predictions in a process of their own, on the CPU the answers leave.

A Shadow never answers, yet inside the gateway's process it would still slow the answers: its
model and its log rows need the GIL the event loop needs (docs/benchmarks.md: the p99 it cost).
So the gateway only hands each mirrored request's columns (one JSON line) to a child
process, `python -m serving.shadow`, in batches over a socket pair. The child runs at the lowest
CPU priority, loads the Shadow version from the registry, predicts, writes the shadow rows to
the prediction log itself and reports each outcome and model time back; the gateway turns the
reports into metrics. A slow, failing or crashing Shadow costs a backlog, bounded by
`serving.shadow_queue_size` (beyond it requests are skipped and counted), never an answer.

Protocol, newline-delimited JSON both ways. Gateway to child: the settings, then one line per
request `[version, request_id, ts, columns, rows, source, types]`. Child to gateway: one line per chunk
it processed, `{"done": [[version, outcome, seconds], ...], "written": n, "dropped": n}` (the
child's log rows so far).
End of input (or SIGTERM, which skips what is left) makes the child write its log and exit.

One Shadow process per host: with `shipway serve --workers N`, worker 0 runs it and listens on a
Unix socket its supervisor made; the other workers send it their mirrored requests there, in the
same lines (`ShadowForwarder`). Its reports come back to worker 0 only, which is enough: the
workers' metrics are summed (serving/metrics.py), and the backlog bound holds for the host.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from datetime import datetime
from types import FrameType
from typing import Any

import orjson

from configs.settings import ENV_PREFIX, Settings
from core import lifeline
from core.redaction import model_error
from serving.local_state import LocalState
from serving.metrics import Metrics
from serving.models import Inputs, freeze_heap, servable
from serving.prediction_log import ROLE_SHADOW, Prediction, PredictionLog, open_log
from serving.registry_reader import LoadedVersion, RegistryReader
from serving.schema import BadInput, Raw

log = logging.getLogger("shipway.serving")

SEND_BATCH = 64  # mirrored requests per write to the child
SEND_INTERVAL_S = 0.02  # longest a mirrored request waits to be sent
RESTART_AFTER_S = 5.0  # a child that died is started again after this long
SHUTDOWN_GRACE_S = 5.0  # at shutdown the child finishes its backlog for this long, then skips the rest
RELOAD_FAILED_AFTER_S = 10.0  # in the child: a version that failed to load is tried again after this long


def _line(version: str, request_id: str, ts: datetime, raw: Raw) -> bytes | None:
    """A mirrored request as the child reads it; None for an integer past 64 bits (JSON allows it, orjson
    does not write it)."""
    try:
        return orjson.dumps((version, request_id, ts, raw.columns, raw.rows, raw.source, raw.types)) + b"\n"
    except TypeError:
        return None


class _Batched:
    """Mirrored requests sent in batches: at SEND_BATCH lines, or SEND_INTERVAL_S after the first."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        self._pending: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None

    def submit(self, version: str, request_id: str, ts: datetime, raw: Raw) -> None:
        """Mirror one request to Shadow `version`; skipped (and counted) when it cannot be."""
        line = _line(version, request_id, ts, raw)
        if line is None or not self._admit():
            self.metrics.shadow_skipped.inc()
            return
        self._queue(line)

    def _admit(self) -> bool:
        raise NotImplementedError

    def _transport(self) -> asyncio.Transport | None:
        """Where a batch goes; None: not yet (the lines wait)."""
        raise NotImplementedError

    def _queue(self, line: bytes) -> None:
        self._pending.append(line)
        if len(self._pending) >= SEND_BATCH:
            self._send()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(SEND_INTERVAL_S, self._send)

    def _send(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        transport = self._transport()
        if transport is not None and self._pending:
            transport.write(b"".join(self._pending))
            self._pending.clear()


class ShadowProcess(_Batched):
    """The gateway's side: mirrors requests to the child and turns its reports into metrics; with
    `peers` (worker 0 of several), takes the other workers' mirrored requests too.

    Every method runs on the gateway's event loop.
    """

    def __init__(self, settings: Settings, metrics: Metrics, peers: socket.socket | None = None):
        super().__init__(metrics)
        self.settings = settings
        self.limit = settings.serving.shadow_queue_size
        self.sent = 0  # mirrored requests handed over, those queued here included
        self.done = 0  # of which reported done, or skipped when a child exited
        self.state = "not started"
        self._child: _Child | None = None
        self._exited_at = float("-inf")
        self._peers = peers
        self._peer_server: asyncio.AbstractServer | None = None

    @property
    def backlog(self) -> int:
        return self.sent - self.done

    def status(self) -> dict[str, Any]:
        """For /health: the child's state and pid, and the mirrored requests it has still to do."""
        return {"state": self.state, "pid": self._child.proc.pid if self._child else None, "backlog": self.backlog}

    async def open(self) -> None:
        """Take the other workers' mirrored requests (worker 0 of several)."""
        if self._peers is not None:
            self._peer_server = await asyncio.get_running_loop().create_unix_server(
                lambda: _Peer(self), sock=self._peers
            )

    def _admit(self) -> bool:
        return (self._child is not None or self._start()) and self.backlog < self.limit

    def _queue(self, line: bytes) -> None:
        self.sent += 1
        super()._queue(line)

    def take(self, line: bytes) -> None:
        """A line another worker mirrored."""
        if self._admit():
            self._queue(line)
        else:
            self.metrics.shadow_skipped.inc()

    def _transport(self) -> asyncio.Transport | None:
        # Not before _connect wrote the settings line ("running"): the transport exists a moment earlier.
        return self._child.transport if self._child is not None and self.state == "running" else None

    def _start(self) -> bool:
        if time.monotonic() - self._exited_at < RESTART_AFTER_S:
            return False
        parent, child_end = socket.socketpair()
        env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}  # the settings come whole
        command = lifeline.command("serving.shadow", "--fd", str(child_end.fileno()))  # dies with the gateway
        proc = subprocess.Popen(command, pass_fds=(child_end.fileno(),), env=env)
        child_end.close()
        self._child = child = _Child(self, proc)
        self.state = "starting"
        log.info("shadow process %d started", proc.pid)
        asyncio.get_running_loop().create_task(self._connect(child, parent))
        return True

    async def _connect(self, child: _Child, sock: socket.socket) -> None:
        transport, _ = await asyncio.get_running_loop().connect_accepted_socket(lambda: child, sock)
        transport.write(orjson.dumps(settings_line(self.settings)) + b"\n")
        if self._child is child:
            self.state = "running"
            self._send()

    def _exited(self, child: _Child) -> None:
        """The child's end closed: it exited, at shutdown or in a crash. Its backlog is lost."""
        try:
            code = child.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # closed its end but lingers: it is of no use any more
            child.proc.kill()
            code = child.proc.wait()
        if self.backlog:
            self.metrics.shadow_skipped.inc(self.backlog)
            log.error("shadow process %d exited with code %s: %d mirrored requests skipped", child.proc.pid, code,
                      self.backlog)  # fmt: skip
        self.done = self.sent
        self._pending.clear()
        self._child = None
        self._exited_at = time.monotonic()
        self.state = f"exited with code {code}"

    async def close(self) -> None:
        """Send what is queued; the child gets SHUTDOWN_GRACE_S to finish, then skips the rest."""
        if self._peer_server is not None:
            self._peer_server.close()
        child = self._child
        if child is None:
            return
        if child.transport is None:  # still starting: nothing was sent yet
            child.proc.kill()
        else:
            self._send()
            child.transport.write_eof()
        try:
            await asyncio.wait_for(asyncio.to_thread(child.proc.wait), SHUTDOWN_GRACE_S)
        except TimeoutError:
            child.proc.terminate()
        try:
            await asyncio.wait_for(asyncio.shield(child.closed), 30)  # the last report, then the end
        except TimeoutError:
            log.error("shadow process %d did not exit after SIGTERM; killed", child.proc.pid)
            child.proc.kill()


class _Peer(asyncio.Protocol):
    """Another worker's connection to worker 0: mirrored requests, one line each."""

    def __init__(self, owner: ShadowProcess):
        self.owner = owner
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        *lines, self.buffer = (self.buffer + data).split(b"\n")
        for line in lines:
            self.owner.take(line + b"\n")


class ShadowForwarder(_Batched):
    """A worker other than 0: its mirrored requests go to worker 0's Shadow process, over `path`.
    Until that connection is made (worker 0 still starting) they wait, up to serving.shadow_queue_size;
    a lost connection skips them (counted) and is made again RESTART_AFTER_S later."""

    def __init__(self, path: str, settings: Settings, metrics: Metrics):
        super().__init__(metrics)
        self.path = path
        self.limit = settings.serving.shadow_queue_size
        self.state = "not connected"
        self._writer: asyncio.Transport | None = None
        self._connecting = False
        self._failed_at = float("-inf")

    backlog = 0  # held by worker 0

    def status(self) -> dict[str, Any]:
        return {"state": self.state, "pid": None, "backlog": len(self._pending)}

    async def open(self) -> None:
        pass

    def _admit(self) -> bool:
        if self._writer is None and not self._connecting:
            if time.monotonic() - self._failed_at < RESTART_AFTER_S:
                return False
            self._connecting = True
            asyncio.get_running_loop().create_task(self._connect())
        return len(self._pending) < self.limit

    def _transport(self) -> asyncio.Transport | None:
        return self._writer

    async def _connect(self) -> None:
        try:
            transport, _ = await asyncio.get_running_loop().create_unix_connection(lambda: _Forwarded(self), self.path)
        except OSError as exc:
            self._lost(f"cannot reach worker 0: {exc.strerror or exc}")
            return
        finally:
            self._connecting = False
        self._writer = transport
        self.state = "forwarding to worker 0"
        self._send()

    def _lost(self, why: str) -> None:
        if self._pending:
            self.metrics.shadow_skipped.inc(len(self._pending))
            log.error("shadow: %d mirrored requests skipped: %s", len(self._pending), why)
        self._pending.clear()
        self._writer = None
        self._failed_at = time.monotonic()
        self.state = why

    async def close(self) -> None:
        self._send()
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()  # what was written still goes: a transport closes once its buffer is sent


class _Forwarded(asyncio.Protocol):
    def __init__(self, owner: ShadowForwarder):
        self.owner = owner

    def connection_lost(self, exc: Exception | None) -> None:
        if self.owner._writer is not None:
            self.owner._lost("the connection to worker 0 closed")


class _Child(asyncio.Protocol):
    """One child process and its socket: reports in, and when the socket closes, the exit."""

    def __init__(self, owner: ShadowProcess, proc: subprocess.Popen):
        self.owner = owner
        self.proc = proc
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self.buffer = b""
        self.written = self.dropped = 0  # the child's log totals reported so far

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        *lines, self.buffer = (self.buffer + data).split(b"\n")
        metrics = self.owner.metrics
        for line in lines:
            report = orjson.loads(line)
            for version, outcome, seconds in report["done"]:
                metrics.shadow(version, outcome, seconds)
            self.owner.done += len(report["done"])
            metrics.log_written.inc(report["written"] - self.written)
            metrics.log_dropped.inc(report["dropped"] - self.dropped)
            self.written, self.dropped = report["written"], report["dropped"]

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner._exited(self)
        self.closed.set_result(None)


# ---- the child ------------------------------------------------------------------------------


class _Stop(BaseException):
    """SIGTERM: skip what is left, write the log, exit. Not an Exception: a model's own error
    handling (or the child's, around each prediction) must not swallow it."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: a second SIGTERM must not cut the log's writing short
    raise _Stop


class _Models:
    """The Shadow versions the child has loaded; only the newest is kept."""

    def __init__(self, settings: Settings):
        self.name = settings.training.model_name  # the registered model
        self.sensitive = list(settings.serving.sensitive_columns)
        self.settings = settings
        self.local_state = LocalState.of(settings)  # the gateway keeps what it loaded: no registry trip
        self.reader: RegistryReader | None = None
        self.loaded: dict[str, Any] = {}
        self.failed: dict[str, tuple[str, float]] = {}

    def get(self, version: str):
        """The Servable of `version`, or the reason it cannot be loaded (a string)."""
        if version in self.loaded:
            return self.loaded[version]
        error, since = self.failed.get(version, (None, 0.0))
        if error is not None and time.monotonic() - since < RELOAD_FAILED_AFTER_S:
            return error
        try:
            model = servable(self._load(version))
            freeze_heap()  # before the first timed prediction: no collection of the load's heap in it
        except Exception as exc:
            error = f"version {version} failed to load in the shadow process: {type(exc).__name__}: {exc}"
            self.failed[version] = (error, time.monotonic())
            log.error("%s", error)
            return error
        self.loaded = {version: model}
        self.failed.pop(version, None)
        return model

    def _load(self, version: str) -> LoadedVersion:
        if self.local_state is not None and self.local_state.has(version):
            try:
                return self.local_state.load(version)
            except Exception as exc:  # damaged: the registry has the original
                log.warning("version %s not usable from the local state: %s", version, exc)
        if self.reader is None:
            self.reader = RegistryReader(self.settings)
        return self.reader.load(self.name, version)


def settings_line(settings: Settings) -> dict[str, Any]:
    """The settings as the child reads them. A dump writes a secret as '**********': the hash key
    goes as it is (over the socket pair, never argv or the environment), or the Shadow's log rows
    would be hashed under that public string, reversible by trying every value of a small domain."""
    doc = settings.model_dump(mode="json")
    doc["serving"]["hash_salt"] = settings.serving.hash_salt.get_secret_value()
    doc["serving"]["api_token"] = ""  # the child answers nobody: it needs no token
    return doc


def run(sock: socket.socket) -> None:
    """The child: read mirrored requests until the end of input, predict, log, report."""
    reader = sock.makefile("rb")
    settings = Settings(**orjson.loads(reader.readline()))
    _yield_to_the_answers(settings.serving.shadow_cpus)
    plog = open_log(settings)
    plog.start(writer_thread=False)  # written between chunks: a second thread would share the GIL
    models = _Models(settings)
    clock = _ModelClock()
    buffer = b""
    try:
        while chunk := reader.read1(1 << 20):  # what has arrived; b"" at the end of input
            *lines, buffer = (buffer + chunk).split(b"\n")
            done = []
            for line in lines:
                row = _predict(orjson.loads(line), models, clock)
                plog.add(row)
                done.append((row.model_version, "error" if row.error else "ok", row.latency_ms / 1000))
            plog.flush()
            _report(sock, done, plog)
    except _Stop:
        log.info("shadow process stopping: the rest of its backlog is skipped")
    finally:
        plog.close()
        _report(sock, [], plog)


def _predict(item: list, models: _Models, clock: _ModelClock):
    """One mirrored request, predicted by its Shadow version: the prediction-log row."""
    version, request_id, ts, columns, rows, source, types = item
    model = models.get(version)
    mark = clock.mark()
    batch, predictions, error = None, None, None
    try:
        if isinstance(model, str):
            error = model
        else:
            inputs = Inputs(Raw(columns, rows, source, types))
            batch = inputs.for_model(model)
            predictions = inputs.predict(model)
    except BadInput as exc:
        error = f"{exc.status} {exc.error_code}: {exc.logged}"  # as the gateway logs a refusal: never a value
    except Exception as exc:
        error = model_error(exc, models.sensitive, columns)
    seconds = clock.since(mark)
    return Prediction(request_id, datetime.fromisoformat(ts), models.name, version, ROLE_SHADOW, None, batch,
                      predictions, seconds * 1000, error)  # fmt: skip


def _yield_to_the_answers(cpus: list[int] | None) -> None:
    """Linux's idle class: this process runs only on CPU no one else wants, and a gateway thread
    that wakes up preempts it at once (at nice 19 the Shadow still held a core for whole time
    slices: +72% p99 measured). Pinned to `cpus` (default: the last CPU, when there are more),
    the answers keep the other CPUs' caches to themselves (unpinned: +55% p99 here)."""
    if not hasattr(os, "SCHED_IDLE"):  # not Linux: the lowest priority there is
        os.nice(19)
        return
    try:
        _each_thread(lambda tid: os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0)))
    except PermissionError:  # a sandbox that forbids it
        log.warning("the idle CPU class is not allowed here: the Shadow runs at nice 19")
        os.nice(19)
    allowed = sorted(os.sched_getaffinity(0))
    if cpus is None:
        cpus = allowed[-1:] if len(allowed) > 1 else []
    if cpus:
        try:
            _each_thread(lambda tid: os.sched_setaffinity(tid, cpus))
        except OSError:
            log.error(
                "serving.shadow_cpus %s: not CPUs this process may use (%s); the Shadow runs on any", cpus, allowed
            )


def _each_thread(apply: Callable[[int], None]) -> None:
    """`apply` to every thread of this process: libraries start some at import, before this."""
    for tid in map(int, os.listdir("/proc/self/task")):
        with contextlib.suppress(ProcessLookupError):  # a thread that has ended meanwhile
            apply(tid)


class _ModelClock:
    """A prediction's time less the time this idle-priority process waited for a CPU: what the
    model costs, not how busy the gateway was. Linux counts a thread's run-queue wait in
    /proc/thread-self/schedstat (ns); elsewhere this is wall time. (The log is written by the
    same thread, so no wait for the GIL hides in the figure either.)"""

    def __init__(self):
        try:
            self._fd: int | None = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        except OSError:
            self._fd = None

    def _waited(self) -> float:
        return int(os.pread(self._fd, 64, 0).split()[1]) / 1e9 if self._fd is not None else 0.0

    def mark(self) -> tuple[float, float]:
        return time.perf_counter(), self._waited()

    def since(self, mark: tuple[float, float]) -> float:
        return time.perf_counter() - mark[0] - (self._waited() - mark[1])


def _report(sock: socket.socket, done: list, plog: PredictionLog) -> None:
    """Outcomes since the last report, and the log's running totals."""
    try:
        sock.sendall(orjson.dumps({"done": done, "written": plog.written, "dropped": plog.dropped}) + b"\n")
    except OSError:  # the gateway is gone: nobody to report to
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m serving.shadow")
    parser.add_argument("--fd", type=int, required=True, help="the socket to the gateway")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s (shadow): %(message)s")
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        run(socket.socket(fileno=args.fd))
    except _Stop:  # while starting (settings, the log being opened): nothing was logged yet
        log.info("shadow process stopped while starting")


if __name__ == "__main__":
    main()
