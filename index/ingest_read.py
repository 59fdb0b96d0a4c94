"""Ingest's read side: plan the archive (refusing one without studies), then, in worker threads, read one
series, check and align its mask, read its study metadata, preprocess."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union

import numpy as np

from ctglip_sdk.errors import ConfigError, CTGlipError, GeometryError, InputError
from ctglip_sdk.privacy import dicom_identifiers, pseudonymize, redact_identifiers

from .content import item_digest
from .filters import normalise_sex, to_date
from .layout import Item, plan_archive

if TYPE_CHECKING:  # pragma: no cover
    from .archive import ArchiveIndex

__all__ = ["ArchivePlan", "plan_ingest"]

#: How the "no studies" error describes what ingest reads (the layouts of docs/data.md and docs/index.md).
LAYOUTS = ("ingest reads ROOT/manifest.csv (one row per series, with an 'image' column of paths relative to ROOT; "
           "docs/data.md) or, without a manifest, DICOM series (any file names) and NIfTI images (.nii, .nii.gz) "
           "anywhere below ROOT, each paired with its TotalSegmentator mask by name (docs/index.md, 'Layout')")


@dataclass(frozen=True)
class ArchivePlan:
    """The series of an archive as ingest will read them, made by :func:`plan_ingest`.

    It is a path-like object (``os.fspath(plan)`` is the archive root as given), so it can be passed to
    ``ArchiveIndex.ingest`` in place of the folder: the archive is then not listed a second time. A plan is a
    snapshot of the files; ingest it right away (a file changed since is re-ingested by the next run, as its
    fingerprint then differs from the recorded one).

    Attributes:
        archive: the archive root as given.
        items: the series to ingest, in a stable order.
        errors: ``(key, reason)`` for entries that cannot be planned (counted as seen, recorded as failed).
        seconds: time spent planning.
    """

    archive: str
    items: Tuple[Item, ...]
    errors: Tuple[Tuple[str, str], ...]
    seconds: float = 0.0

    @property
    def root(self) -> Path:
        return Path(self.archive)

    def __fspath__(self) -> str:
        return self.archive

    def __len__(self) -> int:
        """Series seen: planned ones plus entries that could not be planned."""
        return len(self.items) + len(self.errors)


def plan_ingest(archive: Union[str, "os.PathLike[str]"], allow_empty: bool = False) -> ArchivePlan:
    """List the series of ``archive`` that ingest would read, without touching any index.

    Why a separate step: an archive in which nothing is found is almost always a mistake (a wrong path, an
    unmounted share that looks like an empty folder), and it must be refused before an index is created or an
    existing one records a run. ``ctglip ingest`` plans first, then creates or opens the index.

    Args:
        archive: archive root folder (an ArchivePlan is returned as is).
        allow_empty: return an empty plan instead of raising when no series is found (a drop folder that may
            be empty on some nights); ingesting it records a run with 0 series seen.

    Raises:
        InputError: the folder does not exist, or no study is found in it (the message names the root as given
            and the layouts ingest reads).

    Example:
        >>> plan = plan_ingest("archive/")                          # doctest: +SKIP
        >>> idx = ArchiveIndex.create("idx/", model="ctglip-tiny-synthetic")  # doctest: +SKIP
        >>> idx.ingest(plan)                                        # doctest: +SKIP
    """
    if isinstance(archive, ArchivePlan):
        return archive
    if not isinstance(archive, (str, os.PathLike)):
        raise ConfigError(f"ingest: expected an archive folder path, got {type(archive).__name__}")
    given = os.fspath(archive)
    root = Path(given)
    if not root.is_dir():
        raise InputError("archive folder not found", path=given)
    t0 = time.perf_counter()
    items, errors = plan_archive(root)
    plan = ArchivePlan(given, tuple(items), tuple(errors), time.perf_counter() - t0)
    if not plan and not allow_empty:
        found = ("its manifest.csv lists no series" if (root / "manifest.csv").is_file() else
                 "no manifest.csv, and no DICOM CT series or NIfTI image below it (mask files, other modalities "
                 "and other files are not studies)")
        raise InputError(f"no studies found: {found}; {LAYOUTS}. Check the path (an unmounted share looks like "
                         "an empty folder); nothing was ingested", path=given)
    return plan


@dataclass
class _Prepared:
    item: Item
    fields: Dict[str, Any]
    geometry: Dict[str, Any]
    prep: Any = None            # the model's PreparedStudy (preprocessed in the worker)
    raw: Any = None             # (volume, segmentation) when the model has no separate prepare step
    timings: Dict[str, float] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)  # metadata values that could not be read (stored empty)


def _read_one(index: "ArchiveIndex", root: Path, item: Item, model: Any) -> _Prepared:
    """Worker: read the image, align the mask, preprocess with the model's spec (no torch forward pass)."""
    from ctglip_sdk.io import (check_mask_grid, load_listed_volume, load_segmentation,  # noqa: PLC0415
                               load_volume, resolve_within)

    t: Dict[str, float] = {}
    t0 = time.perf_counter()
    image = resolve_within(root, item.image)
    # Hashed before the read: a file changed after this gives another digest next time, so the stored digest
    # never vouches for bytes newer than those embedded (index/content.py).
    digest = item_digest(root, item)
    if len(series_patient_ids_of(root, item)) > 1:  # `ctglip manifest` refuses the same series
        # the loader reads one header: the stored patient would depend on which (values never shown)
        raise InputError("the series' files carry different PatientIDs (first, middle and last file read): "
                         "two patients' images under one SeriesInstanceUID", path=item.image)
    keep_ids = bool(index.manifest.get("include_identifiers"))
    if item.load_series_uid is not None:  # discovery found several series in this folder and named this one
        volume = load_volume(image, series_uid=item.load_series_uid, include_identifiers=keep_ids)
    else:  # a manifest row names its series (docs/data.md): read when its folder also holds a localizer
        volume = load_listed_volume(image, series_uid=item.row.get("series_uid"), include_identifiers=keep_ids)
    t["read"] = time.perf_counter() - t0
    if not item.mask:
        raise InputError("no segmentation mask for this image (see docs/index.md for the names tried)",
                         path=item.image)
    t0 = time.perf_counter()
    mask = resolve_within(root, item.mask)
    if not mask.exists():
        raise InputError("no such file or folder (segmentation mask)", path=item.mask)
    # TotalSegmentator writes masks on the image's grid: another grid is the wrong mask (ctglip_sdk.io.mask_grid).
    check_mask_grid(mask, volume, shown=item.mask)
    seg = load_segmentation(mask, like=volume)
    if not seg.array.any():
        raise GeometryError("mask mismatch: no labelled voxel falls inside the image", path=item.mask)
    t["align"] = time.perf_counter() - t0
    warnings: List[str] = []
    fields = _study_fields(index, root, item, volume.meta, warnings)
    # Again after the read (from the digest cache unless a file changed meanwhile): a file rewritten during the
    # read, even back to its first bytes later, must not leave a digest that vouches for other bytes than these.
    fields["content_digest"] = digest if item_digest(root, item) == digest else None
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


