"""Rasterisation for the phantom: grid geometry, smooth random fields and partial-volume shape painting."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Optional, Sequence, Tuple

import numpy as np

__all__ = ["Grid", "Canvas", "SmoothField", "Shape", "ellipsoid", "tube", "profile", "rotation"]

Slices = Tuple[slice, slice, slice]


@dataclass(frozen=True)
class Grid:
    """A CT grid. Arrays are RAS+ ordered (i -> patient right, j -> anterior, k -> superior).

    The phantom is modelled in the DICOM patient frame (LPS mm, origin at the centre of L1), so voxel
    ``(i, j, k)`` sits at LPS ``(x0 - i*sx, y0 - j*sy, z0 + k*sz)``.
    """

    shape: Tuple[int, int, int]
    spacing: Tuple[float, float, float]
    first_lps: Tuple[float, float, float]  # LPS position of voxel (0, 0, 0)

    @property
    def affine(self) -> np.ndarray:
        """Voxel index -> RAS+ mm (RAS x = -LPS x, RAS y = -LPS y)."""
        sx, sy, sz = self.spacing
        x0, y0, z0 = self.first_lps
        return np.array([[sx, 0, 0, -x0], [0, sy, 0, -y0], [0, 0, sz, z0], [0, 0, 0, 1]], dtype=np.float64)

    @cached_property
    def _axes(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        out = []
        for axis in range(3):
            sign = 1.0 if axis == 2 else -1.0
            c = (self.first_lps[axis] + sign * self.spacing[axis] * np.arange(self.shape[axis])).astype(np.float32)
            c.setflags(write=False)
            out.append(c)
        return tuple(out)  # type: ignore[return-value]

    def coords(self, axis: int) -> np.ndarray:
        """LPS coordinate of every index along one axis (read-only, cached)."""
        return self._axes[axis]

    def index_range(self, axis: int, lo: float, hi: float) -> slice:
        """Indices whose LPS coordinate along ``axis`` lies within [lo, hi] (one voxel of margin)."""
        sign = 1.0 if axis == 2 else -1.0
        a = (float(lo) - self.first_lps[axis]) / (sign * self.spacing[axis])
        b = (float(hi) - self.first_lps[axis]) / (sign * self.spacing[axis])
        n0 = max(math.floor(min(a, b)) - 1, 0)
        n1 = min(math.ceil(max(a, b)) + 2, self.shape[axis])
        return slice(n0, max(n0, n1))

    def box(self, lo: Sequence[float], hi: Sequence[float]) -> Optional[Slices]:
        """Slices covering an LPS box, or None when it misses the grid."""
        sl = tuple(self.index_range(a, lo[a], hi[a]) for a in range(3))
        if any(s.stop <= s.start for s in sl):
            return None
        return sl  # type: ignore[return-value]

    def points(self, sl: Slices) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable LPS coordinate arrays (x[:,1,1], y[1,:,1], z[1,1,:]) of a box."""
        return (self.coords(0)[sl[0]][:, None, None], self.coords(1)[sl[1]][None, :, None],
                self.coords(2)[sl[2]][None, None, :])

    def snap(self, p: Sequence[float]) -> np.ndarray:
        """The LPS centre of the voxel nearest to ``p`` (small lesions are centred on voxels to stay visible)."""
        out = []
        for a in range(3):
            c = self.coords(a)
            out.append(float(c[int(np.argmin(np.abs(c - p[a])))]))
        return np.array(out)

    def to_index(self, p: Sequence[float]) -> Tuple[int, int, int]:
        """Nearest voxel index of an LPS point (clipped to the grid)."""
        return tuple(int(np.clip(np.argmin(np.abs(self.coords(a) - p[a])), 0, self.shape[a] - 1))
                     for a in range(3))  # type: ignore[return-value]

    def to_lps(self, ijk: Sequence[float]) -> np.ndarray:
        """Voxel index -> LPS mm."""
        i, j, k = ijk
        x0, y0, z0 = self.first_lps
        sx, sy, sz = self.spacing
        return np.array([x0 - i * sx, y0 - j * sy, z0 + k * sz])


