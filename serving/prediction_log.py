"""The prediction log: every answer, shadow prediction and fallback, and the labels sent later.

Tables (SQLAlchemy Core, any SQLAlchemy URL: SQLite by default, PostgreSQL in production):

- `predictions`: one row per (request_id, role); role is production, canary, shadow or
  fallback (who answered), route is production or canary (where the router sent the request:
  a failing canary's request is answered by Production or a fallback but stays canary
  traffic); `source` says what answered a fallback (previous, cache, baseline; null when
  nothing could and the client got 503). `inputs` and `prediction` are JSON text: a list of
  records and a list of predictions. `ts` is UTC (stored without zone) and indexed.
  Shadow rows share the request_id of the row that answered, so they join on it.
- `feedback`: ground-truth labels by request_id (JSON text), several per request allowed;
  `read_feedback` keeps the latest.

The gateway never writes on the request path: rows go to a bounded queue that one thread
writes in batches; `close()` drains it. A full queue drops the row and counts it. Shadow rows
are written by the Shadow's own process, between its chunks of work (serving/shadow.py).

Storage faults (a lock held elsewhere, a full disk, read-only storage, a dropped connection, a
server restarting, a database that cannot be opened at the gateway's start) never stop the
answers: the rows wait in the queue and the writer tries again, on a new connection, until the
database takes them. Meanwhile `problem()` says what is wrong for /health (the cause in a few
words, never SQL or a path) and each refused write is counted by cause for /metrics.
tests/serving/test_storage_faults.py injects each fault into a real gateway.
"""

from __future__ import annotations

import logging
import operator
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import pandas as pd
from pydantic import SecretStr
from sqlalchemy import (
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    insert,
    select,
)
from sqlalchemy.engine import Connection, Engine, make_url

from configs.settings import Settings
from core.errors import ConfigError
from core.redaction import hash_value
from serving.storage_errors import cause

log = logging.getLogger("shipway.serving")

# The `role` column: who answered (or, for shadow, who predicted alongside).
ROLE_PRODUCTION, ROLE_CANARY, ROLE_SHADOW, ROLE_FALLBACK = "production", "canary", "shadow", "fallback"

metadata = MetaData()
predictions = Table(
    "predictions",
    metadata,
    Column("request_id", String(128), primary_key=True),
    Column("role", String(16), primary_key=True),
    Column("ts", DateTime(), nullable=False, index=True),
    Column("model_name", String(256), nullable=False),
    Column("model_version", String(32)),
    Column("source", String(16)),
    Column("inputs", Text),
    Column("prediction", Text),
    Column("latency_ms", Float),
    Column("error", Text),
    Column("route", String(16)),
)
feedback = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("request_id", String(128), nullable=False, index=True),
    Column("label", Text, nullable=False),
    Column("ts", DateTime(), nullable=False, index=True),
)


@dataclass(frozen=True)
class Prediction:
    """One row of `predictions` as the gateway hands it over; `inputs` is a list of records or
    anything with a `records()` method, turned into records by the writer, off the request path."""

    request_id: str
    ts: datetime
    model_name: str
    model_version: str | None
    role: str
    source: str | None
    inputs: Any
    prediction: list | None
    latency_ms: float | None
    error: str | None
    route: str | None = None  # the role the router chose (production or canary), whoever answered


@dataclass(frozen=True)
class Label:
    request_id: str
    label: Any
    ts: datetime


WAIT_S = 1.0  # longest a write waits for a lock before it is refused, said in /health, and tried again
STALLED_S = 2.0  # a write under way longer than this is reported (a server that does not answer)
RETRY_MAX_S = 5.0  # the longest pause between two tries of a refused write


