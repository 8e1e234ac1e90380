"""Replayed traffic for a running gateway: one-row requests with request keys, and feedback labels.

The demo and the promotion tests need live traffic for Shadow and Canary to be judged on. This
sends rows of a labelled frame to `/invocations` as a client would (sticky `X-Request-Key`,
its own `X-Request-Id`), and for a share of them posts the true label to `/feedback` later, as
ground truth arriving after the fact.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import orjson
import pandas as pd

from serving import json_rows
from tasks.loadgen import Connection, request_bytes

FEEDBACK_BATCH = 100


class Replay(threading.Thread):
    """Sends `frame`'s rows (without `target`) round and round until `stop()`; counts answers."""

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
    ):
        super().__init__(name="traffic-replay", daemon=True)
        self.url, self.prefix, self.max_rate = url, prefix, max_rate
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
        try:
            while not self._halt.is_set():
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
                    connection.send(
                        request_bytes(self.url, "/feedback", orjson.dumps(pending), headers=self.feedback_headers)
                    )
                    pending = []
                if self.max_rate:
                    time.sleep(1 / self.max_rate)
        finally:
            connection.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=30)
