"""Segmentation reader: TotalSegmentator multi-label NIfTI or per-class mask folders, resampled onto a volume."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from ctglip_sdk.errors import ConfigError, GeometryError, InputError
from ctglip_sdk.io.geometry import (DEFAULT_MAX_VOXELS, MAX_OFFSET_VOXELS, check_max_voxels, grid_offset_voxels,
                                    to_canonical)
from ctglip_sdk.io.label_table import read_label_table, reconcile_label_map
from ctglip_sdk.io.nifti import is_nifti, open_nifti, read_nifti_array
from ctglip_sdk.io.paths import is_within, require_path
from ctglip_sdk.organs import label_map as _label_map
from ctglip_sdk.volume import Segmentation, label_counts

__all__ = ["load_segmentation", "resample_nearest", "AFFINE_ATOL_MM"]

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: Grids whose affines agree within this (mm, per affine element) and whose shapes match are the same grid:
#: labels are copied exactly, without resampling.
AFFINE_ATOL_MM = 1e-3

#: Largest label id: label arrays are at most int32 (ids beyond it are refused, never cast and wrapped).
_MAX_LABEL_ID = int(np.iinfo(np.int32).max)

# Voxels per block when gathering: bounds the temporary index arrays (~8 bytes x 4 per voxel).
_BLOCK_VOXELS = 1 << 22


def _resolve_map(label_map: Union[str, Mapping[int, str], None]) -> Tuple[str, Dict[int, str]]:
    if label_map is None:
        return "totalseg_v1", _label_map("totalseg_v1")
    if isinstance(label_map, str):
        return label_map, _label_map(label_map)
    if isinstance(label_map, Mapping) and label_map:
        try:
            labels = {int(k): str(v) for k, v in label_map.items()}
        except (TypeError, ValueError):
            pass
        else:
            # Id 0 is background: {0: "liver"} reported every background voxel as liver. Ids past int32 wrapped
            # in the label array's cast ({2**32 + 7: "liver"} stored as 7); a label image holding such ids is
            # refused by _read_labels with the same bound.
            bad = sorted(i for i in labels if not 0 < i <= _MAX_LABEL_ID)
            if bad:
                raise ConfigError(f"label_map holds id(s) out of range: {', '.join(map(str, bad[:5]))}; ids must be 1 "
                                  f"to {_MAX_LABEL_ID} (0 is background)")
            return "custom", labels
    raise ConfigError(f"label_map must be 'totalseg_v1', 'totalseg_v2' or a non-empty {{id: name}} dict, "
                      f"got {label_map!r}")


def _label_dtype(max_id: int) -> Any:
    return np.uint8 if max_id < 256 else (np.int16 if max_id < 32768 else np.int32)


def _corners(shape: Tuple[int, ...]) -> np.ndarray:
    # Voxel-extent corners (centres +-0.5) in homogeneous index coordinates.
    lo, hi = [-0.5] * 3, [s - 0.5 for s in shape]
    return np.array([[x, y, z, 1.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])


def resample_nearest(labels: np.ndarray, src_affine: np.ndarray, dst_shape: Tuple[int, int, int],
                     dst_affine: np.ndarray, where: str = "") -> np.ndarray:
    """Nearest-neighbour resampling of an integer label array from one grid onto another, through the affines.

    Each target voxel centre is mapped to source index space (``inv(src) @ dst``) and rounded to the nearest
    source voxel; voxels outside the source grid become 0. Indices are computed block by block, so memory stays
    bounded on large grids and labels are never converted to float. When shapes and affines agree (within
    AFFINE_ATOL_MM) the labels are copied as they are.

    Raises:
        InputError: the source grid's extent does not overlap the target grid at all ("no overlap").

    Example:
        >>> lab = np.arange(8, dtype=np.uint8).reshape(2, 2, 2)
        >>> resample_nearest(lab, np.diag([2.0, 2, 2, 1]), (4, 4, 4), np.eye(4))[3, 0, 2]
        5
    """
    src_affine = np.asarray(src_affine, dtype=np.float64)
    dst_affine = np.asarray(dst_affine, dtype=np.float64)
    if labels.shape == tuple(dst_shape) and np.allclose(src_affine, dst_affine, rtol=0, atol=AFFINE_ATOL_MM):
        return labels.copy(order="K")
    mapping = np.linalg.inv(src_affine) @ dst_affine  # target index -> source index
    src_shape = np.array(labels.shape)
    # Overlap test on the voxel extents: target corners in source index space vs the source box.
    corners = _corners(tuple(dst_shape)) @ mapping.T
    lo, hi = corners[:, :3].min(axis=0), corners[:, :3].max(axis=0)
    if np.any(hi < -0.5) or np.any(lo > src_shape - 0.5):
        raise InputError("no overlap: the mask's grid lies entirely outside the volume's field of view "
                         "(check that mask and image belong to the same scan)", path=where or None)
    linear = mapping[:3, :3]
    if np.allclose(linear - np.diag(np.diag(linear)), 0.0, atol=1e-9):
        return _resample_separable(labels, mapping, tuple(int(s) for s in dst_shape))
    out = np.zeros(dst_shape, dtype=labels.dtype)
    flat = labels.ravel()
    ni, nj, nk = (int(s) for s in dst_shape)
    i, j = np.meshgrid(np.arange(ni, dtype=np.float64), np.arange(nj, dtype=np.float64), indexing="ij")
    plane = np.stack([i.ravel(), j.ravel()])  # (2, ni*nj)
    step = max(1, _BLOCK_VOXELS // max(1, ni * nj))
    for k0 in range(0, nk, step):
        ks = np.arange(k0, min(nk, k0 + step), dtype=np.float64)
        idx = []
        for axis in range(3):
            base = mapping[axis, 0] * plane[0] + mapping[axis, 1] * plane[1]  # (ni*nj,)
            coord = base[None, :] + (mapping[axis, 2] * ks + mapping[axis, 3])[:, None]
            idx.append(np.floor(coord + 0.5).astype(np.int64))  # round half up: deterministic nearest voxel
        inside = np.ones(idx[0].shape, dtype=bool)
        for axis in range(3):
            inside &= (idx[axis] >= 0) & (idx[axis] < src_shape[axis])
        linear_index = (idx[0] * src_shape[1] + idx[1]) * src_shape[2] + idx[2]
        block = np.zeros(idx[0].shape, dtype=labels.dtype)
        block[inside] = flat[linear_index[inside]]
        out[:, :, k0:k0 + len(ks)] = block.reshape(len(ks), ni, nj).transpose(1, 2, 0)
    return out


def _resample_separable(labels: np.ndarray, mapping: np.ndarray, dst_shape: Tuple[int, int, int]) -> np.ndarray:
    """Nearest neighbour when the grids share axis directions (the usual case after RAS canonicalisation).

    Each source index then depends on one target index only, so three 1-D index vectors and one gather do it.
    """
    index, valid = [], []
    for axis in range(3):
        coord = mapping[axis, axis] * np.arange(dst_shape[axis], dtype=np.float64) + mapping[axis, 3]
        idx = np.floor(coord + 0.5).astype(np.int64)  # same rounding as the general path
        ok = (idx >= 0) & (idx < labels.shape[axis])
        index.append(np.where(ok, idx, 0))
        valid.append(ok)
    out = labels[np.ix_(*index)]
    outside = ~(valid[0][:, None, None] & valid[1][None, :, None] & valid[2][None, None, :])
    out[outside] = 0
    return out


def _read_labels(path: Path, max_voxels: int, table: Optional[Dict[int, str]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Integer labels of one NIfTI file in RAS+ canonical order, with the canonical affine; ``table`` (a dict)
    receives the label table of the file's header, if it carries one."""
    where = os.fspath(path)
    img, shape, affine = open_nifti(where, max_voxels)
    if table is not None:
        table.update(read_label_table(img, where) or {})
    data = read_nifti_array(img, shape, where, dtype=np.int64)
    if data.dtype.kind == "f":
        if not np.all(np.isfinite(data)) or np.any(data != np.round(data)):
            raise InputError("label image holds non-integer values; expected integer label ids", path=where)
    if data.size and (data.min() < 0):
        raise InputError(f"label image holds negative values (min {data.min()})", path=where)
    max_id = int(data.max()) if data.size else 0
    if max_id > _MAX_LABEL_ID:  # checked before the cast, which wrapped such ids onto real classes
        raise InputError(f"label id {max_id} is far beyond any label map (largest id {_MAX_LABEL_ID})", path=where)
    return to_canonical(data.astype(_label_dtype(max_id)), affine)


