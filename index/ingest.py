"""Archive ingest: read -> align masks -> preprocess -> encode (batched) -> write; resumable and crash-safe."""

from __future__ import annotations

import datetime as _dt
import logging
import sys
import time
from concurrent.futures import Future
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import numpy as np

from sqlalchemy.exc import SQLAlchemyError

from ctglip_sdk.errors import ConfigError, CTGlipError, InputError
from ctglip_sdk.model.voxels import STATS_VERSION
from ctglip_sdk.readahead import read_ahead

from .carry_scores import insert_carried, scores_to_carry
from .ingest_plan import plan_run
from .ingest_read import ArchivePlan, _cut, _Prepared, _read_one, plan_ingest  # noqa: F401 - _cut: embeddings.py
from .layout import Item, redact
from .memory import bound_heap_growth
from .results import IngestReport

if TYPE_CHECKING:  # pragma: no cover
    from .archive import ArchiveIndex

__all__ = ["ingest", "plan_ingest", "ArchivePlan", "STAGES"]

log = logging.getLogger(__name__)

#: Per-stage timings reported by IngestReport.timings (seconds summed over series; read/align/preprocess run
#: in worker threads, so their sum can exceed the wall time).
STAGES = ("plan", "read", "align", "preprocess", "encode", "write", "faiss")


@dataclass
class _Encoded:
    item: Item
    fields: Dict[str, Any]
    geometry: Dict[str, Any]
    names: List[str]
    vectors: np.ndarray
    bboxes: Optional[np.ndarray]        # None (NULL in SQL) for embeddings added without boxes
    volumes_ml: Optional[np.ndarray]
    mean_hu: Optional[np.ndarray]


def _encode(model: Any, batch: List[_Prepared], batch_size: int) -> List[_Encoded]:
    """One forward pass per group of same-shape studies (the model batches them)."""
    if batch and batch[0].prep is not None:
        embs = model.encode_prepared([p.prep for p in batch], batch_size=batch_size)
    else:  # a model without a separate preprocessing step: it prepares inside its own batch call
        embs = model.encode_organs_batch([p.raw[0] for p in batch], [p.raw[1] for p in batch], batch_size=batch_size)
    out = [_Encoded(p.item, p.fields, p.geometry, list(e.names), np.asarray(e.vectors, np.float32),
                    np.asarray(e.bboxes, np.int64), np.asarray(e.volumes_ml, np.float64),
                    np.asarray(e.mean_hu, np.float64)) for p, e in zip(batch, embs)]
    for e in out:
        # A NaN vector is invisible to search and broke every later score(); add_embeddings refuses them too.
        # Raised for the batch, the caller retries study by study and records the one that fails.
        if not np.all(np.isfinite(e.vectors)):
            raise InputError("the encoder gave non-finite organ vectors for this study", path=e.item.image)
    return out


def _opt(values: Optional[np.ndarray], j: int) -> Optional[float]:
    return None if values is None else float(values[j])


