"""DICOM series reader: pydicom headers, careful slice geometry (sort, spacing, tilt checks), HU pixels in RAS+."""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from nibabel import orientations as nio

from ctglip_sdk.errors import GeometryError, InputError
from ctglip_sdk.io.geometry import (
    DEFAULT_MAX_VOXELS,
    DIRECTION_ATOL,
    LPS_TO_RAS,
    SPACING_ATOL_MM,
    SPACING_RTOL,
    TILT_TOL_FRACTION,
    canonical_transform,
    check_voxel_count,
)
from ctglip_sdk.io.dicom_frames import _Frame, _frames_of
from ctglip_sdk.io.dicom_redact import redact_pydicom_values
from ctglip_sdk.io.meta import dicom_meta
from ctglip_sdk.io.paths import walk_files
from ctglip_sdk.volume import Volume

__all__ = [
    "load_dicom", "read_header", "try_read_header", "is_image", "require_image", "sop_class_name", "series_label",
    "JPEG_HINT",
]

log = logging.getLogger(__name__)

#: Files without a preamble read as bare datasets when a folder holds no DICOM series at all, to say "these are
#: DICOM without file meta" instead of "no DICOM here" (a few suffice; reading every junk file would be slow).
_BARE_PROBES = 5

PathLike = Union[str, "os.PathLike[str]"]

#: What to install when pydicom has no decoder for a compressed transfer syntax.
JPEG_HINT = "pip install 'ctglip-sdk[jpeg]' (pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg)"

# Files that are never DICOM slices; skipping them by name saves a read in mixed folders.
_NOT_DICOM_SUFFIXES = (".nii", ".nii.gz", ".json", ".txt", ".csv", ".jsonl", ".md", ".png", ".jpg", ".xml", ".zip")


