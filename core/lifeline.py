"""Child processes that die with their parent, even when the parent is killed with SIGKILL.

A kill -9 runs no cleanup in the parent: its atexit handlers and `finally` blocks never stop the
children (the gateway's Shadow process, the CLI's temporary Prefect server, a benchmark's
gateway), and they would hold their ports, CPU and database connections forever. So the child
asks the kernel itself: Linux's PR_SET_PDEATHSIG sends it SIGTERM the moment its parent exits
(its usual graceful stop: the Shadow writes its log, uvicorn drains). Where there is no prctl,
a thread of the child watches the parent's pid and sends the same SIGTERM. Either way a child
that has not exited `GRACE_S` after its parent went is ended with os._exit.

`command(parent, module, *args)` is the argv that runs `python -m module args` under this guard;
a module of our own may call `die_with(parent)` itself instead.
"""

from __future__ import annotations

import ctypes
import os
import runpy
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
WATCH_S = 0.5  # how often the fallback looks at the parent pid
GRACE_S = 20.0  # a graceful stop after the parent died may take this long, then the child is ended


def command(module: str, *args: str, parent: int | None = None) -> list[str]:
    """`python -m module args` as a child of `parent` (default: this process) that dies with it."""
    return [sys.executable, "-m", "core.lifeline", str(parent or os.getpid()), module, *args]


def die_with(parent: int) -> None:
    """Make this process get SIGTERM when `parent` exits (and end it GRACE_S later)."""
    armed = _pdeathsig(signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the line above: no signal will come
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=_watch, args=(parent, armed), name="lifeline", daemon=True).start()


def _pdeathsig(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0


def _watch(parent: int, armed: bool) -> None:
    while os.getppid() == parent:
        time.sleep(WATCH_S)
    if not armed:  # the kernel sent nothing: do it here (sent twice, SIGTERM could cut a graceful stop short)
        os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(GRACE_S)
    os._exit(128 + signal.SIGTERM)


def main() -> None:
    """`python -m core.lifeline PARENT_PID MODULE [ARGS...]`: run MODULE as `python -m` would, guarded."""
    parent, module, *args = sys.argv[1:]
    die_with(int(parent))
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
