"""Request bodies read within their bounds: at most max_body_bytes (413), within body_timeout_s (408).

Without a deadline, a body slower than its sender promised, or shorter than its Content-Length,
holds its connection and its task for good. One timer serves every read in progress: every
SWEEP_S it cancels the reads past their deadline, which then answer 408. A timer per request
would cost as much to arm and cancel as parsing a one-row body.
"""

from __future__ import annotations

import asyncio
import time

from serving.asgi import Receive
from serving.schema import BadInput

SWEEP_S = 0.1  # a late body is answered within body_timeout_s + SWEEP_S


class BodyReader:
    def __init__(self, limit: int, timeout_s: float):
        self.limit = limit
        self.timeout_s = timeout_s
        self._deadlines: dict[asyncio.Task, float] = {}
        self._expired: set[asyncio.Task] = set()
        self._sweeper: asyncio.TimerHandle | None = None

    async def read(self, receive: Receive, headers: dict[bytes, bytes]) -> bytes:
        declared = headers.get(b"content-length")
        announced = int(declared) if declared is not None and declared.isdigit() else None
        if announced is not None and announced > self.limit:
            raise BadInput(
                f"the body has {announced} bytes, more than the limit of {self.limit} (serving.max_body_bytes)",
                413,
                "REQUEST_LIMIT_EXCEEDED",
            )
        task = asyncio.current_task()
        assert task is not None, "read a body from a request's task"
        self._deadlines[task] = time.monotonic() + self.timeout_s
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(SWEEP_S, self._sweep)
        chunks = []
        size = 0
        try:
            while True:
                message = await receive()
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.limit:
                    raise BadInput(
                        f"the body is larger than the limit of {self.limit} bytes (serving.max_body_bytes)",
                        413,
                        "REQUEST_LIMIT_EXCEEDED",
                    )
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
        except asyncio.CancelledError:
            if task not in self._expired:
                raise
            self._expired.discard(task)
            task.uncancel()
            of = f"of the {announced} announced " if announced is not None else ""
            raise BadInput(
                f"the body did not arrive within {self.timeout_s:g} s (serving.body_timeout_s): {size} bytes {of}came",
                408,
                "DEADLINE_EXCEEDED",
            ) from None
        finally:
            self._deadlines.pop(task, None)

    def _sweep(self) -> None:
        now = time.monotonic()
        for task, deadline in list(self._deadlines.items()):
            if now >= deadline:
                del self._deadlines[task]
                self._expired.add(task)
                task.cancel()
        # Armed again only while reads are under way: an idle gateway has no timer.
        self._sweeper = asyncio.get_running_loop().call_later(SWEEP_S, self._sweep) if self._deadlines else None
