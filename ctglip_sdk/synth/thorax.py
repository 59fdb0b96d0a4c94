"""Rendering of the chest: diaphragm, lungs by lobe with fissures and vessels, airways, heart and great vessels."""

from __future__ import annotations

from typing import List, Tuple

import numpy as np

from ctglip_sdk.synth.anatomy import ID, Anatomy, diaphragm_z, vertebral_bodies_near
from ctglip_sdk.synth.body import BodyModel
from ctglip_sdk.synth.raster import Canvas, SmoothField, ellipsoid, profile, tube

__all__ = ["render_thorax", "render_great_vessels", "LUNG_IDS", "aorta_path"]

LUNG_IDS = [ID[n] for n in ("lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right",
                            "lung_middle_lobe_right", "lung_lower_lobe_right")]


def _fissures(a: Anatomy, x: np.ndarray, y: np.ndarray, jitter: np.ndarray):
    """Heights of the oblique fissure (as a function of AP position) and of the horizontal fissure."""
    s = a.scale
    oblique = (25.0 + jitter[0]) * s + 1.1 * (y + 90.0 * s + 0.25 * np.abs(x))
    horizontal = (150.0 + jitter[1]) * s
    return oblique, horizontal


def render_thorax(cv: Canvas, a: Anatomy, body: BodyModel, rng: np.random.Generator, detail: int) -> None:
    """Diaphragm, lungs (5 lobes), fissures, bronchovascular markings, trachea, bronchi and esophagus."""
    g = cv.grid
    apex = a.organs["lung"]["apex"]
    sl = g.box([-220, -200, a.diaphragm[0] - 30], [220, 200, apex + 10])
    if sl is None:
        return
    field = SmoothField(rng, [-220, -200, 0], [220, 200, 340], 10.0)
    jit = rng.normal(0, 8, 2)
    for k0 in range(sl[2].start, sl[2].stop, 16):  # slab by slab: bounded memory on clinical grids
        sub = (sl[0], sl[1], slice(k0, min(k0 + 16, sl[2].stop)))
        _lung_slab(cv, a, body, sub, field, jit)
    _airways(cv, a, detail)
    _vessel_tree(cv, a, rng, detail)


def _lung_slab(cv: Canvas, a: Anatomy, body: BodyModel, sl, field: SmoothField, jit: np.ndarray) -> None:
    """Diaphragm sheet, lungs, lobes and fissures on one slab of slices."""
    g, h, s = cv.grid, a.hu, a.scale
    sxy, sz = float(g.spacing[0]), float(g.spacing[2])
    apex = a.organs["lung"]["apex"]
    x, y, z = g.points(sl)
    cav = body.cavity_depth(g, sl)
    zd = diaphragm_z(a, x, y).astype(np.float32)
    # Diaphragm muscle: a 5 mm sheet across the cavity.
    cv.paint(sl, profile(np.abs(z - zd) - 2.5, sz) * profile(4.0 - cav, sxy), h["muscle"])
    taper = 110.0 * np.clip((z - (apex - 60.0 * s)) / (60.0 * s), 0, 1) ** 1.5
    xm, wm = 5.0 * s, a.organs["lung"]["mediastinum"]
    # The mediastinum is narrow behind (spine) and in front (anterior junction), widest in the middle.
    wm_y = wm * (0.55 + 0.6 * np.exp(-(((y + 25.0 * s) / (55.0 * s)) ** 2)))
    frac = (profile(8.0 + taper - cav, sxy) * profile(zd + 3.0 - z, sz) * profile(wm_y - np.abs(x - xm), sxy))
    if not frac.any():
        return
    # Dependent (posterior) lung is denser; texture and noise keep it in the -850 .. -910 band.
    lung_hu = h["lung"] + 25.0 * np.clip((y - 0.0) / 100.0, -0.6, 1.0) + 6.0 * field.on(g, sl)
    zo, zh = _fissures(a, x - 5.0 * s, y, jit)
    right = x < xm
    lower = z < zo
    lab = np.where(right, np.where(lower, ID["lung_lower_lobe_right"],
                                   np.where(z < zh, ID["lung_middle_lobe_right"], ID["lung_upper_lobe_right"])),
                   np.where(lower, ID["lung_lower_lobe_left"], ID["lung_upper_lobe_left"])).astype(np.uint8)
    fis = np.clip(1.0 - np.abs(z - zo) / sz, 0, 1) + right * np.clip(1.0 - np.abs(z - zh) / sz, 0, 1) * (~lower)
    region = cv.hu[sl]
    region += frac * (lung_hu + 60.0 * fis - region)
    cv.lab[sl] = np.where(frac >= 0.5, lab, cv.lab[sl])


