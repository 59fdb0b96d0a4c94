"""Organ voxels of a label box as flat arrays, with the edge rules shared by the HU stats and the focal filters."""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

__all__ = ["BONE_HU", "AIR_HU", "STATS_GRID_MM", "STATS_VERSION", "block_reduce"]

#: Bumped whenever what the organ stats compute changes, so that preprocessing caches built by older code are
#: not reused and an index can tell its stored vectors came from other stats (2: descriptors count edge voxels
#: unless they touch bone or air; 3: focal descriptors; 4: grids finer than 2.5 mm are block-averaged first).
STATS_VERSION = 4

#: Grids finer than this (mm) are block-averaged towards it before any organ statistic: the stats look for
#: 3-15 mm lesions and organ-scale HU, and a clinical 0.78 mm grid would cost ~10x the time for the same answer
#: (on grids of 2.5 mm or coarser, like the 3 x 3 x 5 mm the bundled model was trained on, this is the identity).
STATS_GRID_MM = 2.5


def _memory_order(a: np.ndarray) -> np.ndarray:
    """``a`` or its transpose, whichever walks memory in C order (loaders often give Fortran-ordered arrays).

    Every per-voxel pass below is symmetric in the axes (look-ups, counts, face neighbours), so it can run on
    the transpose and skip a full-volume reorder copy. A box cut from a Fortran-ordered volume is neither C- nor
    F-contiguous but still walks memory fastest along its first axis, hence the stride test.
    """
    fortran_like = a.ndim == 3 and not a.flags.c_contiguous and abs(a.strides[0]) < abs(a.strides[2])
    return a.T if fortran_like else a


#: HU outside an organ that partial volume must not bring into it: bone/calcified wall above, air/gas below.
BONE_HU, AIR_HU = 300.0, -500.0


def block_reduce(lab: np.ndarray, hu: np.ndarray, spacing: Sequence[float], grid_mm: float = STATS_GRID_MM
                 ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Block-average HU by the integer factors that bring ``spacing`` up to about ``grid_mm`` (labels: each
    block's centre voxel, so a label is never invented at a boundary); returns (labels, HU, new spacing).

    The trailing voxels that do not fill a block are dropped. Float32 HU is returned either way.
    """
    k = [max(1, min(int(grid_mm // s), d)) for s, d in zip(spacing, hu.shape)]
    sp = np.asarray(spacing, np.float64) * k
    if k == [1, 1, 1]:
        return lab, np.asarray(hu, np.float32), sp
    if _memory_order(lab) is not lab:  # work on the C-ordered transposes; no full-volume reorder
        lb, h, sp_t = block_reduce(lab.T, hu.T, tuple(spacing)[::-1], grid_mm)
        return lb.T, h.T, sp_t[::-1]
    n = [d // f for d, f in zip(hu.shape, k)]
    h = np.asarray(hu[: n[0] * k[0], : n[1] * k[1], : n[2] * k[2]], np.float32)
    h = h.reshape(n[0], k[0], n[1], k[1], n[2], k[2]).mean(axis=(1, 3, 5), dtype=np.float32)
    lb = lab[k[0] // 2: n[0] * k[0]: k[0], k[1] // 2: n[1] * k[1]: k[1], k[2] // 2: n[2] * k[2]: k[2]]
    return np.ascontiguousarray(lb), h, sp


class _OrganVoxels:
    """The labelled voxels of a box as flat arrays, with the two edge rules, computed once for all stats.

    Everything runs on the organ voxels only (1-D gathers of their six neighbours), never on the whole box: a
    clinical box is ~30 M voxels of which the organs are a fraction, and whole-box passes per rule and per bin
    made the stats cost seconds per study.
    """

    def __init__(self, lab: np.ndarray, hu: np.ndarray) -> None:
        #: True when the flat arrays index the transposed box (it walked memory in Fortran order).
        self.transposed = _memory_order(lab) is not lab
        if self.transposed:  # run on the transposes: same neighbours, no reorder of the box
            lab, hu = lab.T, hu.T
        shape = lab.shape
        #: Shape of the box the flat indices ``idx`` refer to (the transpose's when ``transposed``).
        self.shape = shape
        flat_lab = np.ascontiguousarray(lab).reshape(-1)
        flat_hu = np.ascontiguousarray(hu, dtype=np.float32).reshape(-1)
        self.idx = np.flatnonzero(flat_lab)
        self.lab = flat_lab[self.idx].astype(np.intp)
        self.hu = flat_hu[self.idx]
        # interior: all six face neighbours carry the same label (an array face counts as another label);
        # clear: no face neighbour of another label has bone-like or air HU.
        self.interior = np.ones(self.idx.size, bool)
        self.clear = np.ones(self.idx.size, bool)
        strides = (shape[1] * shape[2], shape[2], 1)
        rest = self.idx
        for ax in range(3):
            coord, rest = np.divmod(rest, strides[ax])
            for step, border in ((1, shape[ax] - 1), (-1, 0)):
                inside = coord != border
                nb = np.where(inside, self.idx + step * strides[ax], self.idx)
                other = flat_lab[nb] != flat_lab[self.idx]
                self.interior &= inside & ~other
                nhu = flat_hu[nb]
                self.clear &= ~(inside & other & ((nhu > BONE_HU) | (nhu < AIR_HU)))

    def counts(self, bins: np.ndarray, n: int, nb: int, counted: np.ndarray) -> np.ndarray:
        """``[n, nb]`` voxel counts per organ and bin over the ``counted`` voxels; an organ with none of those
        (e.g. thinner than three voxels for the interior rule) counts all of its voxels."""
        sel = np.flatnonzero(counted)
        out = np.bincount(self.lab[sel] * nb + bins[sel], minlength=(n + 1) * nb).reshape(n + 1, nb)[1:]
        out = out.astype(np.float64)
        thin = out.sum(1) == 0
        if thin.any():
            allc = np.bincount(self.lab * nb + bins, minlength=(n + 1) * nb).reshape(n + 1, nb)[1:]
            out[thin] = allc[thin]
        return out

    def mask(self, selected: np.ndarray) -> np.ndarray:
        """A boolean array of the box (in its original axis order) that is True at the ``selected`` organ voxels."""
        out = np.zeros(int(np.prod(self.shape)), bool)
        out[self.idx[selected]] = True
        out = out.reshape(self.shape)
        return out.T if self.transposed else out