def _ids_present(labels: np.ndarray) -> List[int]:
    """Distinct label values (chunked counts for small integer types: far faster than np.unique on a CT grid)."""
    if labels.dtype.itemsize <= 2 and labels.dtype.kind == "u":
        return np.flatnonzero(label_counts(labels)).tolist()
    return np.unique(labels.ravel(order="K")).tolist()


def _refuse_shifted_twin(shape: Tuple[int, ...], affine: np.ndarray, like: Any, where: str) -> None:
    """A mask of the image's exact shape but on another grid is refused, not resampled.

    Why: a coarse or cropped mask has another shape; one of the same shape whose voxel corners lie more than half a
    voxel off is almost always a slip (saved with an identity or LPS affine, another scan's mask), and resampling
    it silently moves every organ (a liver of 32,000 voxels loaded as 13,448)."""
    if tuple(shape) != tuple(like.shape):
        return
    off = grid_offset_voxels(affine, shape, like.affine)
    if off > MAX_OFFSET_VOXELS:
        shift = np.linalg.norm(np.asarray(affine)[:3, 3] - np.asarray(like.affine)[:3, 3])
        raise GeometryError(f"mask mismatch: same shape as the image but another grid (corners up to {off:.1f} "
                            f"voxels apart; origins differ by {shift:.1f} mm); write the mask with the image's "
                            "affine, or resample it onto the image's grid yourself", path=where)