def _airways(cv: Canvas, a: Anatomy, detail: int) -> None:
    """Trachea to the carina, main bronchi (air, thin wall), and the esophagus behind them."""
    g, h, s = cv.grid, a.hu, a.scale
    top = float(g.coords(2)[-1]) + 20
    carina = 222.0 * s
    ty = float(a.spine_y(carina)) - 40.0 * s
    tr = tube(g, [[5 * s, ty + 8 * s, top], [5 * s, ty, carina]], [9.5 * s, 9.0 * s])
    cv.paint_shape(tr, h["cartilage"], ID["trachea"])
    cv.paint_shape(tr, h["air"], ID["trachea"], offset=2.0)
    for sign in (-1, 1):
        br = tube(g, [[5 * s, ty, carina + 3], [sign * 40 * s, ty + 8 * s, carina - 22 * s]], [6.5 * s, 5.5 * s])
        cv.paint_shape(br, h["cartilage"], only=LUNG_IDS + [0])
        cv.paint_shape(br, h["air"], only=LUNG_IDS + [0], offset=1.5)
    es = tube(g, *esophagus_path(a, top))
    cv.paint_shape(es, h["bowel_wall"], ID["esophagus"])
    cv.paint_shape(es, h["air"] * 0.5, offset=5.5 * s)


def esophagus_path(a: Anatomy, top: float) -> Tuple[List[List[float]], List[float]]:
    """Centreline and radii of the esophagus from the top of the scan to the gastric cardia.

    It runs near the midline, right of the descending aorta, in the mid thorax, then swings forwards and to the
    left in front of the aorta to the hiatus, so that the aorta (painted later) covers as little of it as it can.
    """
    s = a.scale
    ey = lambda zz: float(a.spine_y(zz)) - 22.0 * s  # noqa: E731 - the esophagus runs in front of the spine
    pts = [[6 * s, ey(top), top], [5 * s, ey(200 * s), 200 * s], [1 * s, ey(140 * s) - 4 * s, 140 * s],
           [28 * s, ey(100 * s) - 18 * s, 100 * s], [42 * s, 0.0, 88 * s]]
    return pts, [7.5 * s] * 5


def _vessel_tree(cv: Canvas, a: Anatomy, rng: np.random.Generator, detail: int) -> None:
    """Pulmonary vessels branching from each hilum: the markings that make lungs look like lungs."""
    g, h, s = cv.grid, a.hu, a.scale
    gens = (1, 3, 3)[detail]
    for sign in (-1, 1):
        hilum = np.array([sign * 52 * s, -8 * s, 205 * s]) + a.shift
        dirs = [[sign * 0.5, 0.1, 0.85], [sign * 0.95, 0.1, 0.2], [sign * 0.6, -0.6, -0.3],
                [sign * 0.45, 0.6, -0.65], [sign * 0.5, 0.2, -0.8], [sign * 0.4, -0.8, 0.3]]
        stack = [(hilum, np.asarray(d, dtype=np.float64), 5.0 * s, 60.0 * s, 0) for d in dirs]
        while stack:
            p, d, r, length, gen = stack.pop()
            d = d / np.linalg.norm(d)
            q = p + d * length
            cv.paint_shape(tube(g, [p, q], [r, r * 0.8]), h["pulm_art"], only=LUNG_IDS)
            if gen + 1 < gens:
                for _ in range(2 + (gen == 0)):
                    nd = d + rng.normal(0, 0.45, 3)
                    stack.append((q, nd, r * 0.62, length * 0.7, gen + 1))


def aorta_path(a: Anatomy) -> tuple:
    """Centreline points and radii of the aorta (root to bifurcation) with any aneurysm bulge applied."""
    s, ao = a.scale, a.organs["aorta"]
    r = ao["radius"]
    pts: List[List[float]] = [[-8 * s, -50 * s, 150 * s], [-10 * s, -45 * s, 190 * s], [-8 * s, -38 * s, 238 * s],
                              [2 * s, -22 * s, 262 * s], [18 * s, -2 * s, 262 * s]]
    rad = [r * 1.35, r * 1.35, r * 1.3, r * 1.2, r * 1.1]
    bif = ao["bifurcation"]
    for z in np.arange(235 * s, bif - 1, -12.0):
        # Thorax: left anterolateral to the vertebral bodies; it swings forwards to lie in front of the lumbar
        # spine in the abdomen (t -> 1). The bodies themselves are cleared below.
        t = np.clip((250 * s - z) / (250 * s), 0, 1)
        xx = (24 * s) * (1 - t) + ao["x"] * t
        yy = float(a.spine_y(z)) + (_ANTERIOR * s) * (1 - t) + (-(17 * s + r + 5)) * t
        pts.append([xx, yy, float(z)])
        rad.append(r * (1.05 - 0.1 * t))
    an = ao.get("aneurysm")
    if an:
        for i, p in enumerate(pts):
            bump = np.clip(1 - ((p[2] - an["z"]) / (an["length"] / 2)) ** 2, 0, 1) ** 0.7
            rad[i] = max(rad[i], an["diameter"] / 2 * bump + rad[i] * (1 - bump))
    out = np.asarray(pts) + a.shift * [1, 0.5, 0.3]
    # The spine is painted after the aorta, so any overlap would be relabelled bone: the end of the arch (at T4),
    # the descending aorta and an aneurysm sac rest against the vertebral bodies instead, as they do in the body.
    for i in range(len(out)):
        out[i, :2] = _clear_of_spine(a, out[i], rad[i] + _GAP)
    return out, np.asarray(rad)


