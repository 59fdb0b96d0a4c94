"""Rendering of the body wall and skeleton: skin, fat, muscle, spine, ribs, pelvis, table."""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np

from ctglip_sdk.synth.anatomy import ID, Anatomy, outline, vertebral_body
from ctglip_sdk.synth.raster import Canvas, Grid, Shape, SmoothField, ellipsoid, profile, rotation, tube

__all__ = ["BodyModel", "cylinder"]


def cylinder(g: Grid, center: Sequence[float], semi: Sequence[float], half_h: float) -> Shape | None:
    """A z-aligned elliptic cylinder (vertebral bodies, discs); partial volume along x/y and z separately."""
    c = np.asarray(center, dtype=np.float64)
    sl = g.box(c - [semi[0] + 3, semi[1] + 3, half_h + 3], c + [semi[0] + 3, semi[1] + 3, half_h + 3])
    if sl is None:
        return None
    x, y, z = g.points(sl)
    dx, dy = (x - float(c[0])) / float(semi[0]), (y - float(c[1])) / float(semi[1])
    r = np.sqrt(dx ** 2 + dy ** 2)
    d_xy = (r - 1.0) * min(semi[0], semi[1])
    d_z = np.abs(z - float(c[2])) - float(half_h)
    sxy, sz = g.spacing[0], g.spacing[2]
    d = np.maximum(d_xy, d_z * (sxy / sz))
    return Shape(sl, d.astype(np.float32), np.full(d.shape, sxy, dtype=np.float32), {})


