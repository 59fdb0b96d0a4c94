"""The files of a new index (key, model copy, schema, vectors, FAISS, then the manifest) and an open index's store."""

from __future__ import annotations

import datetime as _dt
import errno
import logging
import os
import secrets
import shutil
import uuid
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from sqlalchemy.exc import SQLAlchemyError

from ctglip_sdk._version import __version__
from ctglip_sdk.errors import ConfigError, IndexStateError
from ctglip_sdk.model.voxels import STATS_VERSION

from .ann import AnnIndex
from .lock import WriterLock
from .manifest import FORMAT, FORMAT_VERSION, MANIFEST, read_manifest, write_manifest
from .engine import _readonly_sqlite_file
from .schema import READABLE_SCHEMA, SCHEMA_VERSION
from .store import Store, redact_url
from .vectors import VectorStore

__all__ = ["create_files", "open_store", "FAISS_FILE", "VECTOR_FILE", "KEY_FILE", "DB_FILE", "MODEL_DIR"]

FAISS_FILE, VECTOR_FILE = "vectors.faiss", "vectors.f16"
KEY_FILE, DB_FILE, MODEL_DIR = "pseudonym.key", "index.sqlite", "model"

log = logging.getLogger(__name__)


def create_files(root: Path, model_obj: Any, ident: Dict[str, Any], database_url: Optional[str],
                 factory: Optional[str], include_identifiers: bool, table_prefix: str,
                 memory_budget: Any) -> Tuple[Dict[str, Any], Store]:
    """Key, model copy, schema, vectors, FAISS and (last) the manifest of a new index; returns the manifest
    and the open store."""
    with WriterLock(root):
        if (root / MANIFEST).exists():  # another process created it while this one waited for the lock
            raise IndexStateError("an index already exists here; open it with ArchiveIndex.open", path=root)
        before = set(root.iterdir())  # what is here once this call holds the lock: never removed by it
        try:
            return _write_files(root, model_obj, ident, database_url, factory, include_identifiers, table_prefix,
                                memory_budget)
        except BaseException:
            # An unreachable database or a full disk: what this call wrote holds no index (the manifest, written
            # last, is absent), so it goes. Only under the lock: a create that timed out waiting for another
            # process's create removed that one's files.
            if not (root / MANIFEST).exists():
                for child in set(root.iterdir()) - before:
                    shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
            raise


def _write_files(root: Path, model_obj: Any, ident: Dict[str, Any], database_url: Optional[str],
                 factory: Optional[str], include_identifiers: bool, table_prefix: str,
                 memory_budget: Any) -> Tuple[Dict[str, Any], Store]:
    """The files of :func:`create_files` (the caller holds the writer lock)."""
    # The tables first: a folder whose manifest was lost must be refused before its model copy is replaced.
    url = database_url or f"sqlite:///{(root / DB_FILE).resolve()}"
    store = Store(url, table_prefix, user_url=database_url is not None)
    try:
        return _write_with(store, url, root, model_obj, ident, database_url, factory, include_identifiers,
                           table_prefix, memory_budget)
    except BaseException:
        store.dispose()  # its connections held the database file open after a failed create
        raise


def _write_with(store: Store, url: str, root: Path, model_obj: Any, ident: Dict[str, Any],
                database_url: Optional[str], factory: Optional[str], include_identifiers: bool, table_prefix: str,
                memory_budget: Any) -> Tuple[Dict[str, Any], Store]:
    store.init_schema()
    # Tables of this prefix may exist from an unfinished create of this same folder (taken over), never
    # from another index (refused: its folder would no longer open).
    owner = store.get_meta("index_folder")
    if store.get_meta("index_uid") is not None and (owner != str(root.resolve()) or len(store.organ_ids())):
        raise IndexStateError(f"tables with prefix {table_prefix!r} in {redact_url(url)} already hold "
                              "another index; pass another table_prefix", path=root)
    key_path = root / KEY_FILE
    if not key_path.exists():
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    tmp_model = root / f".{MODEL_DIR}.tmp"
    shutil.rmtree(tmp_model, ignore_errors=True)
    model_obj.save_pretrained(tmp_model)
    shutil.rmtree(root / MODEL_DIR, ignore_errors=True)
    os.replace(tmp_model, root / MODEL_DIR)
    uid = uuid.uuid4().hex
    store.write(lambda c: (store.set_meta(c, "index_uid", uid), store.set_meta(c, "next_organ_id", 1),
                           store.set_meta(c, "index_folder", str(root.resolve()))))
    VectorStore.create(root / VECTOR_FILE, ident["embed_dim"])
    ann = AnnIndex.build(ident["embed_dim"], factory or "Flat")
    checksum = ann.save(root / FAISS_FILE)
    store.record_index_state(0, ann.factory, checksum, ann.params)
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "index_uid": uid,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "sdk_version": __version__, "schema_version": SCHEMA_VERSION, "stats_version": STATS_VERSION,
        "model": ident, "dim": ident["embed_dim"], "metric": "inner_product (unit vectors = cosine)",
        "factory": factory or "auto", "current_factory": ann.factory, "memory_budget": memory_budget,
        "database": ({"kind": "sqlite", "path": DB_FILE} if database_url is None
                     else {"kind": "url", "url": redact_url(database_url)}),
        "table_prefix": table_prefix, "include_identifiers": bool(include_identifiers),
    }
    # The manifest is written last: a folder without one is an unfinished create, safe to redo.
    write_manifest(root, manifest)
    return manifest, store


