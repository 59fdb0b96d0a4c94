"""Archive ingest: read -> align masks -> preprocess -> encode (batched) -> write; resumable and crash-safe."""

from __future__ import annotations

import datetime as _dt
import logging
import sys
import time
from concurrent.futures import Future
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import numpy as np

from sqlalchemy.exc import SQLAlchemyError

from ctglip_sdk.errors import ConfigError, CTGlipError, GeometryError, InputError
from ctglip_sdk.model.voxels import STATS_VERSION
from ctglip_sdk.readahead import read_ahead

from .filters import normalise_sex, to_date
from .layout import Item, plan_archive, redact
from .memory import bound_heap_growth
from .results import IngestReport

if TYPE_CHECKING:  # pragma: no cover
    from .archive import ArchiveIndex

__all__ = ["ingest", "STAGES"]

log = logging.getLogger(__name__)

#: Per-stage timings reported by IngestReport.timings (seconds summed over series; read/align/preprocess run
#: in worker threads, so their sum can exceed the wall time).
STAGES = ("plan", "read", "align", "preprocess", "encode", "write", "faiss")


@dataclass
class _Prepared:
    item: Item
    fields: Dict[str, Any]
    geometry: Dict[str, Any]
    prep: Any = None            # the model's PreparedStudy (preprocessed in the worker)
    raw: Any = None             # (volume, segmentation) when the model has no separate prepare step
    timings: Dict[str, float] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)  # metadata values that could not be read (stored empty)


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


def _check_mask_grid(mask_path: Path, volume: Any) -> None:
    """A TotalSegmentator mask lies on its image's grid; a different grid means the wrong mask (mask mismatch)."""
    import nibabel as nib  # noqa: PLC0415

    from ctglip_sdk.io.geometry import canonical_affine, canonical_shape, grid_offset_voxels  # noqa: PLC0415
    from ctglip_sdk.io.nifti import is_nifti  # noqa: PLC0415

    if not mask_path.exists():
        raise InputError("no such file or folder (segmentation mask)", path=mask_path.name)
    if mask_path.is_dir() or not is_nifti(mask_path):
        return
    try:
        img = nib.load(str(mask_path))
    except Exception as exc:  # noqa: BLE001 - nibabel raises several kinds for corrupt headers
        raise InputError(f"unreadable mask ({type(exc).__name__})", path=mask_path.name) from None
    shape = canonical_shape(img.affine, tuple(int(s) for s in img.shape[:3]))
    if tuple(shape) != tuple(volume.shape):
        raise GeometryError(f"mask mismatch: the mask's grid is {tuple(shape)} voxels, the image's {tuple(volume.shape)}",
                            path=mask_path.name)
    # Same shape is not the same grid: a mask written with another origin, or with an LPS affine read as RAS,
    # would be resampled onto other voxels and embed the wrong organs. Half a voxel is where nearest-neighbour
    # lookup starts to move labels, so anything within it is the image's own grid up to rounding.
    mask_affine = canonical_affine(img.affine, img.shape[:3])
    off = grid_offset_voxels(mask_affine, shape, volume.affine)
    if off > 0.5:
        shift = np.asarray(mask_affine)[:3, 3] - np.asarray(volume.affine)[:3, 3]
        raise GeometryError(f"mask mismatch: same shape as the image but another grid (corners up to {off:.1f} "
                            f"voxels apart; origins differ by {np.linalg.norm(shift):.1f} mm)", path=mask_path.name)


