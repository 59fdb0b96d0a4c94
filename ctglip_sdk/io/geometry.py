"""Shared geometry helpers for the readers: RAS+ canonical reorientation, LPS<->RAS, size guard, tolerances."""

from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple, Union

import numpy as np
from nibabel import orientations as nio

from ctglip_sdk.errors import ConfigError, InputError

__all__ = [
    "DEFAULT_MAX_VOXELS",
    "MAX_OFFSET_VOXELS",
    "SPACING_RTOL",
    "SPACING_ATOL_MM",
    "TILT_TOL_FRACTION",
    "DIRECTION_ATOL",
    "LPS_TO_RAS",
    "canonical_transform",
    "canonical_shape",
    "to_canonical",
    "check_voxel_count",
    "check_max_voxels",
    "check_affine",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Upper bound on the voxels a reader accepts (checked from headers, before any pixel is read):
#: 1024 x 1024 x 2048 voxels, i.e. 8 GiB as float32. Pass ``max_voxels=`` to change it.
DEFAULT_MAX_VOXELS = 1024 * 1024 * 2048

#: A slice step counts as uneven when it differs from the series' median step by more than
#: ``max(SPACING_RTOL * median, SPACING_ATOL_MM)``. 1 % absorbs the rounding of positions that scanners write
#: with 0.01 mm precision, and still catches a doubled step, a duplicate or a missing slice.
SPACING_RTOL = 0.01
SPACING_ATOL_MM = 0.01

#: A series is tilted (gantry tilt / sheared stack) when any slice's origin lies further than this fraction of
#: the smallest pixel spacing off the line through the first slice along the slice normal.
TILT_TOL_FRACTION = 0.1

#: Tolerance on direction cosines: orientations of slices that differ by more than this are "mixed".
DIRECTION_ATOL = 1e-4

#: DICOM patient coordinates are LPS (+x left, +y posterior, +z superior); RAS+ negates x and y.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def check_max_voxels(max_voxels: int) -> int:
    """Validate the ``max_voxels`` argument."""
    if isinstance(max_voxels, bool) or not isinstance(max_voxels, (int, np.integer)) or max_voxels <= 0:
        raise ConfigError(f"max_voxels must be a positive integer, got {max_voxels!r}")
    return int(max_voxels)


def check_voxel_count(shape: Sequence[int], max_voxels: int, path: Optional[PathLike], what: str = "image") -> None:
    """Raise InputError when a header-declared ``shape`` holds more than ``max_voxels`` voxels.

    Called before any pixel is read, so that a corrupt or hostile header cannot make the reader allocate.
    """
    dims = [int(d) for d in shape]
    if any(d <= 0 for d in dims):
        raise InputError(f"{what} declares a non-positive dimension {tuple(dims)}", path=path)
    count = 1
    for d in dims:
        count *= d  # Python ints: no overflow for absurd headers
    if count > max_voxels:
        raise InputError(
            f"{what} declares {' x '.join(map(str, dims))} = {count:,} voxels, more than max_voxels={max_voxels:,}; "
            "refusing to read it (pass a larger max_voxels= if the file is genuine)",
            path=path,
        )


def check_affine(affine: np.ndarray, path: Optional[PathLike]) -> np.ndarray:
    """Return ``affine`` as float64 4x4 after checking it is finite and invertible."""
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise InputError(f"affine is not a finite 4x4 matrix: {np.array2string(affine, precision=4)}", path=path)
    if abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise InputError("affine is singular (zero voxel size or collinear axes)", path=path)
    return affine


def canonical_transform(affine: np.ndarray) -> np.ndarray:
    """nibabel orientation transform (``ornt``) from ``affine``'s axes to closest-canonical RAS+."""
    return nio.ornt_transform(nio.io_orientation(affine), nio.axcodes2ornt("RAS"))


def canonical_shape(affine: np.ndarray, shape: Sequence[int]) -> Tuple[int, ...]:
    """Shape that ``shape`` takes after reorientation to RAS+ (for reporting without reading pixels)."""
    ornt = canonical_transform(affine)
    out = [0, 0, 0]
    for axis, (new_axis, _flip) in enumerate(ornt):
        out[int(new_axis)] = int(shape[axis])
    return tuple(out)


def canonical_affine(affine: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The voxel->RAS+ affine that ``to_canonical`` gives an image of ``shape`` (without reading its pixels)."""
    ornt = canonical_transform(affine)
    return np.asarray(affine, dtype=np.float64) @ nio.inv_ornt_aff(ornt, tuple(int(s) for s in shape))


#: Voxel corners of a same-shape mask may lie this far (in the image's voxels) from the image's: half a voxel is
#: where nearest-neighbour lookup starts to move labels, so anything within it is the image's grid up to rounding.
MAX_OFFSET_VOXELS = 0.5


def grid_offset_voxels(affine: np.ndarray, shape: Sequence[int], other_affine: np.ndarray) -> float:
    """How far (in voxels of ``other_affine``) the corners of a ``shape`` grid on ``affine`` lie from the same
    voxel corners on ``other_affine``: 0 for one grid, above 0.5 when nearest-neighbour lookup moves voxels."""
    lo, hi = [-0.5] * 3, [s - 0.5 for s in shape]
    corners = np.array([[x, y, z, 1.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    mapped = (np.linalg.inv(np.asarray(other_affine, np.float64)) @ np.asarray(affine, np.float64) @ corners.T).T
    return float(np.max(np.abs(mapped[:, :3] - corners[:, :3])))


def to_canonical(array: np.ndarray, affine: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Reorient a 3-D ``array`` with voxel->RAS+ ``affine`` to closest-canonical RAS+ (nibabel's tools).

    Only flips and axis permutations are applied (no resampling), exactly as ``nib.as_closest_canonical``.
    The result has non-negative strides (torch.from_numpy accepts it); it is a copy only when reorientation was
    needed, and keeps the input's memory order (nibabel returns NIfTI data Fortran-ordered).

    Example:
        >>> arr, aff = to_canonical(np.zeros((2, 3, 4), np.float32), np.diag([-1.0, 1.0, 1.0, 1.0]))
        >>> aff[0, 0], arr.shape
        (1.0, (2, 3, 4))
    """
    ornt = canonical_transform(affine)
    if np.array_equal(ornt, nio.axcodes2ornt("RAS")):
        return array, np.asarray(affine, dtype=np.float64)
    new_affine = np.asarray(affine, dtype=np.float64) @ nio.inv_ornt_aff(ornt, array.shape)
    return np.array(nio.apply_orientation(array, ornt), order="K"), new_affine
