"""Exports of index tables to CSV, Parquet or JSON lines, streamed from SQL."""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, List, Optional, Tuple

from sqlalchemy import String, case, cast, func, literal, select

from ctglip_sdk.errors import ConfigError, InputError, QueryError

from .outputs import EXPORT_SUFFIXES, check_output_path

if TYPE_CHECKING:  # pragma: no cover
    from .archive import ArchiveIndex

__all__ = ["export", "csv_safe", "shown_series_columns", "shown_study_column", "shown_key_series_id", "shown_path_with_id"]


def shown_series_columns(index: "ArchiveIndex") -> Tuple[Any, Any, Any]:
    """(study_uid, series_uid, path) as output shows them, for a query that joins organs' series and studies:
    without the patient's identifiers that archives put in folder names ("12345678/CT_1/..."), unless the index
    was created to keep identifiers. A series known by its path (``path:<image>``) shows that path the same way,
    and so does the study named after it when it has no UID (``series:path:<image>``, the study of that series
    alone); rows ingested before schema 2 have no redacted path. Such a shown key ends in ``#<series id>``: two
    patients' series redact to the same path (``path:<patient>/CT_1/ct.nii.gz``), and ``group_by("series")``
    merged them; :func:`shown_key_series_id` reads the id back for ``where=`` and ``remove``."""
    se, stu = index.store.t.series, index.store.t.studies
    if index.manifest.get("include_identifiers"):
        return stu.c.study_uid, se.c.series_uid, se.c.path
    path = func.coalesce(se.c.shown_path, se.c.path).label("path")
    redacted = se.c.series_uid.like("path:%") & se.c.shown_path.isnot(None)
    uid = case((redacted, literal("path:") + shown_path_with_id(se)), else_=se.c.series_uid).label("series_uid")
    study = case((redacted & (stu.c.study_uid == literal("series:") + se.c.series_uid),
                  literal("series:path:") + shown_path_with_id(se)), else_=stu.c.study_uid).label("study_uid")
    return study, uid, path


def shown_path_with_id(se: Any) -> Any:
    """``<shown path>#<series id>``: unique where redacted paths are not."""
    return se.c.shown_path + literal("#") + cast(se.c.id, String)


#: A shown key of a path-keyed series (``path:...#17``) or of the study named after it (``series:path:...#17``).
_SHOWN_KEY = re.compile(r"^(?:series:)?path:.*#(\d+)$", re.S)


def shown_key_series_id(value: str) -> Optional[int]:
    """The series id at the end of a shown, redacted key, else None (a stored UID or path key)."""
    m = _SHOWN_KEY.match(value) if isinstance(value, str) else None
    return int(m.group(1)) if m else None


def shown_study_column(index: "ArchiveIndex") -> Any:
    """``study_uid`` as output shows it where series are not joined (the studies export): a study named after
    its path-keyed series shows that series' redacted path."""
    se, stu = index.store.t.series, index.store.t.studies
    if index.manifest.get("include_identifiers"):
        return stu.c.study_uid
    shown = select(func.min(shown_path_with_id(se))).where(se.c.study_id == stu.c.id).where(
        se.c.shown_path.isnot(None)).scalar_subquery()
    return case((stu.c.study_uid.like("series:path:%") & shown.isnot(None), literal("series:path:") + shown),
                else_=stu.c.study_uid).label("study_uid")


def _shown_ingest_key(index: "ArchiveIndex") -> Any:
    """An ingest record's series key as output shows it: a stored path-keyed series' redacted path (a series that
    failed has no stored row, and its key is shown as planned)."""
    it, se = index.store.t.ingest_items, index.store.t.series
    if index.manifest.get("include_identifiers"):
        return it.c.series_uid
    shown = select(shown_path_with_id(se)).where(se.c.series_uid == it.c.series_uid).scalar_subquery()
    return case((it.c.series_uid.like("path:%") & shown.isnot(None), literal("path:") + shown),
                else_=it.c.series_uid).label("series_uid")


def _export_query(index: "ArchiveIndex", what: str) -> Any:
    t = index.store.t
    o, se, stu, p, sc = t.organs, t.series, t.studies, t.patients, t.scores
    joined = o.join(se, se.c.id == o.c.series_id).join(stu, stu.c.id == o.c.study_id).join(p, p.c.id == o.c.patient_id)
    shown_study, shown_uid, shown_path = shown_series_columns(index)
    base = [p.c.pseudonym.label("patient"), shown_study, shown_uid, o.c.id.label("crop_id"), o.c.organ]
    if what == "scores":
        return (select(*base, sc.c.finding, sc.c.probability, sc.c.model_hash, stu.c.study_date, stu.c.age, p.c.sex,
                       stu.c.split).select_from(joined.join(sc, sc.c.organ_id == o.c.id))
                .order_by(o.c.id, sc.c.finding))
    if what == "organs":
        return (select(*base, shown_path, o.c.i0, o.c.j0, o.c.k0, o.c.i1, o.c.j1, o.c.k1, o.c.volume_ml, o.c.mean_hu,
                       stu.c.study_date, stu.c.age, p.c.sex, stu.c.contrast, stu.c.body_part, stu.c.split)
                .select_from(joined).order_by(o.c.id))
    if what == "studies":
        # Grouped by both primary keys: PostgreSQL wants every selected column grouped or functionally dependent
        # on a grouped key (grouped by pseudonym alone, patients.sex was neither and the export was refused).
        return (select(p.c.pseudonym.label("patient"), shown_study_column(index), stu.c.study_date, stu.c.age, p.c.sex,
                       stu.c.description, stu.c.contrast, stu.c.body_part, stu.c.split,
                       func.count(o.c.id).label("n_organs"))
                .select_from(stu.join(p, p.c.id == stu.c.patient_id).outerjoin(o, o.c.study_id == stu.c.id))
                .group_by(p.c.id, stu.c.id).order_by(stu.c.study_uid))
    if what == "ingest":
        it, runs = t.ingest_items, t.ingest_runs
        return (select(it.c.run_id, runs.c.started_at, _shown_ingest_key(index), it.c.status, it.c.reason,
                       it.c.n_organs)
                .select_from(it.join(runs, runs.c.id == it.c.run_id)).order_by(it.c.run_id, it.c.id))
    raise QueryError(f"export what={what!r}: choose 'scores', 'organs', 'studies' or 'ingest'")