def rotation(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """Rotation matrix (columns = local axes in LPS) from angles in degrees about z, y and x."""
    a, b, c = np.deg2rad([yaw, pitch, roll])
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rx = np.array([[1, 0, 0], [0, np.cos(c), -np.sin(c)], [0, np.sin(c), np.cos(c)]])
    return rz @ ry @ rx


def _bspline_weights(coords: np.ndarray, lo: float, step: float, m: int) -> np.ndarray:
    """Dense (n, m) uniform cubic B-spline weights of 1-D coordinates onto m nodes starting at lo - step."""
    t = (coords.astype(np.float64) - lo) / step + 1.0
    i0 = np.floor(t).astype(np.int64)
    f = t - i0
    w = np.stack([(1 - f) ** 3, 3 * f ** 3 - 6 * f ** 2 + 4, -3 * f ** 3 + 3 * f ** 2 + 3 * f + 1, f ** 3], 1) / 6.0
    out = np.zeros((coords.size, m), dtype=np.float32)
    rows = np.arange(coords.size)
    for d in range(4):
        idx = np.clip(i0 - 1 + d, 0, m - 1)
        np.add.at(out, (rows, idx), w[:, d])
    return out


class SmoothField:
    """A smooth zero-mean random field (sd ≈ 1) defined in world mm, so it is the same on every grid.

    Nodes every ``step`` mm over an LPS box are N(0, 1) draws, interpolated with cubic B-splines; evaluation
    on a box of voxels is three small matrix products (separable), cheap even on large boxes.
    """

    def __init__(self, rng: np.random.Generator, lo: Sequence[float], hi: Sequence[float], step: float) -> None:
        self.lo = np.asarray(lo, dtype=np.float64)
        self.step = float(step)
        self.m = [int(np.ceil((hi[a] - lo[a]) / step)) + 4 for a in range(3)]
        # B-spline smoothing shrinks the sd to ≈ 0.48 per axis; rescale so that the field has sd ≈ 1.
        self.nodes = (rng.standard_normal(self.m) / 0.48 ** 1.5).astype(np.float32)

    def evaluate(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Values on the outer product of 1-D LPS coordinate vectors x, y, z."""
        wx = _bspline_weights(np.ravel(x), self.lo[0], self.step, self.m[0])
        wy = _bspline_weights(np.ravel(y), self.lo[1], self.step, self.m[1])
        wz = _bspline_weights(np.ravel(z), self.lo[2], self.step, self.m[2])
        t = np.tensordot(wx, self.nodes, axes=(1, 0))          # (nx, my, mz)
        t = np.tensordot(t, wy, axes=(1, 1))                   # (nx, mz, ny)
        t = np.tensordot(t, wz, axes=(1, 1))                   # (nx, ny, nz)
        return t

    def on(self, grid: Grid, sl: Slices) -> np.ndarray:
        """Values on a box of the grid."""
        return self.evaluate(grid.coords(0)[sl[0]], grid.coords(1)[sl[1]], grid.coords(2)[sl[2]])


@dataclass
class Shape:
    """A rasterised shape on a box of the grid: signed distance to its surface (mm) and the local blur width.

    ``d < 0`` inside. ``h`` is the voxel extent across the surface, so ``clip(0.5 - d/h, 0, 1)`` is the
    partial-volume fraction of each voxel (an anti-aliased edge about one voxel wide).
    """

    sl: Slices
    d: np.ndarray
    h: np.ndarray
    extra: dict
    width: Optional[np.ndarray] = None  # local thickness (mm) of thin shapes: caps the fraction at width / h

    def frac(self, offset: float = 0.0) -> np.ndarray:
        """Partial-volume fraction of the shape shrunk by ``offset`` mm (e.g. a wall thickness)."""
        f = np.clip(0.5 - (self.d + offset) / self.h, 0.0, 1.0)
        if self.width is not None:
            # A structure thinner than a voxel fills only part of it (a 1.5 mm duct in a 4 mm pixel).
            f = np.minimum(f, np.maximum(self.width - 2.0 * offset, 0.0) / self.h)
        return f


def ellipsoid(grid: Grid, center: Sequence[float], semi: Sequence[float], rot: Optional[np.ndarray] = None,
              field: Optional[SmoothField] = None, amp: float = 0.0, pad: float = 0.0) -> Optional[Shape]:
    """An ellipsoid, optionally rotated (``rot`` columns = local axes) and deformed by a smooth field.

    The surface moves by ``amp`` × field × radius, so shapes are lumpy rather than perfect ellipsoids.
    ``extra`` holds the local coordinates ``u`` (3 arrays, mm) and the normalised radius ``r``.
    """
    c = np.asarray(center, dtype=np.float64)
    a = np.asarray(semi, dtype=np.float64)
    r_ = np.eye(3) if rot is None else np.asarray(rot, dtype=np.float64)
    half = np.sqrt(((r_ * a[None, :]) ** 2).sum(1)) * (1.0 + 2.5 * amp) + pad + np.asarray(grid.spacing)
    sl = grid.box(c - half, c + half)
    if sl is None:
        return None
    px, py, pz = grid.points(sl)
    dx, dy, dz = px - np.float32(c[0]), py - np.float32(c[1]), pz - np.float32(c[2])
    u = [np.float32(r_[0, m]) * dx + np.float32(r_[1, m]) * dy + np.float32(r_[2, m]) * dz for m in range(3)]
    q = sum((u[m] / np.float32(a[m])) ** 2 for m in range(3))
    r = np.sqrt(q)
    g = [sum(np.float32(r_[w, m] / a[m] ** 2) * u[m] for m in range(3)) for w in range(3)]
    s = grid.spacing
    gn = np.sqrt(g[0] ** 2 + g[1] ** 2 + g[2] ** 2)
    gs = np.sqrt((g[0] * s[0]) ** 2 + (g[1] * s[1]) ** 2 + (g[2] * s[2]) ** 2)
    if field is not None and amp:
        r = r / (1.0 + np.float32(amp) * np.clip(field.on(grid, sl), -2.5, 2.5))
    # Signed distance (r - 1) / |grad r| with |grad r| = |g| / r; near the centre fall back to the smallest axis.
    small = gn < 1e-6
    d = np.where(small, -a.min(), (r - 1.0) * np.sqrt(q) / np.where(small, 1.0, gn))
    h = np.where(small, float(np.mean(s)), gs / np.where(small, 1.0, gn))
    return Shape(sl, d.astype(np.float32), h.astype(np.float32), {"u": u, "r": r},
                 width=np.float32(2.0 * a.min()) if a.min() * 2.0 < max(grid.spacing) else None)


def tube(grid: Grid, points: Sequence[Sequence[float]], radii: Sequence[float], pad: float = 0.0,
         extras: bool = False) -> Optional[Shape]:
    """A tube along a polyline with radii per point (union of capsules), e.g. vessels, ribs, bowel, ducts.

    ``extra`` holds ``t`` (position along the tube, 0 at the first point and 1 at the last), ``off`` (the
    voxel's LPS offset from the tube axis, 3 arrays) and ``rad`` (the local radius) for content levels and walls;
    ``t`` and ``off`` only with ``extras=True`` (they cost time; ribs and vessels do not need them).
    """
    p = np.asarray(points, dtype=np.float64)
    rad = np.asarray(radii, dtype=np.float64)
    margin = rad.max() + pad + max(grid.spacing)
    sl = grid.box(p.min(0) - margin, p.max(0) + margin)
    if sl is None:
        return None
    shp = tuple(s.stop - s.start for s in sl)
    seg_len = np.linalg.norm(np.diff(p, axis=0), axis=1)
    cum = np.concatenate([[0.0], np.cumsum(seg_len)]) / max(seg_len.sum(), 1e-9)
    d = np.full(shp, np.inf, dtype=np.float32)
    h = np.full(shp, float(np.mean(grid.spacing)), dtype=np.float32)
    rad_all = np.zeros(shp, dtype=np.float32)
    t_all = np.zeros(shp, dtype=np.float32) if extras else None
    off = [np.zeros(shp, dtype=np.float32) for _ in range(3)] if extras else None
    s = grid.spacing
    sq = [float(v) ** 2 for v in s]
    for n in range(len(p) - 1):
        p0, p1, r0, r1 = p[n], p[n + 1], rad[n], rad[n + 1]
        m = max(r0, r1) + pad + max(s)
        sub = grid.box(np.minimum(p0, p1) - m, np.maximum(p0, p1) + m)
        if sub is None:
            continue
        sub = tuple(slice(max(sub[a].start, sl[a].start), min(sub[a].stop, sl[a].stop)) for a in range(3))
        if any(x.stop <= x.start for x in sub):
            continue
        px, py, pz = grid.points(sub)
        v = p1 - p0
        vl = v / max(float(v @ v), 1e-9)
        wx, wy, wz = px - np.float32(p0[0]), py - np.float32(p0[1]), pz - np.float32(p0[2])
        t = np.clip(wx * np.float32(vl[0]) + wy * np.float32(vl[1]) + wz * np.float32(vl[2]), 0, 1)
        ox, oy, oz = wx - t * np.float32(v[0]), wy - t * np.float32(v[1]), wz - t * np.float32(v[2])
        ox2, oy2, oz2 = ox * ox, oy * oy, oz * oz
        dist2 = ox2 + oy2 + oz2
        dist = np.sqrt(dist2)
        rr = np.float32(r0) + t * np.float32(r1 - r0)
        dd = dist - rr
        loc = tuple(slice(sub[a].start - sl[a].start, sub[a].stop - sl[a].start) for a in range(3))
        dv = d[loc]
        better = dd < dv
        if not better.any():
            continue
        # Voxel extent across the surface: |offset * spacing| / |offset| (the mean spacing on the axis itself).
        hh = np.sqrt((ox2 * sq[0] + oy2 * sq[1] + oz2 * sq[2]) / np.maximum(dist2, 1e-12))
        hh[dist2 < 1e-12] = float(np.mean(s))
        dv[better] = dd[better]
        h[loc][better] = hh[better]
        rad_all[loc][better] = rr[better]
        if extras:
            t_all[loc][better] = (np.float32(cum[n]) + t * np.float32(cum[n + 1] - cum[n]))[better]
            for a, o in enumerate((ox, oy, oz)):
                off[a][loc][better] = o[better]
    extra = {"t": t_all, "off": off, "rad": rad_all} if extras else {"rad": rad_all}
    return Shape(sl, d, h, extra, width=2.0 * rad_all)


def profile(d: np.ndarray, width: float) -> np.ndarray:
    """Partial-volume fraction of a half-space ``d < 0`` with an edge ``width`` mm wide."""
    return np.clip(0.5 - d / np.float32(width), 0.0, 1.0)


class Canvas:
    """The phantom being painted: HU (float32) and TotalSegmentator v1 labels (uint8) on one grid.

    ``paint`` blends by the partial-volume fraction, so later shapes cover earlier ones with soft edges;
    labels go where the fraction reaches 0.5. ``keep`` lists labels a shape must not cover.
    """

    def __init__(self, grid: Grid, background: float = -1024.0) -> None:
        self.grid = grid
        self.hu = np.full(grid.shape, background, dtype=np.float32)
        self.lab = np.zeros(grid.shape, dtype=np.uint8)

    def _guard(self, sl: Slices, frac: np.ndarray, keep: Optional[Sequence[int]],
               only: Optional[Sequence[int]]) -> np.ndarray:
        if keep is None and only is None:
            return frac
        lut = np.ones(256, dtype=bool)
        if keep is not None:
            lut[list(keep)] = False
        if only is not None:
            lut[:] = False
            lut[list(only)] = True
        return frac * lut[self.lab[sl]]

    def paint(self, sl: Slices, frac: np.ndarray, value, label: Optional[int] = None,
              keep: Optional[Sequence[int]] = None, only: Optional[Sequence[int]] = None) -> np.ndarray:
        """Blend ``value`` (scalar or array on the box) into the box by ``frac``; returns the fraction used."""
        frac = self._guard(sl, frac, keep, only)
        region = self.hu[sl]
        region += frac * (np.asarray(value, dtype=np.float32) - region)
        if label is not None:
            self.lab[sl][frac >= 0.5] = label
        return frac

    def paint_shape(self, shape: Optional[Shape], value, label: Optional[int] = None, offset: float = 0.0,
                    keep: Optional[Sequence[int]] = None, only: Optional[Sequence[int]] = None) -> Optional[np.ndarray]:
        """Paint a shape (optionally shrunk by ``offset`` mm); ``value`` may be a callable of the shape."""
        if shape is None:
            return None
        val = value(shape) if callable(value) else value
        return self.paint(shape.sl, shape.frac(offset), val, label, keep, only)
