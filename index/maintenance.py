"""Index maintenance: verify (and repair) SQL, stored vectors and FAISS agree; rebuild FAISS; statistics."""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import numpy as np
from sqlalchemy import func, select

from ctglip_sdk.errors import CTGlipError, IndexStateError

from .ann import AnnIndex, choose_factory, text_queries
from .create import FAISS_FILE
from .schema import DERIVED_TABLES, INGEST_ONLY_COLUMNS, READABLE_SCHEMA, SCHEMA_VERSION
from .vectors import file_checksum

if TYPE_CHECKING:  # pragma: no cover
    from .archive import ArchiveIndex

__all__ = ["verify", "rebuild", "stats", "drop_lost_vectors", "tuning_queries", "recreate_derived_tables"]

log = logging.getLogger(__name__)


def recreate_derived_tables(index: "ArchiveIndex") -> List[str]:
    """Create, empty, the missing tables whose rows can be done without or computed again (:data:`DERIVED_TABLES`);
    returns what was done. The caller holds the writer lock."""
    t = index.store.t
    missing = set(index.store.missing_schema())
    tables = [getattr(t, name) for name in DERIVED_TABLES if getattr(t, name).name in missing]
    if not tables:
        return []
    index.store.write(lambda c: t.metadata.create_all(c, tables=tables, checkfirst=True))
    done = [f"recreated the missing table {tab.name}, empty: {DERIVED_TABLES[tab.name[len(t.prefix):]]}"
            for tab in tables]
    for line in done:
        log.warning("%s", line)
    return done


def _schema_report(index: "ArchiveIndex", missing: List[str], repaired: List[str], t0: float) -> Dict[str, Any]:
    """The report of an index whose database lacks tables or columns: nothing else can be checked reliably."""
    prefix = index.store.t.prefix
    derived = [m for m in missing if m[len(prefix):] in DERIVED_TABLES]
    lost = [m for m in missing if m not in derived]
    problems = []
    if lost:
        problems.append(f"the index database lacks {', '.join(lost)} (a damaged file, tables dropped by hand, or an "
                        "unfinished upgrade): no repair can bring their rows back; restore the database from a "
                        "backup, or create the index again and re-ingest the archive")
    if derived:
        then = " (then run `ctglip score`)" if f"{prefix}scores" in derived else ""
        problems.append(f"the index database lacks {', '.join(derived)}, whose rows can be computed again or done "
                        f"without: `ctglip verify --repair` recreates them empty{then}")
    return {"ok": False, "problems": problems, "warnings": [], "repaired": repaired, "missing_schema": missing,
            "repairable": not lost,
            "organs": None, "series": None, "stored_vectors": None, "orphan_vectors": None,
            "faiss": index.ann.describe() if index.ann is not None else None, "faiss_file": None,
            "schema_version": None, "seconds": round(time.perf_counter() - t0, 3)}


def _sql_checks(index: "ArchiveIndex") -> Dict[str, Any]:
    t = index.store.t
    counted = (select(t.series.c.series_uid, t.series.c.n_organs, func.count(t.organs.c.id).label("n"))
               .select_from(t.series.outerjoin(t.organs, t.organs.c.series_id == t.series.c.id))
               .group_by(t.series.c.id, t.series.c.series_uid, t.series.c.n_organs))
    rows = index.store.read(lambda c: c.execute(counted).all())
    return {"series": len(rows), "series_count_mismatch": [r.series_uid for r in rows if r.n != r.n_organs]}


def verify(index: "ArchiveIndex", repair: bool = False) -> Dict[str, Any]:
    """Check that the index's parts agree; with ``repair=True`` fix what can be fixed.

    Checked: SQL organ ids == ids in the FAISS index in memory (what searches use) ⊆ stored vector ids; the
    FAISS file against SQL and its recorded checksum; a sample of FAISS vectors against the stored ones; series
    organ counts; the model copy and schema version against the manifest. Stored vectors no SQL row references
    (an interrupted batch, a replaced series) are harmless and only counted.

    Repair (takes the writer lock): series whose organs lost their stored vectors are deleted from SQL (the next
    ingest re-embeds them), the vector file is compacted, FAISS is rebuilt from the stored vectors and written.

    Returns:
        ``{"ok": bool, "problems": [...], "warnings": [...], "repaired": [...], counts...}``

    Example:
        >>> report = idx.verify()            # doctest: +SKIP
        >>> report["ok"], report["problems"]  # doctest: +SKIP
        (True, [])
    """
    if repair:
        with index.writer_lock:
            return _verify(index, repair=True)
    return _verify(index, repair=False)


