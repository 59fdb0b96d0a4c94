"""Header-only facts of a discovered series before it is listed: its grid (for the mask check) and its PatientIDs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Optional, Sequence, Set, Tuple, Union

import numpy as np

from ctglip_sdk.errors import InputError
from ctglip_sdk.io.dicom import _geometry, _unique_instances, try_read_header
from ctglip_sdk.io.dicom_frames import _frames_of
from ctglip_sdk.io.geometry import canonical_affine, canonical_shape
from ctglip_sdk.io.nifti import is_nifti, open_nifti

__all__ = ["series_grid", "series_patient_ids"]

PathLike = Union[str, "os.PathLike[str]"]


def series_grid(root: PathLike, files: Sequence[str], series_uid: Optional[str] = None
                ) -> Tuple[Tuple[int, ...], np.ndarray]:
    """The RAS+ canonical (shape, affine) ``load_volume`` would give a series, from headers only (no pixel).

    ``files`` are the series' files relative to ``root`` (``SeriesInfo.files``): one NIfTI file, or DICOM files
    of which only those of ``series_uid`` count (a flat folder holds several series).

    Raises:
        GeometryError, InputError: what loading the series would raise for its geometry or headers.
    """
    base = Path(root)
    if len(files) == 1 and is_nifti(base / files[0]):
        _img, shape, affine = open_nifti(base / files[0], max_voxels=1 << 62)  # the size guard is the loader's
        return canonical_shape(affine, shape), canonical_affine(affine, shape)
    items: List[Tuple[str, Any]] = []
    for rel in files:
        ds = try_read_header(base / rel)  # whole header, no pixels: Enhanced CT keeps geometry per frame
        if ds is None or (series_uid and str(ds.get("SeriesInstanceUID", "")).strip() != series_uid):
            continue
        items.append((str(base / rel), ds))
    if not items:
        raise InputError("no readable DICOM header in the series", path=files[0] if files else str(base))
    where = os.path.dirname(files[0]) or "."
    frames = [frame for p, ds in _unique_instances(items, where) for frame in _frames_of(p, ds)]
    frames, affine = _geometry(frames, where)
    shape = (frames[0].cols, frames[0].rows, len(frames))
    return canonical_shape(affine, shape), canonical_affine(affine, shape)


def series_patient_ids(root: PathLike, files: Sequence[str], series_uid: Optional[str] = None) -> Set[str]:
    """The distinct PatientIDs (stripped; ``""`` when empty) of the first, middle and last DICOM file of a series.

    Why: a merge error can put two patients' slices under one SeriesInstanceUID; three reads catch the usual
    case (the ID changes part-way through the export) without reading every header twice.
    """
    base = Path(root)
    picks = sorted({0, len(files) // 2, len(files) - 1}) if files else []
    out: Set[str] = set()
    for k in picks:
        try:
            ds = try_read_header(base / files[k], specific_tags=["PatientID", "SeriesInstanceUID"])
        except InputError:
            continue
        if ds is None or (series_uid and str(ds.get("SeriesInstanceUID", "")).strip() != series_uid):
            continue
        out.add(str(ds.get("PatientID") or "").strip())
    return out
