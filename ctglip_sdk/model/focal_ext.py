"""Large-lesion, isolation and cyst descriptors per organ: 6 mm bright blobs, largest dense and water balls."""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
from scipy import ndimage as ndi

from ctglip_sdk.model.focal import StudyResidual, _gauss, _OrganBox, _signed_log, descriptor_columns
from ctglip_sdk.model.voxels import _OrganVoxels

__all__ = ["extended_descriptors", "EXTENDED", "EXTENDED_NAMES", "N_EXTENDED"]

#: What each column of :func:`extended_descriptors` holds (docs/model.md, "Extended focal descriptors").
EXTENDED_NAMES = (
    "bright_blob_large",  # bright_blob at 6 mm: a 15-30 mm nodule or mass, flat inside and so silent at 3 mm
    "bright_dot_large",   # the dot filter at 6 mm
    "dense_radius",       # radius (mm) of the largest ball of voxels > DENSE_HU above the organ's median
    "isolated_bright",    # HU (2 mm smoothed) of the brightest local peak with an empty shell around it
    "water_radius",       # radius (mm) of the largest ball of water-attenuation voxels darker than the organ: a cyst
)
N_EXTENDED = len(EXTENDED_NAMES)

#: Residual (HU above the organ's median) that counts as dense: in lung (~-850 HU) about -450 HU, so a vessel
#: or a nodule but not partial volume of parenchyma; in a solid organ, calcium or contrast-filled vessels.
DENSE_HU = 400.0
#: Water attenuation (HU) and how far below the organ's median a voxel must be to count towards water_radius: a
#: simple cyst is 0-20 HU whatever the phase, while parenchyma is 40-60 HU unenhanced and ~100 HU enhanced.
WATER_HU, WATER_BELOW = (-20.0, 30.0), 15.0
#: Smoothed residual of a peak worth testing (HU).
PEAK_HU = 150.0
#: Smoothed residual that counts as "something there" in an isolation shell: half of PEAK_HU, read on the
#: smoothed image, so that a thin vessel that the voxel grid samples with gaps still breaks every shell (a
#: vessel junction must not look isolated).
SHELL_HU = 75.0
#: Smoothing (mm) of the peak search, inner radii (mm) and least thickness of the shells tested around each peak
#: (a shell is at least one voxel thick along every axis: thinner ones fall between the slices of a 5 mm grid).
PEAK_MM, SHELL_RADII_MM, SHELL_MM = 2.0, (4.0, 7.0, 10.0, 13.0, 16.0), 3.0
#: Peaks tested per batch, brightest first until one is isolated (a lobe has 50-320), in batches that bound the
#: memory of the [peaks, shell voxels, 3] gather (~9 MB per batch on the finest grid block_reduce leaves).
PEAK_BATCH = 256
#: Size of the first batch: the brightest few peaks often settle it (a nodule), so the rest are skipped.
PEAK_FIRST = 32


def _shell_offsets(sp: np.ndarray) -> list:
    """Integer voxel offsets of each shell (r <= distance < r + thickness) on a grid of spacing ``sp``."""
    thick = max(SHELL_MM, float(np.max(sp)))
    r_max = SHELL_RADII_MM[-1] + thick
    n = np.ceil(r_max / sp).astype(int)
    g = np.stack(np.meshgrid(*[np.arange(-k, k + 1) for k in n], indexing="ij"), -1).reshape(-1, 3)
    d = np.sqrt(((g * sp) ** 2).sum(1))
    return [g[(d >= r) & (d < r + thick)] for r in SHELL_RADII_MM]


def _isolated_peak(organ: np.ndarray, resid: np.ndarray, sp: np.ndarray, shells: list) -> float:
    """Brightest smoothed peak (> PEAK_HU) with one shell around it where the smoothed residual stays < SHELL_HU.

    A nodule is a blob in empty parenchyma; a vessel junction looks as blob-like to a Hessian filter, but its
    branches cross every shell around it. A shell counts only when at least half of it lies inside the organ,
    so a peak at the organ's edge is not isolated merely because the rest of its shell is another organ.
    """
    sm = _gauss(np.where(organ, resid, 0.0).astype(np.float32), PEAK_MM, sp)
    peak = organ & (sm > PEAK_HU) & (sm == ndi.maximum_filter(sm, size=3, mode="constant"))
    idx = np.flatnonzero(peak)
    if not idx.size:
        return 0.0
    # Every peak, not only the brightest: enhanced vessels out-shine a nodule in a contrast study. Brightest
    # first, so the first batch holding an isolated peak holds the answer (later peaks are all dimmer).
    val = sm.reshape(-1)[idx]
    order = np.argsort(-val, kind="stable")
    idx, val = idx[order], val[order]
    filled = organ & (sm > SHELL_HU)
    shape = np.asarray(organ.shape)
    best = 0.0
    start, size = 0, PEAK_FIRST
    while start < idx.size and best == 0.0:
        centres = np.stack(np.unravel_index(idx[start:start + size], organ.shape), 1)
        isolated = np.zeros(len(centres), bool)
        for off in shells:
            q = centres[:, None, :] + off[None, :, :]                     # [peaks, shell voxels, 3]
            inside_box = np.all((q >= 0) & (q < shape), axis=2)
            qc = np.clip(q, 0, shape - 1)
            in_organ = organ[qc[..., 0], qc[..., 1], qc[..., 2]] & inside_box
            hit = filled[qc[..., 0], qc[..., 1], qc[..., 2]] & inside_box
            isolated |= (in_organ.sum(1) >= 0.5 * len(off)) & ~hit.any(1)
        best = max(best, float(val[start:start + size][isolated].max(initial=0.0)))
        start, size = start + size, PEAK_BATCH
    return best


