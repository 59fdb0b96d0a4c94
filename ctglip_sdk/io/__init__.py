"""CT input: load DICOM/NIfTI volumes and TotalSegmentator masks as RAS+ Volume/Segmentation; discover archives."""

from __future__ import annotations

import logging
import os
from typing import Optional, Union

from ctglip_sdk.errors import InputError
from ctglip_sdk.io.discover import DiscoveryResult, SeriesInfo, discover
from ctglip_sdk.io.geometry import DEFAULT_MAX_VOXELS, check_max_voxels
from ctglip_sdk.io.mask_grid import check_mask_grid
from ctglip_sdk.io.nifti import is_nifti, load_nifti
from ctglip_sdk.io.paths import resolve_within
from ctglip_sdk.io.segmentation import load_segmentation
from ctglip_sdk.volume import Segmentation, Volume

__all__ = [
    "load_volume",
    "load_listed_volume",
    "load_segmentation",
    "check_mask_grid",
    "discover",
    "SeriesInfo",
    "DiscoveryResult",
    "resolve_within",
    "DEFAULT_MAX_VOXELS",
    "Volume",
    "Segmentation",
]

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

_OTHER_FORMATS = (".mha", ".mhd", ".nrrd", ".nhdr", ".mgz", ".img", ".hdr", ".npy", ".npz", ".png", ".jpg")


def load_volume(path: PathLike, series_uid: Optional[str] = None, max_voxels: int = DEFAULT_MAX_VOXELS,
                include_identifiers: bool = False) -> Volume:
    """Load a CT volume: a DICOM series folder, a single (multi-frame) DICOM file, or NIfTI (.nii/.nii.gz).

    The array is float32 Hounsfield units in closest-canonical RAS+ order (index axes toward patient Right,
    Anterior, Superior; nibabel/MONAI convention) and ``affine`` maps voxel indices to RAS+ world mm (DICOM LPS
    with x and y negated). DICOM slices are grouped by SeriesInstanceUID, sorted by position along the slice
    normal and checked for missing/uneven slices, gantry tilt and mixed sizes (docs/inputs.md).

    Args:
        path: series folder, DICOM file or NIfTI file.
        series_uid: which series to load when a folder holds several.
        max_voxels: refuse images whose headers declare more voxels (checked before any pixel is read).
        include_identifiers: also copy raw PatientName/PatientID/PatientBirthDate/AccessionNumber into
            ``meta["identifiers"]``. Off by default: ``meta["patient"]`` is a keyed pseudonym.

    Returns:
        Volume with ``array``, ``affine``, ``spacing`` and ``meta`` (study_uid, series_uid, patient, age, sex,
        study_date, body_part, contrast, contrast_agent, kvp, manufacturer, modality, series_description,
        source_path, format).

    Raises:
        InputError: missing, unreadable, truncated or oversized input; several series and no series_uid.
        GeometryError: a DICOM series with missing or unevenly spaced slices, gantry tilt, or mixed matrix
            sizes, orientations or pixel spacings.

    Example:
        >>> vol = load_volume("study/ct_series/")  # doctest: +SKIP
        >>> vol.array.dtype, vol.spacing  # doctest: +SKIP
        (dtype('float32'), (0.78, 0.78, 2.5))
    """
    from ctglip_sdk.io.dicom import load_dicom  # pydicom is imported only when DICOM is read

    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"path: expected a file or folder path, got {type(path).__name__}")
    where = os.fspath(path)
    max_voxels = check_max_voxels(max_voxels)
    if not os.path.exists(where):
        raise InputError("no such file or folder", path=where)
    if os.path.isdir(where):
        return load_dicom(where, series_uid=series_uid, max_voxels=max_voxels, include_identifiers=include_identifiers)
    if is_nifti(where):
        if series_uid is not None:
            log.warning("%s: series_uid is ignored for NIfTI input", where)
        return load_nifti(where, max_voxels=max_voxels)
    if where.lower().endswith(_OTHER_FORMATS):
        raise InputError("unsupported format; convert to NIfTI (.nii.gz) or DICOM first", path=where)
    return load_dicom(where, series_uid=series_uid, max_voxels=max_voxels, include_identifiers=include_identifiers)


def load_listed_volume(path: PathLike, series_uid: Optional[str] = None, include_identifiers: bool = False) -> Volume:
    """Load a manifest row's image: the folder's only series, or the row's own ``series_uid`` when it holds several.

    Why not always ``load_volume(path, series_uid=...)``: a manifest's series_uid column is a key users may
    write by hand (docs/data.md); for a folder with one series it is not checked, so a stale value does not
    refuse a readable image. Only a folder that holds several series is read for the row's series (a localizer
    or a second reconstruction beside the CT, which ``load_volume`` refuses without one).

    Raises:
        InputError / GeometryError: as ``load_volume``; a folder of several series whose list lacks
            ``series_uid`` is refused with the candidates named.

    Example:
        >>> vol = load_listed_volume("study/ct/", series_uid="1.2.826.0.1.3680043.8.498.7")  # doctest: +SKIP
    """
    try:
        return load_volume(path, include_identifiers=include_identifiers)
    except InputError as exc:
        if not series_uid or series_uid not in (getattr(exc, "series", None) or ()):
            raise
    return load_volume(path, series_uid=series_uid, include_identifiers=include_identifiers)
