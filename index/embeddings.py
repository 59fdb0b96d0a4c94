"""Precomputed organ embeddings (``SeriesEmbeddings``) written into an index through ingest's own write path."""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

import numpy as np

from ctglip_sdk.errors import CTGlipError, IndexStateError, InputError
from ctglip_sdk.privacy import redact_identifiers

from .results import IngestReport

if TYPE_CHECKING:  # pragma: no cover
    from .archive import ArchiveIndex
    from .ingest import _Encoded

__all__ = ["SeriesEmbeddings", "add_embeddings"]

log = logging.getLogger(__name__)

DateLike = Union[str, _dt.date, None]


@dataclass
class SeriesEmbeddings:
    """The organ vectors of one series, computed elsewhere, with what ingest would have read from its files.

    Field names follow the archive manifest (docs/data.md), so a manifest row can be passed as keywords. Only
    ``series_uid``, ``organs`` and ``vectors`` are required; what is missing is stored as unknown (NULL) and
    filters on it do not match.

    Attributes:
        series_uid: the series' identity in the index (a series already there with other vectors is replaced).
        organs: organ class names, one per row: TotalSegmentator names or synonyms (``"left kidney"``), stored
            canonical (``kidney_left``).
        vectors: ``[n, D]`` vectors from a model with the index's config hash (stored unit norm, float16).
        bboxes: ``[n, 6]`` int ``(i0, j0, k0, i1, j1, k1)``, half-open, on the series' RAS+ grid; or None.
        volumes_ml, mean_hu: ``[n]`` organ volumes (ml) and mean HU; or None.
        study_uid: the study; default ``series:<series_uid>`` (what ingest uses for a series without one).
        patient_id: the original patient identifier, stored as the index's keyed pseudonym (the identifier
            itself only with ``include_identifiers=True``); None = a pseudo-patient of its own.
        sex, age, birth_year, study_date, contrast, body_part, description, split: study metadata (filters).
        image, mask, report: file paths relative to ``archive_root`` (montages); optional.
        archive_root: the folder those paths are relative to.
        shape, spacing, affine: the series' canonical grid (voxels, mm, 4 x 4 or 12 values); optional.
        fingerprint: what identifies this content (default: a hash of the organ names and float16 vectors, and
            a keyed hash of the metadata); a series stored with the same fingerprint is skipped, so adding the
            same records twice adds nothing, and the same vectors with corrected metadata replace the stored.

    Example:
        >>> rec = SeriesEmbeddings("1.2.3.4", ["liver", "spleen"], np.eye(2, 128, dtype=np.float32),
        ...                        study_uid="1.2.3", patient_id="PAT-1", sex="F", age=63)
        >>> rec.organs
        ['liver', 'spleen']
    """

    series_uid: str
    organs: Sequence[str]
    vectors: np.ndarray
    bboxes: Optional[np.ndarray] = None
    volumes_ml: Optional[np.ndarray] = None
    mean_hu: Optional[np.ndarray] = None
    study_uid: Optional[str] = None
    patient_id: Optional[str] = None
    sex: Optional[str] = None
    age: Optional[float] = None
    birth_year: Optional[int] = None
    study_date: DateLike = None
    contrast: Optional[str] = None
    body_part: Optional[str] = None
    description: Optional[str] = None
    split: Optional[str] = None
    image: Optional[str] = None
    mask: Optional[str] = None
    report: Optional[str] = None
    archive_root: Optional[str] = None
    shape: Optional[Sequence[int]] = None
    spacing: Optional[Sequence[float]] = None
    affine: Optional[Any] = None
    fingerprint: Optional[str] = None

    @classmethod
    def from_organ_embeddings(cls, embeddings: Any, series_uid: str, **fields: Any) -> "SeriesEmbeddings":
        """A record from ``model.encode_organs(vol, seg)`` (names, vectors, boxes, volumes, mean HU) + metadata.

        Example:
            >>> emb = model.encode_organs(vol, seg)                                          # doctest: +SKIP
            >>> rec = SeriesEmbeddings.from_organ_embeddings(emb, "1.2.3.4", age=63, sex="F",
            ...                                              shape=vol.shape, spacing=vol.spacing)  # doctest: +SKIP
        """
        return cls(series_uid=series_uid, organs=list(embeddings.names), vectors=np.asarray(embeddings.vectors),
                   bboxes=getattr(embeddings, "bboxes", None), volumes_ml=getattr(embeddings, "volumes_ml", None),
                   mean_hu=getattr(embeddings, "mean_hu", None), **fields)


