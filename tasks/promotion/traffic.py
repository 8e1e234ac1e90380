"""Replayed traffic for a running gateway: one-row requests with request keys, and feedback labels.

The demo and the promotion tests need live traffic for Shadow and Canary to be judged on. This
sends rows of a labelled frame to `/invocations` as a client would (sticky `X-Request-Key`,
its own `X-Request-Id`), and for a share of them posts the true label to `/feedback` later, as
ground truth arriving after the fact. A `hold` condition pauses it (the demo's: while a promotion
waits for a person's approval, when traffic would only fill the log).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import orjson
import pandas as pd

from serving import json_rows
from tasks.benchmark.loadgen import Connection, request_bytes

FEEDBACK_BATCH = 100
HOLD_CHECK_S = 1.0  # how often the hold condition is asked: at most once a second, sending or held


class Replay(threading.Thread):
    """Sends `frame`'s rows (without `target`) round and round until `stop()`; counts answers.

    `hold()`, asked every HOLD_CHECK_S, says whether to send nothing for now; `on_hold(held)` is
    told each change (`held` says which state the replay is in)."""

    def __init__(
        self,
        url: str,
        frame: pd.DataFrame,
        target: str,
        *,
        feedback_share: float = 0.5,
        max_rate: float | None = None,
        prefix: str = "replay",
        api_token: str = "",
        hold: Callable[[], bool] | None = None,
        on_hold: Callable[[bool], None] | None = None,
    ):
        super().__init__(name="traffic-replay", daemon=True)
        self.url, self.prefix, self.max_rate = url, prefix, max_rate
        self.hold, self.on_hold = hold, on_hold
        self.held = False
        self.feedback_headers = {"Authorization": f"Bearer {api_token}"} if api_token else {}
        features = frame.drop(columns=[target])
        columns = list(features.columns)
        self.bodies = [
            orjson.dumps({"dataframe_split": {"columns": columns, "data": [row]}}) for row in json_rows(features)
        ]
        self.labels = frame[target].to_numpy().tolist()
        self.with_feedback = np.random.default_rng(0).random(len(frame)) < feedback_share
        self.sent = self.answered = 0
        self.statuses: dict[int, int] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        connection = Connection(self.url)
        pending: list[dict] = []
        asked = float("-inf")
        try:
            while not self._halt.is_set():
                if self.hold is not None and time.monotonic() - asked >= HOLD_CHECK_S:
                    asked = time.monotonic()
                    if self._hold() != self.held:
                        self.held = not self.held
                        if self.held and pending:  # the labels of what was answered go now, not after the hold
                            self._feedback(connection, pending)
                            pending = []
                        if not self.held:  # a long hold outlasts the gateway's keep-alive: a new connection
                            connection.close()
                            connection = Connection(self.url)
                        if self.on_hold is not None:
                            self.on_hold(self.held)
                if self.held:
                    self._halt.wait(max(0.0, asked + HOLD_CHECK_S - time.monotonic()))
                    continue
                i = self.sent % len(self.bodies)
                request_id = f"{self.prefix}-{self.sent}"
                headers = {"X-Request-Id": request_id, "X-Request-Key": f"customer-{i}"}
                status, _ = connection.send(request_bytes(self.url, "/invocations", self.bodies[i], headers=headers))
                self.sent += 1
                self.statuses[status] = self.statuses.get(status, 0) + 1
                self.answered += status == 200
                if status == 200 and self.with_feedback[i]:
                    pending.append({"request_id": request_id, "label": self.labels[i]})
                if len(pending) >= FEEDBACK_BATCH:
                    self._feedback(connection, pending)
                    pending = []
                if self.max_rate:
                    time.sleep(1 / self.max_rate)
        finally:
            connection.close()

    def _hold(self) -> bool:
        try:
            return bool(self.hold and self.hold())
        except Exception:  # a condition that could not be read (a registry hiccup): as it was, asked again later
            return self.held

    def _feedback(self, connection: Connection, labels: list[dict]) -> None:
        connection.send(request_bytes(self.url, "/feedback", orjson.dumps(labels), headers=self.feedback_headers))

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)