def engine(url: str, tables: bool = True, wait_s: float | None = None) -> Engine:
    """An engine (`tables`: with the tables created); SQLite in WAL mode so readers never block the
    writer. `wait_s`: how long a statement waits for a lock (SQLite's busy timeout, unless the URL
    sets one; PostgreSQL's lock_timeout is set per write by the writer)."""
    connect_args: dict[str, Any] = {}
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and wait_s is not None and "timeout" not in parsed.query:
        connect_args["timeout"] = wait_s
    eng = create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    if eng.dialect.name == "sqlite":

        @event.listens_for(eng, "connect")
        def _wal(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.execute("PRAGMA journal_mode=WAL")
            dbapi_connection.execute("PRAGMA synchronous=NORMAL")

    if tables:
        metadata.create_all(eng)
    return eng


def utc_naive(moment: datetime) -> datetime:
    """Stored timestamps are UTC without a zone; a naive input is taken as UTC already."""
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def read_window(url: str, start: datetime, end: datetime, model_name: str | None = None) -> pd.DataFrame:
    """Rows of `predictions` with start <= ts < end (through the ts index), ts as UTC."""
    query = select(predictions).where(predictions.c.ts >= utc_naive(start), predictions.c.ts < utc_naive(end))
    if model_name is not None:
        query = query.where(predictions.c.model_name == model_name)
    eng = engine(url)
    try:
        with eng.connect() as conn:
            result = conn.execute(query.order_by(predictions.c.ts))
            # The driver's rows as they are: SQLAlchemy's per-row processing (a datetime parsed per
            # row on SQLite) costs more than the query on a 100k-row window; pandas parses ts at once.
            frame = pd.DataFrame(result.cursor.fetchall(), columns=list(result.keys()))
    finally:
        eng.dispose()
    frame["ts"] = pd.to_datetime(frame["ts"], format="ISO8601").dt.tz_localize(UTC)
    return frame


def read_feedback(url: str, request_ids: Iterable[str]) -> pd.DataFrame:
    """The latest label of each of `request_ids` that has one: request_id, label (decoded), ts (UTC)."""
    ids = list(dict.fromkeys(request_ids))
    eng = engine(url)
    frames = []
    try:
        with eng.connect() as conn:
            for start in range(0, len(ids), 5000):  # bounded IN lists
                query = select(feedback.c.request_id, feedback.c.label, feedback.c.ts, feedback.c.id).where(
                    feedback.c.request_id.in_(ids[start : start + 5000])
                )
                frames.append(pd.read_sql(query, conn))
    finally:
        eng.dispose()
    columns = ["request_id", "label", "ts"]
    if not frames or all(f.empty for f in frames):
        return pd.DataFrame(
            {
                "request_id": pd.Series(dtype="str"),
                "label": pd.Series(dtype=object),
                "ts": pd.Series(dtype="datetime64[us, UTC]"),
            }
        )
    frame = pd.concat(frames).sort_values(["ts", "id"]).drop_duplicates("request_id", keep="last")
    frame["label"] = [orjson.loads(v) for v in frame["label"]]
    frame["ts"] = pd.to_datetime(frame["ts"]).dt.tz_localize(UTC)
    return frame[columns].reset_index(drop=True)


class Redactor:
    """Hashes (HMAC-SHA256 keyed by serving.hash_salt) or drops the columns the config marks as sensitive."""

    def __init__(self, rules: Mapping[str, str], salt: SecretStr | str):
        self.hashed = [c for c, rule in rules.items() if rule == "hash"]
        self.dropped = [c for c, rule in rules.items() if rule == "drop"]
        self.salt = (salt.get_secret_value() if isinstance(salt, SecretStr) else salt).encode()
        if self.hashed and not self.salt:  # settings built in code skip the profile's check
            raise ConfigError("serving.hash_salt is empty but serving.sensitive_columns hashes columns")

    def __call__(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not (self.hashed or self.dropped):
            return records
        out = []
        for record in records:
            record = {k: v for k, v in record.items() if k not in self.dropped}
            for col in self.hashed:
                if record.get(col) is not None:
                    record[col] = hash_value(self.salt, record[col])
            out.append(record)
        return out


def open_log(settings: Settings, **callbacks: Callable[[Any], None]) -> PredictionLog:
    """The prediction log a profile configures (started by the caller); callbacks: on_drop, on_write
    (rows), on_refusal (a refused write's cause)."""
    serving = settings.serving
    return PredictionLog(
        settings.prediction_log.url,
        queue_size=serving.log_queue_size,
        batch_size=serving.log_batch_size,
        flush_interval_s=serving.log_flush_interval_s,
        redact=Redactor(serving.sensitive_columns, serving.hash_salt),
        **callbacks,
    )


class PredictionLog:
    """Batched, off-request-path writes with a bounded queue; overflow is counted, never silent."""

    def __init__(
        self,
        url: str,
        *,
        queue_size: int,
        batch_size: int,
        flush_interval_s: float,
        redact: Redactor,
        on_drop: Callable[[int], None] = lambda n: None,
        on_write: Callable[[int], None] = lambda n: None,
        on_refusal: Callable[[str], None] = lambda cause: None,
    ):
        self.url = url
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.redact = redact
        self.on_drop = on_drop
        self.on_write = on_write
        self.on_refusal = on_refusal
        self.dropped = 0
        self.written = 0
        # A deque, not a queue.Queue: its appends and pops are atomic under the GIL, where a Queue takes
        # a lock and a condition per row, on the request path and in the writer. `add` checks the bound
        # before its append: producers in several threads could pass it by a row each.
        self._queue: deque[Prediction | Label] = deque()
        self.queue_size = queue_size
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._engine: Engine | None = None
        self._tables = False  # created (or found) in the database
        self._statement: tuple | None = None
        self._sqlite_path = make_url(url).database if make_url(url).get_backend_name() == "sqlite" else None
        self.failing_since: float | None = None  # time.monotonic() of the first refused write, while refused
        self.failure = ""  # the refusal's cause, e.g. "disk full" (the error's text may hold SQL: logged only)
        self._writing_since: float | None = None  # time.monotonic() a write began, while it is under way

    def start(self, writer_thread: bool = True) -> None:
        """Open the database; without the writer thread, the caller writes with `flush()`.

        A database that cannot be used now does not stop the start: the answers never need it, and
        the writer creates the tables once it can (a PostgreSQL started after the gateway, a volume
        mounted read-only by mistake). `problem()` says so meanwhile."""
        self._engine = engine(self.url, tables=False, wait_s=WAIT_S)
        try:
            self._create_tables()
        except Exception as exc:
            self._refused(exc, connecting=True)
            log.error("prediction log: the database cannot be used yet (%s); rows wait and are written once it "
                      "can: %s", self.failure, exc)  # fmt: skip
        if writer_thread:
            self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
            self._thread.start()

    @property
    def pending(self) -> int:
        return len(self._queue)

    def add(self, row: Prediction | Label) -> bool:
        """Queue a row; False (and counted) when the queue is full.

        The writer sleeps on a timer and is woken only once a batch is full: a wake per row
        would cost the request path a futex wake-up and the writer a GIL handover each time.
        """
        if len(self._queue) >= self.queue_size:
            self.dropped += 1
            self.on_drop(1)
            return False
        self._queue.append(row)
        if len(self._queue) >= self.batch_size and not self._wake.is_set():
            self._wake.set()
        return True

    def answered(self, model_name: str, request_ids: list[str]) -> set[str]:
        """Those of `request_ids` with a row of `model_name` in `predictions` (a primary-key lookup)."""
        assert self._engine is not None, "start() the log first"
        found: set[str] = set()
        with self._engine.connect() as conn:
            for start in range(0, len(request_ids), 5000):  # bounded IN lists
                query = select(predictions.c.request_id).where(
                    predictions.c.request_id.in_(request_ids[start : start + 5000]),
                    predictions.c.model_name == model_name,
                )
                found.update(conn.execute(query).scalars())
        return found

    def problem(self) -> str | None:
        """Why the log is not keeping up, if it is not: writes refused or stalled, or the queue half full."""
        if self.failing_since is not None:
            waited = time.monotonic() - self.failing_since
            return f"prediction log: writes refused for {waited:.0f} s ({self.failure}); {self.pending} rows waiting"
        writing = self._writing_since
        if writing is not None and time.monotonic() - writing > STALLED_S:
            waited = time.monotonic() - writing
            return f"prediction log: a write has waited {waited:.0f} s for the database; {self.pending} rows waiting"
        if self.pending > self.queue_size / 2:
            return f"prediction log: {self.pending} rows waiting, more than half of serving.log_queue_size"
        return None

    def stalled_s(self) -> float:
        """Seconds since the log last took a write, while one is refused or under way (0 otherwise)."""
        since = self.failing_since or self._writing_since
        return time.monotonic() - since if since is not None else 0.0

    def has_room(self, rows: int) -> bool:
        return self.queue_size - len(self._queue) >= rows

    def flush(self) -> None:
        """Write everything queued, in the calling thread (a log started without its thread)."""
        while batch := self._next_batch():
            self._write(batch)

    def close(self, timeout: float = 30.0) -> None:
        """Write everything queued so far, then stop the writer."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        elif self._engine is not None:
            self.flush()
        if self._engine is not None:
            self._engine.dispose()

    def _run(self) -> None:
        """Every flush_interval_s (or when a batch is full, or at close): write all that is queued."""
        while True:
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            stopping = self._stop.is_set()
            while batch := self._next_batch():
                self._write(batch)
            if stopping:
                return

    def _next_batch(self) -> list:
        """Up to batch_size queued rows, without waiting."""
        batch: list = []
        try:
            while len(batch) < self.batch_size:
                batch.append(self._queue.popleft())
        except IndexError:
            pass
        return batch

    def _write(self, batch: list) -> None:
        rows = [self._prediction_row(r) for r in batch if isinstance(r, Prediction)]
        labels = [
            {"request_id": r.request_id, "label": orjson.dumps(r.label).decode(), "ts": utc_naive(r.ts)}
            for r in batch
            if isinstance(r, Label)
        ]
        delay = 0.2
        while True:
            self._writing_since = time.monotonic()
            connecting = True
            try:
                assert self._engine is not None, "start() the log first"
                if not self._tables:
                    self._create_tables()
                with self._engine.connect() as conn:
                    connecting = False
                    with conn.begin():
                        if self._engine.dialect.name == "postgresql":  # refused, said and retried: not queued for ever
                            conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{WAIT_S * 1000:.0f}ms'")
                        if rows:
                            self._insert_predictions(conn, rows)
                        if labels:
                            conn.execute(insert(feedback), labels)
                self.written += len(batch)
                self.on_write(len(batch))
                self.failing_since = self._writing_since = None
                return
            except Exception as exc:  # the database is down or refuses: retry until shutdown
                self._writing_since = None
                self._refused(exc, connecting)
                # A new connection for the next try: this one may be broken, read-only or in a failed state.
                if self._engine is not None:
                    self._engine.dispose()
                if self._stop.is_set():
                    self._drop_at_shutdown(len(batch), exc)
                    return
                log.warning("prediction log: write of %d rows refused (%s), retrying in %.1fs: %s", len(batch),
                            self.failure, delay, exc)  # fmt: skip
                time.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)

    def _create_tables(self) -> None:
        assert self._engine is not None
        metadata.create_all(self._engine)
        self._tables = True

    def _refused(self, exc: BaseException, connecting: bool) -> None:
        self.failure = cause(exc, connecting, self._sqlite_path) or type(exc).__name__
        self.failing_since = self.failing_since or time.monotonic()
        self.on_refusal(self.failure)

    def _drop_at_shutdown(self, rows: int, exc: BaseException) -> None:
        """The database refuses at shutdown: this batch and every row still queued are lost, and counted
        at once (one refused try each would outlast the shutdown's wait)."""
        while batch := self._next_batch():
            rows += len(batch)
        log.error("prediction log: %d rows lost at shutdown, the database refused them (%s): %s", rows, self.failure,
                  exc)  # fmt: skip
        self.dropped += rows
        self.on_drop(rows)

    def _insert_predictions(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        """One executemany through the driver: SQLAlchemy's per-row parameter handling would cost
        Python time per row, holding the GIL that the answers need."""
        assert self._engine is not None, "start() the log first"
        if self._statement is None:
            compiled = self._insert_ignoring_repeats().compile(dialect=self._engine.dialect)
            names = list(compiled.positiontup) if compiled.positional else list(predictions.columns.keys())
            # Columns whose type converts values for this driver (SQLite stores datetimes as text).
            dialect = self._engine.dialect
            processors = [
                (names.index(c.name), proc)
                for c in predictions.columns
                if (proc := c.type.dialect_impl(dialect).bind_processor(dialect))
            ]
            self._statement = (str(compiled), names, compiled.positional, processors)
        sql, names, positional, processors = self._statement
        # Converted into new parameters, never into `rows`: a failed write retries the same rows.
        values = operator.itemgetter(*names)
        params: list = [values(row) for row in rows]
        if processors:
            params = [_converted(p, processors) for p in params]
        if not positional:
            params = [dict(zip(names, p, strict=True)) for p in params]
        conn.exec_driver_sql(sql, params)

    def _insert_ignoring_repeats(self):
        """A client may resend a request id; the first row of each (request_id, role) is kept."""
        assert self._engine is not None, "start() the log first"
        dialect = self._engine.dialect.name
        if dialect == "sqlite":
            from sqlalchemy.dialects import sqlite

            return sqlite.insert(predictions).on_conflict_do_nothing(index_elements=["request_id", "role"])
        if dialect == "postgresql":
            from sqlalchemy.dialects import postgresql

            return postgresql.insert(predictions).on_conflict_do_nothing(index_elements=["request_id", "role"])
        return insert(predictions)

    def _prediction_row(self, row: Prediction) -> dict[str, Any]:
        inputs = None if row.inputs is None else orjson.dumps(self.redact(_records(row.inputs))).decode()
        return {
            "request_id": row.request_id,
            "ts": utc_naive(row.ts),
            "model_name": row.model_name,
            "model_version": row.model_version,
            "role": row.role,
            "source": row.source,
            "inputs": inputs,
            "prediction": None if row.prediction is None else orjson.dumps(row.prediction).decode(),
            "latency_ms": row.latency_ms,
            "error": row.error,
            "route": row.route,
        }


def _converted(values: tuple, processors: list[tuple[int, Callable[[Any], Any]]]) -> tuple:
    out = list(values)
    for i, proc in processors:
        out[i] = proc(out[i])
    return tuple(out)


def _records(inputs: Any) -> list[dict[str, Any]]:
    return inputs.records() if hasattr(inputs, "records") else inputs
