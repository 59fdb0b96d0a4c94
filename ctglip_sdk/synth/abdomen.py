"""Rendering of the abdomen and pelvis: solid organs, bowel with gas and content, bladder and abdominal veins."""

from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np

from ctglip_sdk.synth.anatomy import ID, Anatomy, diaphragm_z
from ctglip_sdk.synth.body import BodyModel
from ctglip_sdk.synth.raster import Canvas, Grid, Shape, SmoothField, ellipsoid, rotation, tube

__all__ = ["render_abdomen", "kidney_frame", "SOLID"]

#: Labelled organs that unlabelled structures (vessels, ureters) must not paint over.
SOLID = [ID[n] for n in ("liver", "spleen", "kidney_left", "kidney_right", "pancreas", "gallbladder", "stomach",
                         "urinary_bladder", "adrenal_gland_left", "adrenal_gland_right", "aorta")]

# Liver lobes relative to the cube root of the target volume (calibrated so that the rendered right+left
# lobes, cut by the diaphragm, hold about the target volume).
_LIVER_RIGHT = np.array([0.76, 0.64, 0.66])
_LIVER_LEFT = np.array([0.57, 0.37, 0.38])


def _below(cv: Canvas | Grid, a: Anatomy, body: BodyModel, sh: Shape | None, margin: float = 3.0) -> Shape | None:
    """Clip a shape to the abdominal cavity: under the diaphragm and inside the body wall (on a canvas or grid)."""
    if sh is None:
        return None
    g = cv if isinstance(cv, Grid) else cv.grid
    x, y, z = g.points(sh.sl)
    zd = diaphragm_z(a, x, y).astype(np.float32)
    cav = body.cavity_depth(g, sh.sl)
    # The intersection's signed distance is the largest of the three; each term is rescaled so that its edge
    # blurs over its own voxel size (the dome is cut across slices, the wall across pixels).
    d_dia = (z - (zd - 3.0)) * (sh.h / float(g.spacing[2]))
    d_cav = (margin - cav) * (sh.h / float(g.spacing[0]))
    d = np.maximum(sh.d, np.maximum(d_dia, d_cav))
    return Shape(sh.sl, d.astype(np.float32), sh.h, sh.extra, sh.width)


def _liver_lobes(g: Grid, a: Anatomy, body: BodyModel, zs: float) -> List[Tuple[str, Shape | None]]:
    """Right and left liver lobes, stretched craniocaudally by ``zs`` (1 = normal) and clipped to the cavity.

    A stretched lobe is moved down by 0.6 of its extra height, so that hepatomegaly grows mostly downwards
    (the dome stays under the diaphragm) as the enlarged liver does.
    """
    lv = a.organs["liver"]
    k = (lv["volume_ml"] * 1000.0) ** (1 / 3) * lv.get("scale", 1.0)
    out: List[Tuple[str, Shape | None]] = []
    for name, c, semi, rot in (("right", lv["center"], _LIVER_RIGHT * k * [1, 1, zs], rotation(10, 0, -15)),
                               ("left", lv["left"], _LIVER_LEFT * k * [1, 1, zs], rotation(-15, 0, 10))):
        cz = np.asarray(c) - [0, 0, (zs - 1.0) * semi[2] * 0.6]
        out.append((name, _below(g, a, body, ellipsoid(g, cz, semi, rot, body.field, lv["amp"]))))
    return out


def _liver_span(lab: np.ndarray, sz: float, lobes: List[Tuple[str, Shape | None]], keep: List[int]) -> float:
    """Craniocaudal span (mm) the lobes would be labelled over, measured as the truth is: slices x spacing."""
    ks: List[np.ndarray] = []
    for _, sh in lobes:
        if sh is None:
            continue
        # Voxels that get the liver label: fraction >= 0.5 where no kept organ (kidney, adrenal) is already.
        m = (sh.frac() >= 0.5) & ~np.isin(lab[sh.sl], keep)
        ks.append(np.flatnonzero(m.any(axis=(0, 1))) + sh.sl[2].start)
    k = np.concatenate(ks) if ks else np.zeros(0, dtype=np.int64)
    return float((k.max() - k.min() + 1) * sz) if k.size else 0.0


