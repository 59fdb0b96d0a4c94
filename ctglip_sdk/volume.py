"""The in-memory CT types: Volume (HU array + affine + metadata) and Segmentation (labels on a volume's grid)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Tuple

import numpy as np

from ctglip_sdk.errors import InputError

__all__ = ["Volume", "Segmentation", "CANONICAL_ORIENTATION", "label_counts"]

#: Every Volume's array is in closest-canonical RAS+ order (nibabel/MONAI): increasing i, j, k move toward the
#: patient's Right, Anterior and Superior world axes; the affine maps indices to RAS+ mm (DICOM LPS with x and y
#: negated). See docs/inputs.md.
CANONICAL_ORIENTATION = "RAS"

#: Voxels per step of `label_counts`. Why chunks: np.bincount widens its input to int64, so one call on a whole
#: 512 x 512 x 265 uint8 mask allocated (and page-faulted) 555 MB and took about 2 s; chunks of 4 M voxels,
#: counting only the labelled ones, take about 0.06 s.
_COUNT_CHUNK = 1 << 22


def label_counts(labels: np.ndarray, minlength: int = 0) -> np.ndarray:
    """``np.bincount`` of a non-negative integer label array (any shape and memory order), in small chunks.

    Example:
        >>> label_counts(np.array([[0, 2], [2, 0]], np.uint8)).tolist()
        [2, 0, 2]
    """
    flat = labels.ravel(order="K")
    out = np.zeros(max(int(minlength), 1), np.int64)
    for i0 in range(0, flat.size, _COUNT_CHUNK):
        chunk = flat[i0:i0 + _COUNT_CHUNK]
        labelled = chunk[chunk != 0]  # most of a CT grid is background: only labelled voxels are widened
        out[0] += chunk.size - labelled.size
        if labelled.size:
            counts = np.bincount(labelled)
            if counts.size > out.size:
                out = np.concatenate([out, np.zeros(counts.size - out.size, np.int64)])
            out[: counts.size] += counts
    return out


@dataclass
class Volume:
    """A CT volume in Hounsfield units.

    Attributes:
        array: float32 HU, shape ``(I, J, K)``, axes in closest-canonical RAS+ order (nibabel/MONAI convention).
        affine: 4x4 float64, voxel index ``(i, j, k, 1)`` -> RAS+ world millimetres.
        meta: study/series UIDs, ``patient`` (pseudonym), age, sex, study_date, body_part, contrast, kvp,
            manufacturer, source_path. Never the patient's name, ID, birth date or accession number.
    """

    array: np.ndarray
    affine: np.ndarray
    meta: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise InputError(f"a Volume must be 3-D, got shape {self.array.shape}", path=self.meta.get("source_path"))
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise InputError(f"affine must be 4x4, got {self.affine.shape}", path=self.meta.get("source_path"))

    @property
    def spacing(self) -> Tuple[float, float, float]:
        """Voxel size in mm along the array axes (column norms of the affine)."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def shape(self) -> Tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]

    def world(self, ijk: Any) -> np.ndarray:
        """Voxel indices ``(..., 3)`` -> RAS+ world mm."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return ijk @ self.affine[:3, :3].T + self.affine[:3, 3]

    def __repr__(self) -> str:  # arrays are big; show geometry only
        sp = ", ".join(f"{s:.3g}" for s in self.spacing)
        return f"Volume(shape={self.shape}, spacing=({sp}) mm, series={self.meta.get('series_uid')!r})"


@dataclass
class Segmentation:
    """Integer organ labels on a volume's grid.

    Attributes:
        array: integer labels, same shape as the volume it belongs to (0 = background).
        labels: ``{label id: class name}`` for the ids that may occur (TotalSegmentator names).
        affine: the grid's affine (equal to the volume's after ``load_segmentation(..., like=vol)``).
    """

    array: np.ndarray
    labels: Dict[int, str]
    affine: np.ndarray
    meta: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = (self.meta or {}).get("source_path") if isinstance(self.meta, dict) else None
        # Volume is (array, affine, meta) and Segmentation (array, labels, affine, meta): a swapped call used to
        # fail in float() deep inside numpy, so the order is named here.
        if not isinstance(self.labels, Mapping):
            raise InputError(f"Segmentation(array, labels, affine, meta): labels must be a {{id: class name}} mapping, "
                             f"got {type(self.labels).__name__}", path=where)
        try:
            self.affine = np.asarray(self.affine, dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(f"Segmentation(array, labels, affine, meta): affine must be a 4x4 matrix, got "
                             f"{type(self.affine).__name__}", path=where) from None
        if self.affine.shape != (4, 4):
            raise InputError(f"affine must be 4x4, got {self.affine.shape}", path=where)
        if not isinstance(self.array, np.ndarray) or self.array.ndim != 3:
            raise InputError(f"a Segmentation must be a 3-D array, got {getattr(self.array, 'shape', type(self.array))}",
                             path=where)

    @property
    def ids(self) -> Dict[str, int]:
        """``{class name: label id}``."""
        return {v: k for k, v in self.labels.items()}

    def present(self) -> Dict[str, int]:
        """Classes with at least one voxel -> voxel count."""
        counts = label_counts(self.array, minlength=max(self.labels, default=0) + 1)
        return {name: int(counts[i]) for i, name in self.labels.items() if i < len(counts) and counts[i] > 0}

    def mask(self, organ: str) -> np.ndarray:
        """Boolean mask of one class."""
        ids = self.ids
        if organ not in ids:
            raise InputError(f"organ {organ!r} is not in this segmentation's label map", path=self.meta.get("source_path"))
        return self.array == ids[organ]
