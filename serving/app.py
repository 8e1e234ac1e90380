"""The gateway: a plain ASGI app speaking MLflow's scoring protocol, routed by registry aliases.

No web framework on the hot path: one-row answers take well under a millisecond, and a
framework's request and response objects would cost more than the model. Endpoints:

  POST /invocations   MLflow scoring protocol; answers {"predictions": [...]}
  POST /feedback      ground-truth labels by request id: {"request_id": ..., "label": ...} or a list
  GET  /ping          200 when Production is loaded, else 503
  GET  /health        what is loaded for which alias, the canary share, the log's queue, the shadow process
  GET  /version       shipway and MLflow versions, the model and its Production version
  GET  /metrics       Prometheus

Response headers: X-Request-Id (the client's, or a new one), X-Model-Version, X-Model-Role
(production | canary | fallback) and, for fallbacks, X-Fallback-Source (previous | cache |
baseline). A request key header (X-Request-Key) makes canary routing sticky.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from importlib.metadata import version as dist_version
from typing import Any

import orjson

from configs.settings import Settings
from core.errors import ConfigError
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
from serving.shadow import ShadowProcess

log = logging.getLogger("shipway.serving")

REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
JSON = b"application/json"
INLINE_ROWS = 64  # ONNX batches up to this size run on the event loop (see Gateway._call)


class ModelFailed(Exception):
    """A model raised or timed out: the next link of the fallback chain answers."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


