"""SQLAlchemy engines for an index's database: SQLite pragmas, read-only files, and which errors to retry or explain."""

from __future__ import annotations

import logging
import os
import sqlite3
import urllib.parse
from typing import Any, Optional

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine

from ctglip_sdk.errors import ConfigError, IndexStateError

__all__ = ["make_engine", "redact_url", "explain", "is_transient"]

log = logging.getLogger(__name__)

_BUSY_MS = 10_000
# PRAGMAs take no bound parameters; the statement is a literal that must match _BUSY_MS.
_BUSY_PRAGMA = "PRAGMA busy_timeout=10000"
RETRIES = 6


def redact_url(url: str) -> str:
    """A database URL with its password masked (safe to log and to store in the manifest)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a malformed URL is reported by create_engine with its own message
        return "<unparsable database URL>"


def make_engine(url: str) -> Engine:
    """SQLAlchemy engine; SQLite gets WAL, a busy timeout and explicit BEGIN (IMMEDIATE for writes).

    Example:
        >>> eng = make_engine("sqlite:///:memory:")
        >>> eng.dialect.name
        'sqlite'
    """
    try:
        if url.startswith("sqlite"):
            readonly = _readonly_sqlite_file(url)
            if readonly is not None:
                # A published, read-only index: opening it the usual way ran "PRAGMA journal_mode=WAL" and failed
                # every command, search included. immutable=1 reads without locks or -wal/-shm files.
                engine = create_engine("sqlite://", creator=lambda: sqlite3.connect(
                    f"file:{urllib.parse.quote(readonly)}?mode=ro&immutable=1", uri=True, check_same_thread=False))
                _sqlite_events(engine, readonly=True)
                log.info("%s is read-only: opened for reading only", os.path.basename(readonly))
                return engine
            engine = create_engine(url, connect_args={"timeout": _BUSY_MS / 1000})
            _sqlite_events(engine)
        else:
            engine = create_engine(url, pool_pre_ping=True)
    except Exception as exc:  # noqa: BLE001 - driver missing or bad URL: say which
        raise ConfigError(f"cannot use database {redact_url(url)!r}: {exc}") from None
    return engine


def _readonly_sqlite_file(url: str) -> Optional[str]:
    """The database file of a SQLite URL when it exists and cannot be written (file or folder), else None.

    Raises IndexStateError when such a file has a non-empty -wal beside it: reading without it would miss
    committed rows, and a read-only folder cannot take the checkpoint.
    """
    from sqlalchemy.engine import make_url

    try:
        path = make_url(url).database
    except Exception:  # noqa: BLE001 - create_engine reports a bad URL itself
        return None
    if not path or path == ":memory:" or not os.path.isfile(path):
        return None
    if os.access(path, os.W_OK) and os.access(os.path.dirname(os.path.abspath(path)) or ".", os.W_OK):
        return None
    wal = path + "-wal"
    if os.path.exists(wal) and os.path.getsize(wal) > 0:
        raise IndexStateError("the index is read-only but its write-ahead log was never folded into the database; "
                              "open it once where it can be written (any command), then publish it read-only",
                              path=os.path.basename(path))
    return path


def _sqlite_events(engine: Engine, readonly: bool = False) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        # pysqlite's implicit transactions defer BEGIN and break transactional DDL; take control of BEGIN.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        if not readonly:
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(_BUSY_PRAGMA)
        cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a process crash loses nothing committed
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA secure_delete=ON")  # deleted rows zeroed, not left in free pages (often off by default)
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # A write transaction takes the write lock up front: a deferred one that later upgrades can fail with
        # SQLITE_BUSY at once (busy_timeout does not apply to the upgrade in WAL mode).
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("ctglip_write") else "BEGIN")


def explain(exc: BaseException, url: str) -> Optional[Exception]:
    """A one-line error for database failures a user can fix (read-only file, no server, no database, refused
    login), or None. Only the driver's first line is kept: never the statement or its values."""
    text = str(getattr(exc, "orig", exc)).strip()
    first = text.splitlines()[0][:200] if text else type(exc).__name__
    low = text.lower()
    if "readonly database" in low or "read-only" in low:
        return IndexStateError(f"the index database is read-only ({redact_url(url)}): searching, cohorts and "
                               "exports work, but ingest, score, rebuild and repair need write access")
    if getattr(exc, "connection_invalidated", False) or any(s in low for s in (
            "could not connect", "connection refused", "connection failed", "does not exist",
            "authentication failed", "could not translate host name", "timeout expired", "no password supplied",
            "unable to open database file")):
        return ConfigError(f"cannot use database {redact_url(url)!r}: {first}")
    return None


def is_transient(exc: BaseException) -> bool:
    text = str(getattr(exc, "orig", exc)).lower()
    return any(s in text for s in ("database is locked", "database is busy", "deadlock detected",
                                   "could not serialize", "database table is locked"))
