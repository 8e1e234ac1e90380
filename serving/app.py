"""The gateway: a plain ASGI app speaking MLflow's scoring protocol, routed by registry aliases.

No web framework on the hot path: one-row answers take well under a millisecond, and a
framework's request and response objects would cost more than the model. Endpoints:

  POST /invocations   MLflow scoring protocol; answers {"predictions": [...]}
  POST /feedback      ground-truth labels by request id: {"request_id": ..., "label": ...} or a list,
                      checked against the model and its answers (serving/feedback.py)
  GET  /ping          200 when some link of the fallback chain can answer (Production, Previous or
                      the baseline is loaded), else 503
  GET  /health        status (ok, degraded with the reason, unavailable), what is loaded for which
                      alias, the canary share, the log's queue, the shadow process, the versions
  GET  /version       MLflow's version string, as `mlflow models serve` answers
  GET  /metrics       Prometheus

Response headers: X-Request-Id (the client's, or a new one), X-Model-Version, X-Model-Role
(production | canary | fallback) and, for fallbacks, X-Fallback-Source (previous | cache |
baseline). A request key header (X-Request-Key) makes canary routing sticky. An X-Request-Id
already used gets 409 (serving/request_ids.py says why).

Bounds: a body must arrive within serving.body_timeout_s (408) and hold at most max_body_bytes
and max_rows (413); bodies over INLINE_BODY_BYTES are parsed in a thread, so a large one never
stalls the other requests; model calls run in bounded thread pools (serving/workers.py), the
fallback chain in a pool of its own. A call's time allowance grows with its batch (timeout_ms +
timeout_per_row_ms a row), and the heuristic baseline never answers a batch over baseline_max_rows:
such a batch gets the model's answer late, Previous's, or a 504/503 saying why, never guesses.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version as dist_version

import orjson
from sqlalchemy.exc import SQLAlchemyError

from configs.settings import Settings
from core.errors import ConfigError
from core.redaction import model_error
from serving import feedback, request_ids
from serving.asgi import Message, Receive, Scope, Send
from serving.body import BodyReader
from serving.local_state import LocalState
from serving.metrics import Metrics
from serving.models import Inputs, Servable, freeze_heap
from serving.prediction_log import (
    ROLE_CANARY,
    ROLE_FALLBACK,
    ROLE_PRODUCTION,
    Label,
    Prediction,
    PredictionLog,
    open_log,
)
from serving.router import ResponseCache, Router, Routes
from serving.schema import BadInput, Batch, parse
from serving.shadow import ShadowForwarder, ShadowProcess
from serving.workers import ModelFailed, Workers

log = logging.getLogger("shipway.serving")

JSON = b"application/json"
INLINE_ROWS = 64  # ONNX batches up to this size run on the event loop (see Gateway._call)
INLINE_BODY_BYTES = 16_384  # larger bodies are parsed and typed in a thread, not on the event loop
RECENT_ANSWERS, RECENT_ANSWERS_MIN = 200, 20  # /health judges the fallback share on the last answers
GAUGES_S = 1.0  # how often a worker of several refreshes its gauges for the others' scrapes
DEGRADED_FALLBACK_SHARE = 0.5  # beyond it /health says degraded: the chain is carrying the traffic
CACHE_MAX_ROWS = 64  # larger batches are not kept as fallback answers (memory, and their key's cost)
FAILURES = {  # a model's failure as a refused client is told it (the detail, which may quote values, is logged)
    "exception": "it raised an error",
    "saturated": "no model thread was free in time",
    "input": "it does not take these columns",
}


@dataclass(slots=True)  # not frozen: made on every request, and a frozen init is slower
class Request:
    """One /invocations request, as its log row needs it."""

    request_id: str
    ts: datetime
    started: float  # time.perf_counter() at arrival
    route: str  # production or canary: where the router sent it, whoever answered


@dataclass(frozen=True)
class Worker:
    """This process's place among `shipway serve --workers N` (serving/server.py)."""

    index: int
    count: int
    shadow_socket: str  # worker 0's Unix socket for the others' mirrored requests
    shadow_listener: socket.socket | None = None  # worker 0's end of it, made by the supervisor


@dataclass(slots=True)
class Answer:
    """Who answered a request, and with what."""

    version: str
    role: str  # production, canary or fallback
    source: str | None  # the fallback link that answered: previous, cache or baseline
    predictions: list | None  # None: nobody could (503/504), or the request was refused
    error: str | None  # what failed on the way, or why the request was refused
    status: int = 200  # 503 or 504 when nobody answered
    message: str | None = None  # what the client is told when nobody answered