def _merge(target: np.ndarray, part: np.ndarray, names: Dict[int, str], where: str) -> None:
    """Add ``part``'s labels into ``target`` in place; overlapping labelled voxels raise InputError."""
    clash = (target > 0) & (part > 0)
    if clash.any():
        pairs: Dict[Tuple[int, int], int] = {}
        a, b = target[clash], part[clash]
        for x, y in zip(*np.unique(np.stack([a, b]), axis=1)):
            pairs[(int(x), int(y))] = int(np.sum((a == x) & (b == y)))
        text = ", ".join(f"{names.get(x, x)} / {names.get(y, y)} ({n} voxels)"
                         for (x, y), n in list(pairs.items())[:5])
        raise InputError(f"per-class masks overlap: {text}; each voxel may belong to one class only", path=where)
    np.copyto(target, part, where=part > 0)


def _class_of(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _folder_map(folder: Path, default: Tuple[str, Dict[int, str]]) -> Tuple[str, Dict[int, str]]:
    """The label map a per-class folder's own file names imply: TotalSegmentator 2's when a name is a v2 class and
    not a v1 one (and every name is a v2 class), else ``default`` (v1). A v2 folder used to be refused file by
    file ("not a class of the label map"), though its names leave no doubt."""
    names = {_class_of(p) for p in _per_class_files(folder)}
    v1, v2 = set(_label_map("totalseg_v1").values()), _label_map("totalseg_v2")
    if names - v1 and names <= set(v2.values()):
        return "totalseg_v2", v2
    return default


def _per_class_files(folder: Path) -> List[Path]:
    """The per-class masks of a folder, sorted: its visible ``.nii``/``.nii.gz`` files (ingest checks the same).

    A file that is a link out of the folder is refused: the folder is the mask the caller confined (an archive's
    ``masks/case/``), and its files must not reach elsewhere (a security review found a linked liver mask read
    from outside the archive, 2026-12-06).
    """
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and is_nifti(p))
    base = folder.resolve()
    for p in files:
        if p.is_symlink() and not is_within(base, p.resolve()):
            raise InputError("per-class mask is a link out of its folder; copy the file in instead", path=p)
    return files


def _read_folder(folder: Path, ids: Dict[str, int], max_voxels: int,
                 like: Optional[Any]) -> Tuple[np.ndarray, np.ndarray]:
    """Combine a folder of per-class binary masks into one label array (on ``like``'s grid when given)."""
    files = _per_class_files(folder)
    if not files:
        raise InputError("folder holds no per-class masks (<class>.nii.gz)", path=folder)
    for path in files:
        if _class_of(path) not in ids:
            raise InputError(f"file name {_class_of(path)!r} is not a class of the label map; per-class masks must "
                             "be named <class>.nii.gz with TotalSegmentator class names", path=path)
    dtype = _label_dtype(max(ids.values()))
    # Group masks by grid so that each grid is resampled once (TotalSegmentator writes one grid for all).
    grids: List[Tuple[np.ndarray, np.ndarray]] = []  # (labels, affine) per distinct grid
    for path in files:
        mask, affine = _read_labels(path, max_voxels)
        part = np.where(mask > 0, ids[_class_of(path)], 0).astype(dtype)
        for labels, grid_affine in grids:
            if labels.shape == part.shape and np.allclose(grid_affine, affine, rtol=0, atol=AFFINE_ATOL_MM):
                _merge(labels, part, {v: k for k, v in ids.items()}, os.fspath(path))
                break
        else:
            grids.append((part, affine))
    if like is None:
        if len(grids) > 1:
            raise InputError("per-class masks lie on different grids; pass like=volume to resample them onto one",
                             path=folder)
        return grids[0]
    target = np.zeros(tuple(like.shape), dtype=dtype)
    for labels, affine in grids:
        _refuse_shifted_twin(labels.shape, affine, like, os.fspath(folder))
        _merge(target, resample_nearest(labels, affine, tuple(like.shape), like.affine, os.fspath(folder)),
               {v: k for k, v in ids.items()}, os.fspath(folder))
    return target, np.asarray(like.affine, dtype=np.float64)


