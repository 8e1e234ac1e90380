"""A stop found anywhere in an exception's chain is the stop: in the CLI's exit code, in a task's end."""

from __future__ import annotations

import signal
import sqlite3
import uuid

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import StateType
from prefect.exceptions import TerminationSignal

from core.stops import Terminated, release_frames, signal_of, stop_in, stops_first
from tasks.release.registration import how_it_ended, mark_unfinished
from tasks.retries import shipway_task
from tests.conftest import embedded


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


def test_the_cli_logs_an_error_a_stop_caused_without_its_traceback():
    """In a flow's own code (not a task) the error reaches Prefect's flow engine, which logs it."""
    import logging

    from flows.cli import _quiet_expected_tracebacks

    seen: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = seen.append  # type: ignore[method-assign]
    logger = logging.getLogger("prefect.flow_runs")
    logger.addHandler(handler)
    before = {name: list(logging.getLogger(name).filters) for name in ("prefect.flow_runs", "prefect.task_runs")}
    _quiet_expected_tracebacks()
    try:
        for error in (error_caused_by(TerminationSignal(signal.SIGTERM)), LockedError("no stop behind it")):
            logger.error(
                "Encountered exception during execution",
                exc_info=(type(error), error, None),
                extra={"send_to_api": False},
            )
    finally:
        logger.removeHandler(handler)
        for name, filters in before.items():
            logging.getLogger(name).filters = filters
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


def test_a_mark_that_cannot_be_written_does_not_take_the_stops_place(tmp_path, caplog):
    settings = embedded(tmp_path)
    stop = error_caused_by(TerminationSignal(signal.SIGTERM))
    mark_unfinished(settings, "no-such-model", "1", stop, "register")  # returns: the caller re-raises the stop
    assert "version 1 of no-such-model keeps its first unfinished mark" in caplog.text, caplog.text