def write_batch(index: "ArchiveIndex", run_id: int, encoded: List[_Encoded],
                outcomes: List[Dict[str, Any]], warnings: Optional[List[Dict[str, str]]] = None) -> Tuple[int, int]:
    """Persist one batch: vectors appended + fsynced, then every SQL row in one transaction, then memory.

    Returns ``(organs added, organs removed)``. The caller holds the writer lock. ``warnings``, when given,
    receives ``{"series", "warning"}`` for a series whose header sex disagrees with the sex already stored for
    its patient (sex is a patient attribute: the stored value is kept, and the disagreement is reported rather
    than silently dropped).
    """
    from .vectors import unit_rows  # noqa: PLC0415

    store = index.store
    n = sum(len(e.names) for e in encoded)
    ids = np.arange(index._next_id, index._next_id + n, dtype=np.int64)
    vecs = unit_rows(np.concatenate([e.vectors for e in encoded])) if n else np.zeros((0, index.dim), np.float32)
    # Memory and FAISS hold exactly what the float16 file holds, so that a reopened or rebuilt index answers
    # the same queries with the same scores.
    vecs = vecs.astype(np.float16).astype(np.float32)
    index.vectors.append(ids, vecs)  # 1. raw vectors first (fsynced): SQL never references a missing vector
    mirror_rows: List[Tuple[Any, ...]] = []
    conflicts: List[Dict[str, str]] = []
    restated = False

    def tx(conn: Any) -> Tuple[List[int], int]:
        nonlocal restated
        removed: List[int] = []
        rows: List[Dict[str, Any]]
        emptied: List[int] = []
        restated = False
        mirror_rows.clear()
        conflicts.clear()  # a retried transaction reports each disagreement once
        pos = 0
        for e in encoded:
            f = e.fields
            pid, sex = store.ensure_patient(conn, f["patient"], f["identifier"], f["sex"], f["birth_year"])
            if sex and store.fill_organ_sex(conn, pid, sex):
                index._mirror_stale = restated = True  # earlier studies' organs learnt the patient's sex
            if f["sex"] and sex and f["sex"] != sex:
                conflicts.append({"series": e.item.key, "warning": f"sex {f['sex']!r} in this series differs from "
                                  f"{sex!r} stored for its patient; kept {sex!r}"})
            study = {k: f[k] for k in ("study_date", "age", "description", "contrast", "body_part", "split",
                                       "report_path")}
            sid, srow, changed = store.ensure_study(conn, f["study_uid"], pid, study)
            if changed:
                index._mirror_stale = True  # organs of the study's other series changed too: reload at the end
                restated = True
            old_study = store.study_of_series(conn, e.item.key)
            # a series re-embedded only because its files were touched keeps its scores (insert_scores' too)
            carried = scores_to_carry(conn, index, e.item.key, e.names, vecs[pos:pos + len(e.names)], e.bboxes,
                                      e.volumes_ml)
            removed += store.delete_series(conn, e.item.key)
            if old_study is not None and old_study != sid:
                emptied.append(old_study)
            ser = store.insert_series(conn, {"series_uid": e.item.key, "study_id": sid, "path": e.item.image,
                                             "shown_path": e.fields.get("shown_path"),
                                             "archive_root": e.fields["archive_root"],
                                             "mask_path": e.item.mask, "fingerprint": e.item.fingerprint,
                                             "content_digest": e.fields.get("content_digest"),
                                             "n_organs": len(e.names), **e.geometry})
            rows = []
            for j, name in enumerate(e.names):
                oid = int(ids[pos])
                pos += 1
                b = [None] * 6 if e.bboxes is None else [int(v) for v in e.bboxes[j]]
                rows.append({"id": oid, "series_id": ser, "study_id": sid, "patient_id": pid, "organ": name,
                             "i0": b[0], "j0": b[1], "k0": b[2], "i1": b[3], "j1": b[4], "k1": b[5],
                             "volume_ml": _opt(e.volumes_ml, j), "mean_hu": _opt(e.mean_hu, j),
                             "age": srow["age"], "sex": sex, "study_date": srow["study_date"]})
                mirror_rows.append((oid, name, srow["age"], sex, srow["study_date"], srow["contrast"],
                                    srow["body_part"], srow["split"]))
            # Per series, not per batch: a sex or a study's age first learnt from a later series of this batch is
            # written to the organs already in SQL (fill_organ_sex, ensure_study), which must include this one's.
            store.insert_organs(conn, rows)
            insert_carried(conn, index, [r["id"] for r in rows], carried)
        for sid_old in emptied:
            store.drop_if_empty(conn, sid_old)  # a series moved to another study_uid left its old study empty
        if restated:
            # readers in other processes refresh by appending new ids; rewritten metadata makes them reload
            store.set_meta(conn, "metadata_version", int(store.get_meta("metadata_version", conn) or 0) + 1)
        store.record_items(conn, run_id, outcomes)
        if n:
            store.set_meta(conn, "next_organ_id", int(ids[-1]) + 1)
        if n or removed:
            store.bump_data_version(conn)
        return removed, int(store.get_meta("data_version", conn) or 0)

    try:
        removed, version = store.write(tx)  # 2. SQL rows, one transaction per batch
    finally:
        if n:
            index._next_id = int(ids[-1]) + 1  # never reuse ids, even those of a failed transaction
    # 3. memory: mirror and FAISS (the FAISS file is written periodically; open() derives what it lacks)
    if removed:
        index.mirror.remove(removed)
    index.mirror.append(mirror_rows, vecs)
    index._sync_ann(np.asarray(removed, np.int64), ids if n else None, vecs)  # a rebuild uses the mirror
    index._data_version = version
    for w in conflicts:
        log.warning("series %s: %s", w["series"], w["warning"])
    if warnings is not None:
        warnings.extend(conflicts)
    return n, len(removed)


def begin_run(index: "ArchiveIndex", source: str) -> int:
    """Start a write run (the caller holds the writer lock): catch up with other processes' commits, record the
    run, and drop a crashed writer's uncommitted vector tail. Returns the run id."""
    if index.store.data_version() != index._data_version:
        index._load_state()  # another process wrote since this object last looked
    run_id = index.store.start_run(source)
    index._next_id = index.store.read(index.store.next_organ_id)
    index.vectors.truncate_uncommitted(index._next_id)  # a crashed writer's uncommitted tail
    return run_id