def checked_sex(value: Any) -> Tuple[Optional[str], Optional[str]]:
    """(sex as stored, None) or (None, why it cannot be): 'M'/'F'/'O' from common spellings."""
    try:
        return normalise_sex(value), None
    except CTGlipError:
        return None, "is not M, F or O"


def checked_age(value: Any) -> Tuple[Optional[float], Optional[str]]:
    """(age as stored, None) or (None, why it cannot be): a number in 0-150, the range add_embeddings enforces."""
    try:
        age = float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None, "is not a number"
    if age is not None and not 0 <= age <= 150:
        return None, "is outside 0-150"
    return age, None


def header_contrast(meta: Dict[str, Any]) -> Optional[str]:
    """The contrast column from an image header: the ContrastBolusAgent text, "none" when the header says none."""
    return meta.get("contrast_agent") or ("none" if meta.get("contrast") is False else None)


def series_patient_ids_of(root: Path, item: Item) -> set:
    """The distinct PatientIDs of a discovered DICOM series' first, middle and last file (empty for NIfTI or a
    manifest row, whose files discovery did not list)."""
    if not item.files or item.files[0].lower().endswith((".nii", ".nii.gz")):
        return set()
    from ctglip_sdk.io.discover_checks import series_patient_ids  # noqa: PLC0415 - pydicom only for DICOM

    return series_patient_ids(root, item.files, item.uid)


