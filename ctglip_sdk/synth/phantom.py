"""One synthetic patient end to end: grid, anatomy, findings, noise -> HU volume, labels, truth."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from ctglip_sdk.synth.abdomen import render_abdomen
from ctglip_sdk.synth.anatomy import Anatomy
from ctglip_sdk.synth.body import BodyModel
from ctglip_sdk.synth.presets import Preset
from ctglip_sdk.synth.raster import Canvas, Grid
from ctglip_sdk.synth.thorax import render_great_vessels, render_thorax

__all__ = ["Rendered", "make_grid", "render", "add_noise"]


@dataclass
class Rendered:
    """The rendered phantom before it is written: integer HU, labels, grid and per-finding truth."""

    hu: np.ndarray                 # int16 HU, RAS+ (I, J, K)
    labels: np.ndarray             # uint8 TotalSegmentator v1 ids
    grid: Grid
    findings: List[dict] = field(default_factory=list)
    shapes: Dict[str, object] = field(default_factory=dict)


def make_grid(p: Preset, rng: np.random.Generator) -> Grid:
    """The scan grid: the preset's matrix centred on the patient, with a little table/centring jitter."""
    n = p.matrix
    # Centre rounded to 0.01 mm so that the DICOM position strings carry the geometry exactly.
    cx, cy = round(float(rng.normal(0, 4)), 2), round(-12.0 + float(rng.normal(0, 4)), 2)
    half = (n - 1) / 2.0 * p.pixel_mm
    return Grid((n, n, p.n_slices), (p.pixel_mm, p.pixel_mm, p.slice_mm),
                (cx + half, cy + half, float(p.z_range[0])))


def add_noise(hu: np.ndarray, grid: Grid, sd5: float, rng: np.random.Generator) -> None:
    """Spatially correlated noise (binomial in-plane filter), sd scaled as 1/sqrt(slice thickness), in place."""
    sd = sd5 * np.sqrt(5.0 / grid.spacing[2])
    norm = (6.0 / 16.0)  # sd of a [1,2,1]/4 x [1,2,1]/4 filtered unit white noise: sqrt(6/16) per axis
    for k0 in range(0, hu.shape[2], 16):
        ks = slice(k0, min(hu.shape[2], k0 + 16))
        w = rng.standard_normal((hu.shape[0] + 2, hu.shape[1] + 2, ks.stop - ks.start), dtype=np.float32)
        w = (w[:-2] + 2 * w[1:-1] + w[2:]) * 0.25
        w = (w[:, :-2] + 2 * w[:, 1:-1] + w[:, 2:]) * 0.25
        hu[:, :, ks] += w * np.float32(sd / norm)


def render(a: Anatomy, preset: Preset, rng: np.random.Generator, plan: Optional[list] = None) -> Rendered:
    """Render one patient's anatomy (and the findings in ``plan``) onto the preset's grid."""
    from ctglip_sdk.synth import lesions  # findings import the renderers above

    grid = make_grid(preset, rng)
    cv = Canvas(grid)
    body = BodyModel(a, rng)
    body.render_wall(cv)
    body.render_breasts(cv)
    body.render_muscles(cv)
    render_thorax(cv, a, body, rng, preset.detail)
    shapes = render_abdomen(cv, a, body, rng, preset.detail)
    shapes.update(render_great_vessels(cv, a, body))
    body.render_spine(cv)
    body.render_ribs(cv, preset.detail)
    body.render_pelvis(cv)
    out = Rendered(hu=np.empty(0, np.int16), labels=cv.lab, grid=grid, shapes=shapes)
    cores = lesions.render_findings(cv, a, body, shapes, plan or [], rng, preset, out.findings)
    add_noise(cv.hu, grid, a.noise_sd, rng)
    out.hu = np.clip(np.rint(cv.hu), -1024, 3071).astype(np.int16)
    lesions.measure(out, cores)
    return out
