"""A stop (SIGTERM, Ctrl-C) wins over the errors it causes on its way out.

A signal's exception raised deep inside a library is not always what comes out of it: MLflow's
SQLAlchemy session, unwinding from Prefect's TerminationSignal, may try to commit, meet "database is
locked" and raise an MlflowException in its place (the signal only in its `__context__`). Read as a
failure, that would log a traceback, fail the run instead of stopping it, and end the command with
exit 1. So whoever decides what an exception means looks down its whole chain first.
"""

from __future__ import annotations

import functools
import gc
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


class Terminated(BaseException):
    """SIGTERM outside a flow run (while one runs, Prefect's engine raises its TerminationSignal
    instead and marks the run Crashed). Not an Exception: nothing on the way may swallow it."""


def signal_of(exc: BaseException) -> int | None:
    """The number of the signal that stopped the work: found anywhere in the exception's chain."""
    stop = stop_in(exc)
    if stop is None:
        return None
    return signal.SIGINT if isinstance(stop, KeyboardInterrupt) else getattr(stop, "signal", signal.SIGTERM)


def stop_in(exc: BaseException) -> BaseException | None:
    """The signal's exception behind `exc` (itself, its cause or its context, however deep), or None."""
    return next((found for found in _chain(exc) if _is_stop(found)), None)


def release_frames(exc: BaseException) -> None:
    """Drop what the finished frames of an exception's chain hold. A SQLite cursor a signal cut off
    mid-read keeps its read lock while the traceback keeps it alive, and a write made on the way out
    (how the version's training ended) would wait for that lock, then fail."""
    for found in _chain(exc):
        traceback.clear_frames(found.__traceback__)  # frames still running (the caller's) are left
    gc.collect()  # cursors in reference cycles too


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what it came from (`__cause__`, else `__context__`), each once: chains can loop."""
    seen: set[int] = set()
    found: BaseException | None = exc
    while found is not None and id(found) not in seen:
        seen.add(id(found))
        yield found
        found = found.__cause__ or found.__context__


def _is_stop(exc: BaseException) -> bool:
    prefect_exceptions = sys.modules.get("prefect.exceptions")  # loaded only where a flow runs
    return isinstance(exc, (KeyboardInterrupt, Terminated)) or (
        prefect_exceptions is not None and isinstance(exc, prefect_exceptions.TerminationSignal)
    )


def stops_first(fn: Callable[P, R]) -> Callable[P, R]:
    """`fn`, raising the stop itself where an error it caused would come out: Prefect then marks the
    run Crashed by the signal, retries nothing and logs no traceback."""

    @functools.wraps(fn)
    def stopping(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            stop = stop_in(exc)
            if stop is None:
                raise
            raise stop from None

    return stopping
