"""Removing series, studies or patients from an index: SQL rows, FAISS ids and the stored vectors on disk."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Set

import numpy as np
from sqlalchemy import delete, func, select

from ctglip_sdk.errors import IndexStateError, InputError

from .export import shown_key_series_id
from .filters import PSEUDONYM_RE

if TYPE_CHECKING:  # pragma: no cover
    from .archive import ArchiveIndex

log = logging.getLogger("ctglip_sdk.index")
_CHUNK = 900  # bound parameters per IN (...): SQLite's old limit is 999


def remove(index: "ArchiveIndex", series: Iterable[str] = (), studies: Iterable[str] = (),
           patients: Iterable[str] = ()) -> Dict[str, Any]:
    """Delete series with their organs, scores and vectors, by series UID, study UID or patient.

    A patient is named by the identifier the archive carries (matched as :meth:`ArchiveIndex.find_patient` does)
    or by the pseudonym the index stores. Studies and patients left without a series are deleted too, and so
    are the ingest records of the removed series. The vectors are erased from the vector file (it is rewritten
    without them) and the FAISS file is written at once, so nothing of a removed series stays on disk in the
    index folder. SQL commits first: a crash after it leaves FAISS ids that the next open drops.

    A series still in the archive comes back with the next ingest: take it out of the archive (or its
    manifest) too when the removal must last, e.g. after a patient withdraws consent.

    Returns:
        counts ``series``, ``organs``, ``studies``, ``patients`` removed, ``vectors_erased``, and ``not_found``:
        the series and study UIDs given that the index does not hold, and how many patients it does not know
        (a count: patient identifiers are never echoed).

    Raises:
        InputError: nothing was named.

    Example:
        >>> idx.remove(patients=["PAT-0001"])  # doctest: +SKIP
        {'series': 2, 'organs': 48, 'studies': 2, 'patients': 1, 'vectors_erased': 48, 'not_found': {...}}
    """
    series, studies, patients = _names(series), _names(studies), _names(patients)
    if not (series or studies or patients):
        raise InputError("remove: name at least one series UID, study UID or patient")
    t = index.store.t
    pseudonyms: Set[str] = set()
    unknown_patients = 0
    for p in patients:
        # A raw identifier is only ever sent to SQL as its keyed pseudonyms (find_patient); a value is looked up
        # as-is only when it has a pseudonym's form, so unknown MRNs reach neither server logs nor error texts.
        found = index.find_patient(p) or (_stored_pseudonym(index, p) if PSEUDONYM_RE.fullmatch(p) else None)
        if found is None:
            unknown_patients += 1
        else:
            pseudonyms.add(found)
    with index.writer_lock:
        if index.store.data_version() != index._data_version:
            index._load_state()  # another process wrote since this object last looked (as ingest.begin_run)

        def tx(conn: Any) -> Dict[str, Any]:
            shown_s, shown_st = _shown_keys(conn, t, series, ""), _shown_keys(conn, t, studies, "series:")
            found_series = _in(conn, t.series.c.series_uid, select(t.series.c.series_uid), series)
            found_studies = _in(conn, t.studies.c.study_uid, select(t.studies.c.study_uid), studies)
            found_series |= set(shown_s.values())
            found_studies |= set(shown_st.values())
            uids = set(found_series)
            uids |= _in(conn, t.studies.c.study_uid, select(t.series.c.series_uid).join(
                t.studies, t.series.c.study_id == t.studies.c.id), found_studies)
            uids |= _in(conn, t.patients.c.pseudonym, select(t.series.c.series_uid).join(
                t.studies, t.series.c.study_id == t.studies.c.id).join(
                t.patients, t.studies.c.patient_id == t.patients.c.id), pseudonyms)
            n_studies = _count(conn, t.studies)
            n_patients = _count(conn, t.patients)
            ids: List[int] = []
            for uid in sorted(uids):
                study = index.store.study_of_series(conn, uid)
                ids += index.store.delete_series(conn, uid)
                if study is not None:
                    index.store.drop_if_empty(conn, study)
            ordered = sorted(uids)
            for start in range(0, len(ordered), _CHUNK):  # their ingest records name them (and their paths' errors)
                conn.execute(delete(t.ingest_items).where(t.ingest_items.c.series_uid.in_(ordered[start:start + _CHUNK])))
            if uids:
                index.store.bump_data_version(conn)
                # readers in other processes see fewer organs and reload (see ArchiveIndex._maybe_refresh)
                index.store.set_meta(conn, "metadata_version",
                                     int(index.store.get_meta("metadata_version", conn) or 0) + 1)
            versions = (int(index.store.get_meta("data_version", conn) or 0),
                        index.store.get_meta("metadata_version", conn))
            return {"series": len(uids), "organs": len(ids), "studies": n_studies - _count(conn, t.studies),
                    "versions": versions,
                    "patients": n_patients - _count(conn, t.patients), "ids": ids,
                    "not_found": {"series": sorted(set(series) - found_series - set(shown_s)),
                                  "studies": sorted(set(studies) - found_studies - set(shown_st)),
                                  "patients": unknown_patients}}

        out = index.store.write(tx)
        ids = np.asarray(out.pop("ids"), np.int64)
        versions = out.pop("versions")
        if ids.size:
            index.mirror.remove(ids.tolist())
            index._sync_ann(ids)
            index._data_version, index._metadata_version = versions  # this object's state is current
        try:
            if ids.size or index._ann_dirty:
                index._persist_ann()
            # The record file is append-only: rewrite it without vectors SQL no longer references, so removed
            # ones leave the disk. Checked on every call, so a retry finishes a removal a crash interrupted.
            live = index.store.organ_ids()
            if index.vectors.n_records != live.size:
                index.vectors.compact(live.tolist())
        except OSError as exc:  # a full disk, no permission: SQL has committed, the retry or verify --repair ends it
            raise IndexStateError(f"the series were removed from SQL but the FAISS or vector file could not be "
                                  f"rewritten ({exc.strerror or type(exc).__name__}); run remove again or "
                                  f"'ctglip verify --repair' to erase the leftover vectors", path=index.folder) from None
        index.store.vacuum_hint()
    out["vectors_erased"] = int(ids.size)
    log.info("removed %d series (%d organs, %d studies, %d patients) from the index", out["series"], out["organs"],
             out["studies"], out["patients"])
    return out


def _names(values: Optional[Iterable[str]]) -> List[str]:
    if values is None:
        return []
    if isinstance(values, str):  # one UID passed bare, not a list of its characters
        values = [values]
    return [str(v).strip() for v in values if str(v).strip()]


def _stored_pseudonym(index: "ArchiveIndex", value: str) -> Any:
    p = index.store.t.patients
    return index.store.read(lambda c: c.execute(select(p.c.pseudonym).where(p.c.pseudonym == value)).scalar())


def _in(conn: Any, column: Any, query: Any, values: Iterable[str]) -> Set[str]:
    """The first column of ``query`` for rows whose ``column`` is one of ``values`` (bound, in chunks)."""
    values = sorted(set(values))
    found: Set[str] = set()
    for start in range(0, len(values), _CHUNK):
        found |= set(conn.execute(query.where(column.in_(values[start:start + _CHUNK]))).scalars().all())
    return found


def _shown_keys(conn: Any, t: Any, values: Iterable[str], prefix: str) -> Dict[str, str]:
    """{shown key: stored key} for keys as output shows a redacted path-keyed series (``path:...#<id>``) or the
    study named after it (``series:path:...#<id>``, with ``prefix`` "series:"), so that a hit's key removes it."""
    ids = {v: i for v in values if (i := shown_key_series_id(v)) is not None and v.startswith(prefix + "path:")}
    if not ids:
        return {}
    se = t.series
    rows = {r.id: r for r in conn.execute(select(se.c.id, se.c.series_uid, se.c.shown_path).where(
        se.c.id.in_(sorted(set(ids.values())))).where(se.c.series_uid.like("path:%"))).all()}
    # The whole key must be that series' shown key: "path:B/CT#1" is a stored key of a folder "CT#1", and must
    # not also remove series 1
    return {v: prefix + rows[i].series_uid for v, i in ids.items()
            if i in rows and rows[i].shown_path is not None and v == f"{prefix}path:{rows[i].shown_path}#{i}"}


def _count(conn: Any, table: Any) -> int:
    return int(conn.execute(select(func.count()).select_from(table)).scalar() or 0)