def settle_faiss(index: "ArchiveIndex", rechoose: bool) -> None:
    """End of a write run: move to the FAISS type the size rules want now (``rechoose``, after a run that
    finished), then write the FAISS file when it changed."""
    if rechoose:
        target = index._wanted_factory()
        if index.ann is not None and target != index.ann.factory:
            from .maintenance import rebuild  # noqa: PLC0415

            try:
                rebuild(index, factory=target, keep_request=True)
            except ConfigError as exc:  # e.g. too few vectors to train IVF yet: stay exact (Flat)
                log.info("kept the %s index: %s", index.ann.factory, exc)
    if index._ann_dirty:
        index._persist_ann()


def _warn_stats_version(index: "ArchiveIndex", model: Any) -> None:
    """Warn when the index's stored vectors came from other organ-stats code than this SDK's (the model's config
    hash cannot say so: the same model computes slightly different stats after an SDK upgrade)."""
    recorded = index.manifest.get("stats_version")  # absent in indexes created before it was recorded
    n_stats = getattr(getattr(getattr(model, "config", None), "preprocess", None), "n_stats", 0)
    if recorded is not None and int(recorded) != STATS_VERSION and n_stats:
        log.warning("this index's vectors were computed with organ-stats version %s and this ctglip-sdk computes "
                    "version %s (docs/model.md, 'Grid of the stats'): new vectors can differ slightly from stored "
                    "ones of the same model; ingest the archive into a new index to make them uniform",
                    recorded, STATS_VERSION)


def ingest(index: "ArchiveIndex", archive: Any, workers: int = 2, batch_size: int = 8, retry_errors: bool = False,
           progress: Optional[bool] = None, faiss_flush_seconds: float = 60.0) -> IngestReport:
    """Embed every series of ``archive`` that the index does not hold yet.

    The archive is ``ROOT/manifest.csv`` (docs/data.md) when present, else what ``ctglip_sdk.io.discover``
    finds, with masks matched by name (docs/index.md). An archive in which no study is found is refused
    (InputError) before the index is touched: no run is recorded. Series already ingested with the same file
    fingerprint are skipped, so re-running adds nothing and an interrupted run continues where it stopped;
    a series whose files changed is replaced. A series that fails (unreadable, geometry, mask mismatch) is
    recorded with its reason and skipped; ``retry_errors=True`` tries such series again.

    Args:
        archive: archive root folder, or an :class:`ArchivePlan` of it from :func:`plan_ingest` (which is how an
            archive that may be empty is accepted: ``plan_ingest(root, allow_empty=True)``).
        workers: threads that read, align and preprocess ahead of the encoder (memory holds at most
            ``2 * workers + batch_size`` prepared studies, whatever the archive's size).
        batch_size: studies per encoder batch and per SQL transaction.
        retry_errors: retry series whose previous attempt failed with unchanged files.
        progress: show a tqdm bar (default: when stderr is a terminal).
        faiss_flush_seconds: how often the FAISS file is rewritten during a long run.

    Returns:
        IngestReport with counts, per-stage timings and the failed series with reasons.

    Raises:
        InputError: the archive folder does not exist or holds no study (the message names the root as given).

    Example:
        >>> report = idx.ingest("archive/", workers=2)  # doctest: +SKIP
        >>> print(report.summary())                    # doctest: +SKIP
    """
    if batch_size < 1 or workers < 0:
        raise InputError(f"batch_size must be >= 1 and workers >= 0, got {batch_size} and {workers}")
    # Planned before the writer lock and begin_run: an archive without studies (a wrong path, an unmounted
    # share) must leave the index exactly as it was, without even a run row. Planning reads only the archive.
    plan = plan_ingest(archive)
    root = plan.root
    model = index.model
    _warn_stats_version(index, model)
    started = time.perf_counter()
    report = IngestReport(run_id=0, archive=str(root), started_at=_dt.datetime.now(_dt.timezone.utc),
                          timings={s: 0.0 for s in STAGES})
    with index.writer_lock:
        run_id = begin_run(index, str(root))
        report.run_id = run_id
        # Everything after begin_run is inside the try: a Ctrl-C while touched series are hashed (a copied
        # archive can take a while) is recorded as interrupted, not left "running".
        status = "interrupted"
        try:
            todo, outcomes = plan_run(index, root, plan, report, retry_errors, workers, progress)
            _run_pipeline(index, root, model, todo, run_id, report, outcomes, workers, batch_size, progress,
                          faiss_flush_seconds)
            status = "ok"
        finally:
            end_run(index, run_id, report, status, started)
    log.info("ingest run %d: %s", run_id, report.summary())
    return report


