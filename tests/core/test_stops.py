"""A stop found anywhere in an exception's chain is the stop: in the CLI's exit code, in a task's end."""

from __future__ import annotations

import signal
import sqlite3
import uuid
from pathlib import Path

import mlflow
import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import StateType
from prefect.exceptions import TerminationSignal

from configs.settings import Settings
from core.stops import Terminated, release_frames, signal_of, stop_in, stops_first
from core.tracking import Store, close_idle_connections
from core.vocabulary import Tag
from tasks.release import registry
from tasks.release.registration import how_it_ended, mark_unfinished
from tasks.retries import shipway_task
from tests.conftest import PG_SERVER, embedded, postgres_databases, stop_inside_commits, tuned


class LockedError(Exception):
    """As MLflow's MlflowException("database is locked") raised while a session unwinds from a signal."""


def error_caused_by(stop: BaseException, depth: int = 1) -> Exception:
    """The error an unwinding library raises in the stop's place, `depth` handlers deep."""
    try:
        try:
            raise stop
        except BaseException:
            raise LockedError("database is locked")  # noqa: B904 (the context is what Python sets)
    except LockedError as first:
        caused = first
    for level in range(depth - 1):
        try:
            raise RuntimeError(f"wrapped {level}") from caused
        except RuntimeError as wrapped:
            caused = wrapped
    return caused


@pytest.mark.parametrize(
    ("stop", "number"),
    [(TerminationSignal(signal.SIGTERM), signal.SIGTERM), (Terminated(), signal.SIGTERM), (KeyboardInterrupt(), 2)],
)
@pytest.mark.parametrize("depth", [1, 3])
def test_the_signal_behind_an_error_it_caused_is_found_at_any_depth(stop, number, depth):
    caused = error_caused_by(stop, depth)
    assert stop_in(caused) is stop
    assert signal_of(caused) == number
    assert how_it_ended(caused, "register") == f"stopped by {signal.Signals(number).name} during register"


def test_an_error_with_no_stop_behind_it_is_an_error_even_in_a_cycle():
    first, second = ValueError("a"), OSError("b")
    first.__context__, second.__context__ = second, first
    assert stop_in(first) is None and signal_of(first) is None
    assert how_it_ended(second, "bench") == "failed during bench: OSError: b"


def test_stops_first_raises_the_stop_and_lets_other_errors_through():
    stop = TerminationSignal(signal.SIGTERM)

    @stops_first
    def unwinding(what: str) -> None:
        if what == "stop":
            raise error_caused_by(stop)
        raise LockedError(what)

    with pytest.raises(TerminationSignal) as raised:
        unwinding("stop")
    assert raised.value is stop
    with pytest.raises(LockedError, match="plain"):
        unwinding("plain")


@pytest.mark.slow  # a real Prefect server (the harness): ~17 s to start
def test_a_task_whose_stop_turned_into_an_error_crashes_by_the_signal_and_is_not_retried(prefect_harness, caplog):
    attempts: list[int] = []

    @shipway_task("unwinding", io=True, retry_delay_seconds=[0, 0])
    def unwinding() -> None:
        attempts.append(1)
        raise error_caused_by(TerminationSignal(signal.SIGTERM))

    @flow(flow_run_name=f"stopped-{uuid.uuid4().hex}")
    def stopped() -> None:
        unwinding()

    sent_on: list[int] = []  # Prefect sends the signal again to the handler it found (the CLI's)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sent_on.append(signum))
    try:
        with pytest.raises(TerminationSignal):  # as the CLI gets it, which ends in exit 143
            stopped()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert sent_on == [signal.SIGTERM]
    assert len(attempts) == 1  # an io task retries errors it deems transient; a stop is not one
    with get_client(sync_client=True) as client:
        [run] = [r for r in client.read_flow_runs() if r.name == stopped.flow_run_name]
        [task_run] = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    assert run.state_type == task_run.state_type == StateType.CRASHED, (run.state, task_run.state)
    assert "Traceback" not in caplog.text and "LockedError" not in caplog.text, caplog.text


def mlflows_pool_logger(settings: Settings) -> str:
    """The logger of the pool of MLflow's engine for the embedded store."""
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore

    client, _ = registry.connect(settings)
    client.search_registered_models()  # the registry's store is made at its first use
    return SqlAlchemyStore._engine_map[settings.mlflow.tracking_uri].pool.logger.name


@pytest.mark.parametrize("source", ["flow engine", "MLflow's connection pool"])
def test_the_cli_logs_an_error_a_stop_caused_without_its_traceback(source, tmp_path):
    """In a flow's own code (not a task) the error reaches Prefect's flow engine, which logs it; a
    cursor a stop cut off mid-read may fail to close, which SQLAlchemy's pool logs."""
    import logging

    from flows.cli import _quiet_expected_tracebacks

    name = "prefect.flow_runs" if source == "flow engine" else mlflows_pool_logger(embedded(tmp_path))
    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    before = list(logger.filters)
    _quiet_expected_tracebacks()
    try:
        for error in (error_caused_by(TerminationSignal(signal.SIGTERM)), LockedError("no stop behind it")):
            logger.error("Error closing cursor", exc_info=(type(error), error, None), extra={"send_to_api": False})
    finally:
        logger.removeHandler(handler)
        logger.filters = before
    assert [record.exc_info is None for record in seen] == [True, False]