def _liver_stretch(cv: Canvas, a: Anatomy, body: BodyModel, keep: List[int], target: float) -> float:
    """The craniocaudal stretch that makes the rendered liver span ``target`` mm (hepatomegaly).

    Solved on the grid itself rather than from the ellipsoid formula: the lobes are rotated, lumpy (surface
    field), cut by the diaphragm dome and counted in whole slices, which together put a closed-form stretch
    up to 5 cm past the target. The span grows monotonically with the stretch, so bisection converges;
    no random numbers are drawn (other patients' streams are unchanged). A liver already longer than the
    target is left as it is (zs = 1).

    The search runs on every f-th pixel in plane (pixels of at most 2.5 mm; slices unchanged): a voxel is
    labelled where its signed distance is <= 0 whatever the voxel size, so the strided grid labels the same
    points, and on a clinical 512 matrix the search costs a ninth of the time.
    """
    g = cv.grid
    f = max(1, int(2.5 // float(g.spacing[0])))
    sub = Grid((-(-g.shape[0] // f), -(-g.shape[1] // f), g.shape[2]),
               (g.spacing[0] * f, g.spacing[1] * f, g.spacing[2]), g.first_lps)
    lab, sz = cv.lab[::f, ::f, :], float(g.spacing[2])
    span = _liver_span(lab, sz, _liver_lobes(sub, a, body, 1.0), keep)
    if span >= target:
        return 1.0
    best_zs, best_err = 1.0, target - span
    lo, hi = 1.0, 3.0
    for _ in range(8):  # 2 / 2**8 in zs: about 2 mm of liver tip per step at the end, under a slice
        if best_err == 0.0:
            break
        mid = 0.5 * (lo + hi)
        span = _liver_span(lab, sz, _liver_lobes(sub, a, body, mid), keep)
        if abs(span - target) < best_err:
            best_zs, best_err = mid, abs(span - target)
        lo, hi = (mid, hi) if span < target else (lo, mid)
    return best_zs


def _tex(rng: np.random.Generator, g: Grid, sh: Shape | None, step: float = 9.0) -> np.ndarray:
    if sh is None:
        return np.zeros(1, dtype=np.float32)
    lo = [float(g.coords(a)[s.start if a == 2 else s.stop - 1]) for a, s in enumerate(sh.sl)]
    hi = [float(g.coords(a)[s.stop - 1 if a == 2 else s.start]) for a, s in enumerate(sh.sl)]
    return SmoothField(rng, lo, hi, step).on(g, sh.sl)


def kidney_frame(a: Anatomy, side: str) -> tuple:
    """Centre, semi-axes and rotation of a kidney (upper pole tilted medially, hilum facing anteromedially)."""
    k = a.organs[f"kidney_{side}"]
    sign = -1.0 if side == "right" else 1.0
    length = k["length"]
    semi = np.array([0.27, 0.2, 0.5]) * length
    rot = rotation(yaw=-sign * k["yaw"], pitch=sign * k["tilt"], roll=12.0)
    return np.asarray(k["center"]), semi, rot, sign


def _bowel_path(rng: np.random.Generator, start, lo, hi, n: int, step: float) -> np.ndarray:
    """A tortuous random walk inside a box: small bowel loops."""
    p = np.asarray(start, dtype=np.float64)
    d = np.array([0.0, -0.3, -1.0])
    pts = [p.copy()]
    for _ in range(n):
        d = d + rng.normal(0, 0.8, 3) * [1.0, 0.6, 1.0]
        d /= np.linalg.norm(d)
        q = p + d * step
        for ax in range(3):  # reflect at the walls of the box
            if q[ax] < lo[ax] or q[ax] > hi[ax]:
                d[ax] = -d[ax]
                q[ax] = np.clip(q[ax], lo[ax], hi[ax])
        p = q
        pts.append(p.copy())
    return np.asarray(pts)


def _hollow(cv: Canvas, sh: Shape | None, wall_hu: float, content, label: int, wall: float = 3.0, **kw) -> None:
    if sh is None:
        return
    cv.paint_shape(sh, wall_hu, label, **kw)
    cv.paint_shape(sh, content, label, offset=wall, **kw)


def render_abdomen(cv: Canvas, a: Anatomy, body: BodyModel, rng: np.random.Generator, detail: int) -> Dict[str, Shape]:
    """Bowel, stomach, pelvic organs, bladder, liver, gallbladder, spleen, pancreas, kidneys, adrenals, veins.

    Returns the shapes that findings refer to (liver, spleen, kidneys, pancreas, gallbladder, bladder).
    """
    g, h, s, o = cv.grid, a.hu, a.scale, a.organs
    shapes: Dict[str, Shape] = {}
    brng = np.random.default_rng(o["bowel"]["seed"])
    # --- bowel -------------------------------------------------------------------------------------------------
    col = np.array([[0, 62, -318], [5, 55, -270], [30, 20, -235], [62, -20, -205], [88, 20, -150], [92, 30, -60],
                    [90, 20, 0], [78, -20, 25], [45, -90, -25], [0, -100, -45], [-45, -90, -25], [-80, -35, 10],
                    [-90, 15, -40], [-88, 0, -110], [-75, -35, -150]], dtype=np.float64) * s + a.shift
    col += brng.normal(0, 6, col.shape)
    crad = np.array([15, 16, 17, 17, 17, 18, 18, 20, 21, 21, 21, 22, 22, 24, 27]) * s * brng.uniform(0.85, 1.1)
    colon = _below(cv, a, body, tube(g, col, crad, extras=True))
    if colon is not None:
        tex = SmoothField(brng, [-150, -150, -340], [150, 150, 60], 7.0).on(g, colon.sl)
        gas_level = colon.extra["rad"] * (2.0 * o["bowel"]["gas"] - 1.0)
        stool = np.where(tex > 1.0 - o["bowel"]["stool"], h["air"], 10.0 + 15.0 * tex)
        content = np.where(colon.extra["off"][1] < gas_level, h["air"], stool)
        _hollow(cv, colon, h["bowel_wall"], content, ID["colon"], 2.5)
    if detail >= 1:
        sb_pts = _bowel_path(brng, np.array([35, -45, -45]) * s, np.array([-85, -115, -205]) * s,
                             np.array([80, -10, -45]) * s, 36, 26.0 * s)
    else:
        sb_pts = _bowel_path(brng, np.array([35, -45, -45]) * s, np.array([-85, -115, -205]) * s,
                             np.array([80, -10, -45]) * s, 12, 40.0 * s)
    sb = _below(cv, a, body, tube(g, sb_pts + a.shift, np.full(len(sb_pts), 12.0 * s), extras=True))
    if sb is not None:
        bub = SmoothField(brng, [-150, -150, -250], [150, 150, 0], 8.0).on(g, sb.sl)
        content = np.where(bub > 2.0 - 1.5 * o["bowel"]["gas"], h["air"], 8.0 + 6.0 * bub)
        _hollow(cv, sb, h["bowel_wall"], content, ID["small_bowel"], 2.0, keep=[ID["colon"]])
    duo = np.array([[-12, -70, 0], [-40, -52, -5], [-58, -32, -35], [-45, -22, -68], [-5, -20, -75], [25, -32, -58],
                    [35, -45, -45]]) * s + a.shift
    dd = _below(cv, a, body, tube(g, duo, np.full(len(duo), 11.0 * s), extras=True))
    _hollow(cv, dd, h["bowel_wall"], lambda sh: np.where(sh.extra["off"][1] < -0.6 * sh.extra["rad"], h["air"], 12.0),
            ID["duodenum"], 2.0)
    st = o["stomach"]
    stom = _below(cv, a, body, tube(g, np.asarray(st["points"]), st["radii"] * s, extras=True))
    if stom is not None:
        tex = _tex(brng, g, stom, 8.0)
        lvl = stom.extra["rad"] * (2.0 * st["gas"] - 1.0)
        content = np.where(stom.extra["off"][1] < lvl, h["air"], st["content"] + 12.0 * tex)
        cv.paint_shape(stom, h["mucosa"], ID["stomach"])
        cv.paint_shape(stom, content, ID["stomach"], offset=4.0)
    # --- pelvis ------------------------------------------------------------------------------------------------
    if a.sex == "F":
        ut = ellipsoid(g, np.array([0, 5, -225]) * s + a.shift, np.array([32, 24, 42]) * s, rotation(0, 0, 40),
                       body.field, 0.08)
        cv.paint_shape(ut, h["uterus"], keep=[ID["colon"]])
    else:
        pr = ellipsoid(g, np.array([0, -22, -318]) * s + a.shift, np.array([21, 16, 18]) * s)
        cv.paint_shape(pr, h["prostate"], keep=[ID["colon"]])
    bl = o["urinary_bladder"]
    bsh = ellipsoid(g, bl["center"], bl["semi"], None, body.field, 0.05)
    _hollow(cv, bsh, h["bowel_wall"], h["urine"], ID["urinary_bladder"], bl["wall"])
    shapes["urinary_bladder"] = bsh
    # --- kidneys, ureters, adrenals ----------------------------------------------------------------------------
    for side in ("right", "left"):
        ko = o[f"kidney_{side}"]
        c, semi, rot, sign = kidney_frame(a, side)
        ksh = ellipsoid(g, c, semi, rot, body.field, ko["amp"])
        lab = ID[f"kidney_{side}"]
        cv.paint_shape(ksh, h["kidney"], lab)
        cv.paint_shape(ksh, h["medulla"], lab, offset=ko["cortex"])
        medial = -sign
        sc = c + rot[:, 0] * medial * 0.55 * semi[0] + rot[:, 1] * -0.2 * semi[1]
        sinus = ellipsoid(g, sc, semi * [0.5, 0.45, 0.55] * ko.get("sinus", 1.0), rot)
        cv.paint_shape(sinus, h["fat"], 0, only=[lab])
        pel = ellipsoid(g, sc + rot[:, 0] * medial * 4, [ko["pelvis"] * 0.8, ko["pelvis"] / 2, ko["pelvis"] * 1.3], rot)
        cv.paint_shape(pel, h["urine"], lab)
        if ko.get("calyces"):  # hydronephrosis beyond mild: dilated calyces fanning out from the pelvis
            for f in (-0.55, -0.2, 0.2, 0.55):
                cal = sc + rot[:, 2] * f * semi[2] * 1.1 + rot[:, 0] * -medial * 0.35 * semi[0]
                cv.paint_shape(tube(g, [sc, cal], [ko["pelvis"] * 0.3, ko["pelvis"] * 0.25]), h["urine"], lab,
                               only=[lab, 0])
        ur = [sc + rot[:, 0] * medial * 12, [c[0] + medial * 5, c[1] - 5, c[2] - 60 * s],
              [sign * 45 * s, -5 * s, -170 * s], [sign * 25 * s, -30 * s, -255 * s]]
        cv.paint_shape(tube(g, ur, [2.5, 2.2, 2.0, 2.0]), h["urine"], only=[0])
        shapes[f"kidney_{side}"] = ksh
        ad = o[f"adrenal_gland_{side}"]
        ac = np.asarray(ad["center"])
        r = ad["radius"]
        lat = -medial
        limbs = [[ac + [0, -14, 18], ac, ac + [lat * 12, 18, -20]], [ac, ac + [-lat * 6, 18, -18]]]
        for limb in limbs:
            cv.paint_shape(tube(g, np.asarray(limb), [r] * len(limb)), h["adrenal"], ID[f"adrenal_gland_{side}"])
    # --- liver and gallbladder (they yield to the kidneys and adrenals they touch) ------------------------------
    keep = [ID["kidney_left"], ID["kidney_right"], ID["adrenal_gland_left"], ID["adrenal_gland_right"]]
    lv = o["liver"]
    zs = _liver_stretch(cv, a, body, keep, float(lv["cc_target"])) if "cc_target" in lv else 1.0
    tex_rng = np.random.default_rng(int(brng.integers(2 ** 31)))
    for name, sh in _liver_lobes(g, a, body, zs):
        if sh is not None:
            cv.paint_shape(sh, h["liver"] + lv.get("delta", 0.0) + 3.0 * _tex(tex_rng, g, sh), ID["liver"], keep=keep)
            shapes[f"liver_{name}"] = sh
    gb = o["gallbladder"]
    if gb["present"]:
        gsh = ellipsoid(g, gb["center"], gb["semi"], rotation(20, 0, 40), body.field, 0.06)
        if gb.get("fluid") and gsh is not None:  # pericholecystic fluid: a thin rim around a thick-walled GB
            cv.paint(gsh.sl, np.clip(0.5 - (gsh.d - 4.0) / gsh.h, 0, 1) - gsh.frac(), h["fluid"], only=[0])
        _hollow(cv, gsh, h["bowel_wall"], h["bile"], ID["gallbladder"], gb["wall"])
        shapes["gallbladder"] = gsh
    # --- spleen --------------------------------------------------------------------------------------------------
    sp = o["spleen"]
    L = sp["length"]
    spc = np.asarray(sp["center"]) - [0.25 * (L - 105), 0.15 * (L - 105), 0.55 * (L - 105)]
    ssh = _below(cv, a, body, ellipsoid(g, spc, np.array([0.38, 0.25, 0.5]) * L, rotation(sp["yaw"], 0, -sp["pitch"]),
                                        body.field, sp["amp"]), margin=-4.0)
    cv.paint_shape(ssh, h["spleen"] + 2.0 * _tex(tex_rng, g, ssh), ID["spleen"], keep=keep)
    shapes["spleen"] = ssh
    # --- pancreas --------------------------------------------------------------------------------------------------
    pc = o["pancreas"]
    psh = tube(g, pc["points"], pc["radii"] * s, extras=True)
    if psh is not None:
        lob = _tex(tex_rng, g, psh, 6.0)
        psh.d -= 1.5 * lob  # lobulated contour
        fatty = np.clip(lob - (1.4 - 2.0 * pc["fatty"]), 0, 1) if pc["fatty"] else 0.0
        val = h["pancreas"] + 3.0 * lob + (h["fat"] * 0.35 - h["pancreas"]) * np.minimum(fatty, 1.0)
        cv.paint_shape(psh, val, ID["pancreas"], keep=keep)
        duct = tube(g, pc["points"][1:], np.full(len(pc["points"]) - 1, pc["duct"]))
        cv.paint_shape(duct, h["fluid"], ID["pancreas"], only=[ID["pancreas"]])
        shapes["pancreas"] = psh
    # --- veins ---------------------------------------------------------------------------------------------------
    _veins(cv, a, body)
    return shapes


def _veins(cv: Canvas, a: Anatomy, body: BodyModel) -> None:
    """IVC and iliac veins, portal and splenic vein, hepatic and renal veins."""
    g, h, s, o = cv.grid, a.hu, a.scale, a.organs
    ivc = o["ivc"]
    bif = o["aorta"]["bifurcation"]
    xi = ivc["x"]
    pts = np.array([[-18 * s, -22 * s, bif - 15 * s], [xi, float(a.spine_y(-60 * s)) - 32 * s, -60 * s],
                    [xi, float(a.spine_y(0)) - 33 * s, 0.0], [xi - 5 * s, -8 * s, 60 * s],
                    [xi, -20 * s, 105 * s], [xi + 5 * s, -35 * s, 122 * s]]) + a.shift * [1, 0.5, 0.3]
    cv.paint_shape(tube(g, pts, np.full(len(pts), ivc["radius"])), h["ivc"], ID["inferior_vena_cava"],
                   keep=[ID["aorta"], ID["pancreas"], ID["duodenum"], ID["kidney_right"]])
    for side, sign in (("left", 1), ("right", -1)):
        il = np.array([pts[0], [sign * 45 * s, -10 * s, -175 * s], [sign * 68 * s, -30 * s, -225 * s],
                       [sign * 72 * s, -50 * s, -290 * s]])
        cv.paint_shape(tube(g, il, np.array([9, 8, 7.5, 7]) * s), h["ivc"], ID[f"iliac_vena_{side}"],
                       keep=[ID["iliac_artery_left"], ID["iliac_artery_right"], ID["aorta"], ID["inferior_vena_cava"]])
    pv = np.array([[85, 30, 35], [50, 12, 18], [15, -8, 2], [-8, -22, -6], [-30, -24, 20], [-50, -24, 42],
                   [-80, -20, 55]]) * s + a.shift
    cv.paint_shape(tube(g, pv, np.array([5, 5, 5.5, 7, 7, 6.5, 4.5]) * s), h["portal"],
                   ID["portal_vein_and_splenic_vein"], keep=[ID["aorta"], ID["inferior_vena_cava"], ID["pancreas"]])
    lb = tube(g, [pv[5], np.array([-15, -50, 62]) * s + a.shift], [5 * s, 3.5 * s])
    cv.paint_shape(lb, h["portal"], only=[ID["liver"]])
    hv_root = np.array([xi, -15 * s, 100 * s]) + a.shift
    for tip in ([-115, 0, 70], [-60, -65, 55], [-10, -72, 78]):
        cv.paint_shape(tube(g, [hv_root, np.array(tip) * s + a.shift], [5 * s, 2 * s]), h["ivc"] - 10,
                       only=[ID["liver"]])
    ay = float(a.spine_y(-10 * s)) - 17 * s - o["aorta"]["radius"] - 5
    for side, sign in (("left", 1), ("right", -1)):
        kc = np.asarray(o[f"kidney_{side}"]["center"])
        vein = [kc + [-sign * 28, -8, 5], [sign * 10 * s, ay - 14 if side == "left" else -30 * s, kc[2] + 5],
                [xi, -30 * s, kc[2] + 8]]
        cv.paint_shape(tube(g, vein, [5 * s, 5 * s, 5 * s]), h["ivc"], only=[0])
        art = [[o["aorta"]["x"], ay, -5 * s], kc + [-sign * 25, -3, 8]]
        cv.paint_shape(tube(g, art, [3 * s, 2.5 * s]), h["blood"], only=[0])