def add_embeddings(index: "ArchiveIndex", series: Union[SeriesEmbeddings, Iterable[SeriesEmbeddings]],
                   config_hash: str, weights_hash: Optional[str] = None, batch_size: int = 256,
                   source: str = "embeddings") -> IngestReport:
    """Store organ vectors computed elsewhere (another machine, a GPU job) with their study metadata.

    The records take ingest's write path: per batch, vectors appended to the vector file and fsynced, then
    every SQL row in one transaction, then the in-memory mirror and FAISS; at the end the FAISS type is
    re-chosen for the size (``"auto"``) and the FAISS file written. A crash leaves the index as a crashed ingest
    does (it opens, ``verify()`` passes, adding again completes it). A series already stored with the same
    fingerprint is skipped; with another, replaced.

    Every record is checked before its batch is written: vector width = the index's dimension, finite non-zero
    vectors, known organ names without duplicates, array lengths, sex, date, age. A bad record raises
    InputError naming its series and study; the batches before it stay committed and nothing of its batch is
    written (adding the fixed records again skips what is stored).

    Args:
        series: one record or an iterable of them (a generator streams: memory holds one batch).
        config_hash: ``config_hash`` of the model that computed the vectors; must be the index's
            (IndexStateError otherwise: vectors of different models are not comparable).
        weights_hash: the model's ``weights_hash()``, checked against the index's when both are known.
        batch_size: series per SQL transaction.
        source: what the run is recorded as (``ingest_runs.archive``; ``export(what="ingest")``).

    Returns:
        IngestReport (``seen``, ``ok``, ``skipped``, ``organs_added``, ``organs_removed``; timings ``write``,
        ``faiss`` and ``plan`` = checking the records).

    Example:
        >>> report = idx.add_embeddings(records, config_hash=model.config_hash)  # doctest: +SKIP
        >>> report.organs_added                                                   # doctest: +SKIP
        40
    """
    from sqlalchemy.exc import SQLAlchemyError  # noqa: PLC0415

    from .ingest import STAGES, begin_run, end_run, write_batch  # noqa: PLC0415

    _check_model(index, config_hash, weights_hash)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    records: Iterable[SeriesEmbeddings] = [series] if isinstance(series, SeriesEmbeddings) else series
    started = time.perf_counter()
    report = IngestReport(run_id=0, archive=str(source), started_at=_dt.datetime.now(_dt.timezone.utc),
                          timings={s: 0.0 for s in STAGES})
    with index.writer_lock:
        run_id = begin_run(index, str(source))
        report.run_id = run_id
        stored = index.store.series_fingerprints()
        seen: Set[str] = set()
        batch: List["_Encoded"] = []

        def write() -> None:
            t0 = time.perf_counter()
            outcomes = [{"series_uid": e.item.key, "fingerprint": e.item.fingerprint, "status": "ok", "reason": None,
                         "n_organs": len(e.names)} for e in batch]
            try:
                added, removed = write_batch(index, run_id, batch, outcomes, report.warnings)
            except SQLAlchemyError as exc:
                orig = getattr(exc, "orig", exc)
                raise InputError(f"the database refused the batch of series {batch[0].item.key} .. "
                                 f"{batch[-1].item.key}: {type(orig).__name__}: {str(orig).splitlines()[0]}") from None
            report.timings["write"] += time.perf_counter() - t0
            report.ok += len(batch)
            report.organs_added += added
            report.organs_removed += removed
            batch.clear()

        status = "interrupted"
        try:
            for rec in records:
                t0 = time.perf_counter()
                report.seen += 1
                enc = _encoded(index, rec, seen)
                report.timings["plan"] += time.perf_counter() - t0
                if stored.get(enc.item.key) == enc.item.fingerprint:
                    report.skipped += 1
                    continue
                batch.append(enc)
                if len(batch) >= batch_size:
                    write()
            if batch:
                write()
            status = "ok"
        finally:
            end_run(index, run_id, report, status, started)
    log.info("add_embeddings run %d: %s", run_id, report.summary())
    return report


def _check_model(index: "ArchiveIndex", config_hash: str, weights_hash: Optional[str]) -> None:
    rec = index.manifest["model"]
    if not isinstance(config_hash, str) or not config_hash:
        raise InputError("config_hash must be the config_hash of the model that computed the vectors "
                         f"(this index: {rec['config_hash']}), got {config_hash!r}")
    if config_hash != rec["config_hash"]:
        raise IndexStateError(f"this index holds vectors of model {rec['name']!r} (config {rec['config_hash'][:12]}); "
                              f"the embeddings come from config {config_hash[:12]}. Vectors of different models are "
                              "not comparable: encode with the index's model or create a new index", path=index.folder)
    if weights_hash and rec.get("weights_hash") and weights_hash != rec["weights_hash"]:
        raise IndexStateError(f"this index holds vectors of other weights of {rec['name']!r} (weights "
                              f"{rec['weights_hash'][:12]}, embeddings {weights_hash[:12]}); encode with the index's "
                              "model or create a new index", path=index.folder)


