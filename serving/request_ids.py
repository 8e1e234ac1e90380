"""Request ids: the client's X-Request-Id (checked whole) or a new one, and never two answers under one.

The prediction log keeps one row per (request id, role) and feedback labels join on the id. A
second request under an id already used would be answered but its row never written, and a
label sent for that id would join the first answer. So the gateway refuses it with 409 Conflict,
naming the id: a retry of a request whose answer was lost needs an id of its own. Ids are
remembered for the last RECENT requests of a gateway process (its generated ids included); past
that window, or across replicas and restarts, the log keeps the first row of an id.

A generated id is a UUIDv7 (RFC 9562) as 32 hex digits: 48 bits of Unix milliseconds first, the
rest random, each above the last within a millisecond (uuid-utils). Ids that grow with time go
into the prediction log's primary-key index at its end; uniformly random ones (uuid4) went to a
random page each, and cost its SQLite writer 2.5x the CPU per row in a table of 200,000 rows
(tests/benchmarks/bench_log_writer.py), more as the table grows.
"""

from __future__ import annotations

import re
from collections import deque

import uuid_utils

REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")  # whole values only: fullmatch, never match
RECENT = 100_000
INVALID = "header X-Request-Id must be 1-128 characters of letters, digits and ._:-"


def valid(request_id: str) -> bool:
    return REQUEST_ID.fullmatch(request_id) is not None


def new() -> str:
    return uuid_utils.uuid7().hex


class RecentIds:
    """The ids of the last `size` requests; `claim` is False for one already among them."""

    def __init__(self, size: int = RECENT):
        self.size = size
        self._seen: set[str] = set()
        self._order: deque[str] = deque()

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._seen

    def claim(self, request_id: str) -> bool:
        if request_id in self._seen:
            return False
        self._seen.add(request_id)
        self._order.append(request_id)
        if len(self._order) > self.size:
            self._seen.discard(self._order.popleft())
        return True
