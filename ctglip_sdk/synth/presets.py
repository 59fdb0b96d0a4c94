"""Acquisition presets of the synthetic archive: matrix, pixel size, slice thickness and z range."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

from ctglip_sdk.errors import ConfigError

__all__ = ["Preset", "PRESETS", "get_preset"]


@dataclass(frozen=True)
class Preset:
    """How a synthetic study is acquired.

    Attributes:
        name: preset name.
        matrix: in-plane size (columns = rows).
        pixel_mm: in-plane pixel size; the field of view is ``matrix * pixel_mm``.
        slice_mm: slice thickness = spacing between slices.
        z_range: (inferior, superior) limits of the scan in mm from the centre of L1 (pubis to lung apices).
        detail: 0 (few primitives, for speed) .. 2 (all vessels, bronchovascular tree, bowel detail).
        min_lesion_mm: smallest focal lesion drawn; smaller ones would vanish into one blurred voxel.
    """

    name: str
    matrix: int
    pixel_mm: float
    slice_mm: float
    z_range: Tuple[float, float] = (-330.0, 330.0)
    detail: int = 1
    min_lesion_mm: float = 3.0

    @property
    def n_slices(self) -> int:
        return int(round((self.z_range[1] - self.z_range[0]) / self.slice_mm)) + 1

    @property
    def fov_mm(self) -> float:
        return self.matrix * self.pixel_mm


PRESETS: Dict[str, Preset] = {
    # Unit tests: a patient in a fraction of a second; 96 x 96 x 67.
    "small": Preset("small", matrix=96, pixel_mm=4.0, slice_mm=10.0, detail=0, min_lesion_mm=5.0),
    # Demo and training: 128 x 128 x 133, 3 mm pixels, 5 mm slices (a routine chest-abdomen-pelvis recon).
    "default": Preset("default", matrix=128, pixel_mm=3.0, slice_mm=5.0, detail=1, min_lesion_mm=3.5),
    # I/O benchmarks: a clinical 512 x 512 matrix, 0.78 mm pixels, 2.5 mm slices (265 slices).
    "clinical": Preset("clinical", matrix=512, pixel_mm=0.78125, slice_mm=2.5, detail=2, min_lesion_mm=2.0),
}


def get_preset(preset: "str | Preset") -> Preset:
    """A preset by name (or the Preset itself).

    Example:
        >>> get_preset("small").matrix
        96
    """
    if isinstance(preset, Preset):
        return preset
    if preset not in PRESETS:
        raise ConfigError(f"unknown synth preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[preset]
