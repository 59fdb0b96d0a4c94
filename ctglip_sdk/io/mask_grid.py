"""Is a TotalSegmentator mask on its image's grid? Checked from NIfTI headers alone (no voxel is read)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Tuple, Union

import numpy as np

from ctglip_sdk.errors import GeometryError, InputError
from ctglip_sdk.io.geometry import MAX_OFFSET_VOXELS, canonical_affine, canonical_shape, grid_offset_voxels
from ctglip_sdk.io.nifti import is_nifti
from ctglip_sdk.io.paths import require_path
from ctglip_sdk.io.segmentation import AFFINE_ATOL_MM, _per_class_files

__all__ = ["check_mask_grid", "MAX_OFFSET_VOXELS"]

PathLike = Union[str, "os.PathLike[str]"]



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


def check_mask_grid(mask_path: PathLike, volume: Any, shown: Optional[str] = None) -> None:
    """Refuse a TotalSegmentator mask that is not on its image's grid (a *mask mismatch*), from headers alone.

    TotalSegmentator writes its masks on the image's own grid, so a mask on another grid is the wrong mask: another
    scan's, a ``--fast`` run never resampled back, one written with another origin, or with an LPS affine read as
    RAS (which flips the organs). ``load_segmentation(mask, like=volume)`` would resample any of these silently
    onto the image (docs/inputs.md); archive ingest, training's preprocessing cache, calibration and evaluation
    call this first. Both layouts follow one rule: a multi-label file by its header, a per-class folder by the
    headers of all its ``<class>.nii(.gz)`` files, which must first share one grid. The grid compared is the RAS+
    canonical one the loader gives: another shape is a mismatch, and so is the same shape with voxel corners
    more than ``MAX_OFFSET_VOXELS`` (half a voxel) from the image's. Reading a 104-file folder's headers takes
    about 35 ms; no voxel is read.

    Args:
        mask_path: a multi-label ``.nii``/``.nii.gz`` file, or a folder of per-class masks.
        volume: the image (a Volume, or anything with ``.shape`` and ``.affine`` on the RAS+ canonical grid).
        shown: the path errors name (e.g. relative to an archive root; a folder gets a trailing ``/``); default:
            ``mask_path`` as given. Many studies hold a ``segmentations.nii.gz``, so a root-relative path says more.

    Raises:
        GeometryError: "mask mismatch: ..." naming both grids (shape and spacing, and for the same shape how far
            the corners and origins lie apart), or a per-class folder whose files lie on different grids.
        InputError: the mask does not exist, or a header (or its affine) cannot be read.

    A path that is not NIfTI, or a folder without per-class files, passes: ``load_segmentation`` then says what is
    wrong with it.

    Example:
        >>> vol = load_volume(root / "S002/ct.nii.gz")                                # doctest: +SKIP
        >>> check_mask_grid(root / "S002/segmentations", vol, shown="S002/segmentations")  # doctest: +SKIP
        Traceback (most recent call last):
        ctglip_sdk.errors.GeometryError: S002/segmentations/: mask mismatch: the mask's grid is (20, 20, 12) ...
    """
    path = Path(require_path(mask_path, "mask_path", "a mask file or folder path"))
    shown = Path(os.fspath(mask_path) if shown is None else shown).as_posix().rstrip("/")
    if not path.exists():
        raise InputError("no such file or folder (segmentation mask)", path=shown)
    if path.is_dir():
        shown += "/"
        found = _folder_grid(path, shown)
        if found is None:
            return
        shape, mask_affine = found
    elif is_nifti(path):
        shape, mask_affine = _canonical_grid(*_read_header(path, shown), shown)
    else:
        return  # not a mask format: the loader says so
    grids = (f"the mask's grid is {_grid_text(shape, mask_affine)}, "
             f"the image's {_grid_text(volume.shape, volume.affine)}")
    if tuple(shape) != tuple(volume.shape):
        raise GeometryError(f"mask mismatch: {grids}", path=shown)
    # Same shape is not the same grid: a mask written with another origin, or with an LPS affine read as RAS,
    # would be resampled onto other voxels and embed the wrong organs.
    off = grid_offset_voxels(mask_affine, shape, volume.affine)
    if off > MAX_OFFSET_VOXELS:
        shift = np.asarray(mask_affine)[:3, 3] - np.asarray(volume.affine)[:3, 3]
        raise GeometryError(f"mask mismatch: same shape as the image but another grid (corners up to {off:.1f} "
                            f"voxels apart; origins differ by {np.linalg.norm(shift):.1f} mm): {grids}", path=shown)