class Gateway:
    def __init__(self, settings: Settings, router: Router, log_: PredictionLog, metrics: Metrics):
        self.settings = settings
        self.serving = settings.serving
        self.name = router.name
        self.router = router
        self.log = log_
        self.metrics = metrics
        self.cache = ResponseCache(self.serving.cache_size, self.serving.cache_max_age_s)
        self.timeout_s = self.serving.timeout_ms / 1000
        # Separate pools: a hung Production call must not starve the fallbacks that replace it.
        self._primary = ThreadPoolExecutor(4, thread_name_prefix="predict")
        self._fallback = ThreadPoolExecutor(2, thread_name_prefix="fallback")
        self.shadow = ShadowProcess(settings, metrics)
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

    async def __call__(self, scope, receive, send) -> None:
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
        await handler(scope, receive, send)

    async def _lifespan(self, receive, send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await asyncio.to_thread(self.start)
                except Exception as exc:
                    log.exception("gateway failed to start")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
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
        self._primary.shutdown(wait=False, cancel_futures=True)
        self._fallback.shutdown(wait=False, cancel_futures=True)
        self.log.close()
        log.info("gateway stopped: %d log rows written, %d lost", self.log.written, self.log.dropped)

    # ---- /invocations ----------------------------------------------------------------------

    async def _invocations(self, scope, receive, send) -> None:
        started = time.perf_counter()
        ts = datetime.now(UTC)
        headers = _headers(scope)
        request_id = headers.get(b"x-request-id")
        if request_id is not None:
            request_id = request_id.decode("latin-1")
            if not REQUEST_ID.match(request_id):
                await _error(
                    send,
                    400,
                    "INVALID_PARAMETER_VALUE",
                    "header X-Request-Id must be 1-128 characters of letters, digits and ._:-",
                )
                return
        else:
            request_id = uuid.uuid4().hex
        key = headers.get(b"x-request-key")
        routes = self.router.routes
        role = ROLE_CANARY if routes.use_canary(key.decode("latin-1") if key else None) else ROLE_PRODUCTION
        model = routes.canary if role == ROLE_CANARY else routes.production
        first = model or routes.previous or routes.baseline
        expected = first.version if first else "none"
        try:
            body = await _body(receive, headers, self.serving.max_body_bytes)
            inputs = Inputs(parse(body, (headers.get(b"content-type") or b"").decode("latin-1")))
            batch = inputs.for_model(first) if first else None
        except BadInput as exc:
            self.metrics.error(expected, role, "bad_input")
            self.metrics.answered(expected, role, exc.status, time.perf_counter() - started)
            self._log(
                request_id,
                ts,
                expected,
                role,
                None,
                None,
                None,
                started,
                f"{exc.status} {exc.error_code}: {exc.logged}",
                route=role,
            )
            await _error(send, exc.status, exc.error_code, exc.message, request_id)
            return
        route = role
        version, role, source, predictions, error = await self._answer(routes, model, role, inputs, batch)
        status = 200 if predictions is not None else 503
        self.metrics.answered(version, role, status, time.perf_counter() - started)
        if predictions is None:
            await _error(
                send,
                503,
                "TEMPORARILY_UNAVAILABLE",
                f"predictions of {self.name} are temporarily unavailable; try again later",
                request_id,
            )
        else:
            out = [(b"x-model-version", version.encode()), (b"x-model-role", role.encode())]
            if source:
                out.append((b"x-fallback-source", source.encode()))
            await _respond(send, 200, orjson.dumps({"predictions": predictions}), JSON, request_id, out)
        self._log(request_id, ts, version, role, source, batch, predictions, started, error, route=route)
        if routes.shadow is not None and batch is not None:
            self.shadow.submit(routes.shadow.version, request_id, ts, inputs.raw)

    async def _answer(self, routes: Routes, model: Servable | None, role: str, inputs: Inputs, batch: Batch | None):
        """(version, role, fallback source, predictions or None, error) from the first link that answers."""
        errors: list[str] = []
        candidates = [(role, model)]
        if role == ROLE_CANARY:  # a failing canary hands over to Production before any fallback
            candidates.append((ROLE_PRODUCTION, routes.production))
        for candidate_role, candidate in candidates:
            if candidate is None:
                continue
            try:
                predictions = await self._call(candidate, inputs, self._primary)
            except ModelFailed as exc:
                errors.append(f"{candidate_role} version {candidate.version}: {exc}")
                self.metrics.error(candidate.version, candidate_role, exc.kind)
                continue
            if self.cache.size:
                self.cache.put(_cache_key(batch), candidate.version, predictions)
            return candidate.version, candidate_role, None, predictions, "; ".join(errors) or None
        failed = routes.production.version if routes.production else "none"
        if routes.production is None:
            errors.append("no Production version is loaded")
        links = (
            ("previous", lambda: self._try(routes.previous, inputs)),
            ("cache", lambda: self._cached(batch)),
            ("baseline", lambda: self._try(routes.baseline, inputs)),
        )
        for source, link in links:
            found = await link()
            if found is not None:
                version, predictions = found
                self.metrics.fallback(failed, source)
                log.warning("%s answered from %s (version %s) after: %s", self.name, source, version, "; ".join(errors))
                return version, ROLE_FALLBACK, source, predictions, "; ".join(errors)
        self.metrics.fallback(failed, "unavailable")
        log.error("%s answered 503, every fallback failed after: %s", self.name, "; ".join(errors))
        return failed, ROLE_FALLBACK, None, None, "; ".join(errors) + "; every fallback failed"

    async def _cached(self, batch: Batch | None):
        return self.cache.get(_cache_key(batch)) if batch is not None else None

    async def _try(self, model: Servable | None, inputs: Inputs):
        if model is None:
            return None
        try:
            return model.version, await self._call(model, inputs, self._fallback)
        except ModelFailed:
            return None

    async def _call(self, model: Servable, inputs: Inputs, pool: ThreadPoolExecutor) -> list:
        """Predict in a worker thread within the timeout; a raise or a timeout is ModelFailed."""
        try:
            batch = inputs.for_model(model)
        except BadInput as exc:  # a version with other columns than the one the input was checked for
            raise ModelFailed("input", exc.message) from None
        if model.flavor == "onnx" and batch.rows <= INLINE_ROWS:
            # Tens of microseconds, less than the hop to a worker thread: nothing to time out.
            try:
                return inputs.predict(model)
            except Exception as exc:
                raise ModelFailed("exception", f"{type(exc).__name__}: {exc}") from None
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wait_for(loop.run_in_executor(pool, inputs.predict, model), self.timeout_s)
        except TimeoutError:
            raise ModelFailed("timeout", f"no answer within {self.serving.timeout_ms:g} ms") from None
        except Exception as exc:
            raise ModelFailed("exception", f"{type(exc).__name__}: {exc}") from None

    # ---- log -------------------------------------------------------------------------------

    def _log(self, request_id, ts, version, role, source, batch, predictions, started, error, route=None) -> None:
        latency_ms = (time.perf_counter() - started) * 1000
        self.log.add(
            Prediction(request_id, ts, self.name, version, role, source, batch, predictions, latency_ms, error, route)
        )

    # ---- the other endpoints -----------------------------------------------------------------

    async def _feedback(self, scope, receive, send) -> None:
        headers = _headers(scope)
        if not self._authorized(headers):
            await _error(send, 401, "UNAUTHENTICATED", "send the gateway's token as 'Authorization: Bearer TOKEN'",
                         extra=[(b"www-authenticate", b'Bearer realm="shipway"')])  # fmt: skip
            return
        try:
            body = await _body(receive, headers, self.serving.max_body_bytes)
            labels = _labels(body)
        except BadInput as exc:
            await _error(send, exc.status, exc.error_code, exc.message)
            return
        if not self.log.has_room(len(labels)):
            await _error(
                send, 503, "TEMPORARILY_UNAVAILABLE", "the prediction log is full; send the labels again later"
            )
            return
        now = datetime.now(UTC)
        for request_id, label in labels:
            self.log.add(Label(request_id, label, now))
        await _respond(send, 202, orjson.dumps({"accepted": len(labels)}), JSON)

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        """True without a configured token; else the request must carry it (compared in constant time)."""
        token = self.serving.api_token.get_secret_value()
        if not token:
            return True
        sent = headers.get(b"authorization", b"")
        return hmac.compare_digest(sent, b"Bearer " + token.encode())

    async def _ping(self, scope, receive, send) -> None:
        ready = self.router.routes.production is not None
        await _respond(send, 200 if ready else 503, b"\n", JSON)

    async def _health(self, scope, receive, send) -> None:
        routes = self.router.routes
        served = {alias: {"version": m.version, "format": m.flavor} for alias, m in routes.by_alias.items()}
        doc = {
            "status": "ok" if routes.production is not None and not routes.problems else "degraded",
            "model": self.name,
            "pinned_version": self.router.pinned,
            "registry_aliases": routes.registry_aliases,
            "serving": served,
            "baseline": routes.baseline.version if routes.baseline else None,
            "canary_share": routes.canary_share if routes.canary else 0.0,
            "problems": routes.problems,
            "last_poll": datetime.fromtimestamp(self.router.last_poll, UTC).isoformat()
            if self.router.last_poll
            else None,
            "last_poll_error": self.router.last_poll_error,
            "prediction_log": {"pending": self.log.pending, "written": self.log.written, "dropped": self.log.dropped},
            "shadow_process": self.shadow.status(),
            "cache_entries": len(self.cache),
        }
        await _respond(send, 200, orjson.dumps(doc), JSON)

    async def _version(self, scope, receive, send) -> None:
        production = self.router.routes.production
        doc = {
            "shipway": dist_version("shipway"),
            "mlflow": dist_version("mlflow"),
            "model": self.name,
            "production_version": production.version if production else None,
        }
        await _respond(send, 200, orjson.dumps(doc), JSON)

    async def _metrics(self, scope, receive, send) -> None:
        self.metrics.log_queue.set(self.log.pending)
        await _respond(send, 200, self.metrics.render(), b"text/plain; version=0.0.4; charset=utf-8")


def _cache_key(batch: Batch) -> bytes:
    return orjson.dumps(batch.columns)


def _labels(body: bytes) -> list[tuple[str, Any]]:
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadInput(f"malformed JSON: {exc}", 400, "BAD_REQUEST") from None
    items = doc if isinstance(doc, list) else [doc]
    if not items:
        raise BadInput('no labels: send {"request_id": ..., "label": ...} or a list of them')
    labels = []
    for i, item in enumerate(items):
        where = f"feedback[{i}]" if isinstance(doc, list) else "feedback"
        if not isinstance(item, dict):
            raise BadInput(f"{where} must be an object with 'request_id' and 'label'")
        extra = sorted(set(item) - {"request_id", "label"})
        if extra:
            raise BadInput(f"{where}: unknown key(s) {', '.join(map(repr, extra))}; send 'request_id' and 'label'")
        request_id = item.get("request_id")
        if not isinstance(request_id, str) or not REQUEST_ID.match(request_id):
            raise BadInput(f"{where}: 'request_id' must be the X-Request-Id of an answered request")
        label = item.get("label")
        if label is None or isinstance(label, (list, dict)):
            raise BadInput(
                f"{where}: 'label' must be a string, number or boolean, got {orjson.dumps(label).decode()[:40]}"
            )
        labels.append((request_id, label))
    return labels


def _headers(scope) -> dict[bytes, bytes]:
    return dict(scope["headers"])


async def _body(receive, headers: dict[bytes, bytes], limit: int) -> bytes:
    declared = headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadInput(
            f"the body has {int(declared)} bytes, more than the limit of {limit}", 413, "REQUEST_LIMIT_EXCEEDED"
        )
    chunks = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BadInput(f"the body is larger than the limit of {limit} bytes", 413, "REQUEST_LIMIT_EXCEEDED")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _respond(send, status: int, body: bytes, content_type: bytes, request_id: str | None = None,
                   extra: list[tuple[bytes, bytes]] = ()) -> None:  # fmt: skip
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if request_id is not None:
        headers.append((b"x-request-id", request_id.encode()))
    headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _error(send, status: int, error_code: str, message: str, request_id: str | None = None,
                 extra: list[tuple[bytes, bytes]] = ()) -> None:  # fmt: skip
    """MLflow's error body: {"error_code": ..., "message": ...}."""
    body = orjson.dumps({"error_code": error_code, "message": message})
    await _respond(send, status, body, JSON, request_id, extra)


def create_app(settings: Settings, *, pinned_version: str | None = None) -> Gateway:
    """The gateway for `settings.training.model_name`; models load at startup (ASGI lifespan).

    `pinned_version` serves that one version as Production and never polls (the benchmark).
    """
    from serving.registry import RegistryReader

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
    )
    prediction_log = open_log(settings, on_drop=metrics.log_dropped.inc, on_write=metrics.log_written.inc)
    return Gateway(settings, router, prediction_log, metrics)
