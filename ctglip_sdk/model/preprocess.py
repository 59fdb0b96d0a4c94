"""Study preprocessing with torch: organ statistics, the organ box, resampling, windowing and area mask weights."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ctglip_sdk.errors import GeometryError, InputError, QueryError
from ctglip_sdk.model.config import PreprocessConfig
from ctglip_sdk.model.focal import FOCAL, descriptor_columns
from ctglip_sdk.model.focal_ext import EXTENDED
from ctglip_sdk.model.voxels import (AIR_HU, BONE_HU, STATS_VERSION, _memory_order, _OrganVoxels,  # noqa: F401
                                     block_reduce)
from ctglip_sdk.volume import Segmentation, Volume, label_counts

__all__ = ["PreparedStudy", "prepare_study", "prepare_volume", "resample_box", "target_shape", "organ_histograms",
           "organ_descriptors", "organ_stats", "N_DESCRIPTORS"]

log = logging.getLogger(__name__)

_CHUNK_VOXELS = 1 << 22  # ~4M voxels per pass chunk bounds the temporaries of the bincount passes


@dataclass
class PreparedStudy:
    """One study ready for the network: the image box and the area weights of each organ on the feature grid.

    ``rows``/``cols``/``vals`` are the non-zero entries of the ``[len(names), prod(grid)]`` weight matrix:
    ``vals`` is the fraction of feature cell ``cols`` covered by organ ``rows`` (area resizing of the mask).
    """

    image: torch.Tensor  # [C, X, Y, Z] float32, padded to the network's size divisor
    grid: Tuple[int, int, int]
    names: List[str]
    rows: torch.Tensor
    cols: torch.Tensor
    vals: torch.Tensor
    missing: List[str] = field(default_factory=list)
    bboxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 6), np.int64))
    volumes_ml: np.ndarray = field(default_factory=lambda: np.zeros(0))
    mean_hu: np.ndarray = field(default_factory=lambda: np.zeros(0))
    box: Tuple[int, int, int, int, int, int] = (0, 0, 0, 0, 0, 0)
    spacing: Tuple[float, float, float] = (1.0, 1.0, 1.0)
    #: ``[N, n_stats]``: fraction of each organ's interior voxels per HU bin (``hu_histogram``), then the
    #: :func:`organ_descriptors` (``organ_descriptors``); None when both are off.
    stats: Optional[torch.Tensor] = None

    def dense_weights(self) -> torch.Tensor:
        """The weights as a dense ``[N, X/s, Y/s, Z/s]`` tensor (what ``CTGlipModel.pool_organs`` takes)."""
        w = torch.zeros(len(self.names), int(np.prod(self.grid)), dtype=torch.float32, device=self.vals.device)
        w[self.rows, self.cols] = self.vals
        return w.reshape(len(self.names), *self.grid)


def _canonical(volume: Volume, seg: Optional[Segmentation], cfg: PreprocessConfig):
    """Arrays in RAS order (views where possible), their spacing, and the axis map back to the input grid."""
    import nibabel.orientations as nio

    ornt = nio.io_orientation(volume.affine)
    xform = nio.ornt_transform(ornt, nio.axcodes2ornt(tuple(cfg.orientation)))
    hu = volume.array
    labels = seg.array if seg is not None else None
    if not np.array_equal(xform, [[0, 1], [1, 1], [2, 1]]):
        hu = nio.apply_orientation(hu, xform)
        labels = nio.apply_orientation(labels, xform) if labels is not None else None
    spacing = np.empty(3)
    spacing[xform[:, 0].astype(int)] = volume.spacing
    return hu, labels, tuple(float(s) for s in spacing), xform


def _to_input_bbox(bb: np.ndarray, xform: np.ndarray, shape_in: Sequence[int]) -> np.ndarray:
    """Map half-open boxes on the canonical array back to the caller's array axes."""
    out = np.empty_like(bb)
    for ax_in in range(3):
        ax_out, flip = int(xform[ax_in, 0]), xform[ax_in, 1]
        lo, hi = bb[:, ax_out], bb[:, ax_out + 3]
        if flip < 0:
            lo, hi = shape_in[ax_in] - hi, shape_in[ax_in] - lo
        out[:, ax_in], out[:, ax_in + 3] = lo, hi
    return out


