"""SQLAlchemy engines for an index's database: SQLite pragmas, read-only files, and which errors to retry or explain."""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import urllib.parse
from typing import Any, Optional

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError

from ctglip_sdk.errors import ConfigError, CTGlipError, IndexStateError, InputError

from .schema import DERIVED_TABLES

__all__ = ["make_engine", "redact_url", "explain", "is_transient", "database_file"]

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


def make_engine(url: str, user_url: bool = False) -> Engine:
    """SQLAlchemy engine; SQLite gets WAL, a busy timeout and explicit BEGIN (IMMEDIATE for writes).

    Database failures nobody retries or catches (a file that is no database, a dropped table, a lock held past
    the timeout) are raised as project errors by a ``handle_error`` hook, on every query path. ``user_url``: the
    URL was given by the user (``database_url=``), so a URL that names no database is their input error.

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
                _error_events(engine, url, user_url)
                log.info("%s is read-only: opened for reading only", os.path.basename(readonly))
                return engine
            engine = create_engine(url, connect_args={"timeout": _BUSY_MS / 1000})
            _sqlite_events(engine)
        else:
            engine = create_engine(url, pool_pre_ping=True)
    except CTGlipError:
        raise
    except Exception as exc:  # noqa: BLE001 - driver missing or bad URL: say which
        raise ConfigError(f"cannot use database {redact_url(url)!r}: {exc}") from None
    _error_events(engine, url, user_url)
    return engine


def _error_events(engine: Engine, url: str, user_url: bool) -> None:
    @event.listens_for(engine, "handle_error")
    def _handle_error(ctx: Any) -> None:
        # Raised here, the project error replaces SQLAlchemy's on every path (connect events, the inspector,
        # streamed exports), not only in Store's transactions. Left alone: pool_pre_ping's probe (it reconnects),
        # values the database refuses (ingest records them per series), and busy/locked errors (Store retries
        # them and explains the last one).
        if ctx.is_pre_ping or not isinstance(ctx.sqlalchemy_exception, DBAPIError):
            return
        if isinstance(ctx.sqlalchemy_exception, (IntegrityError, DataError)) or is_transient(ctx.original_exception):
            return
        err = explain(ctx.original_exception, url, user_url=user_url)
        if err is not None:
            raise err


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


#: Driver messages of a file that is no (or a damaged) database: SQLite, then PostgreSQL's data corruption errors.
_NOT_A_DATABASE = ("file is not a database", "file is encrypted or is not a database", "disk image is malformed",
                   "invalid page in block", "could not read block", "unexpected zero page")
_NO_TABLE = (re.compile(r"no such table: (\S+)"), re.compile(r'relation "([^"]+)" does not exist'),
             re.compile(r"no such column: (\S+)"), re.compile(r'column "?([^" ]+)"? (?:of relation \S+ )?does not exist'))
_RECOVER = "restore the database from a backup, or create the index again and re-ingest the archive"


def database_file(url: str) -> Optional[str]:
    """The file of a SQLite URL (what error messages name), else None."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - create_engine reports a bad URL itself
        return None
    db = parsed.database
    return db if parsed.get_backend_name() == "sqlite" and db and db != ":memory:" else None


def explain(exc: BaseException, url: str, user_url: bool = False) -> Optional[Exception]:
    """A one-line project error for a database failure a user can act on, or None (a bug, or a value refused).

    Covered: a read-only file; no server, no database or a refused login; a lock held by another program past the
    timeout; a file that is no database or a damaged one; a missing table or column. The message names the database
    (a file, or the URL with its password masked) and what to do; only the driver's first line is kept, never the
    statement or its values. ``user_url``: the URL was the user's (a wrong one is their InputError).
    """
    text = str(getattr(exc, "orig", exc)).strip()
    first = text.splitlines()[0][:200] if text else type(exc).__name__
    low = text.lower()
    file = database_file(url)  # a SQLite file is the error's path; a server database is named by its URL
    named = "" if file else f" ({redact_url(url)})"
    if "readonly database" in low or "read-only" in low:
        return IndexStateError(f"the index database is read-only ({redact_url(url)}): searching, cohorts and "
                               "exports work, but ingest, score, rebuild and repair need write access")
    if is_transient(exc) or "lock timeout" in low:
        return IndexStateError(f"the index database{named} stayed locked by another program or process ({first}): "
                               "close the program holding it (a sqlite3 shell, a backup or sync tool, a database "
                               "client) or wait for the running writer, then try again", path=file)
    if any(s in low for s in _NOT_A_DATABASE):
        if user_url:
            return InputError(f"the database URL {redact_url(url)!r} does not name a usable database ({first}); "
                              "check database_url / --database-url", path=file)
        return IndexStateError(f"the index database{named} cannot be read ({first}): it is damaged or was replaced "
                               f"by another file; {_RECOVER}", path=file)
    for pattern in _NO_TABLE:
        m = pattern.search(text)
        if m:
            what = "column" if "column" in pattern.pattern else "table"
            derived = what == "table" and m.group(1).endswith(tuple(DERIVED_TABLES))
            fix = ("run `ctglip verify --repair`, which recreates it empty (its rows can be computed again or done "
                   "without)" if derived else _RECOVER)
            return IndexStateError(f"the index database{named} has no {what} {m.group(1)} (damaged, dropped by hand, "
                                   f"or an unfinished upgrade): {fix}", path=file)
    if getattr(exc, "connection_invalidated", False) or any(s in low for s in (
            "could not connect", "connection refused", "connection failed", "does not exist",
            "authentication failed", "could not translate host name", "timeout expired", "no password supplied",
            "unable to open database file")):
        return ConfigError(f"cannot use database {redact_url(url)!r}: {first}")
    return None


def is_transient(exc: BaseException) -> bool:
    """Whether a database error is contention that a retry may get past (a lock, a deadlock, a serialization)."""
    text = str(getattr(exc, "orig", exc)).lower()
    return any(s in text for s in ("database is locked", "database is busy", "deadlock detected",
                                   "could not serialize", "database table is locked"))
