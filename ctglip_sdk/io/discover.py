"""Archive discovery: find DICOM series and NIfTI volumes below a root from headers only, confined to the root."""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from ctglip_sdk.errors import InputError
from ctglip_sdk.io.dicom import is_image, require_image, series_label, sop_class_name, try_read_header
from ctglip_sdk.io.dicom_frames import _group_item
from ctglip_sdk.io.geometry import LPS_TO_RAS, canonical_shape
from ctglip_sdk.io.nifti import is_nifti, nifti_description, open_nifti
from ctglip_sdk.io.paths import require_path, walk_files
from ctglip_sdk.privacy import dicom_identifiers, redact_identifiers

__all__ = ["SeriesInfo", "DiscoveryResult", "discover"]

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

# Only what discovery needs: pydicom skips the values of every other element.
_TAGS = [
    "SOPClassUID", "SeriesInstanceUID", "StudyInstanceUID", "Modality", "SeriesDescription", "Rows", "Columns",
    "NumberOfFrames", "ImageOrientationPatient", "ImageType",
    # Enhanced CT's orientation; the per-frame groups (one item per frame) are left unread, as they can be large
    "SharedFunctionalGroupsSequence",
]
#: ImageType values of a reformatted or rendered series (with DERIVED or SECONDARY): not an acquisition.
_REFORMAT_TYPES = frozenset({"MPR", "REFORMATTED", "MIP", "MINIP", "MINIP_MIP", "VRT", "VR", "VOLUME_RENDER", "CPR",
                             "CURVED", "PROJECTION IMAGE", "3D", "SSD", "THICK_SLAB"})
#: |z| of the slice normal above which a plane counts as axial (45 degrees: gantry tilt stays well inside).
_AXIAL_MIN_Z = 0.7
_NOT_DICOM_SUFFIXES = (".json", ".jsonl", ".txt", ".csv", ".md", ".png", ".jpg", ".jpeg", ".xml", ".zip",
                       ".gz", ".py", ".pdf", ".html", ".safetensors", ".faiss", ".db", ".sqlite")


@dataclass(frozen=True)
class SeriesInfo:
    """One loadable image found by ``discover``.

    Attributes:
        kind: ``"dicom"`` or ``"nifti"``.
        path: POSIX path relative to the discovery root: the series' folder (the file itself for a one-file
            series) or the NIfTI file. Load it with ``load_volume(root / path, series_uid=series_uid)``.
        series_uid, study_uid: DICOM UIDs (None for NIfTI).
        n_files: files in the series (1 for NIfTI).
        shape: the array shape load_volume returns (RAS+ canonical), from headers only.
        modality: DICOM Modality (None for NIfTI).
        description: SeriesDescription, or the NIfTI header's descrip.
        image_type: DICOM ImageType values ("ORIGINAL", "PRIMARY", "AXIAL" or "LOCALIZER", ...); () for NIfTI.
        plane: ``"axial"``, ``"coronal"``, ``"sagittal"`` or ``"oblique"`` from ImageOrientationPatient; None for
            NIfTI or without a readable orientation.
        files: the series' files (paths relative to the root), in discovery order; a series split into
            sub-folders (``CT/0001/``, ``CT/0002/``) lists them all.
    """

    kind: str
    path: str
    series_uid: Optional[str]
    study_uid: Optional[str]
    n_files: int
    shape: Tuple[int, ...]
    modality: Optional[str]
    description: Optional[str]
    image_type: Tuple[str, ...] = ()
    plane: Optional[str] = field(default=None, compare=False)
    files: Tuple[str, ...] = field(default=(), compare=False, repr=False)

    @property
    def is_localizer(self) -> bool:
        """A scout/topogram, not a CT volume: ImageType says LOCALIZER, or the image has fewer than 4 slices.

        Why: a PACS export puts the scout beside the axial series; paired with the study's mask and report it
        would be ingested or trained on as the study (a 1-slice "CT" with a handful of organs).
        """
        return "LOCALIZER" in self.image_type or (len(self.shape) == 3 and min(self.shape) < 4)

    @property
    def is_derived(self) -> bool:
        """A reformat of another series: ImageType DERIVED or SECONDARY with MPR, REFORMATTED, MIP, VRT..., or a
        coronal, sagittal or oblique plane (CT is acquired axially; other planes are reconstructed from it).

        Why: beside the axial series in a study folder, a reformat counted as a second image took the study's
        shared mask and report away from the axial (they apply only to a folder's one image). Discovery callers
        leave such a series out when its study has another image (``index.layout``), as they do localizers.
        """
        typed = bool({"DERIVED", "SECONDARY"} & set(self.image_type)) and bool(_REFORMAT_TYPES & set(self.image_type))
        return typed or self.plane in ("coronal", "sagittal", "oblique")


