"""DICOM frames: the geometry (position, orientation, spacing) and rescale of each 2-D frame a header describes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

import numpy as np

from ctglip_sdk.errors import InputError

__all__: List[str] = []  # internal to the DICOM reader


@dataclass
class _Frame:
    """One 2-D image of a series: a single-frame file or one frame of a multi-frame file."""

    path: str
    frame: Optional[int]
    position: np.ndarray  # ImagePositionPatient, LPS mm
    orientation: np.ndarray  # ImageOrientationPatient (row cosines, column cosines)
    pixel_spacing: Tuple[float, float]  # (between rows, between columns) mm
    rows: int
    cols: int
    slope: float
    intercept: float
    thickness: Optional[float]


def _floats(value: Any, n: int, keyword: str, path: str) -> np.ndarray:
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"{keyword} is malformed", path=path) from None
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise InputError(f"{keyword} must hold {n} finite numbers, got {arr.size}", path=path)
    return arr


def _float_or(value: Any, default: Optional[float]) -> Optional[float]:
    try:
        return float(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default


def _number(value: Any, default: float) -> float:
    result = _float_or(value, default)
    return default if result is None else result


def _rescale(ds: Any, slope: float, intercept: float, path: str) -> Tuple[float, float]:
    """(RescaleSlope, RescaleIntercept), the given defaults where absent; a value present but unusable refuses.

    Why: a slope of 0 or "abc" used to become 1.0 silently, and one such slice came out scaled wrong inside an
    otherwise correct volume. An absent intercept on a CT image (a type 1 element) is logged: stored values
    then read as HU, which is wrong for the usual unsigned data by 1024 HU (logged once per series by the loader).
    """
    out = []
    for keyword, default in (("RescaleSlope", slope), ("RescaleIntercept", intercept)):
        raw = ds.get(keyword)
        if raw in (None, ""):
            if keyword in ds:  # present but empty: as unusable as "abc" (it used to shift that slice by 1024 HU)
                raise InputError(f"{keyword} is present but empty", path=path)
            out.append(default)
            continue
        value = _float_or(raw, None)
        if value is None or not np.isfinite(value) or (keyword == "RescaleSlope" and value == 0):
            # the value is not quoted (docs/security.md: element values are never echoed)
            raise InputError(f"{keyword} is not a usable number (it must be a finite number; a slope not 0)",
                             path=path)
        out.append(value)
    return out[0], out[1]


def _spacing(value: Any, path: str) -> Tuple[float, float]:
    row, col = _floats(value, 2, "PixelSpacing", path)
    return float(row), float(col)


def _group_item(ds: Any, fg: Optional[Any], sequence: str) -> Optional[Any]:
    """First item of a functional-group macro, per-frame before shared (Enhanced multi-frame objects)."""
    for groups in (fg, (ds.get("SharedFunctionalGroupsSequence") or [None])[0]):
        items = groups.get(sequence) if groups is not None else None
        if items:
            return items[0]
    return None


def _frames_of(path: str, ds: Any) -> List[_Frame]:
    """The 2-D frames a header describes, with geometry and rescale per frame."""
    try:
        return _frames_unchecked(path, ds)
    except InputError:  # already says what is wrong (InputError is a ValueError: let it through unchanged)
        raise
    except (TypeError, ValueError, AttributeError, KeyError) as exc:  # malformed values in required elements
        raise InputError(f"malformed image header ({type(exc).__name__})", path=path) from None


def _frames_unchecked(path: str, ds: Any) -> List[_Frame]:
    rows, cols = int(ds.Rows), int(ds.Columns)
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise InputError(f"{int(ds.SamplesPerPixel)} samples per pixel: not a grayscale CT image", path=path)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    slope, intercept = _rescale(ds, 1.0, 0.0, path)
    thickness = _float_or(ds.get("SliceThickness"), None)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None:  # Enhanced CT / MR: geometry and rescale live in functional groups
        if len(per_frame) != n_frames:
            raise InputError(f"{len(per_frame)} per-frame groups for {n_frames} frames", path=path)
        frames: List[_Frame] = []
        for index, fg in enumerate(per_frame):
            pos = _group_item(ds, fg, "PlanePositionSequence")
            ori = _group_item(ds, fg, "PlaneOrientationSequence")
            pix = _group_item(ds, fg, "PixelMeasuresSequence")
            rescale = _group_item(ds, fg, "PixelValueTransformationSequence") or {}
            if pos is None or ori is None or pix is None:
                raise InputError(f"frame {index + 1} lacks plane position/orientation/pixel measures", path=path)
            frames.append(_Frame(
                path, index,
                _floats(pos.ImagePositionPatient, 3, "ImagePositionPatient", path),
                _floats(ori.ImageOrientationPatient, 6, "ImageOrientationPatient", path),
                _spacing(pix.PixelSpacing, path), rows, cols,
                *_rescale(rescale, slope, intercept, path),
                _float_or(pix.get("SliceThickness"), thickness),
            ))
        return frames
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        if keyword not in ds:
            raise InputError(f"no {keyword}: cannot place the image in patient space", path=path)
    position = _floats(ds.ImagePositionPatient, 3, "ImagePositionPatient", path)
    orientation = _floats(ds.ImageOrientationPatient, 6, "ImageOrientationPatient", path)
    spacing = _spacing(ds.PixelSpacing, path)
    if n_frames == 1:
        return [_Frame(path, None, position, orientation, spacing, rows, cols, slope, intercept, thickness)]
    # Legacy multi-frame (NM/RT style): frame offsets along the normal from GridFrameOffsetVector.
    normal = np.cross(orientation[:3], orientation[3:])
    offsets = ds.get("GridFrameOffsetVector")
    if offsets is not None and len(offsets) == n_frames:
        steps = _floats(offsets, n_frames, "GridFrameOffsetVector", path)
        # PS3.3 C.8.8.3.2: the vector is relative (first element 0) or, for an axial plane only, absolute (its
        # first element is the z of ImagePositionPatient); absolute offsets added to that z doubled it.
        if steps[0] != 0 and abs(abs(normal[2]) - 1) < 1e-6 and abs(steps[0] - position[2]) < 1e-3:
            steps = (steps - position[2]) * np.sign(normal[2])
    else:
        step = _float_or(ds.get("SpacingBetweenSlices"), None)
        if step is None:
            raise InputError(f"multi-frame image with {n_frames} frames has no per-frame positions "
                             "(no functional groups, GridFrameOffsetVector or SpacingBetweenSlices)", path=path)
        steps = np.arange(n_frames) * step
    return [_Frame(path, i, position + steps[i] * normal, orientation, spacing, rows, cols, slope, intercept,
                   thickness) for i in range(n_frames)]