def open_store(root: Path, manifest: Dict[str, Any], database_url: Optional[str]) -> Store:
    """The store of an existing index: its database (the folder's SQLite file, the recorded URL or
    ``database_url``), migrated forward when older, and checked to belong to this folder's manifest."""
    db = manifest["database"]
    user_url = database_url is not None  # a wrong URL the user gave is their input error, not a damaged index
    if database_url is None:
        if db["kind"] == "sqlite":
            db_file = (root / db.get("path", DB_FILE)).resolve()
            if not db_file.is_file():  # connecting would create an empty database in its place
                raise IndexStateError(f"the index database {db_file.name} is missing from the folder (deleted or "
                                      "not copied with it); restore it, or create the index again", path=root)
            database_url = f"sqlite:///{db_file}"
        elif "***" in db["url"]:
            raise ConfigError("this index's database URL has a password, which is never stored; pass "
                              f"database_url= (recorded: {db['url']})", path=root)
        else:
            database_url = db["url"]
    store = Store(database_url, manifest.get("table_prefix", "ctglip_"), user_url=user_url)
    version = store.schema_version()
    if version == 0:
        raise IndexStateError(f"no index tables with prefix {manifest.get('table_prefix')!r} in "
                              f"{redact_url(database_url)}; is database_url right?", path=root)
    if version != SCHEMA_VERSION:
        try:
            with WriterLock(root):
                store.init_schema()  # migrates forward, refuses a newer schema
        except (OSError, SQLAlchemyError, IndexStateError) as exc:
            store.dispose()
            if version > SCHEMA_VERSION:
                raise
            if version >= READABLE_SCHEMA and _cannot_write(exc, database_url):
                # A published index read by a newer library: what the upgrade adds is only written by ingest.
                log.warning("the index has schema %d and is read-only here: opened for reading without the upgrade "
                            "to schema %d (open it once with write access before ingesting into it)", version,
                            SCHEMA_VERSION)
                store = Store(database_url, manifest.get("table_prefix", "ctglip_"), user_url=user_url)
            else:
                # A read-only folder or database (a published index) cannot take the migration: one line, not the
                # driver's "must be owner of table" or a raw OSError from the lock file.
                raise IndexStateError(f"the index was written by an older ctglip-sdk (schema {version}); open it "
                                      f"once with write access to upgrade it to schema {SCHEMA_VERSION} "
                                      f"({type(exc).__name__})", path=root) from None
    if store.get_meta("index_uid") != manifest["index_uid"]:
        raise IndexStateError("the SQL tables belong to another index than this folder's manifest "
                              f"({redact_url(database_url)}); pass the right database_url/table_prefix",
                              path=root)
    if db["kind"] != "sqlite":
        _claim_shared_tables(root, manifest["index_uid"], store)
    return store


def _cannot_write(exc: BaseException, database_url: str) -> bool:
    """Whether a failed schema upgrade failed for want of write access (a read-only folder, file, file system or
    database role), not because the database is busy or broken, which must not be read at the old schema."""
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return True
    if database_url.startswith("sqlite") and _readonly_sqlite_file(database_url) is not None:
        return True
    text = str(exc).lower()
    return isinstance(exc, (SQLAlchemyError, IndexStateError)) and any(
        w in text for w in ("permission denied", "must be owner", "read-only", "readonly"))


def _claim_shared_tables(root: Path, uid: str, store: Store) -> None:
    """Refuse a copy of an index folder whose SQL tables (a database URL) the original folder still uses.

    The vectors live in the folder and the rows in the shared tables: after the original ingests more, the
    copy's SQL rows lack vectors, and its ``verify --repair`` deleted the original's series from the shared tables.
    A folder whose recorded path no longer holds this index (moved, or the same folder mounted at another path
    on another machine) takes the tables over. A SQLite index keeps its database in its own folder, so a copy of
    it is a separate index and is not checked.
    """
    here = str(root.resolve())
    owner = store.get_meta("index_folder")
    if owner == here:
        return
    if owner is None:  # an index made before the folder was recorded: record it now, so a later copy is caught
        _record_folder(store, here)
        return
    other = Path(owner)
    try:
        same_dir = other.exists() and os.path.samefile(other, root)
        live = not same_dir and read_manifest(other).get("index_uid") == uid
    except (OSError, IndexStateError, ConfigError, ValueError):
        live = False  # the recorded folder is gone or holds no readable manifest: it was moved
    if live:
        raise IndexStateError(f"this folder is a copy of the index folder {owner}, whose SQL tables it shares "
                              "(database URL): the copy's vectors no longer match them, and repairing it would "
                              f"delete that folder's series; use {owner}. If the index was moved here, remove or "
                              "rename the old folder first", path=root)
    _record_folder(store, here)


def _record_folder(store: Store, here: str) -> None:
    try:
        store.write(lambda c: store.set_meta(c, "index_folder", here))
    except (IndexStateError, SQLAlchemyError):  # a read-only database or role: nothing is written through it anyway
        log.debug("index_folder not updated: the database refused the write")