def _encoded(index: "ArchiveIndex", rec: SeriesEmbeddings, seen: Set[str]) -> "_Encoded":
    """Validate one record and turn it into what ``write_batch`` writes (errors name the series and study)."""
    from .ingest import _cut, _Encoded  # noqa: PLC0415
    from .layout import Item  # noqa: PLC0415

    if not isinstance(rec, SeriesEmbeddings):
        raise InputError(f"expected SeriesEmbeddings records, got {type(rec).__name__}")
    uid = rec.series_uid
    if not isinstance(uid, str) or not uid.strip() or len(uid) > 255:
        raise InputError(f"series_uid must be a non-empty string of at most 255 characters, got {uid!r}")
    study = rec.study_uid if not _missing(rec.study_uid) else f"series:{uid}"
    where = f"series {uid} (study {study})"

    def bad(message: str) -> InputError:
        return InputError(f"{where}: {message}")

    if not isinstance(study, str) or len(study) > 255:
        raise bad("study_uid must be a string of at most 255 characters")
    if uid in seen:
        raise bad("given twice in one call")
    names = _organ_names(rec.organs, bad)
    n = len(names)
    vectors = np.asarray(rec.vectors)
    if vectors.ndim != 2 or vectors.shape[0] != n or not np.issubdtype(vectors.dtype, np.number):
        raise bad(f"vectors must be a numeric [{n}, {index.dim}] array (one row per organ), got shape "
                  f"{vectors.shape} of {vectors.dtype}")
    if vectors.shape[1] != index.dim:
        raise bad(f"vectors have {vectors.shape[1]} columns, the index's model gives {index.dim}")
    vectors = vectors.astype(np.float64)  # checked and scaled before float32, which over- or underflowed
    rows_bad = ~np.isfinite(vectors).all(axis=1)
    if rows_bad.any():
        raise bad(f"non-finite values (NaN/inf) in the vector of {names[int(np.argmax(rows_bad))]!r}")
    zero = np.abs(vectors).max(axis=1) == 0
    if zero.any():
        raise bad(f"the vector of {names[int(np.argmax(zero))]!r} is all zeros")
    vectors = vectors / np.abs(vectors).max(axis=1, keepdims=True)  # direction kept; unit norm comes at write
    vectors = vectors.astype(np.float32)
    bboxes = _array(rec.bboxes, (n, 6), "bboxes", bad)
    if bboxes is not None:
        if np.any(bboxes != np.round(bboxes)) or np.any(bboxes < 0) or np.any(bboxes[:, 3:] < bboxes[:, :3]):
            raise bad("bboxes must be non-negative integer (i0, j0, k0, i1, j1, k1) with i1 >= i0, j1 >= j0, k1 >= k0")
        bboxes = bboxes.astype(np.int64)
    volumes = _array(rec.volumes_ml, (n,), "volumes_ml", bad)
    mean_hu = _array(rec.mean_hu, (n,), "mean_hu", bad)
    fields = _study_fields(index, rec, uid, study, bad)
    seen.add(uid)
    # The default covers the metadata too (keyed, as ingest's manifest rows): the same vectors added again with a
    # corrected age or split used to be skipped, and the correction never stored.
    meta = repr(sorted((k, str(v)) for k, v in fields.items() if k not in ("archive_root", "shown_path")))
    fp = rec.fingerprint or f"{_fingerprint(names, vectors)}:{index.pseudonym(meta)[:16]}"
    if not isinstance(fp, str) or len(fp) > 64:
        raise bad("fingerprint must be a string of at most 64 characters")
    item = Item(uid, rec.image or "", rec.mask or None, rec.report or None, study, fp)
    geometry = {"shape": _cut(None if rec.shape is None else ",".join(str(int(s)) for s in rec.shape), 64),
                "spacing": _cut(None if rec.spacing is None else ",".join(f"{float(s):.4g}" for s in rec.spacing), 96),
                "affine": None if rec.affine is None else
                ",".join(f"{float(v):.6g}" for v in np.asarray(rec.affine, np.float64).ravel()[:12])}
    return _Encoded(item, fields, geometry, names, vectors, bboxes, volumes, mean_hu)


