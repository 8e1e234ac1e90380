"""A storage error as /health and /metrics show it to anyone who asks: its cause in a few words
(locked, disk full, read-only, not a database, cannot connect...), never its SQL, a file path or
a server's address (the whole error is in the gateway's log)."""

from __future__ import annotations

import os

# SQLite's primary result codes and PostgreSQL's SQLSTATEs (or their class) -> the cause.
SQLITE_CAUSES = {"BUSY": "locked", "LOCKED": "locked", "FULL": "disk full", "READONLY": "read-only",
                 "PERM": "read-only", "CANTOPEN": "cannot open", "IOERR": "I/O error", "CORRUPT": "corrupt",
                 "NOTADB": "not a database"}  # fmt: skip
POSTGRES_CAUSES = {"55P03": "locked", "40P01": "locked", "53100": "disk full", "25006": "read-only",
                   "57014": "timed out", "57P01": "connection lost", "57P02": "connection lost",
                   "57P03": "cannot connect", "08": "connection lost", "53": "out of resources"}  # fmt: skip


def cause(exc: BaseException, connecting: bool = False, path: str | None = None) -> str | None:
    """The cause of a database error (raised by SQLAlchemy or its driver); None for any other error.

    `connecting`: it came while opening a connection. `path`: an SQLite database's file, whose file
    system says what SQLite's codes blur (a read-only mount gives "unable to open", EIO, ...).
    """
    orig = getattr(exc, "orig", None) or exc
    sqlite_name = getattr(orig, "sqlite_errorname", None)  # e.g. SQLITE_READONLY_DBMOVED
    if sqlite_name:
        found = SQLITE_CAUSES.get(sqlite_name.split("_")[1], sqlite_name)
        if found in ("cannot open", "I/O error") and path:
            found = _file_system_cause(path) or found
        return found
    sqlstate = getattr(orig, "sqlstate", None) or ""
    found = POSTGRES_CAUSES.get(sqlstate) or POSTGRES_CAUSES.get(sqlstate[:2])
    if found:
        return found
    if not _from_a_database(exc):
        return None
    if connecting:
        return "cannot connect"
    if getattr(exc, "connection_invalidated", False):
        return "connection lost"
    return type(orig).__name__


def _from_a_database(exc: BaseException) -> bool:
    from sqlalchemy.exc import SQLAlchemyError

    return isinstance(exc, SQLAlchemyError) or type(exc).__module__.split(".")[0] in ("sqlite3", "psycopg", "psycopg2")


def _file_system_cause(path: str) -> str | None:
    """Read-only or full, as the file system holding `path` says (None: neither)."""
    try:
        stats = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return None
    if stats.f_flag & os.ST_RDONLY:
        return "read-only"
    if stats.f_bavail == 0:
        return "disk full"
    return None