def backfill_shown_paths(index: "ArchiveIndex", root: Path, items: List[Item]) -> int:
    """Give unchanged series stored before schema 2 their redacted path (a skipped series was never rewritten,
    so its output kept the PatientID of folder names for good); returns how many were filled."""
    from sqlalchemy import select, update  # noqa: PLC0415

    se = index.store.t.series
    if index.store.read(lambda c: c.execute(select(se.c.id).where(se.c.shown_path.is_(None)).limit(1)).first()) \
            is None:
        return 0  # every stored path is redacted already: no per-run lookup of the unchanged series
    by_key = {i.key: i for i in items}
    keys = sorted(by_key)
    missing: List[str] = []
    for start in range(0, len(keys), 900):
        part = keys[start:start + 900]
        missing += index.store.read(lambda c, part=part: c.execute(
            select(se.c.series_uid).where(se.c.series_uid.in_(part) & se.c.shown_path.is_(None))).scalars().all())
    if not missing:
        return 0
    # dicom_identifiers gives [] for NIfTI, so each series is read as DICOM might be: the values ingest uses
    shown = {k: _shown_path(root, by_key[k], dicom=True) for k in missing}

    def tx(conn: Any) -> None:
        for key, path in shown.items():
            conn.execute(update(se).where(se.c.series_uid == key).values(shown_path=path))
    index.store.write(tx)
    return len(shown)


def _shown_path(root: Path, item: Item, dicom: bool) -> str:
    """The series path as output shows it: the manifest's patient_id and a DICOM header's PatientID, name and
    accession number replaced by <patient> (PACS exports name folders after them: "12345678/CT_1/...")."""
    idents: List[Optional[str]] = [item.row.get("patient_id")]
    if dicom:  # the raw values are not in the volume's meta unless the index keeps identifiers
        idents += dicom_identifiers(root / item.image)
    return redact_identifiers(item.image, idents)


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
        # The value is never quoted: a shifted CSV row ("Doe, John" unquoted) puts a name or record number in
        # the age or sex column, and warnings are printed, logged and kept in the index's run summary.
        source = "manifest.csv" if row.get(column) not in (None, "") else "image header"
        said.append(f"{column} from {source} {why}; stored empty")

    ident = row.get("patient_id") or (meta.get("identifiers") or {}).get("PatientID") or meta.get("patient")
    study_uid = item.study_uid or meta.get("study_uid")
    if not ident and meta.get("format") == "dicom" and study_uid:
        # An emptied PatientID (de-identified export): the study's pseudonym, as `ctglip manifest` writes it, so a
        # study's series (phases, recons) stay one patient instead of one pseudo-patient each.
        ident = f"study:{pseudonymize(study_uid)}"
    if not ident:
        ident = f"unknown:{item.key}"  # one pseudo-patient per series when nothing identifies the patient
    sex_raw = row.get("sex") or meta.get("sex")
    sex, why = checked_sex(sex_raw)
    if why:
        unread("sex", sex_raw, why)
    age_raw = row.get("age") if row.get("age") not in (None, "") else meta.get("age")
    age, why = checked_age(age_raw)
    if why:
        unread("age", age_raw, why)
    for column, why in meta.get("unreadable") or ():
        if row.get(column) in (None, ""):  # the manifest's own value wins over the header's
            said.append(f"{column} from the image header: {why}; stored empty")
    date_raw = row.get("study_date") or meta.get("study_date")
    try:
        date = to_date(date_raw)
    except CTGlipError:
        date = None
        unread("study_date", date_raw, "is not a date")
    contrast = row.get("contrast")
    if contrast in (None, ""):
        contrast = header_contrast(meta)
    birth = row.get("birth_year")
    return {
        "patient": index.pseudonym(str(ident)),
        "identifier": str(ident) if index.manifest.get("include_identifiers") and not str(ident).startswith(
            ("unknown:", "study:")) else None,
        "sex": sex,
        "birth_year": int(birth) if str(birth or "").isdigit() else None,
        "study_uid": _cut(study_uid or f"series:{item.key}", 255),
        "study_date": date,
        "age": age,
        # Cut to the column sizes: PostgreSQL refuses longer values, and these are descriptive only.
        "description": _cut(row.get("description") or meta.get("series_description"), 256),
        "contrast": _cut(contrast, 32),
        "body_part": _cut(row.get("body_part") or meta.get("body_part"), 64),
        "split": _cut(row.get("split"), 16),
        "report_path": item.report,
        "archive_root": str(root.resolve()),
        "shown_path": _shown_path(root, item, meta.get("format") == "dicom"),
    }


def _cut(value: Any, size: int) -> Optional[str]:
    text = "" if value is None else str(value).strip()
    return text[:size] or None
