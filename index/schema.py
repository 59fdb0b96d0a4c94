"""SQL schema of an archive index (SQLAlchemy Core tables behind a table prefix), its version and migrations."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, List, Tuple

from sqlalchemy import (
    BigInteger, Column, Date, DateTime, Float, ForeignKey, Index, Integer, MetaData, SmallInteger, String, Table,
    Text, UniqueConstraint, inspect,
)
from sqlalchemy.engine import Connection
from sqlalchemy.schema import CreateColumn

from ctglip_sdk.errors import ConfigError

__all__ = ["SCHEMA_VERSION", "READABLE_SCHEMA", "INGEST_ONLY_COLUMNS", "Tables", "make_tables", "MIGRATIONS", "check_prefix",
           "DERIVED_TABLES"]

#: Bumped whenever a migration is added; an index whose schema is newer than this library is refused.
SCHEMA_VERSION = 3
#: The oldest schema a read-only index may be read at without its upgrade: the migrations after it only add what
#: ingest writes (3: series.content_digest), which no query reads. Older ones must be upgraded first.
READABLE_SCHEMA = 2
#: (table, column) -> the migration that adds it, for the columns a schema between READABLE_SCHEMA and
#: SCHEMA_VERSION may lack (``verify`` does not count them missing on an index read without its upgrade).
INGEST_ONLY_COLUMNS = {("series", "content_digest"): 3}

#: Tables (by name after the prefix) whose rows an index can do without or compute again, with what follows when
#: ``verify(repair=True)`` recreates one empty; patients, studies, series and organs are the archive's truth, which
#: only a backup or a re-ingest brings back.
DERIVED_TABLES = {"scores": "run `ctglip score` (idx.score()) to compute the scores again",
                  "index_state": "the FAISS state is recorded again with the next write",
                  "ingest_runs": "the earlier runs' history is lost",
                  "ingest_items": "the earlier runs' history is lost"}

_PREFIX_RE = re.compile(r"^[a-z][a-z0-9_]{0,30}$")


def check_prefix(prefix: str) -> str:
    """Validate a table prefix: lower-case letters, digits, underscores (it becomes part of SQL names)."""
    if not isinstance(prefix, str) or not _PREFIX_RE.match(prefix):
        raise ConfigError(f"table prefix {prefix!r} must match {_PREFIX_RE.pattern} (lower-case letters, digits, _)")
    if prefix.startswith(("sqlite_", "pg_")):  # names the databases keep for themselves
        raise ConfigError(f"table prefix {prefix!r}: names starting with sqlite_ or pg_ are reserved by the database")
    return prefix


@dataclass(frozen=True)
class Tables:
    """The tables of one index (one prefix). ``organs.id`` is the FAISS id of the organ's vector."""

    metadata: MetaData
    prefix: str
    meta: Table
    migrations: Table
    patients: Table
    studies: Table
    series: Table
    organs: Table
    scores: Table
    ingest_runs: Table
    ingest_items: Table
    index_state: Table