def _verify(index: "ArchiveIndex", repair: bool) -> Dict[str, Any]:
    from .create import FAISS_FILE, MODEL_DIR  # noqa: PLC0415

    problems: List[str] = []
    warnings: List[str] = []
    repaired: List[str] = []
    t0 = time.perf_counter()
    # Every table and column first: a dropped table used to pass (verify read none of the scores) and then fail
    # every score and cohort. What can be computed again is recreated by a repair; the truth cannot be.
    if repair:
        repaired += recreate_derived_tables(index)
    missing = index.store.missing_schema()
    version = index.store.schema_version()
    if READABLE_SCHEMA <= version < SCHEMA_VERSION:  # a read-only index read without its upgrade (create.py)
        later = {f"{index.store.t.prefix}{t}.{c}" for (t, c), v in INGEST_ONLY_COLUMNS.items() if v > version}
        missing = [m for m in missing if m not in later]
    if missing:
        return _schema_report(index, missing, repaired, t0)
    # A reader (another process writes) compares a consistent picture: its memory refreshed from SQL first, and
    # the comparison redone when a commit landed meanwhile (it reported "FAISS in memory differs" during ingests).
    for _attempt in range(3):
        index._maybe_refresh(force=True)
        problems.clear()
        warnings.clear()
        sql_ids = index.store.organ_ids()
        stored_ids, _ = index.vectors.read()
        torn = index.vectors.n_records - stored_ids.size
        if torn:
            warnings.append(f"{torn} unreadable record(s) at the end of the vector file (a torn, never committed "
                            "write); ignored, dropped by --repair")
        no_vector = np.setdiff1d(sql_ids, stored_ids)
        orphans = np.setdiff1d(stored_ids, sql_ids)
        if no_vector.size:
            problems.append(f"{no_vector.size} organ(s) in SQL have no stored vector")
        if orphans.size:
            warnings.append(f"{orphans.size} stored vector(s) belong to no SQL row (interrupted batch or replaced "
                            "series); harmless, dropped by --repair")
        index._ann_lock.acquire_read()
        try:
            ann = index.ann
            mem_ids = ann.ids() if ann is not None else np.zeros(0, np.int64)
            sample = np.intersect1d(sql_ids, mem_ids)
            if sample.size:
                sample = sample[np.linspace(0, sample.size - 1, min(64, sample.size)).astype(int)]
            content_bad = 0
            if ann is not None and sample.size and ann.kind in ("flat", "hnsw"):
                got = np.stack([ann.index.reconstruct(int(i)) for i in sample])
                want = index.vectors.gather(sample) if not no_vector.size else got
                content_bad = int(np.sum(np.abs(got - want).max(1) > 1e-3))
        finally:
            index._ann_lock.release_read()
        mem_missing = np.setdiff1d(sql_ids, mem_ids)
        mem_extra = np.setdiff1d(mem_ids, sql_ids)
        # memory as current as SQL, and no commit since: the difference is real
        if not (mem_missing.size or mem_extra.size) or index.store.data_version() == index._data_version:
            break
    if mem_missing.size or mem_extra.size:
        problems.append(f"FAISS index in memory differs from SQL ({mem_missing.size} missing, {mem_extra.size} extra)")
    if content_bad:
        problems.append(f"{content_bad} of {sample.size} sampled FAISS vectors differ from the stored vectors")
    file_info: Dict[str, Any] = {"exists": (index.folder / FAISS_FILE).exists()}
    state = index.store.index_state()
    if file_info["exists"]:
        try:
            on_disk = AnnIndex.load(index.folder / FAISS_FILE, index.manifest.get("current_factory", "Flat"))
            disk_ids = on_disk.ids()
            file_info.update(ntotal=int(disk_ids.size), missing=int(np.setdiff1d(sql_ids, disk_ids).size),
                             extra=int(np.setdiff1d(disk_ids, sql_ids).size), kind=on_disk.kind)
            if file_info["missing"] or file_info["extra"]:
                warnings.append(f"FAISS file is out of step with SQL ({file_info['missing']} missing, "
                                f"{file_info['extra']} extra); open() derives the difference, --repair rewrites it")
            file_info["checksum_ok"] = bool(state and state["checksum"] == file_checksum(index.folder / FAISS_FILE))
            if not file_info["checksum_ok"]:
                warnings.append("FAISS file checksum differs from the last recorded write (interrupted write)")
        except CTGlipError as exc:
            problems.append(f"FAISS file unreadable: {exc.reason}")
    else:
        problems.append("FAISS file is missing")
    sql = _sql_checks(index)
    if sql["series_count_mismatch"]:
        problems.append(f"{len(sql['series_count_mismatch'])} series whose organ count differs from their record")
    if READABLE_SCHEMA <= version < SCHEMA_VERSION:
        warnings.append(f"schema version {version}, read without its upgrade to {SCHEMA_VERSION} (the index is "
                        "read-only here; open it once with write access before ingesting into it)")
    elif version != SCHEMA_VERSION:
        problems.append(f"schema version {version}, expected {SCHEMA_VERSION}")
    model_cfg = index.folder / MODEL_DIR / "config.json"
    if model_cfg.is_file():
        try:
            saved = json.loads(model_cfg.read_text("utf-8")).get("config_hash")
        except ValueError:
            saved = None
        if saved != index.manifest["model"]["config_hash"]:
            problems.append("the model copy in the index folder does not match the manifest's config hash")
    else:
        warnings.append("no model copy in the index folder; text queries need open(model=...)")

    if repair and (problems or warnings):
        _repair(index, no_vector, sql["series_count_mismatch"], torn > 0 or orphans.size > 0, repaired)
        report = _verify(index, repair=False)
        report["repaired"] = repaired
        return report
    return {
        "ok": not problems, "problems": problems, "warnings": warnings, "repaired": repaired,
        "organs": int(sql_ids.size), "series": sql["series"], "stored_vectors": int(stored_ids.size),
        "orphan_vectors": int(orphans.size), "faiss": ann.describe() if ann is not None else None,
        "faiss_file": file_info, "schema_version": version, "missing_schema": [], "repairable": True,
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _repair(index: "ArchiveIndex", no_vector: np.ndarray, bad_series: List[str], compact: bool,
            repaired: List[str]) -> None:
    _repair_sql(index, no_vector, bad_series, repaired)
    if compact or no_vector.size:
        dropped = index.vectors.compact(index.store.organ_ids().tolist())
        repaired.append(f"compacted stored vectors (dropped {dropped} unreferenced record(s))")
    # Rebuild from the stored vectors (not the in-memory copy): the repaired index is derived from disk truth.
    index._load_state()
    view = index.mirror.view()
    factory = index.ann.factory if index.ann is not None else "Flat"
    index._swap_ann(index._build_ann_safe(factory, view.ids, view.vecs))
    index._persist_ann()
    repaired.append(f"rebuilt the FAISS index ({index.ann.factory if index.ann else factory}) from stored vectors "
                    "and wrote it")


def drop_lost_vectors(index: "ArchiveIndex") -> List[str]:
    """Remove from SQL the series whose organs have no stored vector, and compact the vector file.

    This is what ``open()`` cannot derive; afterwards the index opens and the next ingest re-embeds those
    series. The caller holds the writer lock. Returns what was done (empty when nothing was needed).
    """
    done: List[str] = recreate_derived_tables(index)  # e.g. index_state, which open() reads
    sql_ids = index.store.organ_ids()
    stored, _ = index.vectors.read()
    lost = np.setdiff1d(sql_ids, stored)
    if lost.size:
        _repair_sql(index, lost, [], done)
        dropped = index.vectors.compact(index.store.organ_ids().tolist())
        done.append(f"compacted stored vectors (dropped {dropped} unreferenced record(s))")
    return done


def _repair_sql(index: "ArchiveIndex", no_vector: np.ndarray, bad_series: List[str], repaired: List[str]) -> None:
    t = index.store.t
    if not (no_vector.size or bad_series):
        return

    def tx(conn: Any) -> int:
        uids = set(bad_series)
        for start in range(0, no_vector.size, 900):
            part = no_vector[start:start + 900].tolist()
            q = select(t.series.c.series_uid).join(t.organs, t.organs.c.series_id == t.series.c.id) \
                .where(t.organs.c.id.in_(part)).distinct()
            uids |= set(conn.execute(q).scalars().all())
        gone = sorted(uids)
        organs = 0
        for start in range(0, len(gone), 900):
            q = select(func.count()).select_from(t.organs.join(t.series, t.organs.c.series_id == t.series.c.id)) \
                .where(t.series.c.series_uid.in_(gone[start:start + 900]))
            organs += int(conn.execute(q).scalar() or 0)
        for uid in gone:
            study = index.store.study_of_series(conn, uid)
            index.store.delete_series(conn, uid)
            if study is not None:  # as remove does: a study (and patient) left without series is not kept
                index.store.drop_if_empty(conn, study)
        index.store.bump_data_version(conn)
        return gone, organs
    gone, organs = index.store.write(tx)
    # Destructive: say exactly what went, so that the user knows what the next ingest has to re-embed.
    shown = ", ".join(gone[:20]) + (f" and {len(gone) - 20} more" if len(gone) > 20 else "")
    msg = (f"removed {len(gone)} series ({organs} organs, with their scores) with missing vectors or bad counts "
           f"from SQL; the next ingest re-embeds them: {shown}")
    log.warning("%s", msg)
    repaired.append(msg)


def rebuild(index: "ArchiveIndex", factory: Optional[str] = None, target_recall: float = 0.95,
            keep_request: bool = False) -> Dict[str, Any]:
    """Rebuild the FAISS index from the stored vectors with another factory string (no re-encoding).

    ``factory=None`` returns to automatic choice by size (Flat below ``ann.FLAT_MAX`` vectors, then IVF); IVF/HNSW
    search parameters are tuned to ``target_recall`` at k=10 on stored vectors and on the model's text vectors
    (``tuning_queries``).

    Example:
        >>> idx.rebuild("IVF1024,Flat")  # doctest: +SKIP
        {'factory': 'IVF1024,Flat', 'kind': 'ivf', 'ntotal': 250000, 'nprobe': 16, 'nlist': 1024, ...}
    """
    t0 = time.perf_counter()
    with index.writer_lock:
        view = index.mirror.view()
        chosen = factory or choose_factory(view.n, index.dim, index.manifest.get("memory_budget"))
        ann = index._build_ann(chosen, view.ids, view.vecs, target_recall=target_recall)
        index._swap_ann(ann)
        index._persist_ann()
        if not keep_request:
            index.manifest["factory"] = factory or "auto"
            index._write_manifest(index.folder, index.manifest)
    out = ann.describe()
    out["seconds"] = round(time.perf_counter() - t0, 3)
    log.info("rebuilt FAISS index: %s", out)
    return out


def tuning_queries(index: "ArchiveIndex") -> Optional[np.ndarray]:
    """The index model's text vectors to tune IVF/HNSW on (``ann.text_queries``; cached per index object).

    None (tune on random directions) when the model or the dictionary is unavailable.
    """
    cached = getattr(index, "_tune_queries", None)
    if cached is None:
        try:
            cached = text_queries(index.model)
        except CTGlipError as exc:  # e.g. no model copy in the folder
            log.info("cannot encode tuning queries (%s); tuning on random directions", exc)
            cached = None
        cached = np.zeros((0, index.dim), np.float32) if cached is None else cached
        index._tune_queries = cached
    return cached if cached.size else None


def stats(index: "ArchiveIndex") -> Dict[str, Any]:
    """Row counts, model, FAISS description and database kind."""
    t = index.store.t

    def counts(conn: Any) -> Dict[str, int]:
        return {name: int(conn.execute(select(func.count()).select_from(tab)).scalar() or 0)
                for name, tab in (("patients", t.patients), ("studies", t.studies), ("series", t.series),
                                  ("organs", t.organs), ("scores", t.scores))}
    out: Dict[str, Any] = index.store.read(counts)
    out.update(model=index.manifest["model"]["name"], model_config=index.manifest["model"]["config_hash"][:12],
               dim=index.dim, database=index.store.dialect, factory_request=index.manifest.get("factory"),
               faiss=index.ann.describe() if index.ann is not None else None, folder=str(index.folder))
    return out


def reconciled_ann(index: "ArchiveIndex", ids: np.ndarray, vecs: np.ndarray) -> Tuple[AnnIndex, bool]:
    """The folder's FAISS index brought in step with SQL's ``ids`` (FAISS is derived: missing ids are added from
    the stored vectors, extra ones removed; an unreadable or untrained file is rebuilt), and whether it changed."""
    path = index.folder / FAISS_FILE
    factory = str(index.manifest.get("current_factory") or "Flat")
    ann: Optional[AnnIndex] = None
    if path.exists():
        try:
            ann = AnnIndex.load(path, factory)
        except IndexStateError as exc:
            log.warning("%s; rebuilding it from the stored vectors", exc)
    if ann is None or ann.dim != index.dim or (not ann.is_trained and ids.size):
        return index._build_ann_safe(factory, ids, vecs), True
    in_faiss = ann.ids()
    extra = np.setdiff1d(in_faiss, ids, assume_unique=True)
    missing = np.setdiff1d(ids, in_faiss, assume_unique=True)
    if extra.size and not ann.remove(extra):
        ann = index._build_ann_safe(ann.factory, ids, vecs)
        missing = np.zeros(0, np.int64)
    if missing.size:
        rows = np.searchsorted(ids, missing)
        ann.add(missing, vecs[rows])
    if extra.size or missing.size:
        log.info("FAISS index was out of step with SQL (%d missing, %d extra); reconciled from stored vectors",
                 missing.size, extra.size)
    return ann, bool(extra.size or missing.size)