def test_a_read_a_stop_cut_off_holds_sqlites_lock_until_its_frames_are_released(tmp_path):
    """As MLflow's store when a SIGTERM lands mid-query: the version's "stopped by" mark, written on
    the way out, waited 20 s for the lock held by its own process, then failed."""
    db = tmp_path / "store.db"
    with sqlite3.connect(db) as setup:
        setup.execute("CREATE TABLE tags (value TEXT)")
        setup.executemany("INSERT INTO tags VALUES (?)", [("a",), ("b",)])

    def reading() -> None:
        cursor = sqlite3.connect(db).execute("SELECT value FROM tags")
        cursor.fetchone()  # a statement in progress: SQLite's read lock
        raise TerminationSignal(signal.SIGTERM)

    def mark(value: str) -> None:
        writer = sqlite3.connect(db, timeout=0.2)
        try:
            writer.execute("INSERT INTO tags VALUES (?)", (value,))
            writer.commit()
        finally:
            writer.close()

    try:
        reading()
    except TerminationSignal as stop:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            mark("while the traceback holds the cursor")
        release_frames(stop)
        mark("stopped by SIGTERM")
    with sqlite3.connect(db) as check:
        assert check.execute("SELECT value FROM tags").fetchall() == [("a",), ("b",), ("stopped by SIGTERM",)]


def writable(db: Path) -> bool:
    writer = sqlite3.connect(db, timeout=0.2)
    try:
        writer.execute("PRAGMA user_version = 7")  # a write: it waits for every other lock
        return True
    except sqlite3.OperationalError as error:
        assert "locked" in str(error)
        return False
    finally:
        writer.close()


def test_a_stop_inside_mlflows_commit_leaves_the_store_locked_until_it_is_freed(tmp_path):
    settings = embedded(tmp_path)
    client, _ = registry.connect(settings)
    client.create_registered_model("m")
    db = Path(settings.mlflow.tracking_uri.removeprefix("sqlite:///"))
    with stop_inside_commits(), pytest.raises(KeyboardInterrupt) as stopped:
        client.create_model_version("m", source="file:///nowhere")
    assert not writable(db)  # our own process holds the lock: every write would wait, then fail
    registry.free_store(settings, stopped.value)
    assert writable(db)
    assert client.search_model_versions("name = 'm'") == []  # rolled back, not committed by a later write


def test_a_stop_inside_a_training_runs_commit_still_ends_the_run_failed(tmp_path):
    settings = embedded(tmp_path)
    client, experiment = registry.connect(settings)
    with pytest.raises(KeyboardInterrupt):
        with mlflow.start_run(experiment_id=experiment) as run, registry.store_freed_on_the_way_out(settings):
            with stop_inside_commits():
                mlflow.log_param("seed", 7)
    assert client.get_run(run.info.run_id).info.status == "FAILED"  # written at once, on a free store


def test_a_stop_inside_a_commit_after_the_version_exists_is_marked_on_it(tmp_path):
    settings = embedded(tmp_path)
    client, experiment = registry.connect(settings)
    client.create_registered_model("m")
    with mlflow.start_run(experiment_id=experiment) as run:
        pass
    made = client.create_model_version("m", source="file:///nowhere", run_id=run.info.run_id)
    with stop_inside_commits(), pytest.raises(KeyboardInterrupt) as stopped:
        client.create_model_version("m", source="file:///nowhere", run_id=run.info.run_id)  # a second one
    registry.free_store(settings, stopped.value)
    mark_unfinished(settings, "m", str(made.version), stopped.value, "register")
    assert client.get_model_version("m", made.version).tags[Tag.UNFINISHED] == "stopped by SIGINT during register"


@pytest.mark.postgres
def test_on_postgresql_a_stop_inside_a_commit_holds_no_lock_against_the_mark(tmp_path):
    """There the cut transaction holds row locks and a write waits for them with no timeout: the
    store's own lock_timeout (5 s) turns a regression into a failure, not a hang."""
    with postgres_databases("mlflow") as db:
        uri = f"postgresql+psycopg://{PG_SERVER}/{db['mlflow']}?options=-c%20lock_timeout%3D5000"
        settings = tuned(embedded(tmp_path), mlflow={"tracking_uri": uri})
        client, _ = registry.connect(settings)
        client.create_registered_model("m")
        made = client.create_model_version("m", source="file:///nowhere")
        with stop_inside_commits(), pytest.raises(KeyboardInterrupt) as stopped:
            client.create_model_version("m", source="file:///nowhere")  # a second one, cut mid-commit
        registry.free_store(settings, stopped.value)
        mark_unfinished(settings, "m", str(made.version), stopped.value, "register")
        assert client.get_model_version("m", made.version).tags[Tag.UNFINISHED] == "stopped by SIGINT during register"
        assert [v.version for v in client.search_model_versions("name = 'm'")] == [made.version]
        close_idle_connections(Store.of(settings))  # before the database is dropped


def test_a_mark_that_cannot_be_written_does_not_take_the_stops_place(tmp_path, caplog):
    settings = embedded(tmp_path)
    stop = error_caused_by(TerminationSignal(signal.SIGTERM))
    mark_unfinished(settings, "no-such-model", "1", stop, "register")  # returns: the caller re-raises the stop
    assert "version 1 of no-such-model keeps its first unfinished mark" in caplog.text, caplog.text