def make_tables(prefix: str = "ctglip_") -> Tables:
    """Build the table objects for ``prefix`` (nothing touches a database here).

    Example:
        >>> t = make_tables("demo_")
        >>> t.organs.name
        'demo_organs'
    """
    p = check_prefix(prefix)
    md = MetaData()
    meta = Table(f"{p}meta", md,
                 Column("key", String(64), primary_key=True),
                 Column("value", Text, nullable=False))
    migrations = Table(f"{p}migrations", md,
                       Column("version", Integer, primary_key=True),
                       Column("description", String(200), nullable=False),
                       Column("applied_at", DateTime, nullable=False))
    patients = Table(f"{p}patients", md,
                     Column("id", Integer, primary_key=True, autoincrement=True),
                     Column("pseudonym", String(64), nullable=False, unique=True),
                     # The original identifier only when the index was created with include_identifiers=True.
                     Column("identifier", String(128), nullable=True),
                     Column("sex", String(1), nullable=True),
                     Column("birth_year", SmallInteger, nullable=True))
    studies = Table(f"{p}studies", md,
                    Column("id", Integer, primary_key=True, autoincrement=True),
                    Column("study_uid", String(255), nullable=False, unique=True),
                    Column("patient_id", Integer, ForeignKey(f"{p}patients.id"), nullable=False),
                    Column("study_date", Date, nullable=True),
                    Column("age", Float, nullable=True),
                    Column("description", String(256), nullable=True),
                    Column("contrast", String(32), nullable=True),
                    Column("body_part", String(64), nullable=True),
                    Column("split", String(16), nullable=True),
                    Column("report_path", Text, nullable=True),
                    Index(f"{p}ix_studies_patient", "patient_id"),
                    Index(f"{p}ix_studies_age_date", "age", "study_date"))
    series = Table(f"{p}series", md,
                   Column("id", Integer, primary_key=True, autoincrement=True),
                   Column("series_uid", String(255), nullable=False, unique=True),
                   Column("study_id", Integer, ForeignKey(f"{p}studies.id"), nullable=False),
                   Column("archive_root", Text, nullable=True),  # absolute root at ingest time (for thumbnails)
                   Column("path", Text, nullable=False),  # relative to archive_root
                   # ``path`` with the patient's identifiers replaced by <patient> (archives name folders after the
                   # PatientID): what query output and exports show. NULL for series ingested before schema 2,
                   # until the next ingest of their archive fills it.
                   Column("shown_path", Text, nullable=True),
                   Column("mask_path", Text, nullable=True),
                   Column("fingerprint", String(64), nullable=False),
                   Column("shape", String(64), nullable=True),
                   Column("spacing", String(96), nullable=True),
                   Column("affine", Text, nullable=True),
                   Column("n_organs", Integer, nullable=False, default=0),
                   # BLAKE2b-128 of the series' file names and bytes when it was embedded (index/content.py): a
                   # series whose fingerprint changed with the same bytes (touched, copied without -a) is not
                   # re-embedded. NULL for series stored before schema 3 or by add_embeddings.
                   Column("content_digest", String(32), nullable=True),
                   Index(f"{p}ix_series_study", "study_id"))
    # Filter columns of the study (age, sex, date) are copied onto each organ row in the same transaction that
    # writes them (studies never change once ingested), so that a filter is one scan of one composite index.
    organs = Table(f"{p}organs", md,
                   Column("id", BigInteger, primary_key=True, autoincrement=False),
                   Column("series_id", Integer, ForeignKey(f"{p}series.id"), nullable=False),
                   Column("study_id", Integer, nullable=False),
                   Column("patient_id", Integer, nullable=False),
                   Column("organ", String(64), nullable=False),
                   Column("i0", Integer), Column("j0", Integer), Column("k0", Integer),
                   Column("i1", Integer), Column("j1", Integer), Column("k1", Integer),
                   Column("volume_ml", Float), Column("mean_hu", Float),
                   Column("age", Float), Column("sex", String(1)), Column("study_date", Date),
                   Index(f"{p}ix_organs_series", "series_id"),
                   Index(f"{p}ix_organs_organ_age", "organ", "age"),
                   Index(f"{p}ix_organs_organ_sex_age", "organ", "sex", "age"),
                   Index(f"{p}ix_organs_organ_date", "organ", "study_date"),
                   Index(f"{p}ix_organs_study", "study_id"))
    scores = Table(f"{p}scores", md,
                   # One score per (organ, finding); model_hash says what produced it (weights, dictionary
                   # version or prompt texts) so that score() knows which are stale.
                   Column("organ_id", BigInteger, ForeignKey(f"{p}organs.id"), primary_key=True),
                   Column("finding", String(96), primary_key=True),
                   Column("model_hash", String(64), nullable=False),
                   Column("probability", Float, nullable=False),
                   Index(f"{p}ix_scores_finding_prob", "finding", "probability"))
    ingest_runs = Table(f"{p}ingest_runs", md,
                        Column("id", Integer, primary_key=True, autoincrement=True),
                        Column("started_at", DateTime, nullable=False),
                        Column("finished_at", DateTime, nullable=True),
                        Column("archive", Text, nullable=False),
                        Column("status", String(16), nullable=False),
                        Column("summary", Text, nullable=True))
    ingest_items = Table(f"{p}ingest_items", md,
                         Column("id", Integer, primary_key=True, autoincrement=True),
                         Column("run_id", Integer, ForeignKey(f"{p}ingest_runs.id"), nullable=False),
                         Column("series_uid", String(255), nullable=False),
                         Column("fingerprint", String(64), nullable=True),
                         Column("status", String(16), nullable=False),
                         Column("reason", Text, nullable=True),
                         Column("n_organs", Integer, nullable=False, default=0),
                         Column("seconds", Float, nullable=True),
                         UniqueConstraint("run_id", "series_uid", name=f"{p}uq_items_run_series"),
                         Index(f"{p}ix_items_series", "series_uid", "status"))
    index_state = Table(f"{p}index_state", md,
                        Column("generation", Integer, primary_key=True, autoincrement=False),
                        Column("written_at", DateTime, nullable=False),
                        Column("count", BigInteger, nullable=False),
                        Column("factory", String(128), nullable=False),
                        Column("checksum", String(64), nullable=False),
                        Column("params", Text, nullable=True))
    return Tables(md, p, meta, migrations, patients, studies, series, organs, scores, ingest_runs, ingest_items,
                  index_state)


Migration = Tuple[int, str, Callable[[Connection, Tables], None]]


def _v1_create(conn: Connection, t: Tables) -> None:
    t.metadata.create_all(conn, checkfirst=True)


def _add_series_column(conn: Connection, t: Tables, name: str) -> None:
    """Add ``series.<name>`` to an index made before it (a new index's tables already have it)."""
    if name in {c["name"] for c in inspect(conn).get_columns(t.series.name)}:
        return
    # DDL takes no bound parameters: the table name is quoted by the dialect (and the prefix was checked by
    # check_prefix), the column spec compiled from the Column itself.
    table = conn.dialect.identifier_preparer.quote(t.series.name)
    column = CreateColumn(t.series.c[name]).compile(dialect=conn.dialect)
    conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {column}")


def _v2_shown_path(conn: Connection, t: Tables) -> None:
    _add_series_column(conn, t, "shown_path")


def _v3_content_digest(conn: Connection, t: Tables) -> None:
    _add_series_column(conn, t, "content_digest")


#: (version, description, function). A new schema change appends an entry and bumps SCHEMA_VERSION; the
#: function runs inside the transaction that records it, so a crash leaves either the old or the new schema.
MIGRATIONS: List[Migration] = [
    (1, "create tables", _v1_create),
    (2, "series.shown_path: paths without patient identifiers for output", _v2_shown_path),
    (3, "series.content_digest: touched series with unchanged bytes are not re-embedded", _v3_content_digest),
]