def end_run(index: "ArchiveIndex", run_id: int, report: IngestReport, status: str, started: float) -> None:
    """Settle FAISS (re-choosing its type after a clean run) and record the run's outcome in SQL."""
    t0 = time.perf_counter()
    if index._mirror_stale:
        # A study's values or patient changed (write_batch): the organs of its other series changed in SQL too,
        # so the in-memory filter columns are re-read, once a run rather than once a batch.
        index._mirror_stale = False
        index._load_state()
    settle_faiss(index, rechoose=status == "ok")
    report.timings["faiss"] += time.perf_counter() - t0
    report.seconds = time.perf_counter() - started
    summary = report.to_dict()
    summary.pop("errors")
    index.store.finish_run(run_id, status, summary)


def _run_pipeline(index: "ArchiveIndex", root: Path, model: Any, todo: List[Item], run_id: int,
                  report: IngestReport, outcomes: List[Dict[str, Any]], workers: int, batch_size: int,
                  progress: Optional[bool], faiss_flush_seconds: float) -> None:
    from tqdm import tqdm  # noqa: PLC0415

    show = sys.stderr.isatty() if progress is None else progress
    bound_heap_growth()
    bar = tqdm(total=len(todo), unit="series", disable=not show, desc="ingest")
    pending: List[_Prepared] = []
    last_flush = time.perf_counter()

    def ok_outcome(e: _Encoded) -> Dict[str, Any]:
        return {"series_uid": e.item.key, "fingerprint": e.item.fingerprint, "status": "ok", "reason": None,
                "n_organs": len(e.names)}

    def write(encoded: List[_Encoded], extra: List[Dict[str, Any]]) -> None:
        t0 = time.perf_counter()
        added, removed = write_batch(index, run_id, encoded, extra + [ok_outcome(e) for e in encoded],
                                     report.warnings)
        report.timings["write"] += time.perf_counter() - t0
        report.organs_added += added
        report.organs_removed += removed
        report.ok += len(encoded)

    def flush() -> None:
        nonlocal pending, last_flush
        batch, pending = pending, []
        encoded: List[_Encoded] = []
        if batch:
            t0 = time.perf_counter()
            try:
                encoded = _encode(model, batch, batch_size)
            except Exception:  # noqa: BLE001 - find the study that fails, keep the others
                for p in batch:
                    try:
                        encoded += _encode(model, [p], 1)
                    except Exception as exc:  # noqa: BLE001
                        failed(p.item, exc)
            report.timings["encode"] += time.perf_counter() - t0
        if encoded or outcomes:
            extra = list(outcomes)
            outcomes[:] = []
            try:
                write(encoded, extra)
            except SQLAlchemyError:  # a value the database refuses: write one by one, record the failures
                for e in encoded:
                    try:
                        write([e], [])
                    except SQLAlchemyError as exc:
                        failed(e.item, exc)
                pending = extra + list(outcomes)
                outcomes[:] = []
                try:
                    write([], pending)
                except SQLAlchemyError:  # an outcome the database refuses must not stop the run: one by one
                    for o in pending:
                        try:
                            write([], [o])
                        except SQLAlchemyError as exc:
                            log.warning("the outcome of series %s could not be recorded: %s", o["series_uid"],
                                        redact(exc, root))
        if time.perf_counter() - last_flush > faiss_flush_seconds:
            t0 = time.perf_counter()
            index._persist_ann()
            report.timings["faiss"] += time.perf_counter() - t0
            last_flush = time.perf_counter()

    def failed(item: Item, exc: BaseException) -> None:
        reason = redact(exc, root, item)
        if isinstance(exc, CTGlipError):
            log.warning("series %s skipped: %s", item.key, reason)
        else:  # a bug or an unexpected library error: keep the run going, keep the traceback in debug logs
            log.warning("series %s skipped after an unexpected error: %s", item.key, reason)
            log.debug("traceback", exc_info=exc)
        report.errors.append({"series": item.key, "reason": reason})
        outcomes.append({"series_uid": item.key, "fingerprint": item.fingerprint, "status": "error",
                         "reason": reason})

    def collect(item: Item, fut: "Future[_Prepared]") -> None:
        try:
            prepared = fut.result()
        except Exception as exc:  # noqa: BLE001 - one bad study must not stop the archive
            failed(item, exc)
            bar.update(1)
            return
        for k, v in prepared.timings.items():
            report.timings[k] += v
        for w in prepared.warnings:
            log.warning("series %s: %s", item.key, w)
            report.warnings.append({"series": item.key, "warning": w})
        pending.append(prepared)
        bar.update(1)
        if len(pending) >= batch_size:
            flush()

    try:
        # Reads, alignment and preprocessing run ahead in threads; the network and SQL stay on this thread.
        with closing(read_ahead(lambda item: _read_one(index, root, item, model), todo, workers,
                                "ctglip-ingest")) as ahead:
            for item, fut in ahead:
                collect(item, fut)
        flush()
    finally:
        bar.close()