def _read_one(index: "ArchiveIndex", root: Path, item: Item, model: Any) -> _Prepared:
    """Worker: read the image, align the mask, preprocess with the model's spec (no torch forward pass)."""
    from ctglip_sdk.io import load_segmentation, load_volume, resolve_within  # noqa: PLC0415

    t: Dict[str, float] = {}
    t0 = time.perf_counter()
    image = resolve_within(root, item.image)
    keep_ids = bool(index.manifest.get("include_identifiers"))
    try:
        volume = load_volume(image, series_uid=item.load_series_uid, include_identifiers=keep_ids)
    except InputError as exc:
        # A manifest row names its series (docs/data.md): a folder that also holds a localizer or another
        # reconstruction is read for that series instead of refused.
        wanted = item.row.get("series_uid")
        if item.load_series_uid is not None or wanted not in (getattr(exc, "series", None) or ()):
            raise
        volume = load_volume(image, series_uid=wanted, include_identifiers=keep_ids)
    t["read"] = time.perf_counter() - t0
    if not item.mask:
        raise InputError("no segmentation mask for this image (see docs/index.md for the names tried)",
                         path=item.image)
    t0 = time.perf_counter()
    mask = resolve_within(root, item.mask)
    if not mask.exists():
        raise InputError("no such file or folder (segmentation mask)", path=item.mask)
    _check_mask_grid(mask, volume)
    seg = load_segmentation(mask, like=volume)
    if not seg.array.any():
        raise GeometryError("mask mismatch: no labelled voxel falls inside the image", path=item.mask)
    t["align"] = time.perf_counter() - t0
    warnings: List[str] = []
    fields = _study_fields(index, root, item, volume.meta, warnings)
    geometry = {"shape": ",".join(str(s) for s in volume.shape),
                "spacing": ",".join(f"{s:.4g}" for s in volume.spacing),
                "affine": ",".join(f"{v:.6g}" for v in np.asarray(volume.affine).ravel()[:12])}
    out = _Prepared(item, fields, geometry, timings=t, warnings=warnings)
    t0 = time.perf_counter()
    if hasattr(model, "prepare") and hasattr(model, "encode_prepared"):
        import torch  # noqa: PLC0415 - the model needs it anyway

        with torch.inference_mode():
            out.prep = model.prepare(volume, seg)
        if not out.prep.names:
            raise GeometryError("mask mismatch: no organ of the mask overlaps the image", path=item.mask)
    else:
        out.raw = (volume, seg)
    t["preprocess"] = time.perf_counter() - t0
    return out


def _study_fields(index: "ArchiveIndex", root: Path, item: Item, meta: Dict[str, Any],
                  warnings: Optional[List[str]] = None) -> Dict[str, Any]:
    """Patient/study values: the manifest row first, the image header second; identifiers pseudonymised.

    A value that cannot be read (age "seventy", date "2020-13-40", sex "X", age 999) is stored empty, and a line
    naming the column, the source and the value is added to ``warnings``: such a study drops out of every search
    and cohort filtered on that column, which must not happen unsaid.
    """
    row = item.row
    said = warnings if warnings is not None else []

    def unread(column: str, value: Any, why: str) -> None:
        source = "manifest.csv" if row.get(column) not in (None, "") else "image header"
        said.append(f"{column} {str(value)[:40]!r} from {source} {why}; stored empty")

    ident = row.get("patient_id") or (meta.get("identifiers") or {}).get("PatientID") or meta.get("patient")
    if not ident:
        ident = f"unknown:{item.key}"  # one pseudo-patient per series when nothing identifies the patient
    sex_raw = row.get("sex") or meta.get("sex")
    try:
        sex = normalise_sex(sex_raw)
    except CTGlipError:
        sex = None
        unread("sex", sex_raw, "is not M, F or O")
    age_raw = row.get("age") if row.get("age") not in (None, "") else meta.get("age")
    try:
        age = float(age_raw) if age_raw not in (None, "") else None
    except (TypeError, ValueError):
        age = None
        unread("age", age_raw, "is not a number")
    if age is not None and not 0 <= age <= 150:  # the range add_embeddings enforces
        unread("age", age_raw, "is outside 0-150")
        age = None
    date_raw = row.get("study_date") or meta.get("study_date")
    try:
        date = to_date(date_raw)
    except CTGlipError:
        date = None
        unread("study_date", date_raw, "is not a date")
    contrast = row.get("contrast")
    if contrast in (None, ""):
        contrast = meta.get("contrast_agent") or ("none" if meta.get("contrast") is False else None)
    birth = row.get("birth_year")
    return {
        "patient": index.pseudonym(str(ident)),
        "identifier": str(ident) if index.manifest.get("include_identifiers") and not str(ident).startswith(
            "unknown:") else None,
        "sex": sex,
        "birth_year": int(birth) if str(birth or "").isdigit() else None,
        "study_uid": _cut(item.study_uid or meta.get("study_uid") or f"series:{item.key}", 255),
        "study_date": date,
        "age": age,
        # Cut to the column sizes: PostgreSQL refuses longer values, and these are descriptive only.
        "description": _cut(row.get("description") or meta.get("series_description"), 256),
        "contrast": _cut(contrast, 32),
        "body_part": _cut(row.get("body_part") or meta.get("body_part"), 64),
        "split": _cut(row.get("split"), 16),
        "report_path": item.report,
        "archive_root": str(root.resolve()),
    }


