"""Storage faults at the gateway's boundaries, injected for real while a real gateway answers traffic.

The prediction log, on SQLite and PostgreSQL: locked by another process, disk full, read-only,
connection dropped, server refusing connections (a restart). For each: every answer the clients
got is in the log once the fault clears (nothing acknowledged is lost), and while it lasts
`/health` says what is wrong (without paths or SQL) and `/metrics` counts it.

Faults that need root (a small tmpfs for a full disk) skip without it, saying so.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from configs.settings import Settings
from core.vocabulary import Alias
from serving.server import running
from tasks.registry import set_alias
from tests.conftest import PG_SERVER, embedded, postgres_databases, register_versions, tuned, wait_for

FAULT_S = 60  # the longest wait for the gateway to notice a fault, or to catch up once it cleared


@dataclass
class Served:
    settings: Settings
    rows: list[dict]  # one-row bodies to send


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Served:
    settings = tuned(
        embedded(tmp_path_factory.mktemp("faults")),
        data={"demo_rows": 3000},
        serving={"state_dir": "", "log_flush_interval_s": 0.05, "log_batch_size": 20},
    )
    ((version, trained, _),) = register_versions(settings, 1)
    set_alias(settings, version.name, Alias.PRODUCTION, version.version)
    frame = trained.X_holdout.head(50)
    rows = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    return Served(settings, rows)


class Traffic:
    """A client sending one-row requests back to back, each under its own id: the ids answered 200."""

    def __init__(self, url: str, rows: list[dict]):
        self.url = url
        self.rows = rows
        self.answered: list[str] = []
        self.refused: list[tuple[str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic")

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            i = 0
            while not self._stop.wait(0.004):
                request_id = f"t{i}"
                body = {"dataframe_records": [self.rows[i % len(self.rows)]]}
                answer = client.post("/invocations", json=body, headers={"X-Request-Id": request_id})
                (self.answered.append(request_id) if answer.status_code == 200 else
                 self.refused.append((request_id, answer.status_code)))  # fmt: skip
                i += 1


@dataclass
class Fault:
    """A storage fault: `inject` starts it, `clear` ends it; `said` is what /health's reason must say
    meanwhile, `counted` what /metrics must show."""

    inject: Callable[[], None]
    clear: Callable[[], None]
    said: str
    counted: str
    before_start: bool = False  # injected before the gateway starts (the log is unusable from its start)


def health(client: httpx.Client) -> dict:
    return client.get("/health").json()


def weather(served: Served, url: str, fault: Fault, secret_words: tuple[str, ...]) -> None:
    """Traffic through `fault`: answers never wait for the log, the fault is reported while it lasts,
    and every answered request is in the log once it clears."""
    settings = tuned(served.settings, prediction_log={"url": url})
    if fault.before_start:
        fault.inject()
    with running(settings) as base, httpx.Client(base_url=base, timeout=30) as client:
        with Traffic(base, served.rows) as traffic:
            if not fault.before_start:
                wait_for(lambda: health(client)["prediction_log"]["written"] > 0, FAULT_S, "the first rows written")
                fault.inject()
            try:
                during = wait_for(
                    lambda: (h := health(client))["status"] == "degraded" and fault.said in (h["reason"] or "") and h,
                    FAULT_S,
                    f"/health to say {fault.said!r}",
                )
                metrics = client.get("/metrics").text
            finally:
                fault.clear()
            cleared = len(traffic.answered)
            wait_for(lambda: len(traffic.answered) > cleared + 50, FAULT_S, "answers after the fault cleared")
        answered = set(traffic.answered)
        after = wait_for(
            lambda: (h := health(client))["status"] == "ok" and h["prediction_log"]["pending"] == 0 and h,
            FAULT_S,
            "the log to catch up",
        )
    assert traffic.refused == []  # answers never depend on the log
    assert fault.counted in metrics, metrics
    shown = str(during)
    for word in ("SELECT", "INSERT", "[SQL", "/", *secret_words):
        assert word not in shown, (word, during["reason"])
    assert after["prediction_log"]["dropped"] == 0
    assert answered <= logged_ids(url), f"{len(answered - logged_ids(url))} answered requests not in the log"


def logged_ids(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return set(conn.execute(sa.text("SELECT request_id FROM predictions")).scalars())
    finally:
        engine.dispose()


# ---- SQLite ----------------------------------------------------------------------------------

HOLD = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
db.execute("ROLLBACK")
"""


def held_lock(path: Path) -> Fault:
    """Another process holds BEGIN EXCLUSIVE on the log's database until cleared."""
    holder: list[subprocess.Popen] = []

    def inject() -> None:
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
        holder.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"

    def clear() -> None:
        proc = holder.pop()
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0

    return Fault(inject, clear, "(locked)", 'shipway_prediction_log_write_failures_total{cause="locked"}')


@contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A small tmpfs at `where` (root only: a real full disk, or one remounted read-only)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs (a real full or read-only file system); CI as root runs it")
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True,
                          text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def full_disk(where: Path) -> Fault:
    """Another file takes every free byte of the log's file system until it is deleted."""
    filler = where / "filler"

    def inject() -> None:
        with filler.open("wb") as out:
            try:
                while True:
                    out.write(b"\0" * 65536)
                    out.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC

    return Fault(inject, filler.unlink, "(disk full)", 'shipway_prediction_log_write_failures_total{cause="disk full"}')


def read_only(where: Path) -> Fault:
    """The log's file system is read-only when the gateway starts, and made writable while it runs."""
    return Fault(
        lambda: subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True),
        lambda: subprocess.run(["mount", "-o", "remount,rw", str(where)], check=True),
        "(read-only)",
        'shipway_prediction_log_write_failures_total{cause="read-only"}',
        before_start=True,
    )