def _organ_names(organs: Any, bad: Any) -> List[str]:
    """Canonical class names (synonyms resolved, groups refused: "kidney" names two classes)."""
    if isinstance(organs, np.ndarray):
        organs = organs.tolist()
    if isinstance(organs, str) or not isinstance(organs, Sequence) or not organs:
        raise bad(f"organs must be a non-empty list of organ names, got {organs!r}")
    names: List[str] = []
    for raw in organs:
        if not isinstance(raw, str):
            raise bad(f"organ names must be strings, got {raw!r}")
        try:
            found = _canonical(raw)
        except CTGlipError as exc:
            raise bad(exc.reason) from None
        if len(found) != 1:
            raise bad(f"organ {raw!r} names {len(found)} classes ({', '.join(found)}); name one class")
        names.append(found[0])
    dup = sorted(name for name, count in Counter(names).items() if count > 1)
    if dup:
        raise bad(f"organ(s) {', '.join(dup)} appear more than once")
    return names


@lru_cache(maxsize=4096)
def _canonical(raw: str) -> Tuple[str, ...]:
    """Classes a name stands for; cached, as an archive repeats the same few dozen names per series."""
    from ctglip_sdk import organs as vocab  # noqa: PLC0415

    if raw in vocab.GROUPS:
        return tuple(vocab.GROUPS[raw])
    return (raw,) if vocab.is_known(raw) else tuple(vocab.lookup(raw))


def _array(values: Any, shape: tuple, name: str, bad: Any) -> Optional[np.ndarray]:
    if values is None:
        return None
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise bad(f"{name} must be numbers") from None
    if arr.shape != shape:
        raise bad(f"{name} must have shape {shape} (one row per organ), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise bad(f"{name} holds non-finite values")
    return arr


def _study_fields(index: "ArchiveIndex", rec: SeriesEmbeddings, uid: str, study: str, bad: Any) -> Dict[str, Any]:
    """Patient and study values as ingest's ``_study_fields`` makes them (pseudonym, cut strings)."""
    from .filters import normalise_sex, to_date  # noqa: PLC0415
    from .ingest import _cut  # noqa: PLC0415

    # A manifest row read with pandas gives NaN (NaT for dates) for an empty cell: missing, as None and "" are.
    ident = None if _missing(rec.patient_id) else rec.patient_id
    try:
        sex = None if _missing(rec.sex) else normalise_sex(rec.sex)
        date = None if _missing(rec.study_date) else to_date(rec.study_date)
    except CTGlipError as exc:
        raise bad(exc.reason) from None
    age: Optional[float] = None
    if not _missing(rec.age):
        try:
            if isinstance(rec.age, bool):  # True is 1 to float(): a flag in the wrong column, not an age
                raise TypeError
            age = float(rec.age)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise bad(f"age must be a number of years, got {rec.age!r}") from None
        if not math.isfinite(age) or not 0 <= age <= 150:
            raise bad(f"age must be between 0 and 150 years, got {rec.age!r}")
    birth: Optional[int] = None
    if not _missing(rec.birth_year):
        try:  # 1960.0 from a float column is the year 1960
            year = float(rec.birth_year)  # type: ignore[arg-type]
            ok = not isinstance(rec.birth_year, bool) and year.is_integer() and 1800 <= year <= 2200
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise bad(f"birth_year must be a year, got {rec.birth_year!r}")
        birth = int(year)
    key = str(ident) if ident is not None else f"unknown:{uid}"
    return {
        "patient": index.pseudonym(key),
        "identifier": _cut(ident, 128) if ident is not None and index.manifest.get("include_identifiers") else None,
        "sex": sex, "birth_year": birth,
        "study_uid": study, "study_date": date, "age": age,
        # Cut to the column sizes, as ingest does: PostgreSQL refuses longer values; these are descriptive only.
        "description": _cut(_text(rec.description), 256), "contrast": _cut(_text(rec.contrast), 32),
        "body_part": _cut(_text(rec.body_part), 64), "split": _cut(_text(rec.split), 16),
        "report_path": _text(rec.report) or None, "archive_root": _text(rec.archive_root) or None,
        "shown_path": redact_identifiers(_text(rec.image) or "", [ident]),  # as ingest shows paths
    }


def _missing(value: Any) -> bool:
    """None, a blank string, NaN or NaT (what pandas gives for an empty cell)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return True
    try:
        return bool(value != value)  # only NaN and NaT differ from themselves
    except (TypeError, ValueError):  # an array or an object that refuses comparison: not a missing scalar
        return False


def _text(value: Any) -> Any:
    return None if _missing(value) else value


def _fingerprint(names: List[str], vectors: np.ndarray) -> str:
    """Identity of the content: organ names and the float16 vectors the index stores (20 hex, as ingest's)."""
    h = hashlib.sha1("\n".join(names).encode())
    h.update(np.ascontiguousarray(vectors.astype(np.float16)).tobytes())
    return h.hexdigest()[:20]