class DiscoveryResult(List[SeriesInfo]):
    """A list of SeriesInfo, plus what was left out.

    Attributes:
        refused: paths (relative to the root) of symlinks that resolve outside the root; never followed.
        unreadable: ``(relative path, reason)`` for files that look like DICOM/NIfTI but could not be read.
    """

    def __init__(self, items: List[SeriesInfo], refused: List[str], unreadable: List[Tuple[str, str]]) -> None:
        super().__init__(items)
        self.refused = refused
        self.unreadable = unreadable


def _text(ds: Any, keyword: str) -> Optional[str]:
    value = ds.get(keyword)
    text = str(value).strip() if value is not None else ""
    return text or None


def _image_type(ds: Any) -> Tuple[str, ...]:
    value = ds.get("ImageType")
    if value is None:
        return ()
    values = [value] if isinstance(value, str) else list(value)
    return tuple(str(v).strip().upper() for v in values if str(v).strip())


def _orientation(ds: Any) -> Optional[np.ndarray]:
    """ImageOrientationPatient as 6 floats, or None when absent or unreadable."""
    try:
        if "ImageOrientationPatient" in ds:
            raw = ds.ImageOrientationPatient
        else:  # Enhanced CT keeps it in the shared functional groups (per-frame ones are not read here)
            raw = _group_item(ds, None, "PlaneOrientationSequence").ImageOrientationPatient  # type: ignore[union-attr]
        iop = np.array([float(v) for v in raw], dtype=np.float64)
        return iop if iop.shape == (6,) and np.all(np.isfinite(iop)) else None
    except Exception:  # noqa: BLE001 - any malformed value means "no orientation" here
        return None


def _plane(iop: Optional[np.ndarray]) -> Optional[str]:
    if iop is None:
        return None
    normal = np.cross(iop[:3], iop[3:])
    norm = float(np.linalg.norm(normal))
    if norm < 1e-6:
        return None
    n = np.abs(normal) / norm
    if n[2] > _AXIAL_MIN_Z:
        return "axial"
    return "coronal" if n[1] > _AXIAL_MIN_Z else "sagittal" if n[0] > _AXIAL_MIN_Z else "oblique"


def _dicom_shape(ds: Any, n_slices: int) -> Tuple[int, ...]:
    cols, rows = int(ds.get("Columns", 0) or 0), int(ds.get("Rows", 0) or 0)
    shape = (cols, rows, n_slices)
    iop = _orientation(ds)
    if iop is None:  # no readable orientation: report acquisition order (load_volume then refuses it anyway)
        return shape
    try:
        lps = np.eye(4)
        lps[:3, 0], lps[:3, 1], lps[:3, 2] = iop[:3], iop[3:], np.cross(iop[:3], iop[3:])
        return canonical_shape(LPS_TO_RAS @ lps, shape)
    except Exception:  # noqa: BLE001 - a degenerate orientation: acquisition order, as above
        return shape