def sqlite_log(path: Path) -> str:
    """A log database with its tables, as an earlier run of the gateway left it."""
    from serving.prediction_log import engine

    url = f"sqlite:///{path}"
    engine(url).dispose()
    return url


def test_sqlite_log_held_by_another_process(served, tmp_path):
    url = sqlite_log(tmp_path / "predictions.db")
    weather(served, url, held_lock(tmp_path / "predictions.db"), (str(tmp_path),))


def test_sqlite_log_on_a_full_disk(served, tmp_path):
    with tmpfs(tmp_path / "small", "4m") as where:
        weather(served, sqlite_log(where / "predictions.db"), full_disk(where), (str(where),))


def test_sqlite_log_on_read_only_storage(served, tmp_path):
    with tmpfs(tmp_path / "small", "4m") as where:
        weather(served, sqlite_log(where / "predictions.db"), read_only(where), (str(where),))


# ---- PostgreSQL ------------------------------------------------------------------------------


@contextmanager
def pg_log() -> Iterator[tuple[str, Callable[[str], None]]]:
    """A fresh log database with its tables, and a superuser session to break it with."""
    import psycopg

    from serving.prediction_log import engine

    with postgres_databases("log") as names:
        name = names["log"]
        url = f"postgresql+psycopg://{PG_SERVER}/{name}"
        engine(url).dispose()
        with psycopg.connect(f"postgresql://{PG_SERVER}/postgres", autocommit=True) as admin:

            def sql(statement: str) -> None:
                admin.execute(statement.replace("{db}", name))

            yield url, sql


DROP_CONNECTIONS = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'"


@pytest.mark.postgres
def test_postgres_log_with_its_table_locked(served):
    import psycopg

    with pg_log() as (url, _):
        holder = psycopg.connect(url.replace("+psycopg", ""))

        def inject() -> None:
            holder.execute("LOCK TABLE predictions IN ACCESS EXCLUSIVE MODE")

        fault = Fault(inject, holder.rollback, "(locked)",
                      'shipway_prediction_log_write_failures_total{cause="locked"}')  # fmt: skip
        try:
            weather(served, url, fault, ())
        finally:
            holder.close()


@pytest.mark.postgres
def test_postgres_log_through_a_server_restart(served):
    """Connections dropped, and new ones refused until the 'restart' is over."""
    with pg_log() as (url, sql):

        def inject() -> None:
            sql("ALTER DATABASE {db} ALLOW_CONNECTIONS false")
            sql(DROP_CONNECTIONS)

        fault = Fault(inject, lambda: sql("ALTER DATABASE {db} ALLOW_CONNECTIONS true"), "(cannot connect)",
                      'shipway_prediction_log_write_failures_total{cause="cannot connect"}')  # fmt: skip
        weather(served, url, fault, ("127.0.0.1", "5432"))


@pytest.mark.postgres
def test_postgres_log_turned_read_only(served):
    """A failover to a read-only server: sessions are read-only until it is writable again."""
    with pg_log() as (url, sql):

        def inject() -> None:
            sql("ALTER DATABASE {db} SET default_transaction_read_only = on")
            sql(DROP_CONNECTIONS)

        fault = Fault(inject, lambda: sql("ALTER DATABASE {db} RESET default_transaction_read_only"), "(read-only)",
                      'shipway_prediction_log_write_failures_total{cause="read-only"}')  # fmt: skip
        weather(served, url, fault, ())


@pytest.mark.postgres
def test_postgres_log_on_a_full_disk(served):
    """The log's table in a tablespace on a small tmpfs that another file fills (root, and the server
    on this machine: it must reach the tmpfs)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs for the server's tablespace; CI as root runs it")
    where = Path(tempfile.mkdtemp(prefix="shipway-pg-full-"))  # /tmp/pytest-of-root is closed to the server
    where.chmod(0o755)
    where.rmdir()
    with tmpfs(where, "8m"), pg_log() as (url, sql):
        space = where / "pg"
        space.mkdir()
        shutil.chown(space, "postgres", "postgres")
        tablespace = f"shipway_full_{uuid.uuid4().hex[:8]}"
        try:
            sql(f"CREATE TABLESPACE {tablespace} LOCATION '{space}'")
        except Exception as exc:
            pytest.skip(f"the server cannot use a tablespace here (not on this machine?): {exc}")
        try:
            with sa.create_engine(url).begin() as conn:
                conn.exec_driver_sql(f"ALTER TABLE predictions SET TABLESPACE {tablespace}")
            weather(served, url, full_disk(where), (str(where), tablespace, "pg_tblspc"))
        finally:
            sql(DROP_CONNECTIONS)
            with sa.create_engine(url).begin() as conn:
                conn.exec_driver_sql("ALTER TABLE predictions SET TABLESPACE pg_default")
            sql(f"DROP TABLESPACE {tablespace}")


@pytest.mark.postgres
def test_postgres_log_with_its_connections_dropped(served):
    """The writer's connections killed again and again: no answer is lost, whatever /health said."""
    with pg_log() as (url, sql):
        settings = tuned(served.settings, prediction_log={"url": url})
        with running(settings) as base, httpx.Client(base_url=base, timeout=30) as client:
            with Traffic(base, served.rows) as traffic:
                for _ in range(5):
                    more = health(client)["prediction_log"]["written"] + 20
                    wait_for(lambda m=more: health(client)["prediction_log"]["written"] > m, FAULT_S)
                    sql(DROP_CONNECTIONS)
            after = wait_for(lambda: (h := health(client))["prediction_log"]["pending"] == 0 and h, FAULT_S)
        assert traffic.refused == []
        assert after["prediction_log"]["dropped"] == 0
        assert set(traffic.answered) <= logged_ids(url)