def load_segmentation(path: PathLike, like: Optional[Any] = None,
                      label_map: Union[str, Mapping[int, str], None] = None,
                      max_voxels: int = DEFAULT_MAX_VOXELS, *, check_grid: bool = False) -> Segmentation:
    """Load organ labels: a multi-label NIfTI or a folder of per-class ``<class>.nii.gz`` masks.

    These are TotalSegmentator's two output layouts. Labels are resampled with nearest neighbour onto the grid
    of ``like`` (a Volume, or anything with ``.shape`` and ``.affine``), through both affines; when the grids
    agree the labels are copied exactly. Without ``like`` the labels stay on their own grid (RAS+ canonical).
    Any grid of another shape that overlaps ``like``'s is resampled, so a coarse mask loads; a mask of ``like``'s
    exact shape on another grid (corners more than half a voxel off: an identity or LPS affine, another scan's
    mask) is a GeometryError. ``check_grid=True`` refuses any mask that is not on ``like``'s own grid
    (``check_mask_grid``; ingest, training and evaluation use it).

    Args:
        path: multi-label ``.nii``/``.nii.gz`` file, or a folder of per-class masks.
        like: the volume whose grid the labels must share.
        label_map: ``"totalseg_v1"`` (104 classes), ``"totalseg_v2"`` (117) or an ``{id: name}`` dict. Ids of a
            multi-label file are read through it; per-class file names map to its ids. None (the default): the
            label table in a multi-label file's header when it has one (TotalSegmentator writes it; a v2-order
            file is then read as v2), else ``"totalseg_v1"``. An explicit map that contradicts that table for
            an id the file holds is an InputError.
        max_voxels: header-declared size limit per file (checked before reading).
        check_grid: first run ``check_mask_grid(path, like)`` (headers only), so that a mask on another grid than
            ``like``'s is a ``GeometryError`` ("mask mismatch") rather than resampled. Needs ``like``.

    Returns:
        Segmentation with ``labels`` = the label map ``{id: name}`` and ``meta`` (source_path, label_map, layout).

    Raises:
        InputError: unreadable file, label ids not in the map, a map that contradicts the file's own label
            table, an unknown per-class file name, overlapping per-class masks, or a mask grid that does not
            overlap ``like`` at all ("no overlap").
        GeometryError: "mask mismatch": a mask of ``like``'s shape on another grid, or with ``check_grid=True``
            any mask on another grid than ``like``'s.

    Example:
        >>> vol = load_volume("ct.nii.gz")  # doctest: +SKIP
        >>> seg = load_segmentation("ct_seg.nii.gz", like=vol)  # doctest: +SKIP
        >>> seg.array.shape == vol.shape, seg.present()["liver"] > 0  # doctest: +SKIP
        (True, True)
    """
    where = require_path(path, "path", "a mask file or folder path")
    max_voxels = check_max_voxels(max_voxels)
    map_name, labels_by_id = _resolve_map(label_map)
    if like is not None and not (hasattr(like, "shape") and hasattr(like, "affine")):
        raise ConfigError(f"like= must be a Volume (with .shape and .affine), got {type(like).__name__}")
    if check_grid and like is None:
        raise ConfigError("check_grid=True compares the mask with an image: pass like=volume")
    if not os.path.exists(where):
        raise InputError("no such file or folder", path=where)
    if check_grid:
        from ctglip_sdk.io.mask_grid import check_mask_grid  # noqa: PLC0415 - it imports this module

        check_mask_grid(where, like)
    if os.path.isdir(where):
        if label_map is None:
            map_name, labels_by_id = _folder_map(Path(where), (map_name, labels_by_id))
        ids = {name: i for i, name in labels_by_id.items()}
        array, affine = _read_folder(Path(where), ids, max_voxels, like)
        layout = "per_class"
    else:
        if not is_nifti(where):
            raise InputError("expected a .nii/.nii.gz label image or a folder of per-class masks", path=where)
        table: Dict[int, str] = {}
        array, affine = _read_labels(Path(where), max_voxels, table)
        present = _ids_present(array)
        map_name, labels_by_id = reconcile_label_map(table, present, label_map, (map_name, labels_by_id), where)
        unknown = sorted(set(present) - set(labels_by_id) - {0})
        if unknown:
            raise InputError(f"label ids {unknown[:10]} are not in label map {map_name!r} "
                             f"({len(labels_by_id)} classes); pass the map the file was written with", path=where)
        if like is not None:
            _refuse_shifted_twin(array.shape, affine, like, where)
            array = resample_nearest(array, affine, tuple(like.shape), like.affine, where)
            affine = np.asarray(like.affine, dtype=np.float64)
        layout = "multilabel"
    if like is not None and not array.any():
        log.warning("%s: no labelled voxel falls inside the volume's grid", where)
    meta = {"source_path": where, "label_map": map_name, "layout": layout}
    return Segmentation(array=array, labels=dict(labels_by_id), affine=affine, meta=meta)