#: AP offset (mm, before scaling; negative = anterior) of the upper descending aorta from the vertebral centres.
_ANTERIOR = -10.0
#: Clearance (mm) kept between the aortic wall and a vertebral body: the centreline is checked only every
#: 12 mm and the bodies' centres follow the kyphosis, so a little margin keeps the wall off the bone between.
_GAP = 1.5
_THETA = np.linspace(-np.pi, np.pi, 1441)


def _clear_of_spine(a: Anatomy, p: np.ndarray, clearance: float) -> np.ndarray:
    """The (x, y) of centreline point ``p`` moved, if need be, to ``clearance`` mm outside the vertebral bodies
    at its height, along the normal of the nearest body surface (so the vessel touches the bone, not overlaps)."""
    x, y = float(p[0]), float(p[1])
    for _ in range(3):  # the two bodies bracketing p differ slightly; a push out of one may need another
        moved = False
        for yc, w, dpt in vertebral_bodies_near(a, float(p[2])):
            ex, ey = w * np.cos(_THETA), dpt * np.sin(_THETA)  # the body's cross-section, sampled finely
            dist = np.hypot(x - ex, y - yc - ey)
            j = int(np.argmin(dist))
            inside = (x / w) ** 2 + ((y - yc) / dpt) ** 2 < 1.0
            if inside or dist[j] < clearance - 1e-6:
                nx, ny = np.cos(_THETA[j]) / w, np.sin(_THETA[j]) / dpt
                nn = float(np.hypot(nx, ny))
                x, y = float(ex[j] + clearance * nx / nn), float(yc + ey[j] + clearance * ny / nn)
                moved = True
        if not moved:
            break
    return np.array([x, y])


def render_great_vessels(cv: Canvas, a: Anatomy, body: BodyModel) -> dict:
    """Heart (myocardium and four chambers) in pericardial fat, pulmonary artery, aorta and iliac arteries.

    Returns the aorta's rasterised shape (used by aortic findings) under ``"aorta"``.
    """
    g, h, s = cv.grid, a.hu, a.scale
    ho = a.organs["heart"]
    c = np.asarray(ho["center"])
    # Local axes: long axis from base (right, posterior, up) to apex (left, anterior, down); septal normal.
    d = np.array([0.62, -0.55, -0.55])
    d /= np.linalg.norm(d)
    n = np.array([0.7, 0.7, 0.0])
    n -= d * (n @ d)
    n /= np.linalg.norm(n)
    rot = np.stack([d, n, np.cross(d, n)], 1)
    semi = np.asarray(ho["semi"]) * s
    cv.paint_shape(ellipsoid(g, c, semi + 7, rot, body.field, 0.04), h["fat"], 0)
    heart = ellipsoid(g, c, semi, rot, body.field, 0.03)
    if heart is not None:
        cv.paint_shape(heart, h["myocardium"], ID["heart_myocardium"])
        ud, un = heart.extra["u"][0], heart.extra["u"][1]
        inner = heart.frac(offset=7.0)
        av = -0.2 * semi[0]
        for name, m in (("heart_atrium_left", (un > 4) & (ud < av)), ("heart_ventricle_left", (un > 4) & (ud >= av)),
                        ("heart_atrium_right", (un < -4) & (ud < av)),
                        ("heart_ventricle_right", (un < -3) & (ud >= av))):
            cv.paint(heart.sl, inner * m, h["blood"], ID[name])
    pa = np.array([[c[0] - 5 * s, c[1] - 25 * s, c[2] + 30 * s], [c[0] + 2 * s, c[1] - 10 * s, 232 * s],
                   [8 * s, -20 * s, 240 * s]])
    cv.paint_shape(tube(g, pa, [12 * s, 13 * s, 12 * s]), h["pulm_art"], ID["pulmonary_artery"])
    for sign in (-1, 1):
        br = [[8 * s, -20 * s, 240 * s], [sign * 45 * s, -12 * s, 212 * s]]
        cv.paint_shape(tube(g, br, [10 * s, 8 * s]), h["pulm_art"], ID["pulmonary_artery"], keep=[ID["aorta"]])
    pts, rad = aorta_path(a)
    aorta = tube(g, pts, rad, extras=True)
    cv.paint_shape(aorta, h["blood"], ID["aorta"])
    bif = pts[-1]
    for side, sign in (("left", 1), ("right", -1)):
        il = np.array([bif, [bif[0] + sign * 30 * s, bif[1] + 5, bif[2] - 40 * s],
                       [sign * 62 * s, -20 * s, -205 * s], [sign * 78 * s, -55 * s, -285 * s]])
        cv.paint_shape(tube(g, il, np.array([rad[-1], 6.5, 6.0, 5.5]) * [1, s, s, s]), h["blood"],
                       ID[f"iliac_artery_{side}"], keep=[ID["aorta"]])
    return {"aorta": aorta, "aorta_path": (pts, rad)}
