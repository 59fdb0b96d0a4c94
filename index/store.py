"""SQL access of an archive index: retried transactions, schema/migrations, ingest writes (engines: engine.py)."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import random
import time
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, TypeVar

import numpy as np
from sqlalchemy import delete, func, inspect, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, OperationalError

from ctglip_sdk.errors import IndexStateError

from .engine import RETRIES as _RETRIES, explain as _explain, is_transient as _is_transient, make_engine, redact_url
from .schema import MIGRATIONS, SCHEMA_VERSION, Tables, make_tables

__all__ = ["Store", "make_engine", "redact_url"]

log = logging.getLogger(__name__)
T = TypeVar("T")

_STUDY_LEVEL = frozenset(("age", "study_date", "split", "report_path"))  # what a re-written series may correct


class Store:
    """The SQL side of one index: a database URL plus a table prefix.

    Every write goes through :meth:`write` (one transaction, retried on a busy database) so that "database is
    locked" never reaches a user; queries use the SQLAlchemy expression API with bound parameters only.

    Example:
        >>> st = Store("sqlite:///:memory:", "demo_")
        >>> st.init_schema()
        2
    """

    def __init__(self, url: str, prefix: str = "ctglip_", user_url: bool = False) -> None:
        self.url = url
        self.user_url = user_url  # given by the user (database_url=): a URL naming no database is their input error
        self.engine = make_engine(url, user_url=user_url)
        self.t: Tables = make_tables(prefix)
        self.dialect = self.engine.dialect.name

    def dispose(self) -> None:
        """Close pooled connections."""
        self.engine.dispose()

    # -- transactions -----------------------------------------------------------------------------------
    def _retry(self, fn: Callable[[Connection], T], write: bool) -> T:
        delay = 0.05
        for attempt in range(_RETRIES):
            try:
                with self.engine.connect() as conn:
                    if write:
                        conn = conn.execution_options(ctglip_write=True)
                    with conn.begin():
                        return fn(conn)
            except (OperationalError, DBAPIError) as exc:
                if not _is_transient(exc) or attempt == _RETRIES - 1:
                    explained = _explain(exc, self.url, user_url=self.user_url)  # the last busy error included
                    if explained is not None:
                        raise explained from None
                    raise
                log.debug("database busy, retrying (attempt %d)", attempt + 1)
                time.sleep(delay * (1 + random.random()))
                delay = min(delay * 2, 2.0)
        raise AssertionError("unreachable")  # pragma: no cover

    def write(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn(conn)`` in one write transaction (committed on return, rolled back on error; retried)."""
        return self._retry(fn, write=True)

    def read(self, fn: Callable[[Connection], T]) -> T:
        """Run ``fn(conn)`` in a read transaction (a consistent snapshot; retried when busy)."""
        return self._retry(fn, write=False)

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        """A plain connection for a single statement (autocommits nothing; read-only use)."""
        try:
            with self.engine.connect() as conn:
                yield conn
        except DBAPIError as exc:  # not retried: a lock held past the timeout is explained, not a traceback
            explained = _explain(exc, self.url, user_url=self.user_url)
            if explained is None:
                raise
            raise explained from None

    # -- schema -----------------------------------------------------------------------------------------
    def exists(self) -> bool:
        """True when this prefix's tables exist in the database (the first call that reaches the server)."""
        try:
            return inspect(self.engine).has_table(self.t.meta.name)
        except (OperationalError, DBAPIError) as exc:
            explained = _explain(exc, self.url, user_url=self.user_url)
            if explained is None:
                raise
            raise explained from None

    def schema_version(self, conn: Optional[Connection] = None) -> int:
        """Highest applied migration (0 when the tables do not exist)."""
        if not self.exists():
            return 0
        q = select(func.max(self.t.migrations.c.version))
        v = conn.execute(q).scalar() if conn is not None else self.read(lambda c: c.execute(q).scalar())
        return int(v or 0)

    def init_schema(self) -> int:
        """Create the tables and apply pending migrations, each in its own transaction; returns the version."""
        current = self.schema_version()
        if current > SCHEMA_VERSION:
            raise IndexStateError(f"the index schema is version {current}, newer than this ctglip-sdk supports "
                                  f"({SCHEMA_VERSION}); upgrade ctglip-sdk")
        for version, description, fn in MIGRATIONS:
            if version <= current:
                continue

            def apply(conn: Connection, version: int = version, description: str = description,
                      fn: Callable = fn) -> None:
                fn(conn, self.t)
                conn.execute(self.t.migrations.insert().values(
                    version=version, description=description, applied_at=_dt.datetime.now(_dt.timezone.utc)))

            self.write(apply)
            log.info("applied index schema migration %d (%s)", version, description)
        return self.schema_version()

    def missing_schema(self) -> List[str]:
        """The tables (``name``) and columns (``table.column``) of this prefix's schema that the database lacks.

        Why: a table dropped by hand or a half-restored database opened, and ``verify`` said ok while every query
        on that table failed.
        """
        def look() -> List[str]:
            insp = inspect(self.engine)
            have = set(insp.get_table_names())
            out: List[str] = []
            for table in self.t.metadata.sorted_tables:
                if table.name not in have:
                    out.append(table.name)
                    continue
                cols = {c["name"] for c in insp.get_columns(table.name)}
                out += [f"{table.name}.{c.name}" for c in table.columns if c.name not in cols]
            return out
        try:
            return look()
        except DBAPIError as exc:
            explained = _explain(exc, self.url, user_url=self.user_url)
            if explained is None:
                raise
            raise explained from None

    def drop_all(self) -> None:
        """Drop every table of this prefix (tests and `delete index`; irreversible)."""
        self.t.metadata.drop_all(self.engine, checkfirst=True)

    # -- meta -------------------------------------------------------------------------------------------
    def get_meta(self, key: str, conn: Optional[Connection] = None) -> Optional[str]:
        q = select(self.t.meta.c.value).where(self.t.meta.c.key == key)
        return conn.execute(q).scalar() if conn is not None else self.read(lambda c: c.execute(q).scalar())

    def set_meta(self, conn: Connection, key: str, value: Any) -> None:
        m = self.t.meta
        if conn.execute(select(m.c.key).where(m.c.key == key)).first() is None:
            conn.execute(m.insert().values(key=key, value=str(value)))
        else:
            conn.execute(update(m).where(m.c.key == key).values(value=str(value)))

    def data_version(self) -> int:
        """Counter bumped by every transaction that adds or removes organs (readers poll it to refresh)."""
        return int(self.get_meta("data_version") or 0)

    def bump_data_version(self, conn: Connection) -> None:
        self.set_meta(conn, "data_version", int(self.get_meta("data_version", conn) or 0) + 1)

    def next_organ_id(self, conn: Connection) -> int:
        """The next unused organ id; ids are never reused, even after a series is replaced."""
        stored = self.get_meta("next_organ_id", conn)
        top = conn.execute(select(func.max(self.t.organs.c.id))).scalar()
        return max(int(stored or 1), int(top or 0) + 1)

    # -- ingest writes (the caller holds the writer lock) --------------------------------------------------
    def ensure_patient(self, conn: Connection, pseudonym: str, identifier: Optional[str], sex: Optional[str],
                       birth_year: Optional[int]) -> Tuple[int, Optional[str]]:
        """Patient id and stored sex for a pseudonym (inserted, or missing values filled in)."""
        p = self.t.patients
        row = conn.execute(select(p.c.id, p.c.sex, p.c.birth_year).where(p.c.pseudonym == pseudonym)).first()
        if row is None:
            res = conn.execute(p.insert().values(pseudonym=pseudonym, identifier=identifier, sex=sex,
                                                 birth_year=birth_year))
            return int(res.inserted_primary_key[0]), sex
        fill = {k: v for k, v, old in (("sex", sex, row.sex), ("birth_year", birth_year, row.birth_year))
                if v is not None and old is None}
        if fill:
            conn.execute(update(p).where(p.c.id == row.id).values(**fill))
        return int(row.id), row.sex or sex

    def fill_organ_sex(self, conn: Connection, patient_id: int, sex: str) -> int:
        """Give the patient's stored organs without a sex this one; the number changed. Filters read sex from the
        organ rows, so a sex learnt from a later study must reach the earlier ones (it used to stop at patients)."""
        o, st = self.t.organs, self.t.studies
        # Through the patient's studies (both indexed: organs have no patient_id index, and a scan per series would
        # make ingest quadratic in the archive's size).
        studies = select(st.c.id).where(st.c.patient_id == patient_id).scalar_subquery()
        res = conn.execute(update(o).where(o.c.study_id.in_(studies), o.c.sex.is_(None)).values(sex=sex))
        return int(res.rowcount or 0)

    def ensure_study(self, conn: Connection, study_uid: str, patient_id: int,
                     values: Mapping[str, Any]) -> Tuple[int, Dict[str, Any], bool]:
        """Study id, its stored row and whether an existing row changed, for a study UID.

        A new study is inserted. An existing one takes the patient and the non-empty study-level values (age,
        date, split, report) of the series being written now, and the organs of its other series follow (patient,
        age, date, sex): a corrected manifest row or header used to reach the new organs only, which split one
        study between two patients.
        """
        s, o, p = self.t.studies, self.t.organs, self.t.patients
        row = conn.execute(select(s).where(s.c.study_uid == study_uid)).first()
        if row is None:
            conn.execute(s.insert().values(study_uid=study_uid, patient_id=patient_id, **values))
            row = conn.execute(select(s).where(s.c.study_uid == study_uid)).first()
            return int(row.id), dict(row._mapping), False
        old = dict(row._mapping)
        # Study-level values only: contrast, body part and description differ between the series of one study
        # (an unenhanced and a venous series), so the first series' stay, as before.
        changes = {k: v for k, v in values.items() if k in _STUDY_LEVEL and v is not None and old.get(k) != v}
        if old["patient_id"] != patient_id:
            changes["patient_id"] = patient_id
        if not changes:
            return int(row.id), old, False
        conn.execute(update(s).where(s.c.id == row.id).values(**changes))
        new = {**old, **changes}
        sex = conn.execute(select(p.c.sex).where(p.c.id == new["patient_id"])).scalar()
        conn.execute(update(o).where(o.c.study_id == row.id).values(
            patient_id=new["patient_id"], age=new["age"], study_date=new["study_date"], sex=sex))
        if "patient_id" in changes and conn.execute(
                select(func.count()).select_from(s).where(s.c.patient_id == old["patient_id"])).scalar() == 0:
            conn.execute(delete(p).where(p.c.id == old["patient_id"]))  # no study left: not a patient of this index
        return int(row.id), new, True

    def study_of_series(self, conn: Connection, series_uid: str) -> Optional[int]:
        """The study id a stored series belongs to, or None."""
        s = self.t.series
        sid = conn.execute(select(s.c.study_id).where(s.c.series_uid == series_uid)).scalar()
        return None if sid is None else int(sid)

    def drop_if_empty(self, conn: Connection, study_id: int) -> None:
        """Delete a study that has no series left, then its patient if that was their last study (a series
        re-ingested under another study_uid left an empty study and its patient behind)."""
        t = self.t
        if conn.execute(select(func.count()).select_from(t.series).where(t.series.c.study_id == study_id)).scalar():
            return
        pid = conn.execute(select(t.studies.c.patient_id).where(t.studies.c.id == study_id)).scalar()
        conn.execute(delete(t.studies).where(t.studies.c.id == study_id))
        if pid is not None and not conn.execute(
                select(func.count()).select_from(t.studies).where(t.studies.c.patient_id == pid)).scalar():
            conn.execute(delete(t.patients).where(t.patients.c.id == pid))

    def delete_series(self, conn: Connection, series_uid: str) -> List[int]:
        """Delete a series with its organs and scores; returns the organ ids removed."""
        t = self.t
        sid = conn.execute(select(t.series.c.id).where(t.series.c.series_uid == series_uid)).scalar()
        if sid is None:
            return []
        ids = [int(i) for i in conn.execute(select(t.organs.c.id).where(t.organs.c.series_id == sid)).scalars()]
        if ids:
            conn.execute(delete(t.scores).where(t.scores.c.organ_id.in_(ids)))
            conn.execute(delete(t.organs).where(t.organs.c.series_id == sid))
        conn.execute(delete(t.series).where(t.series.c.id == sid))
        return ids

    def insert_series(self, conn: Connection, values: Mapping[str, Any]) -> int:
        res = conn.execute(self.t.series.insert().values(**values))
        return int(res.inserted_primary_key[0])

    def insert_organs(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        if rows:
            conn.execute(self.t.organs.insert(), list(rows))

    def start_run(self, archive: str) -> int:
        """Record a new write run. The caller holds the writer lock, so a run still marked running is a writer
        that was killed (kill -9, power loss): it is marked crashed first, not left running forever."""
        def fn(conn: Connection) -> int:
            r = self.t.ingest_runs
            conn.execute(update(r).where(r.c.status == "running").values(status="crashed"))
            res = conn.execute(self.t.ingest_runs.insert().values(
                started_at=_dt.datetime.now(_dt.timezone.utc), archive=archive, status="running"))
            return int(res.inserted_primary_key[0])
        return self.write(fn)

    def finish_run(self, run_id: int, status: str, summary: Mapping[str, Any]) -> None:
        r = self.t.ingest_runs
        self.write(lambda c: c.execute(update(r).where(r.c.id == run_id).values(
            finished_at=_dt.datetime.now(_dt.timezone.utc), status=status, summary=json.dumps(summary))))

    def record_items(self, conn: Connection, run_id: int, items: Sequence[Mapping[str, Any]]) -> None:
        """Record per-series outcomes of a run (a series seen twice in one run keeps its last outcome)."""
        it = self.t.ingest_items
        for item in items:
            conn.execute(delete(it).where((it.c.run_id == run_id) & (it.c.series_uid == item["series_uid"])))
            conn.execute(it.insert().values(run_id=run_id, **item))

    def series_fingerprints(self) -> Dict[str, str]:
        """``{series_uid: fingerprint}`` of every ingested series."""
        s = self.t.series
        return self.read(lambda c: {r.series_uid: r.fingerprint
                                    for r in c.execute(select(s.c.series_uid, s.c.fingerprint))})

    def set_fingerprints(self, fingerprints: Mapping[str, str]) -> None:
        """Record new fingerprints of stored series (same files, a fingerprint of another format), in one
        transaction."""
        s = self.t.series

        def tx(conn: Connection) -> None:
            for key, fp in fingerprints.items():
                conn.execute(update(s).where(s.c.series_uid == key).values(fingerprint=fp))

        self.write(tx)

    def archive_roots(self) -> List[Optional[str]]:
        """The distinct archive folders stored series came from (one query; a nightly re-ingest of an unmoved
        archive then writes nothing)."""
        s = self.t.series
        return list(self.read(lambda c: c.execute(select(s.c.archive_root).distinct()).scalars().all()))

    def move_series_root(self, keys: Sequence[str], root: str) -> None:
        """Record ``root`` as the archive folder of stored series (an archive moved with its files unchanged:
        montages read their images from there)."""
        s = self.t.series

        def tx(conn: Connection) -> None:
            for start in range(0, len(keys), 900):
                part = list(keys[start:start + 900])
                conn.execute(update(s).where(s.c.series_uid.in_(part), s.c.archive_root != root)
                             .values(archive_root=root))

        self.write(tx)

    def series_study_values(self, keys: List[str]) -> Dict[str, Dict[str, Any]]:
        """``{series_uid: {age, study_date, split, report_path, patient}}`` of stored series (their study's values
        and patient pseudonym), read in chunks of 900 bound parameters."""
        t = self.t
        q = (select(t.series.c.series_uid, t.studies.c.age, t.studies.c.study_date, t.studies.c.split,
                    t.studies.c.report_path, t.patients.c.pseudonym)
             .select_from(t.series.join(t.studies, t.studies.c.id == t.series.c.study_id)
                          .join(t.patients, t.patients.c.id == t.studies.c.patient_id)))
        out: Dict[str, Dict[str, Any]] = {}
        for start in range(0, len(keys), 900):
            part = keys[start:start + 900]
            for r in self.read(lambda c, part=part: c.execute(q.where(t.series.c.series_uid.in_(part))).all()):
                out[r.series_uid] = {"age": r.age, "study_date": r.study_date, "split": r.split,
                                     "report_path": r.report_path, "patient": r.pseudonym}
        return out

    def series_digests(self, keys: List[str]) -> Dict[str, Optional[str]]:
        """``{series_uid: content_digest}`` of the given stored series (None where none was recorded)."""
        return self._series_column(keys, "content_digest")

    def series_roots(self, keys: List[str]) -> Dict[str, Optional[str]]:
        """``{series_uid: archive_root}`` of the given stored series."""
        return self._series_column(keys, "archive_root")

    def _series_column(self, keys: List[str], column: str) -> Dict[str, Optional[str]]:
        """``{series_uid: value of column}`` of the given stored series, read in chunks of 900 bound parameters."""
        s = self.t.series
        out: Dict[str, Optional[str]] = {}
        for start in range(0, len(keys), 900):
            part = keys[start:start + 900]
            out.update(self.read(lambda c, part=part: {r[0]: r[1] for r in c.execute(
                select(s.c.series_uid, s.c[column]).where(s.c.series_uid.in_(part)))}))
        return out

    def last_errors(self) -> Dict[str, Tuple[Optional[str], str]]:
        """``{series_uid: (fingerprint, reason)}`` for series whose latest recorded outcome is an error."""
        it = self.t.ingest_items
        latest = select(it.c.series_uid, func.max(it.c.id).label("id")).group_by(it.c.series_uid).subquery()
        q = select(it.c.series_uid, it.c.fingerprint, it.c.reason).join(latest, latest.c.id == it.c.id) \
            .where(it.c.status == "error")
        return self.read(lambda c: {r.series_uid: (r.fingerprint, r.reason or "") for r in c.execute(q)})

    # -- index state --------------------------------------------------------------------------------------
    def index_state(self) -> Optional[Dict[str, Any]]:
        """The latest recorded FAISS file state (generation, count, factory, checksum, params)."""
        s = self.t.index_state
        row = self.read(lambda c: c.execute(select(s).order_by(s.c.generation.desc()).limit(1)).first())
        if row is None:
            return None
        out = dict(row._mapping)
        out["params"] = json.loads(out["params"] or "{}")
        return out

    def record_index_state(self, count: int, factory: str, checksum: str, params: Mapping[str, Any]) -> int:
        s = self.t.index_state

        def fn(conn: Connection) -> int:
            gen = int(conn.execute(select(func.max(s.c.generation))).scalar() or 0) + 1
            conn.execute(s.insert().values(generation=gen, written_at=_dt.datetime.now(_dt.timezone.utc),
                                           count=count, factory=factory, checksum=checksum,
                                           params=json.dumps(dict(params))))
            # Keep a short history only: the latest state is what open() and verify() compare against.
            conn.execute(delete(s).where(s.c.generation < gen - 10))
            return gen
        return self.write(fn)

    # -- reads used by the index ---------------------------------------------------------------------------
    def vacuum_hint(self) -> None:
        """Fold SQLite's WAL (which holds deleted rows' old pages) into the database and truncate it; PostgreSQL
        keeps dead rows until (auto)vacuum, the server's business (docs/security.md)."""
        if self.dialect != "sqlite":
            return
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        except Exception as exc:  # noqa: BLE001 - a busy reader blocks the truncation: the next checkpoint does it
            log.info("WAL checkpoint after a removal did not complete (%s)", type(exc).__name__)

    def organ_ids(self) -> np.ndarray:
        """Every organ id (sorted int64)."""
        o = self.t.organs
        ids = self.read(lambda c: c.execute(select(o.c.id).order_by(o.c.id)).scalars().all())
        return np.asarray(ids, dtype=np.int64)

    def mirror_rows(self) -> List[Tuple[Any, ...]]:
        """``(id, organ, age, sex, study_date, contrast, body_part, split)`` per organ, in id order."""
        o, s = self.t.organs, self.t.studies
        q = (select(o.c.id, o.c.organ, o.c.age, o.c.sex, o.c.study_date, s.c.contrast, s.c.body_part, s.c.split)
             .join(s, s.c.id == o.c.study_id).order_by(o.c.id))
        return self.read(lambda c: [tuple(r) for r in c.execute(q)])
