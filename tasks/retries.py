"""Which failures a Prefect task retries, and the options every shipway task shares."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from core.errors import ShipwayError
from core.stops import stops_first

if TYPE_CHECKING:  # Prefect is imported only where a task is declared
    from prefect import Task
    from prefect.client.schemas.objects import State, TaskRun

P = ParamSpec("P")
R = TypeVar("R")


def is_transient(exc: BaseException) -> bool:
    """A failure that the same call may not meet again: the network, a throttled or failing service."""
    from botocore.exceptions import ClientError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    if isinstance(exc, ShipwayError):
        return False
    if isinstance(exc, (OSError, BotoConnectionError)):
        return True
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or error.get("Code") in ("Throttling", "SlowDown", "RequestTimeout")
    return False


def retry_on_io(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect retry condition: retry transient I/O failures only; bad input fails the same way again."""
    try:
        state.result()
    except Exception as exc:
        return is_transient(exc)
    return False


def shipway_task(name: str, *, io: bool = False, **overrides: Any) -> Callable[[Callable[P, R]], Task[P, R]]:
    """`@task` with the options every shipway task shares (`overrides` are `@task`'s own): never cached
    (inputs are settings and data frames, results are writes to stores); `io`: retried on transient
    I/O failures only; a stop that an error in it hides comes out as the stop (`stops_first`)."""
    from prefect import task
    from prefect.cache_policies import NO_CACHE

    options: dict[str, Any] = {"cache_policy": NO_CACHE}
    if io:
        options |= {"retries": 2, "retry_delay_seconds": [2, 10], "retry_condition_fn": retry_on_io}

    def declare(fn: Callable[P, R]) -> Task[P, R]:
        return task(name=name, **(options | overrides))(stops_first(fn))

    return declare


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The running task's Prefect logger (its lines in the Prefect UI); a plain `shipway` logger when a
    task's function is called as a plain function (`.fn`), where Prefect's would raise."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("shipway")