class Gateway:
    def __init__(
        self, settings: Settings, router: Router, log_: PredictionLog, metrics: Metrics, worker: Worker | None = None
    ):
        self.settings = settings
        self.worker = worker
        self.serving = settings.serving
        self.name = router.name
        self.router = router
        self.log = log_
        self.metrics = metrics
        self.cache = ResponseCache(self.serving.cache_size, self.serving.cache_max_age_s)
        # Separate pools: a hung Production call must not starve the fallbacks that replace it.
        self._primary = Workers("predict", self.serving.model_threads)
        self._fallback = Workers("fallback", self.serving.fallback_threads)
        self._parsing = ThreadPoolExecutor(2, thread_name_prefix="parse")
        self.bodies = BodyReader(self.serving.max_body_bytes, self.serving.body_timeout_s)
        self.recent_ids = request_ids.RecentIds()
        self._recent_fallbacks: deque[bool] = deque(maxlen=RECENT_ANSWERS)
        # One Shadow process per host: worker 0's, the other workers forward to it.
        self.shadow: ShadowProcess | ShadowForwarder = (
            ShadowForwarder(worker.shadow_socket, settings, metrics)
            if worker is not None and worker.index > 0
            else ShadowProcess(settings, metrics, worker.shadow_listener if worker is not None else None)
        )
        self._gauges: asyncio.Task | None = None
        self._endpoints = {
            ("POST", "/invocations"): self._invocations,
            ("POST", "/feedback"): self._feedback,
            ("GET", "/ping"): self._ping,
            ("GET", "/health"): self._health,
            ("GET", "/version"): self._version,
            ("GET", "/metrics"): self._metrics,
        }
        self._paths = {path for _, path in self._endpoints}

    # ---- ASGI ------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        handler = self._endpoints.get((scope["method"], scope["path"]))
        if handler is None:
            if scope["path"] in self._paths:
                await _error(send, 405, "BAD_REQUEST", f"{scope['method']} is not allowed on {scope['path']}")
            else:
                await _error(send, 404, "ENDPOINT_NOT_FOUND", f"no endpoint {scope['path']}")
            return
        answered = False

        async def tracked(message: Message) -> None:
            nonlocal answered
            answered = answered or message["type"] == "http.response.start"
            await send(message)

        try:
            await handler(scope, receive, tracked)
        except Exception as exc:  # a bug of ours: MLflow's JSON error, counted, never a plain-text 500
            self.metrics.error("none", "gateway", "internal")
            log.error("%s %s failed: %s (see the traceback above)", scope["method"], scope["path"], type(exc).__name__,
                      exc_info=True)  # fmt: skip
            if not answered:
                await _error(send, 500, "INTERNAL_ERROR", "the gateway failed on this request; it is logged and "
                             "counted (shipway_errors_total{kind=\"internal\"})", request_ids.new())  # fmt: skip

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await asyncio.to_thread(self.start)
                except Exception as exc:
                    log.exception("gateway failed to start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await self.shadow.open()
                if self.worker is not None:  # a scrape reaches one worker: the others' gauges must be fresh too
                    self._gauges = asyncio.get_running_loop().create_task(self._refresh_gauges_every(GAUGES_S))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._gauges is not None:
                    self._gauges.cancel()
                await self.shadow.close()
                await asyncio.to_thread(self.stop)
                await send({"type": "lifespan.shutdown.complete"})
                return

    def start(self) -> None:
        self.log.start()
        self.router.start()
        freeze_heap()

    def stop(self) -> None:
        """Graceful: write every queued log row (the Shadow's process is closed before)."""
        self.router.stop()
        self._primary.close()
        self._fallback.close()
        self._parsing.shutdown(wait=False, cancel_futures=True)
        self.log.close()
        log.info("gateway stopped: %d log rows written, %d lost", self.log.written, self.log.dropped)

    # ---- /invocations ----------------------------------------------------------------------

    async def _invocations(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        ts = datetime.now(UTC)
        headers = _headers(scope)
        given = headers.get(b"x-request-id")
        request_id = given.decode("latin-1") if given is not None else request_ids.new()
        if given is not None and not request_ids.valid(request_id):
            await _error(send, 400, "INVALID_PARAMETER_VALUE", request_ids.INVALID)
            return
        key = headers.get(b"x-request-key")
        routes = self.router.routes
        route = ROLE_CANARY if routes.use_canary(key.decode("latin-1") if key else None) else ROLE_PRODUCTION
        model = routes.canary if route == ROLE_CANARY else routes.production
        first = model or routes.previous or routes.baseline
        expected = first.version if first else "none"
        if not self.recent_ids.claim(request_id):
            self.metrics.error(expected, route, "reused_request_id")
            self.metrics.answered(expected, route, 409, time.perf_counter() - started)
            message = (
                f"X-Request-Id '{request_id}' was already used by an earlier request; "
                "send a new id with every request, a retry included"
            )
            await _error(send, 409, "RESOURCE_ALREADY_EXISTS", message, request_id)
            return
        request = Request(request_id, ts, started, route)
        try:
            body = await self.bodies.read(receive, headers)
            inputs, batch = await self._prepare(body, headers.get(b"content-type"), first)
        except BadInput as exc:
            self.metrics.error(expected, route, "bad_input")
            self.metrics.answered(expected, route, exc.status, time.perf_counter() - started)
            refused = Answer(expected, route, None, None, f"{exc.status} {exc.error_code}: {exc.logged}")
            self._log(request, refused, None)
            # A body that came late or too large leaves the connection mid-request: close it.
            await _error(send, exc.status, exc.error_code, exc.message, request_id, close=exc.status in (408, 413))
            return
        answer = await self._answer(routes, model, route, inputs, batch)
        self.metrics.answered(answer.version, answer.role, answer.status, time.perf_counter() - started)
        if answer.predictions is None:
            code = "DEADLINE_EXCEEDED" if answer.status == 504 else "TEMPORARILY_UNAVAILABLE"
            message = answer.message or f"predictions of {self.name} are temporarily unavailable; try again later"
            await _error(send, answer.status, code, message, request_id)
        else:
            out = [(b"x-model-version", answer.version.encode()), (b"x-model-role", answer.role.encode())]
            if answer.source:
                out.append((b"x-fallback-source", answer.source.encode()))
            await _respond(send, 200, orjson.dumps({"predictions": answer.predictions}), JSON, request_id, out)
        self._log(request, answer, batch)
        if routes.shadow is not None and batch is not None:
            self.shadow.submit(routes.shadow.version, request_id, ts, inputs.raw)

    async def _prepare(
        self, body: bytes, content_type: bytes | None, first: Servable | None
    ) -> tuple[Inputs, Batch | None]:
        """The body parsed, and typed for the first model that will see it; large bodies in a thread."""
        mime = content_type.decode("latin-1") if content_type is not None else None
        if len(body) <= INLINE_BODY_BYTES:
            return self._parsed(body, mime, first)
        return await asyncio.get_running_loop().run_in_executor(self._parsing, self._parsed, body, mime, first)

    def _parsed(self, body: bytes, content_type: str | None, first: Servable | None) -> tuple[Inputs, Batch | None]:
        inputs = Inputs(parse(body, content_type, self.serving.max_rows))
        return inputs, (inputs.for_model(first) if first else None)

    async def _answer(
        self, routes: Routes, model: Servable | None, route: str, inputs: Inputs, batch: Batch | None
    ) -> Answer:
        """The first link of the chain that answers (model, then Production for a canary, then the fallbacks)."""
        errors: list[str] = []
        failure: tuple[Servable, ModelFailed] | None = None  # the first model that failed, and how
        candidates = [(route, model)]
        if route == ROLE_CANARY:  # a failing canary hands over to Production before any fallback
            candidates.append((ROLE_PRODUCTION, routes.production))
        for role, candidate in candidates:
            if candidate is None:
                continue
            try:
                predictions = await self._call(candidate, inputs, self._primary)
            except ModelFailed as exc:
                errors.append(f"{role} version {candidate.version}: {exc}")
                self.metrics.error(candidate.version, role, exc.kind)
                failure = failure or (candidate, exc)
                continue
            if self.cache.size and batch is not None and batch.rows <= CACHE_MAX_ROWS:
                self.cache.put(_cache_key(batch), candidate.version, predictions)
            return Answer(candidate.version, role, None, predictions, "; ".join(errors) or None)
        failed = routes.production.version if routes.production else "none"
        if routes.production is None:
            errors.append("no Production version is loaded")
        links = [("previous", lambda: self._try(routes.previous, inputs))]
        large = inputs.raw.rows > self.serving.baseline_max_rows
        if not large:  # the baseline's one rule is a stopgap for a few rows, not an answer to a batch job
            links += [("cache", lambda: self._cached(batch)), ("baseline", lambda: self._try(routes.baseline, inputs))]
        for source, link in links:
            found = await link()
            if found is not None:
                version, predictions = found
                self.metrics.fallback(failed, source)
                log.warning("%s answered from %s (version %s) after: %s", self.name, source, version, "; ".join(errors))
                return Answer(version, ROLE_FALLBACK, source, predictions, "; ".join(errors))
        if large:
            return self._refuse_large(failed, inputs.raw.rows, failure, errors)
        self.metrics.fallback(failed, "unavailable")
        log.error("%s answered 503, every fallback failed after: %s", self.name, "; ".join(errors))
        return Answer(failed, ROLE_FALLBACK, None, None, "; ".join(errors) + "; every fallback failed", 503)

    def _refuse_large(
        self, failed: str, rows: int, failure: tuple[Servable, ModelFailed] | None, errors: list[str]
    ) -> Answer:
        """A batch over baseline_max_rows that no model answered: 504 when the model ran out of time (as
        `mlflow models serve` answers a request past its timeout), else 503; never the baseline's answer."""
        limit = self.serving.baseline_max_rows
        reason = failure[1].kind if failure else "unloaded"
        if failure is None:
            cause = f"no version of {self.name} is loaded to answer the {rows}-row batch"
        elif reason == "timeout":
            allowance = self._allowance_s(rows) * 1000
            cause = (
                f"version {failure[0].version} of {self.name} did not answer the {rows}-row batch within {allowance:g} "
                "ms (serving.timeout_ms, plus serving.timeout_per_row_ms a row)"
            )
        else:
            how = FAILURES.get(reason, reason)
            cause = f"version {failure[0].version} of {self.name} did not answer the {rows}-row batch: {how}"
        message = (
            f"{cause}; the heuristic baseline answers batches of at most {limit} rows (serving.baseline_max_rows), "
            "so this one is not answered: send it again later, or in smaller batches"
        )
        self.metrics.large_batch_refused(failed, reason)
        log.error("%s refused a %d-row batch (over serving.baseline_max_rows) after: %s", self.name, rows,
                  "; ".join(errors))  # fmt: skip
        logged = "; ".join(errors) + f"; {rows} rows, over serving.baseline_max_rows ({limit}): no baseline answer"
        return Answer(failed, ROLE_FALLBACK, None, None, logged, 504 if reason == "timeout" else 503, message)

    def _allowance_s(self, rows: int) -> float:
        """A model call's time: a large batch takes longer than one row, and must not time out for that."""
        return (self.serving.timeout_ms + rows * self.serving.timeout_per_row_ms) / 1000

    async def _cached(self, batch: Batch | None):
        if batch is None or batch.rows > CACHE_MAX_ROWS:
            return None
        return self.cache.get(_cache_key(batch))

    async def _try(self, model: Servable | None, inputs: Inputs):
        if model is None:
            return None
        try:
            return model.version, await self._call(model, inputs, self._fallback)
        except ModelFailed:
            return None

    async def _call(self, model: Servable, inputs: Inputs, workers: Workers) -> list:
        """Predict within the timeout; a raise, a timeout or no free thread is ModelFailed."""
        if model.flavor == "onnx" and inputs.raw.rows <= INLINE_ROWS:
            # Tens of microseconds, less than the hop to a worker thread: nothing to time out.
            try:
                return inputs.predict(model)
            except BadInput as exc:  # a version with other columns than the one the input was checked for
                raise ModelFailed("input", exc.logged) from None
            except Exception as exc:
                raise ModelFailed("exception", self._model_error(exc, inputs)) from None
        try:
            return await workers.run(self._allowance_s(inputs.raw.rows), inputs.predict, model)
        except ModelFailed:
            raise
        except BadInput as exc:
            raise ModelFailed("input", exc.logged) from None
        except Exception as exc:
            raise ModelFailed("exception", self._model_error(exc, inputs)) from None

    def _model_error(self, exc: Exception, inputs: Inputs) -> str:
        """What the log and the gateway's log lines keep of a model's exception: with sensitive columns,
        its type and its message without the values it quotes (scikit-learn names an unknown category)."""
        return model_error(exc, self.serving.sensitive_columns, inputs.raw.columns)

    # ---- log -------------------------------------------------------------------------------

    def _log(self, request: Request, answer: Answer, batch: Batch | None) -> None:
        latency_ms = (time.perf_counter() - request.started) * 1000
        self._recent_fallbacks.append(answer.role == ROLE_FALLBACK)
        self.log.add(
            Prediction(
                request.request_id,
                request.ts,
                self.name,
                answer.version,
                answer.role,
                answer.source,
                batch,
                answer.predictions,
                latency_ms,
                answer.error,
                request.route,
            )
        )

    # ---- the other endpoints -----------------------------------------------------------------

    async def _feedback(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = _headers(scope)
        if not self._authorized(headers):
            await _error(send, 401, "UNAUTHENTICATED", "send the gateway's token as 'Authorization: Bearer TOKEN'",
                         extra=[(b"www-authenticate", b'Bearer realm="shipway"')])  # fmt: skip
            return
        try:
            feedback.check_content_type(headers.get(b"content-type"))
            body = await self.bodies.read(receive, headers)
            items = feedback.parse(body, self.serving.max_feedback_labels)
            rules = [m.label_rule for m in self.router.routes.by_alias.values() if m.label_rule is not None]
            items = feedback.check_labels(items, rules)
            unknown = await self._never_answered(items)
            if unknown:
                raise feedback.unknown_ids(items, unknown)
        except BadInput as exc:
            await _error(send, exc.status, exc.error_code, exc.message)
            return
        except SQLAlchemyError as exc:
            log.error("feedback refused: the prediction log cannot be read: %s", exc)
            await _error(
                send, 503, "TEMPORARILY_UNAVAILABLE", "the prediction log cannot be read; send the labels again later"
            )
            return
        if not self.log.has_room(len(items)):
            await _error(
                send, 503, "TEMPORARILY_UNAVAILABLE", "the prediction log is full; send the labels again later"
            )
            return
        now = datetime.now(UTC)
        for item in items:
            self.log.add(Label(item.request_id, item.label, now))
        await _respond(send, 202, orjson.dumps({"accepted": len(items)}), JSON)

    async def _never_answered(self, items: list[feedback.Item]) -> set[str]:
        """Ids of `items` this model never answered: neither among this process's recent requests
        (whose rows may still be queued) nor in the prediction log (other replicas, earlier runs)."""
        unseen = list(dict.fromkeys(item.request_id for item in items if item.request_id not in self.recent_ids))
        if not unseen:
            return set()
        found = await asyncio.to_thread(self.log.answered, self.name, unseen)
        return set(unseen) - found

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        """True without a configured token; else the request must carry it (compared in constant time)."""
        token = self.serving.api_token.get_secret_value()
        if not token:
            return True
        scheme, _, credentials = headers.get(b"authorization", b"").strip().partition(b" ")
        # The scheme is case-insensitive (RFC 9110); the token is compared in constant time.
        return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), token.encode())

    async def _ping(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Ready when some link of the fallback chain can answer: a load balancer keeps a replica that
        answers every request from Previous while Production is broken (/health says degraded)."""
        await _respond(send, 200 if _answerable(self.router.routes) else 503, b"\n", JSON)

    async def _health(self, scope: Scope, receive: Receive, send: Send) -> None:
        routes = self.router.routes
        served = {alias: {"version": m.version, "format": m.flavor} for alias, m in routes.by_alias.items()}
        found = (self.router.registry_problem(), self.log.problem(), self._fallback_problem())
        reasons = _degraded(routes) + [p for p in found if p]
        doc = {
            "status": "unavailable" if not _answerable(routes) else "degraded" if reasons else "ok",
            "reason": "; ".join(reasons) or None,
            "model": self.name,
            "pinned_version": self.router.pinned,
            "registry_aliases": routes.registry_aliases,
            "serving": served,
            "baseline": routes.baseline.version if routes.baseline else None,
            "canary_share": routes.canary_share if routes.canary else 0.0,
            "problems": routes.problems,
            "last_poll": _iso(self.router.last_poll),
            "last_poll_error": self.router.last_poll_error,
            "routes_changed": _iso(self.router.routes_changed),
            "prediction_log": {"pending": self.log.pending, "written": self.log.written, "dropped": self.log.dropped},
            "shadow_process": self.shadow.status(),
            # model calls past their timeout, still running in threads replaced by new ones
            "overrunning_calls": {"predict": self._primary.overrunning, "fallback": self._fallback.overrunning},
            "cache_entries": len(self.cache),
            "pid": os.getpid(),
            "worker": None if self.worker is None else {"index": self.worker.index, "of": self.worker.count},
            "versions": {"shipway": dist_version("shipway"), "mlflow": dist_version("mlflow")},
        }
        await _respond(send, 200, orjson.dumps(doc), JSON)

    def _fallback_problem(self) -> str | None:
        """Production is loaded but the fallback chain answers most requests (a model failing every call)."""
        recent = self._recent_fallbacks
        if len(recent) < RECENT_ANSWERS_MIN or sum(recent) <= DEGRADED_FALLBACK_SHARE * len(recent):
            return None
        return f"{sum(recent)} of the last {len(recent)} answers came from the fallback chain"

    async def _version(self, scope: Scope, receive: Receive, send: Send) -> None:
        """MLflow's version string, as `mlflow models serve` answers (/health has shipway's)."""
        await _respond(send, 200, dist_version("mlflow").encode(), JSON)

    def _refresh_gauges(self) -> None:
        self.metrics.log_queue.set(self.log.pending)
        self.metrics.log_stalled.set(self.log.stalled_s())
        self.metrics.shadow_backlog.set(self.shadow.backlog)

    async def _refresh_gauges_every(self, seconds: float) -> None:
        while True:
            self._refresh_gauges()
            await asyncio.sleep(seconds)

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._refresh_gauges()
        await _respond(send, 200, self.metrics.render(), b"text/plain; version=0.0.4; charset=utf-8")


def _cache_key(batch: Batch) -> bytes:
    return orjson.dumps(batch.columns)


def _headers(scope: Scope) -> dict[bytes, bytes]:
    return dict(scope["headers"])


async def _respond(send: Send, status: int, body: bytes, content_type: bytes, request_id: str | None = None,
                   extra: Sequence[tuple[bytes, bytes]] = (), close: bool = False) -> None:  # fmt: skip
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if request_id is not None:
        headers.append((b"x-request-id", request_id.encode()))
    if close:
        headers.append((b"connection", b"close"))
    headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _error(send: Send, status: int, error_code: str, message: str, request_id: str | None = None,
                 extra: Sequence[tuple[bytes, bytes]] = (), close: bool = False) -> None:  # fmt: skip
    """MLflow's error body: {"error_code": ..., "message": ...}."""
    body = orjson.dumps({"error_code": error_code, "message": message})
    await _respond(send, status, body, JSON, request_id, extra, close=close)


def _iso(at: float | None) -> str | None:
    return datetime.fromtimestamp(at, UTC).isoformat() if at else None


def _answerable(routes: Routes) -> bool:
    return routes.production is not None or routes.previous is not None or routes.baseline is not None


def _degraded(routes: Routes) -> list[str]:
    """Why the gateway does not answer as the registry asks, if it does not."""
    reasons = []
    if routes.production is None:
        if routes.previous is not None:
            version = routes.previous.version
            reasons.append(f"no Production version is served: answering from Previous (version {version})")
        elif routes.baseline is None:
            reasons.append("no Production version is served and no fallback can answer")
    reasons += [f"{alias}: {problem}" for alias, problem in routes.problems.items()]
    return reasons


def create_app(settings: Settings, *, pinned_version: str | None = None, worker: Worker | None = None) -> Gateway:
    """The gateway for `settings.training.model_name`; models load at startup (ASGI lifespan).

    `pinned_version` serves that one version as Production and never polls (the benchmark);
    `worker`: this process is one of `shipway serve --workers N`.
    """
    from serving.registry_reader import RegistryReader

    if settings.serving.require_api_token and not settings.serving.api_token.get_secret_value():
        raise ConfigError(
            "serving.api_token is required by this profile (serving.require_api_token: true): "
            "set SHIPWAY_SERVING__API_TOKEN to a secret"
        )
    name = settings.training.model_name
    metrics = Metrics(name)
    reader: RegistryReader | None = None

    def registry() -> RegistryReader:
        nonlocal reader
        if reader is None:
            reader = RegistryReader(settings)
        return reader

    router = Router(
        name,
        read_state=lambda: registry().state(name),
        load=lambda version: registry().load(name, version),
        load_baseline=lambda loaded: registry().baseline(loaded),
        metrics=metrics,
        poll_interval_s=settings.serving.poll_interval_s,
        pinned=pinned_version,
        local_state=LocalState.of(settings),
        sensitive_columns=settings.serving.sensitive_columns,
        read_version_tags=lambda version: registry().version_tags(name, version),
    )
    prediction_log = open_log(
        settings, on_drop=metrics.log_dropped.inc, on_write=metrics.log_written.inc, on_refusal=metrics.log_refused
    )
    return Gateway(settings, router, prediction_log, metrics, worker)