def _ball_radius(mask: np.ndarray, sp: np.ndarray) -> float:
    """Radius (mm) of the largest ball inside ``mask`` (0 when empty): the distance to the nearest voxel outside.

    The transform runs on the mask's own bounding box plus one empty voxel (the same distances: a voxel outside
    that box is never nearer than the empty layer around it); the masks are usually a few voxels of a large box.
    """
    box = ndi.find_objects(mask.astype(np.uint8))
    if not box:
        return 0.0
    return float(ndi.distance_transform_edt(np.pad(mask[box[0]], 1), sampling=sp).max())


def _organ_row(row: np.ndarray, ob: _OrganBox, hu: np.ndarray, shells: list) -> None:
    """Fill one organ's :data:`EXTENDED_NAMES` columns of ``row`` from its box (``hu`` cut to the same box)."""
    organ, resid, sp = ob.organ, ob.resid, ob.sp
    if ob.ok.size:
        ev = ob.large_eigs  # the 6 mm Hessian the focal family's dark_blob_large reads too
        bright = ev[:, 2] < 0
        row[0] = max(0.0, float((-ev[bright, 2]).max(initial=0.0)))
        row[1] = float((ev[bright, 2] ** 2 / np.maximum(-ev[bright, 0], 1e-6)).max(initial=0.0))
    # Every organ voxel here, not only the interior: a juxtapleural nodule touches the lobe's edge.
    row[2] = _ball_radius(organ & (resid > DENSE_HU), sp)
    row[3] = _isolated_peak(organ, resid, sp, shells)
    # Every organ voxel again: an exophytic cyst bulges out of a thin pancreas and is mostly rim. Fat partial
    # volume at the rim also passes through water HU, but only as a one-voxel layer, which holds no large ball.
    row[4] = _ball_radius(organ & (hu > WATER_HU[0]) & (hu < WATER_HU[1]) & (resid < -WATER_BELOW), sp)


class _Extended:
    """The :data:`EXTENDED_NAMES` columns. Same residual and boxes as the focal family (one voxel of margin: every
    input is zero outside the organ and a shell voxel outside the box counts as outside the organ, so a wider box
    would give the same numbers at a higher cost)."""

    width = N_EXTENDED

    def start(self, r: StudyResidual, n: int) -> Any:
        return r.hu, _shell_offsets(r.sp)

    def row(self, out: np.ndarray, ob: _OrganBox, box: tuple, state: Any) -> None:
        hu, shells = state
        _organ_row(out, ob, hu[box], shells)

    def finish(self, out: np.ndarray, r: StudyResidual, state: Any) -> np.ndarray:
        res = out[1:]
        scaled = np.empty_like(res)
        scaled[:, :2] = _signed_log(res[:, :2])
        scaled[:, 2] = np.log10(1.0 + res[:, 2])
        scaled[:, 3] = _signed_log(res[:, 3])
        scaled[:, 4] = np.log10(1.0 + res[:, 4])
        return scaled.astype(np.float32)


#: The extended family, for :func:`~ctglip_sdk.model.focal.descriptor_columns`.
EXTENDED = _Extended()


def extended_descriptors(lab: np.ndarray, hu: np.ndarray, n: int, spacing: Sequence[float],
                         voxels: Optional[_OrganVoxels] = None) -> np.ndarray:
    """``[n, N_EXTENDED]`` large-lesion and isolation descriptors of organs 1..n (float32, each about 0..3).

    Same residual as :func:`~ctglip_sdk.model.focal.focal_descriptors` (HU minus the organ's interior median,
    each organ alone in its own box, grids finer than 2.5 mm block-averaged first). Columns:
    :data:`EXTENDED_NAMES`. Why: at 3 mm a 20-30 mm nodule is flat inside and its Hessian responds only at its
    rim, weaker than at a vessel junction, and small nodules and junctions look alike to the filter; the 6 mm
    blob, the radius of the largest dense ball and the isolation test tell them apart; and a cyst at the rim of a
    thin organ is missed by filters kept off the rim, but not by the largest ball of water (docs/model.md).
    """
    return descriptor_columns(lab, hu, n, spacing, [EXTENDED], voxels)
