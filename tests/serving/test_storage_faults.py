"""Storage faults at the gateway's boundaries, injected for real while a real gateway answers traffic.

The prediction log, on SQLite and PostgreSQL: locked by another process, disk full, read-only,
connection dropped, server refusing connections (a restart). For each: every answer the clients
got is in the log once the fault clears (nothing acknowledged is lost), and while it lasts
`/health` says what is wrong (without paths or SQL) and `/metrics` counts it.

The registry store (MLflow on SQLite): replaced under the gateway by a restore, unreadable for a
while, unreadable when the gateway starts. The gateway follows the store it is pointed at, says
so in `/health` while it cannot read it, and keeps answering with what it loaded.

Faults that need root (a small tmpfs for a full disk) skip without it, saying so.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
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
from tasks.release.registry import set_alias
from tests.conftest import PG_SERVER, embedded, postgres_databases, register_versions, tuned, wait_for

FAULT_S = 60  # the longest wait for the gateway to notice a fault, or to catch up once it cleared


@dataclass
class Served:
    settings: Settings
    rows: list[dict]  # one-row bodies to send
    versions: tuple[str, str]  # two registered versions; Production is the first


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Served:
    settings = tuned(
        embedded(tmp_path_factory.mktemp("faults")),
        data={"demo_rows": 3000},
        serving={"state_dir": "", "log_flush_interval_s": 0.05, "log_batch_size": 20},
    )
    (first, trained, _), (second, _, _) = register_versions(settings, 2)
    set_alias(settings, first.name, Alias.PRODUCTION, first.version)
    frame = trained.X_holdout.head(50)
    rows = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    return Served(settings, rows, (first.version, second.version))


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


# ---- the registry store ----------------------------------------------------------------------

MOVE_ALIAS = """
import sys
from mlflow import MlflowClient
uri, name, alias, version = sys.argv[1:]
MlflowClient(tracking_uri=uri, registry_uri=uri).set_registered_model_alias(name, alias, version)
"""


def own_store(served: Served, tmp_path: Path) -> tuple[Settings, Path]:
    """The module's registry copied to this test's own file (the test replaces it at will), with a log
    of its own and quick polls."""
    path = tmp_path / "mlflow.db"
    copy_store(Path(served.settings.mlflow.tracking_uri.removeprefix("sqlite:///")), path)
    settings = tuned(
        served.settings,
        mlflow={"tracking_uri": f"sqlite:///{path}"},
        prediction_log={"url": f"sqlite:///{tmp_path}/predictions.db"},
        serving={"poll_interval_s": 0.2},
    )
    return settings, path


def copy_store(source: Path, target: Path) -> None:
    """A consistent copy, as a backup is taken (SQLite's online backup)."""
    with sqlite3.connect(source) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    src.close()
    dst.close()


def move_alias(settings: Settings, alias: Alias, version: str) -> None:
    """Another process moves an alias, with its own MLflow client (as `shipway promote` would)."""
    uri = settings.mlflow.tracking_uri
    subprocess.run([sys.executable, "-c", MOVE_ALIAS, uri, settings.training.model_name, alias.value, version],
                   check=True, capture_output=True, timeout=120)  # fmt: skip


def production(client: httpx.Client) -> str | None:
    return health(client)["serving"].get("Production", {}).get("version")


def answered_by(client: httpx.Client, served: Served) -> str:
    answer = client.post("/invocations", json={"dataframe_records": served.rows[:1]})
    assert answer.status_code == 200, answer.text
    return answer.headers["x-model-version"]


NOT_A_DATABASE = b"\0" * 8192  # what a half-written copy can leave: SQLite reads no database in it


@pytest.mark.slow  # another process moves an alias with MLflow's client: its import alone took 15 s at load 8
def test_a_store_replaced_under_the_gateway_is_followed(served, tmp_path):
    """A restore moves a backup over the store: the gateway reads the new file from its next poll (it
    read the old one for ever), then every later alias move in it."""
    first, second = served.versions
    settings, path = own_store(served, tmp_path)
    backup = tmp_path / "backup.db"
    copy_store(path, backup)  # Production -> first
    set_alias(settings, settings.training.model_name, Alias.PRODUCTION, second)
    with running(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert production(client) == second
        broken = tmp_path / "broken.db"
        broken.write_bytes(NOT_A_DATABASE)
        broken.replace(path)  # a restore gone wrong
        during = wait_for(
            lambda: (h := health(client))["status"] == "degraded" and "registry: not readable" in h["reason"] and h,
            FAULT_S, "/health to say the registry is not readable",
        )  # fmt: skip
        assert answered_by(client, served) == second  # still answering with what it loaded
        assert "shipway_registry_poll_errors_total" in client.get("/metrics").text
        backup.replace(path)  # the restore, done right
        wait_for(lambda: production(client) == first, FAULT_S, "the restored store's Production")
        move_alias(settings, Alias.PRODUCTION, second)
        wait_for(lambda: production(client) == second, FAULT_S, "an alias moved in the restored store")
        assert answered_by(client, served) == second
        after = health(client)
    assert "(DatabaseError: not a database); serving the versions loaded before" in during["reason"]
    assert during["last_poll_error"] == "DatabaseError: not a database"
    for word in (str(tmp_path), "SELECT", "registered_model"):
        assert word not in str(during), word
    assert (after["status"], after["last_poll_error"]) == ("ok", None)


def test_a_gateway_started_on_an_unreadable_store_recovers_once_it_is_readable(served, tmp_path):
    """A restore under way when the gateway starts (the store is not a database yet), then moved in."""
    first, _ = served.versions
    settings, path = own_store(served, tmp_path)
    restored = path.replace(tmp_path / "restored.db")
    path.write_bytes(NOT_A_DATABASE)
    with running(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        unreadable = wait_for(lambda: (h := health(client))["last_poll_error"] and h, FAULT_S, "a failed poll")
        assert client.get("/ping").status_code == 503  # nothing loaded: no link of the chain can answer
        restored.replace(path)
        wait_for(lambda: production(client) == first, FAULT_S, "the store read once readable")
        assert client.get("/ping").status_code == 200
        assert answered_by(client, served) == first
        assert health(client)["status"] == "ok"
    assert unreadable["status"] == "unavailable"
    assert (
        "registry: not readable for" in unreadable["reason"]
        and "(DatabaseError: not a database)" in unreadable["reason"]
    )
    assert str(tmp_path) not in str(unreadable)