class BodyModel:
    """The torso of one patient: outline, wall layers, and the skeleton painted onto a canvas."""

    def __init__(self, a: Anatomy, rng: np.random.Generator) -> None:
        self.a = a
        self.field = SmoothField(rng, (-260, -220, -420), (260, 220, 420), 70.0)
        self.tex = SmoothField(rng, (-260, -220, -420), (260, 220, 420), 14.0)

    # --- body wall -------------------------------------------------------------------------------------------
    def layers(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Depth below the skin (mm, > 0 inside), subcutaneous fat and muscle thickness at LPS points."""
        a = self.a
        zz = np.ravel(z).astype(np.float64)
        cx, cy, ax, ay = (v.astype(np.float32)[None, None, :] for v in outline(a, zz))
        dx, dy = x - cx, y - cy
        f = self.field.evaluate(np.ravel(x), np.ravel(y), zz) if np.ndim(x) else 0.0
        rx, ry = dx / ax, dy / ay
        # A superellipse (exponent 2.3): the torso is a rounded rectangle rather than an ellipse.
        r = (np.abs(rx) ** 2.3 + np.abs(ry) ** 2.3) ** (1.0 / 2.3) * (1.0 + 0.025 * f)
        rho = np.sqrt(dx ** 2 + dy ** 2)
        depth = rho * (1.0 / np.maximum(r, 1e-3) - 1.0)
        zfat = float(a.fat_mm)
        fat = zfat * (1.0 - 0.5 * np.clip(ry, 0, 1)) * (1.0 + 0.3 * np.clip(-ry, 0, 1))
        fat = fat * np.interp(zz, [-340, -150, 0, 120, 340], [1.0, 1.1, 1.0, 0.6, 0.45]).astype(np.float32)
        muscle = float(a.muscle_mm) * (1.0 + 0.3 * np.abs(rx)) * np.where(z > 100, 1.4, 1.0).astype(np.float32)
        return depth, fat + 2.0, muscle

    def cavity_depth(self, g: Grid, sl) -> np.ndarray:
        """Depth (mm) inside the inner surface of the body wall on a box; > 0 inside the body cavity."""
        x, y, z = g.points(sl)
        depth, fat, muscle = self.layers(x, y, z)
        return depth - fat - muscle

    def render_wall(self, cv: Canvas) -> None:
        """Skin, subcutaneous fat, wall muscle and visceral fat, slab by slab (bounded memory), plus the table."""
        g, a, h = cv.grid, self.a, self.a.hu
        sxy = float(g.spacing[0])
        x = g.coords(0)[:, None, None]
        y = g.coords(1)[None, :, None]
        zc = g.coords(2)
        _, cy, _, ay = outline(a, zc.astype(np.float64))
        table_y = float(np.max(cy + ay)) + 6.0
        tx = g.coords(0)[:, None]
        ty = g.coords(1)[None, :]
        table = profile(np.abs(ty - (table_y + 0.0012 * tx ** 2)) - 3.0, sxy) * (np.abs(tx) < 230)
        for k0 in range(0, g.shape[2], 24):
            ks = slice(k0, min(g.shape[2], k0 + 24))
            z = zc[ks][None, None, :]
            depth, fat, muscle = self.layers(x, y, z)
            tex = self.tex.evaluate(g.coords(0), g.coords(1), zc[ks])
            v = np.full(depth.shape, h["skin"], dtype=np.float32)
            v += (h["fat"] + 4.0 * tex - v) * profile(2.0 - depth, sxy)
            v += (h["muscle"] + 2.0 * tex - v) * profile(fat - depth, sxy)
            v += (h["fat"] + 6.0 * tex - v) * profile(fat + muscle - depth, sxy)
            outer = profile(-depth, sxy)
            air = -1000.0 + 1050.0 * table[:, :, None]
            cv.hu[:, :, ks] = air + (v - air) * outer

    def render_breasts(self, cv: Canvas) -> None:
        """Breast tissue in women: fat with fibroglandular strands, on the anterior chest wall."""
        size = self.a.organs["breast"]["size"]
        if size <= 0:
            return
        a = self.a
        _, cy, ax, ay = outline(a, np.array([150.0 * a.scale]))
        for sign in (-1, 1):
            c = [sign * 0.5 * float(ax[0]), float(cy[0] - ay[0]) + 0.1 * size, 150.0 * a.scale + a.shift[2]]
            sh = ellipsoid(cv.grid, c, [70, size, 60], field=self.field, amp=0.1)
            cv.paint_shape(sh, lambda s: a.hu["fat"] + 120.0 * (self.tex.on(cv.grid, s.sl) > 0.6), keep=[0])

    # --- muscles ---------------------------------------------------------------------------------------------
    def render_muscles(self, cv: Canvas) -> None:
        """Paraspinal (autochthon), iliopsoas and gluteal muscles, labelled as TotalSegmentator does."""
        a, g, s = self.a, cv.grid, self.a.scale
        m = a.hu["muscle"] - 0.15 * max(a.age - 55, 0)  # fatty infiltration with age
        zs = np.array([330, 200, 60, -20, -100, -170]) * s
        for side, sign in (("left", 1), ("right", -1)):
            ys = a.spine_y(zs) + np.array([42, 45, 50, 55, 58, 65]) * s
            rr = np.array([13, 15, 19, 24, 25, 18]) * s
            pts = np.stack([sign * np.array([26, 28, 30, 32, 32, 28]) * s, ys, zs], 1)
            cv.paint_shape(tube(g, pts, rr), m, ID[f"autochthon_{side}"])
            psoas = np.array([[sign * 28, a.spine_y(20) + 10, 20], [sign * 40, a.spine_y(-60) + 5, -60],
                              [sign * 55, -5, -130], [sign * 78, -20, -200], [sign * 82, -55, -290]]) * [s, 1, s]
            cv.paint_shape(tube(g, psoas, np.array([7, 15, 22, 26, 16]) * s), m, ID[f"iliopsoas_{side}"])
            for name, c, semi in (("gluteus_maximus", [90, 78, -270], [62, 32, 62]),
                                  ("gluteus_medius", [118, 35, -200], [30, 38, 42]),
                                  ("gluteus_minimus", [106, 12, -218], [16, 30, 28])):
                sh = ellipsoid(g, np.array([sign * c[0], c[1], c[2]]) * s + a.shift * [1, 1, 0.5],
                               np.array(semi) * s, field=self.field, amp=0.08)
                cv.paint_shape(sh, m, ID[f"{name}_{side}"])

    # --- skeleton --------------------------------------------------------------------------------------------
    def render_spine(self, cv: Canvas) -> None:
        """Vertebral bodies (cortical shell, age-dependent cancellous bone), discs, arches, canal."""
        a, g, h = self.a, cv.grid, self.a.hu
        bone_mix = 0.5 * (h["cortical"] + h["cancellous"])
        for name, (zc, hh) in a.levels.items():
            z = zc + a.shift[2] * 0.3
            if z < g.coords(2)[0] - 40 or z > g.coords(2)[-1] + 40:
                continue
            lumbar = name.startswith("L")
            w, dpt = vertebral_body(name, a.scale)  # shared with the aorta, which must clear the bodies
            yc = float(a.spine_y(z))
            lab = ID[f"vertebrae_{name}"]
            body = cylinder(g, [0.0, yc, z], [w, dpt], hh / 2)
            cv.paint_shape(body, h["cortical"], lab)
            cv.paint_shape(body, h["cancellous"] + (12.0 if not lumbar else 0.0), lab, offset=2.0)
            disc = cylinder(g, [0.0, float(a.spine_y(z - (hh + 6) / 2)), z - (hh + 6) / 2], [w * 0.97, dpt * 0.97], 3.2)
            cv.paint_shape(disc, h["disc"], keep=[lab])
            yb = yc + dpt
            arch = cylinder(g, [0.0, yb + 10 * a.scale, z + 2], [13.0 * a.scale, 11.0 * a.scale], hh / 2 + 1)
            cv.paint_shape(arch, bone_mix, lab)
            cv.paint_shape(cylinder(g, [0.0, yb + 9 * a.scale, z], [8.5 * a.scale, 7.5 * a.scale], hh / 2 + 5),
                           h["csf"], 0)
            spin = [[0, yb + 20 * a.scale, z], [0, yb + (45 if lumbar else 38) * a.scale, z - (5 if lumbar else 18)]]
            cv.paint_shape(tube(g, spin, [4.0, 3.5]), bone_mix, lab)
            span = (16.0 if lumbar else 14.0) * a.scale + w
            tp = [[-span, yb + 18 * a.scale, z + 3], [0.0, yb + 6 * a.scale, z], [span, yb + 18 * a.scale, z + 3]]
            cv.paint_shape(tube(g, tp, [2.5, 4.0, 2.5]), bone_mix, lab)  # transverse processes

    def render_ribs(self, cv: Canvas, detail: int = 1) -> None:
        """Twelve rib pairs curving from the spine round the chest wall, costal cartilages and the sternum."""
        a, g, h = self.a, cv.grid, self.a.hu
        rib_hu = 0.45 * h["cortical"] + 0.55 * h["cancellous"]
        sternum_pts = []
        for n in range(1, 13):
            zc, _ = a.levels[f"T{n}"]
            _, cy, ax, ay = (float(v[0]) for v in outline(a, np.array([zc])))
            wall = a.fat_mm * 0.6 + a.muscle_mm + 8.0
            ex, ey = ax - wall, ay - wall * 0.8
            end = {11: 0.55, 12: 0.4}.get(n, min(0.72 + 0.02 * n, 0.92)) * np.pi
            drop = (35.0 + 4.0 * min(n, 8)) * a.scale
            th = np.linspace(0.12, end, (5, 8, 10)[detail])
            for side, sign in (("left", 1), ("right", -1)):
                ys = float(a.spine_y(zc))
                pts = [[sign * 18 * a.scale, ys + 14 * a.scale, zc]]
                for t in th:
                    pts.append([sign * ex * np.sin(t) * (1.0 - 0.15 * np.cos(t)), cy + ey * np.cos(t),
                                zc - drop * (t / np.pi) ** 1.4])
                pts = np.asarray(pts)
                cv.paint_shape(tube(g, pts, np.full(len(pts), 4.5 * a.scale)), rib_hu, ID[f"rib_{side}_{n}"])
                if n <= 10 and detail > 0:
                    tip = pts[-1]
                    st = [sign * 14.0, cy - ey + 4.0, tip[2] - (4 + 3 * n if n <= 7 else 40)]
                    cv.paint_shape(tube(g, [tip, st], [4.0, 4.0]), h["cartilage"])
                    if n <= 7:
                        sternum_pts.append(st)
        if sternum_pts:
            sp = np.asarray(sternum_pts)
            top = [0.0, sp[0, 1] + 2, sp[0, 2] + 25]
            pts = [top] + [[0.0, p[1], p[2]] for p in sp] + [[0.0, sp[-1, 1] - 5, sp[-1, 2] - 35]]
            cv.paint_shape(tube(g, pts, np.full(len(pts), 9.0 * a.scale)), 0.4 * h["cortical"] + 0.6 * h["cancellous"])

    def render_pelvis(self, cv: Canvas) -> None:
        """Sacrum, hip bones (iliac wing, acetabulum, pubis, ischium) and proximal femurs."""
        a, g, h, s = self.a, cv.grid, self.a.hu, self.a.scale
        bone = 0.45 * h["cortical"] + 0.55 * h["cancellous"]
        sac = ellipsoid(g, [0.0, float(a.spine_y(-215 * s)) + 5, -215 * s], [48 * s, 14 * s, 55 * s],
                        rotation(0, 0, -35), field=self.field, amp=0.05)
        cv.paint_shape(sac, h["cortical"], ID["sacrum"])
        cv.paint_shape(sac, h["cancellous"], ID["sacrum"], offset=2.5)
        for side, sign in (("left", 1), ("right", -1)):
            lab = ID[f"hip_{side}"]
            wing = ellipsoid(g, [sign * 92 * s, 25 * s, -195 * s], [9 * s, 55 * s, 42 * s], rotation(sign * 28, 0, -10),
                             field=self.field, amp=0.06)
            cv.paint_shape(wing, bone, lab)
            crest = np.array([[sign * 45, 62, -180], [sign * 90, 55, -160], [sign * 118, 10, -165],
                              [sign * 118, -35, -185]]) * s
            cv.paint_shape(tube(g, crest, np.full(4, 7.0 * s)), bone, lab)
            ace = np.array([[sign * 70, 40, -215], [sign * 90, 0, -255], [sign * 88, -8, -272]]) * s
            cv.paint_shape(tube(g, ace, np.array([15, 20, 22]) * s), bone, lab)
            pub = np.array([[sign * 80, -20, -290], [sign * 40, -50, -308], [sign * 8, -58, -315]]) * s
            cv.paint_shape(tube(g, pub, np.array([10, 9, 9]) * s), bone, lab)
            isch = np.array([[sign * 82, 5, -280], [sign * 62, 30, -325], [sign * 50, 10, -345]]) * s
            cv.paint_shape(tube(g, isch, np.array([12, 12, 9]) * s), bone, lab)
            fem = ID[f"femur_{side}"]
            head = ellipsoid(g, np.array([sign * 92, -5, -272]) * s, np.array([23, 23, 23]) * s)
            cv.paint_shape(head, h["cortical"], fem)
            cv.paint_shape(head, h["cancellous"], fem, offset=2.5)
            neck = np.array([[sign * 95, -5, -272], [sign * 122, 5, -305], [sign * 118, 0, -360],
                             [sign * 112, -5, -430]]) * s
            cv.paint_shape(tube(g, neck, np.array([16, 18, 14, 13]) * s), bone, fem)
