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


def _grid_text(shape: Tuple[int, ...], affine: Any) -> str:
    """``(I, J, K) voxels of a x b x c mm``: how a mismatch error shows a grid (shape and spacing)."""
    spacing = np.sqrt((np.asarray(affine, dtype=np.float64)[:3, :3] ** 2).sum(axis=0))
    return f"{tuple(int(s) for s in shape)} voxels of {' x '.join(f'{s:.4g}' for s in spacing)} mm"


def _read_header(path: Path, shown: str) -> Tuple[Tuple[int, ...], np.ndarray]:
    """Stored 3-D shape and affine of a NIfTI mask, from its header alone (no voxel is read)."""
    import nibabel as nib  # noqa: PLC0415

    try:
        img = nib.load(str(path))
        dims = tuple(int(s) for s in img.shape[:3])
        return dims + (1,) * (3 - len(dims)), np.asarray(img.affine, dtype=np.float64)  # 2-D: one slice
    except Exception as exc:  # noqa: BLE001 - nibabel raises several kinds for corrupt headers
        raise InputError(f"unreadable mask ({type(exc).__name__})", path=shown) from None


def _canonical_grid(dims: Tuple[int, ...], affine: np.ndarray, shown: str) -> Tuple[Tuple[int, ...], np.ndarray]:
    """The RAS+ canonical shape and affine the loader gives a mask stored with ``dims`` and ``affine``."""
    from ctglip_sdk.io.geometry import canonical_affine, canonical_shape  # noqa: PLC0415

    try:
        return canonical_shape(affine, dims), canonical_affine(affine, dims)
    except Exception as exc:  # noqa: BLE001 - a degenerate affine (NaN, singular) has no orientation
        raise InputError(f"unreadable mask ({type(exc).__name__} on its affine)", path=shown) from None


def _folder_grid(folder: Path, shown: str) -> Optional[Tuple[Tuple[int, ...], np.ndarray]]:
    """The one grid (canonical shape, affine) of a per-class mask folder, from headers only; None when it holds
    no per-class file (the loader then says so).

    Files on different grids are refused: TotalSegmentator writes every class of a run on one grid, so such a
    folder mixes masks of different scans or runs. "One grid" is the loader's notion (same shape, affines within
    AFFINE_ATOL_MM after RAS+ reorientation), so a folder accepted here also loads without ``like=``.
    """
    from ctglip_sdk.io.segmentation import AFFINE_ATOL_MM, _per_class_files  # noqa: PLC0415

    files = _per_class_files(folder)
    if not files:
        return None
    stored = _read_header(files[0], f"{shown}{files[0].name}")
    first = _canonical_grid(*stored, f"{shown}{files[0].name}")
    others = []
    for path in files[1:]:
        dims, affine = _read_header(path, f"{shown}{path.name}")
        if dims == stored[0] and np.allclose(affine, stored[1], rtol=0, atol=AFFINE_ATOL_MM):
            continue  # the usual case: the same header, no reorientation to compute
        grid = _canonical_grid(dims, affine, f"{shown}{path.name}")
        if grid[0] != first[0] or not np.allclose(grid[1], first[1], rtol=0, atol=AFFINE_ATOL_MM):
            others.append((path.name, grid))
    if others:
        name, grid = others[0]
        raise GeometryError(f"per-class masks lie on different grids: {files[0].name} is "
                            f"{_grid_text(*first)}, {name} is {_grid_text(*grid)} ({len(others)} of {len(files)} "
                            f"files differ from {files[0].name}); every class of one TotalSegmentator run lies on "
                            "one grid, so the folder mixes masks of different scans or runs", path=shown)
    return first


def _check_mask_grid(mask_path: Path, volume: Any, rel: str) -> None:
    """A TotalSegmentator mask lies on its image's grid; a different grid means the wrong mask (mask mismatch).

    Both layouts are checked from headers, with one rule: a multi-label file, and a per-class folder (whose files
    must first share one grid). Errors name ``rel``, the mask's path relative to the archive root (a folder with
    a trailing ``/``), never an absolute path: many studies hold a ``segmentations.nii.gz``.
    """
    from ctglip_sdk.io.geometry import grid_offset_voxels  # noqa: PLC0415
    from ctglip_sdk.io.nifti import is_nifti  # noqa: PLC0415

    shown = Path(rel).as_posix().rstrip("/")
    if not mask_path.exists():
        raise InputError("no such file or folder (segmentation mask)", path=shown)
    if mask_path.is_dir():
        shown += "/"
        found = _folder_grid(mask_path, shown)
        if found is None:
            return
        shape, mask_affine = found
    elif is_nifti(mask_path):
        shape, mask_affine = _canonical_grid(*_read_header(mask_path, shown), shown)
    else:
        return  # not a mask format: the loader says so
    grids = (f"the mask's grid is {_grid_text(shape, mask_affine)}, "
             f"the image's {_grid_text(volume.shape, volume.affine)}")
    if tuple(shape) != tuple(volume.shape):
        raise GeometryError(f"mask mismatch: {grids}", path=shown)
    # Same shape is not the same grid: a mask written with another origin, or with an LPS affine read as RAS,
    # would be resampled onto other voxels and embed the wrong organs. Half a voxel is where nearest-neighbour
    # lookup starts to move labels, so anything within it is the image's own grid up to rounding.
    off = grid_offset_voxels(mask_affine, shape, volume.affine)
    if off > 0.5:
        shift = np.asarray(mask_affine)[:3, 3] - np.asarray(volume.affine)[:3, 3]
        raise GeometryError(f"mask mismatch: same shape as the image but another grid (corners up to {off:.1f} "
                            f"voxels apart; origins differ by {np.linalg.norm(shift):.1f} mm): {grids}", path=shown)


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
    _check_mask_grid(mask, volume, item.mask)
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