def _cut(value: Any, size: int) -> Optional[str]:
    text = "" if value is None else str(value).strip()
    return text[:size] or None


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
                outcomes: List[Dict[str, Any]]) -> Tuple[int, int]:
    """Persist one batch: vectors appended + fsynced, then every SQL row in one transaction, then memory.

    Returns ``(organs added, organs removed)``. The caller holds the writer lock.
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

    def tx(conn: Any) -> Tuple[List[int], int]:
        removed: List[int] = []
        rows: List[Dict[str, Any]] = []
        mirror_rows.clear()
        pos = 0
        for e in encoded:
            f = e.fields
            pid, sex = store.ensure_patient(conn, f["patient"], f["identifier"], f["sex"], f["birth_year"])
            study = {k: f[k] for k in ("study_date", "age", "description", "contrast", "body_part", "split",
                                       "report_path")}
            sid, srow = store.ensure_study(conn, f["study_uid"], pid, study)
            removed += store.delete_series(conn, e.item.key)
            ser = store.insert_series(conn, {"series_uid": e.item.key, "study_id": sid, "path": e.item.image,
                                             "archive_root": e.fields["archive_root"],
                                             "mask_path": e.item.mask, "fingerprint": e.item.fingerprint,
                                             "n_organs": len(e.names), **e.geometry})
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
        store.insert_organs(conn, rows)
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
    index._ann_lock.acquire_write()
    try:
        ann = index.ann
        if ann is None or not ann.is_trained or (removed and not ann.remove(np.asarray(removed, np.int64))):
            view = index.mirror.view()  # HNSW cannot remove: rebuild from the mirror (it holds this batch)
            index.ann = index._build_ann_safe(ann.factory if ann is not None else "Flat", view.ids, view.vecs)
        elif n:
            ann.add(ids, vecs)
    finally:
        index._ann_lock.release_write()
    index._data_version = version
    index._ann_dirty = True
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
    finds, with masks matched by name (docs/index.md). Series already ingested with the same file
    fingerprint are skipped, so re-running adds nothing and an interrupted run continues where it stopped;
    a series whose files changed is replaced. A series that fails (unreadable, geometry, mask mismatch) is
    recorded with its reason and skipped; ``retry_errors=True`` tries such series again.

    Args:
        archive: archive root folder.
        workers: threads that read, align and preprocess ahead of the encoder (memory holds at most
            ``2 * workers + batch_size`` prepared studies, whatever the archive's size).
        batch_size: studies per encoder batch and per SQL transaction.
        retry_errors: retry series whose previous attempt failed with unchanged files.
        progress: show a tqdm bar (default: when stderr is a terminal).
        faiss_flush_seconds: how often the FAISS file is rewritten during a long run.

    Returns:
        IngestReport with counts, per-stage timings and the failed series with reasons.

    Example:
        >>> report = idx.ingest("archive/", workers=2)  # doctest: +SKIP
        >>> print(report.summary())                    # doctest: +SKIP
    """
    root = Path(archive)
    if not root.is_dir():
        raise InputError("archive folder not found", path=root)
    if batch_size < 1 or workers < 0:
        raise InputError(f"batch_size must be >= 1 and workers >= 0, got {batch_size} and {workers}")
    model = index.model
    _warn_stats_version(index, model)
    started = time.perf_counter()
    report = IngestReport(run_id=0, archive=str(root), started_at=_dt.datetime.now(_dt.timezone.utc),
                          timings={s: 0.0 for s in STAGES})
    with index.writer_lock:
        run_id = begin_run(index, str(root))
        report.run_id = run_id
        t0 = time.perf_counter()
        items, plan_errors = plan_archive(root)
        done = index.store.series_fingerprints()
        failed = index.store.last_errors()
        report.timings["plan"] = time.perf_counter() - t0
        todo: List[Item] = []
        outcomes: List[Dict[str, Any]] = []
        for key, reason in plan_errors:
            report.errors.append({"series": key, "reason": reason})
            outcomes.append({"series_uid": key, "fingerprint": None, "status": "error", "reason": reason})
        for item in items:
            if done.get(item.key) == item.fingerprint:
                report.skipped += 1
            elif not retry_errors and item.key in failed and failed[item.key][0] == item.fingerprint:
                # counted once, as an error (not also as skipped): ok + skipped + errors == seen
                report.errors.append({"series": item.key, "reason": f"previous attempt failed: {failed[item.key][1]}"})
            else:
                todo.append(item)
        report.seen = len(items) + len(plan_errors)
        status = "interrupted"
        try:
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
        added, removed = write_batch(index, run_id, encoded, extra + [ok_outcome(e) for e in encoded])
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
                write([], extra + list(outcomes))
                outcomes[:] = []
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