_BATCH = 10_000  # rows per streamed batch (and per Parquet row group)


def _rows(index: "ArchiveIndex", q: Any) -> Iterator[Tuple[List[str], List[Any]]]:
    with index.store.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=_BATCH).execute(q)
        cols = list(result.keys())
        for part in result.partitions():
            yield cols, [tuple(r) for r in part]


def export(index: "ArchiveIndex", path: Any, what: str = "scores", escape_formulas: bool = True) -> Path:
    """Write a table to CSV (``.csv``), Parquet (``.parquet``, needs pyarrow) or JSON lines (``.jsonl``).

    ``scores`` is long format (one row per organ and finding, with patient pseudonym, study, series, organ);
    ``organs`` lists every crop with its box and metadata; ``studies`` one row per study; ``ingest`` the
    per-series outcomes of every run. Rows are streamed, so memory stays flat. In CSV, a text cell that a
    spreadsheet would run as a formula gets a leading ``'`` (:func:`csv_safe`) unless ``escape_formulas=False``.

    Example:
        >>> idx.export("scores.csv")              # doctest: +SKIP
        PosixPath('scores.csv')
    """
    q = _export_query(index, what)
    # Not into the index folder or over its database (a cohort CSV written over idx/index.sqlite replaced the truth).
    out = check_output_path(path, index, suffixes=EXPORT_SUFFIXES, what="export")
    suffix = out.suffix.lower()
    tmp: Optional[Path] = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        # Written next to the target and renamed at the end: a failure never leaves a file that opens but holds
        # only the first rows (a Parquet export that stopped at its second batch used to do exactly that).
        fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(tmp_name)
        if suffix == ".parquet":
            _write_parquet(index, q, tmp)
        else:
            _write_text(index, q, tmp, suffix, escape_formulas)
        os.replace(tmp, out)
    except OSError as exc:  # a parent that is a file, no permission, a full disk: a user error naming the file
        raise InputError(f"cannot write the export: {exc.strerror or type(exc).__name__}", path=out) from None
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()
    return out


def _arrow_type(sql_type: Any) -> Any:
    """The Arrow type of a SQL column type: the file's schema comes from the table, not from the first rows."""
    import pyarrow as pa  # noqa: PLC0415

    py = None
    try:
        py = sql_type.python_type
    except NotImplementedError:
        pass
    if py is bool:
        return pa.bool_()
    if py is int:
        return pa.int64()
    if py is float:
        return pa.float64()
    if py is dt.datetime:
        return pa.timestamp("us")
    if py is dt.date:
        return pa.date32()
    return pa.string()


def _write_parquet(index: "ArchiveIndex", q: Any, path: Path) -> None:
    try:
        import pyarrow as pa  # noqa: PLC0415
        import pyarrow.parquet as pq  # noqa: PLC0415
    except ImportError:
        raise ConfigError("Parquet export needs pyarrow (`pip install pyarrow`); or export to .csv") from None
    # One schema for every batch and every run: a column that is empty in the first batch (no failed series yet,
    # studies without an age) used to get Arrow's null type, and the first later value then broke the export.
    schema = pa.schema([(c.key, _arrow_type(c.type)) for c in q.selected_columns])
    with pq.ParquetWriter(str(path), schema) as writer:
        wrote = False
        for cols, rows in _rows(index, q):
            data = {c: [r[i] for r in rows] for i, c in enumerate(cols)}
            writer.write_table(pa.table(data, schema=schema))
            wrote = True
        if not wrote:
            writer.write_table(schema.empty_table())


def _write_text(index: "ArchiveIndex", q: Any, path: Path, suffix: str, escape_formulas: bool = True) -> None:
    cell = (lambda v: csv_safe(_plain(v))) if escape_formulas else _plain
    with open(path, "w", newline="", encoding="utf-8") as fh:
        header_done = False
        writer_csv = csv.writer(fh)
        for cols, rows in _rows(index, q):
            if suffix == ".csv":
                if not header_done:
                    writer_csv.writerow(cols)
                    header_done = True
                writer_csv.writerows([[cell(v) for v in r] for r in rows])
            else:
                for r in rows:
                    fh.write(json.dumps(dict(zip(cols, map(_plain, r)))) + "\n")
        if suffix == ".csv" and not header_done:
            writer_csv.writerow(list(q.selected_columns.keys()))


# What a spreadsheet reads as the start of a formula (OWASP "CSV injection"): a DICOM text field such as
# SeriesDescription "=HYPERLINK(...)" reaches the organs export, and Excel would run it when the file is opened.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(v: Any) -> Any:
    """A CSV cell a spreadsheet shows as text: a string starting with ``= + - @``, a tab or a carriage return gets a
    leading ``'``; numbers, dates and other strings are unchanged.

    Example:
        >>> csv_safe("=1+1"), csv_safe(-0.5), csv_safe("liver")
        ("'=1+1", -0.5, 'liver')
    """
    return "'" + v if isinstance(v, str) and v.startswith(_FORMULA_START) else v


def _plain(v: Any) -> Any:
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return v
