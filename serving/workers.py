"""Threads for model calls, bounded in time and in number.

The standard library's executor has no bounds that a gateway needs: a call waits for a thread
as long as the threads are busy, and a call past its timeout keeps its thread (Python cannot
stop a thread), so a version that hangs soon holds every thread and every later call times out
waiting, the healthy ones included. Here:

- a call waits for a free thread at most its `timeout_s`, then fails as "saturated" and never runs;
- a call that runs past its `timeout_s` fails as "timeout" and gives its place to a new thread; the
  overrunning call finishes on its own and its thread then ends. At most `threads` such
  overrunning calls are replaced at once, so a version that hangs on every call ends up with
  `2 * threads` threads, never more: later calls wait, fail as saturated, and the fallback chain
  answers from a pool of its own.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

QUEUED, RUNNING, CANCELLED, ABANDONED, DONE = range(5)


class ModelFailed(Exception):
    """A model raised, timed out or found no thread: the next link of the fallback chain answers."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


class _Call:
    __slots__ = ("args", "fn", "future", "loop", "replaced", "started", "state")

    def __init__(self, fn: Callable[..., Any], args: tuple, loop: asyncio.AbstractEventLoop):
        self.fn = fn
        self.args = args
        self.loop = loop
        self.future: asyncio.Future = loop.create_future()
        self.state = QUEUED
        self.started = 0.0
        self.replaced = False


class Workers:
    def __init__(self, name: str, threads: int):
        self.name = name
        self.threads = threads
        self.overrunning = 0  # calls past their timeout whose threads were replaced
        self._queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._started = 0
        for _ in range(threads):
            self._spawn()

    @property
    def live_threads(self) -> int:
        return self.threads + self.overrunning

    async def run(self, timeout_s: float, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(*args) in a worker thread; ModelFailed("saturated" | "timeout") past `timeout_s` (each call
        has its own: a large batch is given more time than one row)."""
        call = _Call(fn, args, asyncio.get_running_loop())
        self._queue.put(call)
        done, _ = await asyncio.wait((call.future,), timeout=timeout_s)
        if done:
            return call.future.result()
        with self._lock:
            if call.state == QUEUED:
                call.state = CANCELLED
                raise ModelFailed(
                    "saturated", f"no {self.name} thread was free within {timeout_s * 1000:g} ms"
                ) from None
            remaining = call.started + timeout_s - time.monotonic()
        if remaining > 0:
            done, _ = await asyncio.wait((call.future,), timeout=remaining)
            if done:
                return call.future.result()
        with self._lock:
            finished = call.state == DONE  # in the instant between the wait and the lock
            if not finished:
                call.state = ABANDONED
                if self.overrunning < self.threads:
                    self.overrunning += 1
                    call.replaced = True
                    self._spawn()
        if finished:
            return await call.future
        raise ModelFailed("timeout", f"no answer within {timeout_s * 1000:g} ms")

    def close(self) -> None:
        """Let every thread end once its call is done (calls still queued are dropped)."""
        for _ in range(self.live_threads):
            self._queue.put(None)

    def _spawn(self) -> None:
        self._started += 1
        threading.Thread(target=self._work, name=f"{self.name}-{self._started}", daemon=True).start()

    def _work(self) -> None:
        while (call := self._queue.get()) is not None:
            with self._lock:
                if call.state == CANCELLED:
                    continue
                call.state = RUNNING
                call.started = time.monotonic()
            try:
                result, error = call.fn(*call.args), None
            except Exception as exc:
                result, error = None, exc
            with self._lock:
                abandoned = call.state == ABANDONED
                call.state = DONE
                if abandoned and call.replaced:
                    self.overrunning -= 1
            if not abandoned:
                call.loop.call_soon_threadsafe(_resolve, call.future, result, error)
            elif call.replaced:
                return  # a new thread has taken this one's place


def _resolve(future: asyncio.Future, result: Any, error: Exception | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