def try_read_header(path: PathLike, specific_tags: Optional[Sequence[str]] = None) -> Optional[Any]:
    """Read a DICOM header without pixel data; None when the file is not DICOM at all (no 'DICM' preamble).

    A file that starts like DICOM but cannot be parsed raises InputError naming the file.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    redact_pydicom_values()  # before pydicom checks (and may quote) any value it reads or converts
    try:
        return pydicom.dcmread(os.fspath(path), stop_before_pixels=True, specific_tags=specific_tags)
    except InvalidDicomError:
        return None
    except FileNotFoundError:
        raise InputError("no such file", path=path) from None
    except Exception as exc:  # pydicom raises many kinds on truncated/corrupt input; never echo element values
        raise InputError(f"unreadable DICOM header ({type(exc).__name__}); the file is truncated or corrupt",
                         path=path) from None


def read_header(path: PathLike, specific_tags: Optional[Sequence[str]] = None) -> Any:
    """Like try_read_header, but a non-DICOM file raises InputError too."""
    ds = try_read_header(path, specific_tags)
    if ds is None:
        raise InputError("not a DICOM file (no 'DICM' preamble / file meta header)", path=path)
    return ds


def sop_class_name(ds: Any) -> str:
    uid = getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", None) or ds.get("SOPClassUID")
    return getattr(uid, "name", str(uid or ""))


def is_image(ds: Any) -> bool:
    """True for image objects (CT/MR/... Image Storage or anything with Rows/Columns)."""
    return "Image Storage" in sop_class_name(ds) or ("Rows" in ds and "Columns" in ds)


def require_image(ds: Any, path: PathLike) -> None:
    """InputError unless ``ds`` is a complete image header (non-image objects and truncated headers fail)."""
    if not is_image(ds) and sop_class_name(ds):
        raise InputError(f"DICOM object of class {sop_class_name(ds)} holds no image", path=path)
    missing = [k for k in ("SOPClassUID", "SeriesInstanceUID", "Rows", "Columns") if k not in ds]
    if missing:
        raise InputError(f"DICOM header lacks {', '.join(missing)}: the file is truncated or incomplete", path=path)


def series_label(ds: Any) -> str:
    """SeriesInstanceUID, or a placeholder for files that lack one."""
    uid = ds.get("SeriesInstanceUID")
    return str(uid).strip() if uid else "(no SeriesInstanceUID)"


def _distinct(values: Sequence[Any]) -> str:
    counts = Counter(values)
    return ", ".join(f"{value} ({n} slice{'s' if n > 1 else ''})" for value, n in counts.most_common(6))


def _check_uniform(frames: List[_Frame], where: str) -> None:
    sizes = [f"{f.rows}x{f.cols}" for f in frames]
    if len(set(sizes)) > 1:
        raise GeometryError(f"mixed matrix sizes (rows x columns): {_distinct(sizes)}", path=where)
    ref = frames[0]
    if any(np.max(np.abs(f.orientation - ref.orientation)) > DIRECTION_ATOL for f in frames):
        labels = ["(" + ", ".join(f"{v:.4g}" for v in f.orientation) + ")" for f in frames]
        raise GeometryError(f"mixed ImageOrientationPatient: {_distinct(labels)}", path=where)
    ref_sp = np.array(ref.pixel_spacing)
    # abs: with a negative spacing the tolerance was negative and every slice "differed" from itself
    if any(np.max(np.abs(np.array(f.pixel_spacing) - ref_sp)) > 1e-4 * float(np.abs(ref_sp).max()) for f in frames):
        labels = ["(" + ", ".join(f"{v:.5g}" for v in f.pixel_spacing) + ") mm" for f in frames]
        raise GeometryError(f"mixed PixelSpacing: {_distinct(labels)}", path=where)


def _directions(orientation: np.ndarray, where: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    row, col = orientation[:3], orientation[3:]
    norms = np.linalg.norm(row), np.linalg.norm(col)
    if abs(norms[0] - 1) > 1e-3 or abs(norms[1] - 1) > 1e-3 or abs(float(row @ col)) > 1e-3:
        raise GeometryError("ImageOrientationPatient is not two orthogonal unit vectors: "
                            + ", ".join(f"{v:.4g}" for v in orientation), path=where)
    row = row / norms[0]
    col = col - (col @ row) * row  # remove rounding-level skew so the affine stays orthogonal
    col = col / np.linalg.norm(col)
    return row, col, np.cross(row, col)


def _slice_step(frames: List[_Frame], normal: np.ndarray, where: str) -> np.ndarray:
    """Check spacing/tilt of frames already sorted along ``normal``; return the mean slice step vector (mm)."""
    if len(frames) == 1:
        thickness = frames[0].thickness
        if not thickness or thickness <= 0:
            log.warning("%s: single slice without SliceThickness; assuming 1 mm along the normal", where)
            thickness = 1.0
        return normal * thickness
    positions = np.stack([f.position for f in frames])
    along = (positions - positions[0]) @ normal
    diffs = np.diff(along)
    if np.any(diffs <= SPACING_ATOL_MM):
        n_dup = int(np.sum(diffs <= SPACING_ATOL_MM))
        raise GeometryError(f"{n_dup} slice(s) share a position with another slice (several acquisitions, "
                            "echoes or phases in one series?); split the series before loading", path=where)
    perp = np.linalg.norm((positions - positions[0]) - along[:, None] * normal, axis=1)
    min_pixel = min(frames[0].pixel_spacing)
    if perp.max() > TILT_TOL_FRACTION * min_pixel:
        worst = int(np.argmax(perp))
        angle = math.degrees(math.atan2(perp[-1], along[-1]))
        raise GeometryError(
            f"slice origins are not along the slice normal: slice {worst + 1} of {len(frames)} lies "
            f"{perp[worst]:.3g} mm off it (tolerance {TILT_TOL_FRACTION * min_pixel:.3g} mm), gantry tilt about "
            f"{angle:.2f} degrees; correct the tilt (e.g. dcm2niix) before loading", path=where)
    spacing = float(np.median(diffs))
    tol = max(SPACING_RTOL * spacing, SPACING_ATOL_MM)
    # The float margin: positions rounded to 0.01 mm give steps of 0.62 and 0.63 mm for a 0.625 mm series, whose
    # difference computes as 0.0100000000000051 and would fail a bare "> tol" (a real series was refused).
    bad = np.flatnonzero(np.abs(diffs - spacing) > tol + 1e-6)
    if bad.size:
        ratios = diffs[bad] / spacing
        gaps = "; ".join(f"{diffs[i]:.4g} mm between slices {i + 1} and {i + 2}" for i in bad[:5])
        more = f" (and {bad.size - 5} more)" if bad.size > 5 else ""
        if np.all(ratios > 1.5) and np.all(np.abs(ratios - np.round(ratios)) < 0.1):
            missing = int(np.sum(np.round(ratios) - 1))
            raise GeometryError(f"missing slices: about {missing} slice(s) absent; expected steps of {spacing:.4g} mm "
                                f"but found {gaps}{more}", path=where)
        raise GeometryError(f"uneven slice spacing: median step {spacing:.4g} mm (tolerance {tol:.3g} mm) but "
                            f"{gaps}{more}", path=where)
    return (positions[-1] - positions[0]) / (len(frames) - 1)


def _geometry(frames: List[_Frame], where: str) -> Tuple[List[_Frame], np.ndarray]:
    """Sort frames along the slice normal, check the geometry, return (sorted frames, voxel->RAS+ affine).

    Array index order before canonicalisation is (column i, row j, slice k).
    """
    _check_uniform(frames, where)
    row_spacing, col_spacing = frames[0].pixel_spacing
    if row_spacing <= 0 or col_spacing <= 0:  # before _slice_step, whose tilt tolerance scales with the spacing
        raise GeometryError(f"non-positive PixelSpacing {frames[0].pixel_spacing}", path=where)
    row, col, normal = _directions(frames[0].orientation, where)
    # Sort by position projected on the normal: filenames and InstanceNumber are not geometry.
    order = np.argsort([float(f.position @ normal) for f in frames], kind="stable")
    frames = [frames[i] for i in order]
    step = _slice_step(frames, normal, where)
    lps = np.eye(4)
    lps[:3, 0] = row * col_spacing  # moving along a row = increasing column index
    lps[:3, 1] = col * row_spacing
    lps[:3, 2] = step
    lps[:3, 3] = frames[0].position
    return frames, LPS_TO_RAS @ lps


def _check_decoder(ds: Any, path: str) -> None:
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is None or not getattr(ts, "is_compressed", False):
        return
    try:
        from pydicom.pixels import get_decoder
    except ImportError:  # pydicom < 3: failures surface when decoding
        return
    try:
        available = get_decoder(ts).is_available
    except NotImplementedError:
        raise InputError(f"pydicom cannot decode transfer syntax {ts.name} ({ts})", path=path) from None
    if not available:
        raise InputError(f"compressed pixel data ({ts.name}) and no pydicom decoder plugin is installed; "
                         f"install one with: {JPEG_HINT}", path=path)


def _has_intercept(ds: Any) -> bool:
    """Whether a header states RescaleIntercept: at the top level, or (Enhanced CT) in the shared or every
    per-frame Pixel Value Transformation macro. Without it stored values are read as HU: logged by the loader."""
    if "RescaleIntercept" in ds:
        return True
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None:
        return False
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
    in_shared = shared is not None and any("RescaleIntercept" in item for item in
                                           (shared.get("PixelValueTransformationSequence") or []))
    return in_shared or all(any("RescaleIntercept" in item for item in (fg.get("PixelValueTransformationSequence")
                                                                        or [])) for fg in per_frame)


def _decode(path: str, header: Any) -> np.ndarray:
    """Stored pixel values of one file (frames first for multi-frame), no rescale.

    ``header`` is the file's header from the first pass: its transfer syntax tells whether a decoder exists
    before any pixel byte is read.
    """
    import pydicom

    _check_decoder(header, path)
    try:
        try:
            from pydicom.pixels import pixel_array  # pydicom >= 3: reads only what decoding needs
        except ImportError:  # pragma: no cover - pydicom 2.x
            return pydicom.dcmread(path).pixel_array
        ts = getattr(getattr(header, "file_meta", None), "TransferSyntaxUID", None)
        if ts is not None and ts == pydicom.uid.DeflatedExplicitVRLittleEndian:
            return pydicom.dcmread(path).pixel_array  # the whole dataset is deflated: pixel_array(path) cannot seek
        return pixel_array(path)
    except AttributeError:
        raise InputError("no pixel data: the file is truncated or holds no image", path=path) from None
    except Exception as exc:
        ts = getattr(getattr(header, "file_meta", None), "TransferSyntaxUID", None)
        if ts is not None and ts == "1.2.840.10008.1.2.4.51" and int(header.get("BitsStored", 8) or 8) > 8:
            # Pillow decodes 8-bit JPEG Extended only: older CT archives hold 12-bit, which it calls corrupt
            raise InputError(f"cannot decode 12-bit {ts.name} pixel data with the installed decoder (Pillow reads "
                             "8-bit JPEG only); install one that reads 12-bit JPEG: pip install pylibjpeg "
                             "pylibjpeg-libjpeg", path=path) from None
        if ts is not None and getattr(ts, "is_compressed", False):
            # _check_decoder has already refused a syntax with no decoder installed: this one has a decoder
            # and failed on this file's data.
            raise InputError(f"cannot decode {ts.name} pixel data ({type(exc).__name__}): corrupt or truncated "
                             f"compressed data (if other files of this syntax fail too: {JPEG_HINT})",
                             path=path) from None
        raise InputError(f"cannot decode pixel data ({type(exc).__name__}): truncated or corrupt "
                         "(size does not match Rows x Columns x BitsAllocated)", path=path) from None


def _read_pixels(frames: List[_Frame], headers: Dict[str, Any],
                 affine: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """HU array in RAS+ canonical order and its affine, filled slice by slice into one float32 allocation.

    The buffer is laid out slice-major (the slice axis slowest in memory), so every slice is one contiguous
    write; for axial series the result is Fortran-ordered (I, J, K), as nibabel returns NIfTI data.
    """
    in_shape = (frames[0].cols, frames[0].rows, len(frames))
    ornt = canonical_transform(affine)
    out_shape = [0, 0, 0]
    for axis, (new_axis, _flip) in enumerate(ornt):
        out_shape[int(new_axis)] = in_shape[axis]
    slice_axis = int(ornt[2, 0])
    # Buffer axes: the slice axis first, then the other canonical axes from last to first.
    order = [slice_axis] + [a for a in (2, 1, 0) if a != slice_axis]
    buffer = np.empty([out_shape[a] for a in order], dtype=np.float32)
    cache: Dict[str, np.ndarray] = {}
    flip_slices = int(ornt[2, 1]) == -1
    for k, frame in enumerate(frames):
        if frame.path not in cache:
            cache.clear()  # single-frame files are used once; a multi-frame file stays until its frames are done
            cache[frame.path] = _decode(frame.path, headers[frame.path])
        pixels = cache[frame.path]
        if frame.frame is not None and pixels.ndim == 3:
            pixels = pixels[frame.frame]
        if pixels.shape != (frame.rows, frame.cols):
            raise InputError(f"decoded pixels have shape {pixels.shape}, header says {frame.rows}x{frame.cols}",
                             path=frame.path)
        # (i=column, j=row, k) with this slice alone -> canonical axes (views only), then into buffer order.
        block = nio.apply_orientation(pixels.T[:, :, None], ornt).transpose(order)
        target = buffer[len(frames) - 1 - k if flip_slices else k]
        np.copyto(target, block[0], casting="unsafe")  # exact for 16-bit stored values
        if frame.slope != 1.0:  # per-slice rescale: slope and intercept may change from slice to slice
            target *= np.float32(frame.slope)
        if frame.intercept != 0.0:
            target += np.float32(frame.intercept)
    return buffer.transpose(np.argsort(order)), affine @ nio.inv_ornt_aff(ornt, in_shape)


def _candidates(groups: Dict[str, List[Tuple[str, Any]]]) -> str:
    lines = []
    for uid, items in sorted(groups.items()):
        desc = items[0][1].get("SeriesDescription") or ""
        lines.append(f"  {uid}  {str(desc).strip()!r}  {len(items)} file(s)")
    return "\n".join(lines)


def _collect(folder: Path) -> Dict[str, List[Tuple[str, Any]]]:
    """Image headers below ``folder`` grouped by SeriesInstanceUID (non-DICOM and non-image files skipped)."""
    files, refused = walk_files(folder)
    _refuse_escaping_links(folder, refused)
    groups: Dict[str, List[Tuple[str, Any]]] = defaultdict(list)
    skipped = 0
    no_preamble: List[Path] = []
    for path in files:
        if path.name.upper() == "DICOMDIR" or path.name.lower().endswith(_NOT_DICOM_SUFFIXES):
            skipped += 1
            continue
        ds = try_read_header(path)  # preamble but unparsable is an error, not noise
        if ds is None:
            skipped += 1
            no_preamble.append(path)
            continue
        if not is_image(ds) and sop_class_name(ds):
            skipped += 1  # a known non-image object (DICOMDIR, SR, RT plan, ...)
            continue
        require_image(ds, path)
        groups[series_label(ds)].append((str(path), ds))
    for i, path in enumerate(no_preamble):
        # A slice of a found series written without the preamble and file meta would otherwise be dropped as
        # "not DICOM", and the volume would come out silently shorter (or as "missing slices"). With no series
        # found at all, a few such files are enough to tell "bare datasets" from "no DICOM here".
        if not groups and i >= _BARE_PROBES:
            break
        uid = _raw_series_uid(path)
        if uid is not None and (uid in groups or not groups):
            raise InputError(("a slice of this series" if groups else "this file is a DICOM dataset but")
                             + " has no DICOM preamble or file meta header; it is not read"
                             + (", so the series would be incomplete" if groups else "")
                             + f" ({len(no_preamble)} such file(s) in the folder; rewrite each with its file meta, "
                             "e.g. pydicom.dcmread(path, force=True) then save_as(path, enforce_file_format=True))",
                             path=path)
    if skipped:
        log.info("%s: skipped %d non-DICOM or non-image file(s)", folder, skipped)
    return groups


def _refuse_escaping_links(folder: Path, refused: List[str]) -> None:
    """InputError naming the links out of ``folder`` (relative to it) that could be slices.

    Why: such a link is never followed (the folder is what the caller confined), and dropping it with a logged
    warning loaded the series silently shorter when the links were its end slices (a de-duplicating archive links
    identical files). A dangling link has nothing to read whatever the rule, a link whose name the reader skips
    anyway (notes.txt, DICOMDIR) is no slice, and a link to a folder (``priors -> ../elsewhere``) is not part of
    this series: these stay logged only (the target is only checked to exist and to be a file)."""
    names = [r for r in refused if os.path.exists(folder / r) and not os.path.isdir(folder / r) and not (
        Path(r).name.upper() == "DICOMDIR" or Path(r).name.lower().endswith(_NOT_DICOM_SUFFIXES))]
    if names:
        more = f" and {len(names) - 5} more" if len(names) > 5 else ""
        raise InputError(f"{len(names)} file(s) are symlinks leading out of the folder, which are not followed, so "
                         f"the series could be incomplete: {', '.join(names[:5])}{more}; copy the files in instead",
                         path=folder)
    if refused:
        log.warning("%s: ignored %d symlink(s) that leave the folder", folder, len(refused))


def _raw_series_uid(path: Path) -> Optional[str]:
    """SeriesInstanceUID of a file read as a bare dataset (no preamble), or None when it does not parse as one."""
    import pydicom

    redact_pydicom_values()
    try:
        # Silenced: read with force, a non-DICOM file's bytes become "values" that pydicom quotes in its warnings
        # (e.g. "Unknown encoding '<raw bytes>'"), which would print file contents to the user's terminal.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(os.fspath(path), force=True, stop_before_pixels=True,
                                 specific_tags=["SeriesInstanceUID"])
            uid = ds.get("SeriesInstanceUID")
    except Exception:  # noqa: BLE001 - most such files are not DICOM at all
        return None
    return str(uid) if uid else None


def _position_key(ds: Any) -> Any:
    """ImagePositionPatient as numbers on a SPACING_ATOL_MM grid: the same instance exported by another tool may
    write "-125.000000" for "-125.0" (compared as text, such a copy was refused as "slices share a position").
    Two slices this close apart would be refused as sharing a position anyway."""
    ipp = ds.get("ImagePositionPatient")
    try:
        return tuple(int(round(float(v) / SPACING_ATOL_MM)) for v in ipp)
    except (TypeError, ValueError, OverflowError):  # absent or malformed: _frames_of says what is wrong
        return str(ipp)


def _unique_instances(items: List[Tuple[str, Any]], where: str) -> List[Tuple[str, Any]]:
    """One file per SOPInstanceUID (the first by path): a slice exported twice into one folder (a patient CD with a
    copy, a study sent twice) is the same image, not a second acquisition at the same position."""
    seen: set = set()
    out: List[Tuple[str, Any]] = []
    for p, ds in sorted(items, key=lambda item: item[0]):
        uid = ds.get("SOPInstanceUID")
        # The position is part of the key: a faulty anonymiser that wrote one UID into every slice must not
        # reduce the series to one slice.
        key = (str(uid), _position_key(ds), str(ds.get("NumberOfFrames")))
        if uid and key in seen:
            continue
        seen.add(key)
        out.append((p, ds))
    if len(out) < len(items):
        log.info("%s: %d file(s) repeat an instance (same SOPInstanceUID) of another file; read once",
                 where, len(items) - len(out))
    return out


def _count(ds: Any, keyword: str, default: int, path: str) -> int:
    """A non-negative integer header value (Rows, Columns, NumberOfFrames); InputError when malformed."""
    try:
        value = int(ds.get(keyword, default) or default)
    except (TypeError, ValueError):
        raise InputError(f"{keyword} is not an integer", path=path) from None
    if value < 0:
        raise InputError(f"{keyword} is negative ({value})", path=path)
    return value


def load_dicom(path: PathLike, series_uid: Optional[str] = None, max_voxels: int = DEFAULT_MAX_VOXELS,
               include_identifiers: bool = False) -> Volume:
    """Load a DICOM series folder or a single (multi-frame) DICOM file as a RAS+ HU Volume.

    See ``ctglip_sdk.io.load_volume`` for the public entry point and docs/inputs.md for the checks.
    """
    where = os.fspath(path)
    if os.path.isdir(where):
        groups = _collect(Path(where))
        if not groups:
            raise InputError("no DICOM image files found in this folder", path=where)
        if series_uid is not None:
            if series_uid not in groups:
                raise InputError(f"series {series_uid!r} is not in this folder; series found:\n"
                                 f"{_candidates(groups)}", path=where)
            items = groups[series_uid]
        elif len(groups) > 1:
            err = InputError(f"folder holds {len(groups)} series; pass series_uid= one of:\n{_candidates(groups)}",
                             path=where)
            err.series = sorted(groups)  # type: ignore[attr-defined] - lets a caller that knows the UID choose
            raise err
        else:
            items = next(iter(groups.values()))
    else:
        ds = read_header(where)
        require_image(ds, where)
        if series_uid is not None and series_label(ds) != series_uid:
            raise InputError(f"file belongs to series {series_label(ds)!r}, not {series_uid!r}", path=where)
        items = [(where, ds)]
    items = _unique_instances(items, where)
    counts = [(_count(ds, "NumberOfFrames", 1, p), _count(ds, "Rows", 0, p), _count(ds, "Columns", 0, p))
              for p, ds in items]
    n_frames = sum(c[0] for c in counts)
    rows, cols = max(c[1] for c in counts), max(c[2] for c in counts)
    check_voxel_count((cols, rows, n_frames), max_voxels, where, what="DICOM series")  # before any pixel
    if len(items) > 1 and any(c[0] > 1 for c in counts):
        raise InputError("series mixes several multi-frame files; load each file on its own", path=where)
    frames = [frame for p, ds in items for frame in _frames_of(p, ds)]
    frames, affine = _geometry(frames, where)
    header = next(ds for p, ds in items if p == frames[0].path)
    if str(header.get("Modality", "CT")).upper() != "CT":
        log.warning("%s: modality %s is not CT; values are rescaled pixels, not Hounsfield units",
                    where, header.get("Modality"))
    elif any(not _has_intercept(ds) for _, ds in items):
        log.warning("%s: CT image without RescaleIntercept (a required element); stored values are taken as HU",
                    where)
    array, affine = _read_pixels(frames, {p: ds for p, ds in items}, affine)
    meta = dicom_meta(header, where, include_identifiers=include_identifiers)
    log.debug("%s: %d slice(s) -> %s", where, len(frames), array.shape)
    return Volume(array=array, affine=affine, meta=meta)