def _relabel(lut: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``lut[labels]`` in memory order and in chunks (small temporaries; the result keeps ``labels``' shape)."""
    src = _memory_order(labels)
    out = np.empty(src.shape, lut.dtype)
    step = max(1, _CHUNK_VOXELS // max(int(np.prod(src.shape[1:])), 1))
    for i0 in range(0, src.shape[0], step):
        np.take(lut, src[i0:i0 + step], out=out[i0:i0 + step])
    return out.T if src is not labels else out


def _organ_table(lab: np.ndarray, hu: np.ndarray, n: int):
    """Voxel counts, HU sums and half-open bboxes of organ indices 1..n in one chunked pass."""
    if _memory_order(lab) is not lab:  # walk memory in order; the boxes' axes are swapped back at the end
        counts, husum, bb = _organ_table(lab.T, hu.T, n)
        return counts, husum, bb[:, [2, 1, 0, 5, 4, 3]]
    dims = lab.shape
    counts = np.zeros(n + 1, np.int64)
    husum = np.zeros(n + 1, np.float64)
    pres = [np.zeros((n + 1) * d, bool) for d in dims]
    plane = dims[1] * dims[2]
    step = max(1, _CHUNK_VOXELS // max(plane, 1))
    for i0 in range(0, dims[0], step):
        flat = lab[i0:i0 + step].reshape(-1)
        nz = np.flatnonzero(flat)
        if nz.size == 0:
            continue
        org = flat[nz].astype(np.intp)
        counts += np.bincount(org, minlength=n + 1)
        husum += np.bincount(org, weights=hu[i0:i0 + step].reshape(-1)[nz], minlength=n + 1)
        rem = nz % plane
        for ax, coord in enumerate((nz // plane + i0, rem // dims[2], rem % dims[2])):
            pres[ax] |= np.bincount(org * dims[ax] + coord, minlength=(n + 1) * dims[ax]) > 0
    bb = np.zeros((n + 1, 6), np.int64)
    for ax, p in enumerate(pres):
        p = p.reshape(n + 1, dims[ax])
        bb[:, ax] = np.argmax(p, axis=1)
        bb[:, ax + 3] = dims[ax] - np.argmax(p[:, ::-1], axis=1)
    return counts[1:], husum[1:], bb[1:]


def _histograms(v: _OrganVoxels, n: int, edges: Sequence[float]) -> np.ndarray:
    counts = v.counts(np.digitize(v.hu, np.asarray(edges, np.float32)), n, len(edges) + 1, v.interior)
    return (counts / np.maximum(counts.sum(1, keepdims=True), 1)).astype(np.float32)


def organ_histograms(lab: np.ndarray, hu: np.ndarray, n: int, edges: Sequence[float]) -> np.ndarray:
    """``[n, len(edges)+1]`` fraction of each organ's voxels (labels 1..n) per HU bin.

    Only interior voxels count (all six face neighbours carry the same label): boundary voxels mix the organ
    with its neighbours by partial volume, and a rib or fat at the edge would read as a finding. An organ with
    no interior voxel (thinner than three voxels) uses all of its voxels.
    """
    return _histograms(_OrganVoxels(lab, hu), n, edges)


#: HU offsets from the organ's own median that bound the deviation counts of :func:`organ_descriptors`.
DEVIATION_EDGES = (-150.0, -80.0, -40.0, -20.0, 20.0, 40.0, 80.0, 150.0)
#: Percentiles of the organ's HU reported by :func:`organ_descriptors`.
PERCENTILES = (0.1, 1.0, 5.0, 50.0, 95.0, 99.0, 99.9)
#: Width of :func:`organ_descriptors`' output: deviation counts (the central bin left out), percentiles, volume.
N_DESCRIPTORS = len(DEVIATION_EDGES) + len(PERCENTILES) + 1
_HU_LO, _HU_STEP, _HU_BINS = -1024.0, 5.0, 820  # -1024 .. 3076 HU in 5 HU steps for the percentiles


def _descriptors(v: _OrganVoxels, n: int, voxel_ml: float) -> np.ndarray:
    hu_bins = np.clip(((v.hu - _HU_LO) / _HU_STEP).astype(np.int32), 0, _HU_BINS - 1)
    cdf = np.cumsum(v.counts(hu_bins, n, _HU_BINS, v.clear), axis=1)
    total = np.maximum(cdf[:, -1:], 1)
    centres = _HU_LO + (np.arange(_HU_BINS) + 0.5) * _HU_STEP
    pct = np.stack([centres[np.argmax(cdf >= total * (q / 100.0), axis=1)] for q in PERCENTILES], axis=1)
    median = pct[:, PERCENTILES.index(50.0)]
    # Deviation band of every voxel from its own organ's median (a lookup by label), then one count per band.
    dev = v.hu - np.concatenate([[0.0], median]).astype(np.float32)[v.lab]
    dev_counts = v.counts(np.digitize(dev, np.asarray(DEVIATION_EDGES, np.float32)), n, len(DEVIATION_EDGES) + 1,
                          v.clear)
    dev_counts = np.delete(dev_counts, len(DEVIATION_EDGES) // 2, axis=1)
    volume = np.bincount(v.lab, minlength=n + 1)[1:] * voxel_ml
    return np.concatenate([np.log10(1.0 + dev_counts * voxel_ml / 0.1), pct / 500.0,
                           np.log10(volume[:, None] + 1e-3) / 2.0], axis=1).astype(np.float32)


def organ_descriptors(lab: np.ndarray, hu: np.ndarray, n: int, voxel_ml: float) -> np.ndarray:
    """``[n, N_DESCRIPTORS]`` size and focal-contrast descriptors of organs 1..n (float32, each about -2..2).

    Voxels count unless a face neighbour of another label has bone-like (> 300) or air (< -500) HU: looser than
    the histogram's interior rule, because a stone in the renal sinus or a calcification under the capsule
    sits on the mask's edge (next to fat) and must count, while a voxel next to a rib, the spine or gas would
    turn partial volume into a false "calcification" or "cyst".

    - deviation counts: log10(1 + ml / 0.1) of the voxels whose HU differs from the organ's median by each
      band of :data:`DEVIATION_EDGES` (the central band, normal parenchyma and noise, is left out). Counts are
      absolute volumes, not fractions, because a lesion is a size in mm whatever organ holds it: a 13 mm cyst
      is 0.1 % of a liver but 1 ml in any liver.
    - percentiles :data:`PERCENTILES` of those voxels' HU / 500 (the tails see a stone or a cyst, the median a
      diffusely low liver), from a 5 HU histogram so one pass serves every organ.
    - log10 of the organ's whole volume in ml (enlargement, atrophy; pooled features are size-invariant).
    """
    return _descriptors(_OrganVoxels(lab, hu), n, voxel_ml)


def organ_stats(lab: np.ndarray, hu: np.ndarray, n: int, cfg: PreprocessConfig, voxel_ml: float,
                spacing: Sequence[float] = (1.0, 1.0, 1.0), present: Optional[np.ndarray] = None
                ) -> Optional[np.ndarray]:
    """``[n, cfg.n_stats]``: HU-histogram fractions, organ descriptors, focal descriptors, then extended focal
    descriptors (on the grid of ``spacing`` mm), as the config asks (None when all are off).

    Grids finer than :data:`~ctglip_sdk.model.voxels.STATS_GRID_MM` are block-averaged to about that first (the
    identity on coarser grids), so a 0.78 mm clinical study costs ~1/9 of the voxels and its noise is closer to
    what a model trained on 3 mm data saw. ``present``: ``[n]`` bool, which organs have voxels in ``lab``
    (computed when not given).
    """
    if not cfg.n_stats:
        return None
    lab_r, hu_r, sp_r = block_reduce(lab, hu, spacing)
    if lab_r is not lab:
        # Every organ must keep voxels on the coarse grid (labels are block centres, so one thinner than a
        # block can fall between them); otherwise the histogram and descriptors stay on the full grid rather
        # than read as empty (the focal filters always block-average on their own, as they did before).
        if present is None:  # the caller usually knows (a full-box count costs 0.1-1 s on a clinical study)
            present = label_counts(lab, minlength=n + 1)[1:] > 0
        kept = np.bincount(lab_r.ravel(order="K"), minlength=n + 1)[1:] > 0
        if np.array_equal(present, kept):
            voxel_ml *= float(np.prod(sp_r / np.asarray(spacing, np.float64)))
            lab, hu, spacing = lab_r, hu_r, sp_r
    v = _OrganVoxels(lab, hu)
    parts = []
    if cfg.hu_histogram:
        parts.append(_histograms(v, n, cfg.hu_histogram))
    if cfg.organ_descriptors:
        parts.append(_descriptors(v, n, voxel_ml))
    # Both focal families in one pass over the organs: they share the medians, the residual and the smoothing.
    families = [f for f, on in ((FOCAL, cfg.focal_descriptors), (EXTENDED, cfg.focal_extended)) if on]
    if families:
        parts.append(descriptor_columns(lab, hu, n, spacing, families, voxels=v))  # v reused unless block-averaged
    return np.concatenate(parts, axis=1)


def target_shape(shape: Sequence[int], spacing: Sequence[float], cfg: PreprocessConfig):
    """Resampled size of a box and the spacing actually used (coarsened uniformly to fit ``max_shape``)."""
    tgt = np.asarray(cfg.spacing, dtype=np.float64)
    ext = np.asarray(shape, np.float64) * np.asarray(spacing, np.float64)
    size = np.maximum(1, np.round(ext / tgt)).astype(int)
    over = float(np.max(size / np.asarray(cfg.max_shape)))
    if over > 1:
        tgt = tgt * over
        size = np.minimum(np.maximum(1, np.round(ext / tgt)).astype(int), cfg.max_shape)
        log.warning("box of %s mm exceeds max_shape %s at %s mm; resampled at %s mm instead",
                    ext.round(0).tolist(), list(cfg.max_shape), list(cfg.spacing), tgt.round(2).tolist())
    return tuple(int(s) for s in size), tuple(float(t) for t in tgt)


def resample_box(hu_box: np.ndarray, spacing: Sequence[float], cfg: PreprocessConfig, divisor: int,
                 device: torch.device | str = "cpu"):
    """HU box -> windowed network input ``[C, X, Y, Z]`` padded to ``divisor``; returns (image, unpadded size, mm).

    Resampling runs in HU: an area (box-filter) prefilter by the integer part of the downsampling factor
    against aliasing, then trilinear interpolation (align_corners=False) to the exact target size; the
    HU windows are applied after. Padding at the far side holds the value of air (the window's low end).
    """
    size, eff = target_shape(hu_box.shape, spacing, cfg)
    k = [max(1, int(math.floor(s_out / s_in))) for s_out, s_in in zip(eff, spacing)]
    mid = [max(o, -(-n // f)) for n, f, o in zip(hu_box.shape, k, size)]
    pool = any(f > 1 for f in k)
    if pool and _memory_order(hu_box) is not hu_box:
        # A box of a Fortran-ordered volume: pool its transpose (read in memory order, no full-size transposing
        # copy; the pooling bins are per axis) and transpose the small result back.
        x = torch.from_numpy(np.ascontiguousarray(hu_box.T, dtype=np.float32)).to(device)[None, None]
        x = F.adaptive_avg_pool3d(x, mid[::-1]).permute(0, 1, 4, 3, 2).contiguous()
    else:
        x = torch.from_numpy(np.ascontiguousarray(hu_box, dtype=np.float32)).to(device)[None, None]
        if pool:
            x = F.adaptive_avg_pool3d(x, mid)
    if tuple(x.shape[2:]) != size:
        x = F.interpolate(x, size=size, mode="trilinear", align_corners=False)
    chans = []
    for lo, hi in cfg.hu_windows:
        c = (x.clamp(lo, hi) - lo) / (hi - lo)
        chans.append(c * 2 - 1 if cfg.scale == "symmetric" else c)
    x = torch.cat(chans, dim=1)
    pad = [(-s) % divisor for s in size]
    if any(pad):
        x = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]), value=-1.0 if cfg.scale == "symmetric" else 0.0)
    return x[0], size, eff


def _cell_weights(lab_box: np.ndarray, n: int, size: Sequence[int], stride: int, grid: Sequence[int]):
    """Area fraction of every feature cell covered by each organ, as COO (rows, cols, vals).

    Input voxel ``i`` belongs to cell ``floor((i + 0.5) * size / n_i / stride)``: its centre mapped onto the
    resampled grid (the same align_corners=False geometry as the image), then to the stride-``s`` cell.
    Entries come sorted by (cell, organ).
    """
    if _memory_order(lab_box) is not lab_box:
        # A box of a Fortran-ordered volume: count on its transpose (memory order, no transposing copies per
        # chunk), then renumber the cells to this box's axes and restore the (cell, organ) order.
        r, c, v = _cell_weights(lab_box.T, n, tuple(size)[::-1], stride, tuple(grid)[::-1])
        ct = c.numpy()
        col = ((ct % grid[0]) * grid[1] + (ct // grid[0]) % grid[1]) * grid[2] + ct // (grid[0] * grid[1])
        order = np.lexsort((r.numpy(), col))
        return r[order], torch.from_numpy(col[order]), v[order]
    cells = [np.minimum(((np.arange(d) + 0.5) * (s / d) / stride).astype(np.int64), g - 1)
             for d, s, g in zip(lab_box.shape, size, grid)]
    per_axis = [np.bincount(c, minlength=g) for c, g in zip(cells, grid)]
    denom = (per_axis[0][:, None, None] * per_axis[1][None, :, None] * per_axis[2][None, None, :]).reshape(-1)
    plane_cells = grid[1] * grid[2]
    plane = lab_box.shape[1] * lab_box.shape[2]
    rows, cols, vals = [], [], []
    # Chunks end on cell-row boundaries along axis 0, so each chunk's keys cover a disjoint range of cells.
    bounds = np.searchsorted(cells[0], np.arange(grid[0] + 1))
    rows_per = max(1, _CHUNK_VOXELS // max(plane, 1) // max(1, int(per_axis[0].max(initial=1))))
    for c0 in range(0, grid[0], rows_per):
        c1 = min(grid[0], c0 + rows_per)
        i0, i1 = int(bounds[c0]), int(bounds[c1])
        if i1 <= i0:
            continue
        flat = lab_box[i0:i1].reshape(-1)
        nz = np.flatnonzero(flat)
        if nz.size == 0:
            continue
        rem = nz % plane
        cell = cells[0][nz // plane + i0] * plane_cells + cells[1][rem // lab_box.shape[2]] * grid[2] \
            + cells[2][rem % lab_box.shape[2]]
        base = c0 * plane_cells
        key = (cell - base) * n + (flat[nz].astype(np.int64) - 1)
        bc = np.bincount(key, minlength=(c1 - c0) * plane_cells * n)
        hit = np.flatnonzero(bc)
        cc = hit // n + base
        rows.append(hit % n)
        cols.append(cc)
        vals.append(bc[hit] / denom[cc])
    if not rows:
        return (torch.zeros(0, dtype=torch.long),) * 2 + (torch.zeros(0),)
    return (torch.from_numpy(np.concatenate(rows)), torch.from_numpy(np.concatenate(cols)),
            torch.from_numpy(np.concatenate(vals).astype(np.float32)))


def _check_finite(volume: Volume) -> None:
    """A non-finite voxel makes every organ vector of the study NaN (the network mixes the whole box)."""
    if not np.isfinite(volume.array.sum(dtype=np.float64)):
        n = int((~np.isfinite(volume.array)).sum())
        raise InputError(f"the volume holds {n} non-finite voxel(s) (NaN/inf); fill them first (e.g. -1024 HU for "
                         "outside the field of view)", path=volume.meta.get("source_path"))


def _check_pair(volume: Volume, seg: Segmentation) -> None:
    if not isinstance(volume, Volume) or not isinstance(seg, Segmentation):
        raise InputError(f"expected a Volume and a Segmentation (cg.load_volume, cg.load_segmentation), got "
                         f"{type(volume).__name__} and {type(seg).__name__}")
    _check_finite(volume)
    if seg.array.shape != volume.array.shape:
        raise GeometryError(f"segmentation shape {seg.array.shape} differs from the volume's {volume.array.shape}; "
                            "load it with load_segmentation(path, like=volume)", path=seg.meta.get("source_path"))
    if not np.allclose(seg.affine, volume.affine, atol=1e-3):
        raise GeometryError("segmentation affine differs from the volume's; load it with "
                            "load_segmentation(path, like=volume)", path=seg.meta.get("source_path"))
    if not np.issubdtype(seg.array.dtype, np.integer):
        raise InputError(f"segmentation labels must be integers, got {seg.array.dtype}",
                         path=seg.meta.get("source_path"))


def _requested(seg: Segmentation, organs: Optional[Sequence[str]]) -> List[str]:
    if organs is None:
        return [seg.labels[i] for i in sorted(seg.labels) if i > 0]
    if isinstance(organs, str):
        organs = [organs]
    from ctglip_sdk import organs as vocab

    names = set(seg.labels.values())
    out: List[str] = []
    for name in organs:
        if name in names or vocab.is_known(name) and name not in vocab.GROUPS:
            found = [name]
        else:
            try:
                found = vocab.lookup(name)
            except QueryError:
                raise QueryError(f"unknown organ {name!r}: not in this segmentation's labels nor the organ "
                                 "vocabulary (ctglip_sdk.organs)") from None
        out.extend(f for f in found if f not in out)
    return out


def prepare_study(volume: Volume, seg: Segmentation, organs: Optional[Sequence[str]], cfg: PreprocessConfig,
                  stride: int, divisor: int, min_voxels: int = 1, device: torch.device | str = "cpu") -> PreparedStudy:
    """Everything ``encode_organs`` needs before the network: stats, the box, the image and organ weights.

    Organs with fewer than ``min_voxels`` voxels (or not in the label map) are put in ``missing``. Every other
    organ keeps a non-zero weight however small it is, because area weights never round a mask away.
    """
    _check_pair(volume, seg)
    requested = _requested(seg, organs)
    hu, labels, spacing, xform = _canonical(volume, seg, cfg)
    ids = seg.ids
    known = [o for o in requested if o in ids]
    n = len(known)
    if labels.size and labels.min() < 0:
        raise InputError("segmentation has negative labels", path=seg.meta.get("source_path"))
    lut = np.zeros(int(max(labels.max(initial=0), max(ids.values(), default=0))) + 1,
                   np.uint8 if n < 255 else np.uint16)
    for idx, name in enumerate(known, start=1):
        lut[ids[name]] = idx
    lab = _relabel(lut, labels)
    counts, husum, bb = _organ_table(lab, hu, n)
    keep = [i for i in range(n) if counts[i] >= max(1, min_voxels)]
    missing = [o for o in requested if o not in ids] + [known[i] for i in range(n) if i not in keep]
    if organs is None:  # "every labelled organ" means those present; only too-small ones are reported
        missing = [known[i] for i in range(n) if 0 < counts[i] < min_voxels]
    names = [known[i] for i in keep]
    voxel_ml = abs(float(np.linalg.det(volume.affine[:3, :3]))) / 1000.0
    bboxes = _to_input_bbox(bb[keep], xform, volume.array.shape) if keep else np.zeros((0, 6), np.int64)
    empty = torch.zeros(0, dtype=torch.long)
    if not keep:
        return PreparedStudy(torch.zeros(len(cfg.hu_windows), 0, 0, 0), (0, 0, 0), [], empty, empty,
                             torch.zeros(0), missing, bboxes, np.zeros(0), np.zeros(0), spacing=spacing)
    if cfg.crop == "organs":
        margin = [int(math.ceil(cfg.margin_mm / s)) for s in spacing]
        box = bb[keep] if organs is None else _all_organs_box(seg, labels, hu, min_voxels)
        lo = np.maximum(box[:, :3].min(0) - margin, 0)
        hi = np.minimum(box[:, 3:].max(0) + margin, hu.shape)
    elif cfg.crop == "body":
        lo, hi = _body_box(hu, cfg.body_threshold_hu)
    else:
        lo, hi = np.zeros(3, int), np.asarray(hu.shape)
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    # Renumber the kept organs 1..len(keep) so weight rows follow `names`.
    remap = np.zeros(n + 1, lab.dtype)
    remap[np.asarray(keep) + 1] = np.arange(1, len(keep) + 1)
    lab_box = _relabel(remap, lab[sl])
    image, size, eff = resample_box(hu[sl], spacing, cfg, divisor, device)
    grid = tuple(int(s) // stride for s in image.shape[1:])
    rows, cols, vals = _cell_weights(lab_box, len(keep), size, stride, grid)
    # The "organs" and "none" crops hold every kept organ whole, and each has >= 1 voxel by construction.
    present = np.ones(len(keep), bool) if cfg.crop in ("organs", "none") else None
    stats = organ_stats(lab_box, hu[sl], len(keep), cfg, voxel_ml, spacing, present)
    stats = torch.from_numpy(stats).to(device) if stats is not None else None
    return PreparedStudy(image, grid, names, rows, cols, vals, missing, bboxes, counts[keep] * voxel_ml,
                         husum[keep] / counts[keep], tuple(int(v) for v in (*lo, *hi)), eff, stats)


def _all_organs_box(seg: Segmentation, labels: np.ndarray, hu: np.ndarray, min_voxels: int) -> np.ndarray:
    """Half-open boxes of every labelled organ (those a request for all would keep).

    Why: the network sees the box of the organs around it, resampled to its input grid; a box around the liver
    alone is another image, and the liver's vector moved by up to a cosine of 0.4 against a full request (a
    review, 2026-12-06). A subset request therefore takes the full request's box and pools only what it asked.
    """
    ids = seg.ids
    known = [seg.labels[i] for i in sorted(seg.labels) if i > 0 and seg.labels[i] in ids]
    lut = np.zeros(int(max(labels.max(initial=0), max(ids.values(), default=0))) + 1,
                   np.uint8 if len(known) < 255 else np.uint16)
    for idx, name in enumerate(known, start=1):
        lut[ids[name]] = idx
    counts, _husum, bb = _organ_table(_relabel(lut, labels), hu, len(known))
    return bb[counts >= max(1, min_voxels)]


def _body_box(hu: np.ndarray, threshold: float):
    body = hu > threshold
    if not body.any():
        return np.zeros(3, int), np.asarray(hu.shape)
    lo, hi = [], []
    for ax in range(3):
        prof = body.any(axis=tuple(a for a in range(3) if a != ax))
        idx = np.flatnonzero(prof)
        lo.append(idx[0])
        hi.append(idx[-1] + 1)
    return np.asarray(lo), np.asarray(hi)


def prepare_volume(volume: Volume, cfg: PreprocessConfig, stride: int, divisor: int,
                   device: torch.device | str = "cpu") -> PreparedStudy:
    """The body box of a volume with one weight row: the area fraction of each cell above the body threshold."""
    _check_finite(volume)
    hu, _, spacing, _ = _canonical(volume, None, cfg)
    lo, hi = _body_box(hu, cfg.body_threshold_hu) if cfg.crop != "none" else (np.zeros(3, int), np.asarray(hu.shape))
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    body = (hu[sl] > cfg.body_threshold_hu).astype(np.uint8)
    if not body.any():
        body[...] = 1  # an all-air volume still has a global vector: the mean over the whole box
    image, size, eff = resample_box(hu[sl], spacing, cfg, divisor, device)
    grid = tuple(int(s) // stride for s in image.shape[1:])
    rows, cols, vals = _cell_weights(body, 1, size, stride, grid)
    stats = organ_stats(body, hu[sl], 1, cfg, abs(float(np.linalg.det(volume.affine[:3, :3]))) / 1000.0, spacing)
    stats = torch.from_numpy(stats).to(device) if stats is not None else None
    return PreparedStudy(image, grid, ["body"], rows, cols, vals, box=tuple(int(v) for v in (*lo, *hi)), spacing=eff,
                         stats=stats)