def _nifti_info(path: Path, rel: str) -> SeriesInfo:
    img, shape, affine = open_nifti(path, max_voxels=1 << 62)  # the size guard applies when loading, not listing
    return SeriesInfo("nifti", rel, None, None, 1, canonical_shape(affine, shape), None, nifti_description(img),
                      files=(rel,))


def discover(root: PathLike, follow_symlinks: bool = False) -> DiscoveryResult:
    """List the DICOM series and NIfTI volumes below ``root``, reading one header per file and no pixels.

    DICOM files (recognised by their 'DICM' preamble, whatever their name) are grouped by SeriesInstanceUID;
    ``.nii``/``.nii.gz`` files are listed one by one. Symlinks that resolve outside ``root`` are refused: never
    followed, logged as warnings and listed in ``result.refused``; symlinks inside ``root`` are followed only with
    ``follow_symlinks=True``. Unreadable candidates are logged and listed in ``result.unreadable``. Only headers
    are read, so damage further into a ``.nii.gz`` (a bad CRC, a truncated stream) shows when it is loaded.
    A ``root`` that is not a folder, or not a path at all (None), is an InputError.

    Example:
        >>> found = discover("archive/")  # doctest: +SKIP
        >>> [(s.kind, s.path, s.shape) for s in found][:1]  # doctest: +SKIP
        [('dicom', 'p001/ct', (512, 512, 120))]
    """
    where = require_path(root, "root", "an archive folder path")
    base = Path(where)
    if not base.is_dir():
        raise InputError("not a folder", path=where)
    files, refused = walk_files(base, follow_symlinks=follow_symlinks)
    items: List[SeriesInfo] = []
    unreadable: List[Tuple[str, str]] = []
    series: Dict[str, List[Tuple[str, Any]]] = defaultdict(list)
    folder_ids: Dict[Path, List[str]] = {}
    for path in files:
        rel = Path(os.path.relpath(path, base)).as_posix()
        try:
            if is_nifti(path):
                items.append(_nifti_info(path, rel))
                continue
            if path.name.lower().endswith(_NOT_DICOM_SUFFIXES) or path.name.upper() == "DICOMDIR":
                continue
            ds = try_read_header(path, specific_tags=_TAGS)
            if ds is None or (not is_image(ds) and sop_class_name(ds)):
                continue  # not DICOM, or a known non-image object (DICOMDIR, SR, RT plan, ...)
            require_image(ds, path)
        except InputError as exc:
            # The path may name the patient (folders named after the PatientID): redacted with the identifiers of
            # a readable file beside it, before it is logged, returned or stored.
            if path.parent not in folder_ids:  # one header read per folder, however many of its files fail
                folder_ids[path.parent] = dicom_identifiers(path.parent)
            idents = folder_ids[path.parent]
            shown, reason = redact_identifiers(rel, idents), redact_identifiers(str(exc.reason), idents)
            log.warning("skipped %s: %s", shown, reason)
            unreadable.append((shown, reason))
            continue
        series[series_label(ds)].append((rel, ds))
    for uid, members in series.items():
        rels = [rel for rel, _ds in members]
        if len(rels) == 1:
            path = rels[0]
        else:
            path = Path(os.path.commonpath([os.path.dirname(r) or "." for r in rels])).as_posix()
        first = members[0][1]
        n_slices = sum(int(ds.get("NumberOfFrames", 1) or 1) for _rel, ds in members)
        items.append(SeriesInfo(
            "dicom", path, None if uid.startswith("(") else uid, _text(first, "StudyInstanceUID"), len(members),
            _dicom_shape(first, n_slices), _text(first, "Modality"), _text(first, "SeriesDescription"),
            _image_type(first), _plane(_orientation(first)), tuple(rels),
        ))
    items.sort(key=lambda s: (s.path, s.series_uid or ""))
    log.info("%s: found %d series/volumes (%d refused symlinks, %d unreadable)", base, len(items), len(refused),
             len(unreadable))
    return DiscoveryResult(items, refused, unreadable)
