"""One step at a time per model: the lock that serializes alias moves and release-record writes.

MLflow has one compare-and-set: a run parameter cannot change once written (a second writer of
the same key with another value is refused, atomically, by the store's unique key). Each step
claims the next step number as a parameter `step.NNNNNN` of the model's release record, valued
with its owner (host, boot, pid, start time) and a token; whoever wrote the parameter holds the
lock, the others wait. The holder marks its number done (run tag `steps.done`) when it ends.

A step whose owner died (kill -9) never marks itself done: a waiter sees on the same machine that
the owner process is gone, or from another machine that the step is older than STEP_LEASE_S,
and claims the next number. It works the same on SQLite, PostgreSQL and an MLflow server.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from mlflow.exceptions import MlflowException

from configs.settings import Settings
from core.errors import RegistryError
from core.owner import Owner
from tasks.release import registry
from tasks.release.record import record_run

PREFIX = "step."
DONE = "steps.done"
STEP_LEASE_S = 120.0  # a step is a few registry calls; past this, an owner on another machine is presumed gone
WAIT_S = 60.0  # longest a step waits for the one before it

_held = threading.local()  # {model key: depth}: a step may call code that takes the same lock


@dataclass(frozen=True)
class Step:
    number: int
    owner: Owner
    token: str
    at: datetime
    what: str

    @classmethod
    def parse(cls, number: int, value: str) -> Step:
        data = json.loads(value)
        return cls(
            number, Owner.from_dict(data["owner"]), data["token"], datetime.fromisoformat(data["at"]), data["what"]
        )

    def value(self) -> str:
        return json.dumps(
            {"owner": self.owner.to_dict(), "token": self.token, "at": self.at.isoformat(), "what": self.what}
        )

    def finished(self, done: int, now: datetime) -> bool:
        """Done, or its owner is gone: dead on this machine, or silent past the lease elsewhere."""
        if done >= self.number:
            return True
        alive = self.owner.alive()
        if alive is None:
            return (now - self.at).total_seconds() > STEP_LEASE_S
        return not alive


@contextmanager
def serialized(settings: Settings, name: str, what: str) -> Iterator[None]:
    """Hold `name`'s step lock for the block (re-entrant within a thread)."""
    key = (settings.mlflow.tracking_uri, name)
    depth = getattr(_held, "models", {})
    _held.models = depth
    if depth.get(key):
        depth[key] += 1
        try:
            yield
        finally:
            depth[key] -= 1
        return
    run_id = record_run(settings, name)
    number = _claim(settings, name, run_id, what)
    depth[key] = 1
    try:
        yield
    finally:
        depth[key] = 0
        client, _ = registry.connect(settings)
        client.set_tag(run_id, DONE, str(number))


def _claim(settings: Settings, name: str, run_id: str, what: str) -> int:
    client, _ = registry.connect(settings)
    deadline = time.monotonic() + WAIT_S
    token = uuid.uuid4().hex
    while True:
        run = client.get_run(run_id)
        steps = {int(k.removeprefix(PREFIX)): v for k, v in run.data.params.items() if k.startswith(PREFIX)}
        last = max(steps, default=0)
        holder = Step.parse(last, steps[last]) if last else None
        if holder is not None and holder.token == token:
            return last  # our claim went through (its answer may have been lost)
        now = datetime.now(UTC)
        if holder is None or holder.finished(int(run.data.tags.get(DONE, "0")), now):
            mine = Step(last + 1, Owner.current(), token, now, what[:200])
            try:
                client.log_param(run_id, f"{PREFIX}{mine.number:06d}", mine.value())
            except MlflowException:
                continue  # another process wrote this number first (or the store was busy): look again
            return mine.number
        if time.monotonic() > deadline:
            raise RegistryError(
                f"'{name}' is busy: step {holder.number} ({holder.what}) by {holder.owner} since "
                f"{holder.at:%H:%M:%S} UTC has not finished in {WAIT_S:.0f} s"
            )
        time.sleep(random.uniform(0.02, 0.1))
