"""Who holds a lock or a lease: this process, named so that another process can tell whether it lives.

A pid alone is not enough (pids are reused), so the owner is the host, its boot, the pid and the
process's start time. On the same machine another process answers "alive or not" at once; from
another machine it cannot tell (None), and a lease's expiry decides instead.
"""

from __future__ import annotations

import os
import socket
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path


@dataclass(frozen=True)
class Owner:
    host: str
    boot: str  # the kernel's boot id: a pid from before a reboot is no one
    pid: int
    started: int  # the process's start time in clock ticks since boot (0 where unknown)

    @classmethod
    def current(cls) -> Owner:
        return _current(os.getpid())  # cached per pid: a forked child is someone else

    def alive(self) -> bool | None:
        """True or False on the same machine; None from another one (only a lease can tell)."""
        me = Owner.current()
        if (self.host, self.boot) != (me.host, me.boot):
            return None
        if self.pid == me.pid:
            return self.started == me.started
        started = _start_ticks(self.pid)
        if started is None:
            return False
        return self.started in (0, started)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Owner:
        return cls(str(data["host"]), str(data["boot"]), int(data["pid"]), int(data["started"]))

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.host}"


@cache
def _current(pid: int) -> Owner:
    boot = Path("/proc/sys/kernel/random/boot_id")
    return Owner(socket.gethostname(), boot.read_text().strip() if boot.is_file() else "", pid, _start_ticks(pid) or 0)


def _start_ticks(pid: int) -> int | None:
    """The start time of process `pid` (Linux: field 22 of /proc/PID/stat); None if there is no such process."""
    if not Path("/proc/self/stat").is_file():  # no /proc here: "a process with this pid exists" must do
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name may hold spaces and parentheses
    if fields[0] == "Z":  # a zombie has died; only its parent has not read its status yet
        return None
    return int(fields[19])
