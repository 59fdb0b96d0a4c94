"""Rendering of findings into the phantom (focal lesions, lung and aortic findings) and their ground truth."""

from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from ctglip_sdk.synth.abdomen import kidney_frame
from ctglip_sdk.synth.anatomy import ID, Anatomy, diaphragm_z
from ctglip_sdk.synth.body import BodyModel
from ctglip_sdk.synth.presets import Preset
from ctglip_sdk.synth.raster import Canvas, Grid, Shape, SmoothField, ellipsoid, profile, rotation

__all__ = ["render_findings", "measure", "principal_length", "liver_segment"]

# 26 unit directions used to test whether a lesion fits inside its organ.
_DIRS = np.array([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1) if (i, j, k) != (0, 0, 0)],
                 dtype=np.float64)
_DIRS /= np.linalg.norm(_DIRS, axis=1)[:, None]
_KIDNEY_NEIGHBOURS = ("liver", "spleen", "colon", "small_bowel", "duodenum", "stomach", "pancreas", "gallbladder",
                      "adrenal_gland_right", "adrenal_gland_left")
_LOBES = {ID[n]: n for n in ("lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right",
                             "lung_middle_lobe_right", "lung_lower_lobe_right")}


_EMPHYSEMA_HU = -975.0  # emphysematous voxels before noise (< -950 HU, the LAA threshold, after it)


def _ras(p: Sequence[float]) -> List[float]:
    return [round(-float(p[0]), 1), round(-float(p[1]), 1), round(float(p[2]), 1)]


def _entry(key: str, organ: str, side=None, size=None, location=None, severity=None, count=None, center=None) -> dict:
    e = {"organ": organ, "finding": key, "side": side, "size_mm": None if size is None else float(round(size)),
         "location": location, "hu": None, "severity": severity}
    if count is not None:
        e["count"] = int(count)
    if center is not None:
        e["center_ras_mm"] = _ras(center)
    return e


def liver_segment(a: Anatomy, p: Sequence[float]) -> str:
    """Couinaud segment of an LPS point from the liver's planes (Cantlie line, right hepatic vein, portal plane)."""
    s, c = a.scale, a.organs["liver"]["center"]
    x, y, z = p
    cantlie, falciform, portal = c[0] + 45 * s, c[0] + 80 * s, c[2] + 5 * s
    up = z > portal
    if x > falciform:
        return "II" if up else "III"
    if x > cantlie:
        if y > -10 * s + a.shift[1] and z > c[2] - 20 * s:
            return "I"
        return "IVa" if up else "IVb"
    if y < c[1] - 5 * s:
        return "VIII" if up else "V"
    return "VII" if up else "VI"


def _kidney_pole(a: Anatomy, side: str, p: Sequence[float]) -> str:
    c, semi, rot, _ = kidney_frame(a, side)
    f = (rot.T @ (np.asarray(p) - c))[2] / semi[2]
    return "upper pole" if f > 0.3 else "lower pole" if f < -0.3 else "interpolar region"


def _place(cv: Canvas, ids: Sequence[int], radius: float, rng: np.random.Generator,
           ok: Optional[Callable[[np.ndarray], bool]] = None, inside: float = 0.85, tries: int = 80):
    """An LPS point inside the organ(s) where a sphere of ``radius`` mostly fits (None if the organ is absent)."""
    g = cv.grid
    cand = np.flatnonzero(np.isin(cv.lab, ids))
    if cand.size == 0:
        return None
    lut = np.zeros(256, dtype=bool)
    lut[list(ids)] = True
    best, best_score = None, -1.0
    for _ in range(tries):
        ijk = np.unravel_index(cand[rng.integers(cand.size)], g.shape)
        p = g.to_lps(ijk)
        if ok is not None and not ok(p):
            continue
        pts = p + _DIRS * radius * 0.9
        idx = [np.clip(np.rint(v).astype(int), 0, n - 1) for v, n in zip(
            ((g.first_lps[0] - pts[:, 0]) / g.spacing[0], (g.first_lps[1] - pts[:, 1]) / g.spacing[1],
             (pts[:, 2] - g.first_lps[2]) / g.spacing[2]), g.shape)]
        score = float(lut[cv.lab[idx[0], idx[1], idx[2]]].mean())
        if score >= inside:
            return p
        if score > best_score:
            best, best_score = p, score
    return best


def _blob(cv: Canvas, p, size: float, value, label: Optional[int], rng: np.random.Generator, amp: float = 0.04,
          only: Optional[Sequence[int]] = None):
    """A roundish lesion of diameter ``size`` centred on the voxel nearest ``p``; returns (box, painted fraction)."""
    g = cv.grid
    c = g.snap(p)
    semi = size / 2.0 * np.array([1.0, rng.uniform(0.85, 1.0), rng.uniform(0.85, 1.0)])
    rot = rotation(*rng.uniform(0, 180, 3))
    fld = SmoothField(rng, c - size, c + size, max(size / 3.0, 2.0)) if amp else None
    sh = ellipsoid(g, c, semi, rot, fld, amp)
    if sh is None:
        return None
    return sh.sl, cv.paint_shape(sh, value, label, only=only)


def _core(blob, level: float = 0.99):
    """The voxels fully covered by a painted lesion (or its most covered voxel), for measuring HU after noise."""
    if blob is None:
        return None
    sl, f = blob
    m = f >= level
    if not m.any():
        m = f >= f.max() - 1e-6
    return (sl, m)


def principal_length(mask: np.ndarray, grid: Grid) -> float:
    """Longest extent (mm) of a mask along its principal axis (organ 'length' as radiologists measure it)."""
    ijk = np.argwhere(mask).astype(np.float64)
    if len(ijk) < 3:
        return 0.0
    pts = ijk * np.asarray(grid.spacing)
    pts -= pts.mean(0)
    axis = np.linalg.svd(pts[:: max(1, len(pts) // 20000)], full_matrices=False)[2][0]
    proj = pts @ axis
    # Voxel centres span one voxel less than the organ: add the voxel's width along the axis.
    return float(proj.max() - proj.min() + (np.abs(axis) * np.asarray(grid.spacing)).max())


def render_findings(cv: Canvas, a: Anatomy, body: BodyModel, shapes: Dict[str, object], plan: List[dict],
                    rng: np.random.Generator, preset: Preset, out: List[dict]) -> list:
    """Paint every finding of ``plan`` and append its truth entry to ``out``; returns HU cores to measure."""
    cores: list = []
    h, g = a.hu, cv.grid

    def add(e: dict, core=None, kind: str = "mean") -> None:
        out.append(e)
        cores.append((len(out) - 1, core, kind))

    for f in plan:
        k = f["key"]
        if k in ("liver_cyst", "liver_calcification", "liver_mass"):
            n = f.get("count", 1)
            main = None
            for i in range(n):
                size = f["size"] if i == 0 else max(round(f["size"] * rng.uniform(0.3, 0.8)), preset.min_lesion_mm)
                p = _place(cv, [ID["liver"]], size / 2, rng, inside=0.9 if k != "liver_cyst" else 0.75)
                if p is None:
                    break
                if k == "liver_cyst":
                    sh = _blob(cv, p, size, rng.uniform(2, 15), ID["liver"], rng, 0.03, only=[ID["liver"], 0])
                elif k == "liver_calcification":
                    sh = _blob(cv, p, size, rng.uniform(350, 800), ID["liver"], rng, 0.0, only=[ID["liver"]])
                else:
                    liver = h["liver"] + a.organs["liver"].get("delta", 0)
                    val = rng.uniform(45, 70) if a.contrast else liver - rng.uniform(15, 25)
                    if val > liver - 15:  # a steatotic enhanced liver: keep the mass hypoattenuating (15–25 HU under)
                        val = liver - 15 - (val - 45) / 25 * 10
                    sh = _blob(cv, p, size, val, ID["liver"], rng, 0.15, only=[ID["liver"], 0])
                    if size >= 40:  # central necrosis
                        _blob(cv, p, size * 0.4, rng.uniform(12, 25), ID["liver"], rng, 0.2, only=[ID["liver"]])
                if i == 0:
                    main = (p, sh)
            if main is not None:
                add(_entry(k, "liver", None, f["size"], f"segment {liver_segment(a, main[0])}",
                           count=n if n > 1 else None, center=main[0]), _core(main[1]))
        elif k == "hepatic_steatosis":
            add(_entry(k, "liver", severity=f["severity"], location="diffuse"), None, "organ:liver")
        elif k == "hepatomegaly":
            add(_entry(k, "liver", location="diffuse"), None, "cc:liver")
        elif k == "splenomegaly":
            add(_entry(k, "spleen"), None, "length:spleen")
        elif k == "splenic_calcification":
            first = None
            for i in range(f["count"]):
                p = _place(cv, [ID["spleen"]], f["size"] / 2, rng, inside=0.9)
                if p is None:
                    break
                sh = _blob(cv, p, f["size"], rng.uniform(300, 700), ID["spleen"], rng, 0.0, only=[ID["spleen"]])
                first = first or (p, sh)
            if first:
                add(_entry(k, "spleen", size=f["size"], count=f["count"], center=first[0]), _core(first[1]))
        elif k == "gallstones":
            _gallstones(cv, a, shapes.get("gallbladder"), f, rng, add)
        elif k == "gallbladder_wall_thickening" and shapes.get("gallbladder") is not None:
            sh = shapes["gallbladder"]
            m = (sh.frac() >= 0.99) & (sh.frac(f["size"]) <= 0.01)
            e = _entry(k, "gallbladder", size=f["size"], location="diffuse")
            if f.get("fluid"):
                e["fluid"] = True
            add(e, (sh.sl, m))
        elif k in ("renal_cyst", "renal_stone"):
            _kidney_focal(cv, a, f, rng, add)
        elif k == "hydronephrosis":
            side = f["side"]
            add(_entry(k, f"kidney_{side}", side, f["size"], "renal pelvis", f["severity"]), None, f"pelvis:{side}")
        elif k == "renal_atrophy":
            add(_entry(k, f"kidney_{f['side']}", f["side"]), None, f"length:kidney_{f['side']}")
        elif k == "pancreatic_atrophy":
            size = 2 * float(a.organs["pancreas"]["radii"][3]) * a.scale
            add(_entry(k, "pancreas", size=size, severity=f["severity"], location="diffuse"), None, "organ:pancreas")
        elif k == "pancreatic_duct_dilation":
            add(_entry(k, "pancreas", size=f["size"], location="main duct"), None, "duct")
        elif k == "pancreatic_cyst":
            ps = shapes.get("pancreas")
            rng_t = {"head": (0.0, 0.3), "body": (0.3, 0.68), "tail": (0.68, 1.01)}[f["part"]]

            def in_part(p, ps=ps, rng_t=rng_t):
                if ps is None:
                    return True
                ijk = g.to_index(p)
                loc = [ijk[ax] - ps.sl[ax].start for ax in range(3)]
                if any(v < 0 or v >= ps.d.shape[ax] for ax, v in enumerate(loc)):
                    return False
                return rng_t[0] <= ps.extra["t"][tuple(loc)] < rng_t[1]
            p = _place(cv, [ID["pancreas"]], f["size"] / 4, rng, ok=in_part, inside=0.6)
            if p is not None:
                sh = _blob(cv, p, f["size"], rng.uniform(3, 15), ID["pancreas"], rng, 0.03, only=[ID["pancreas"], 0])
                add(_entry(k, "pancreas", size=f["size"], location=f["part"], center=p), _core(sh))
        elif k == "lung_nodule":
            p = _place(cv, list(_LOBES), f["size"] / 2, rng, inside=0.95)
            if p is not None:
                lobe = _LOBES[int(cv.lab[g.to_index(p)])]
                val = rng.uniform(200, 600) if f["calcified"] else rng.uniform(20, 60)
                sh = _blob(cv, p, f["size"], val, ID[lobe], rng, 0.22 if f["size"] > 12 else 0.06)
                add(_entry(k, lobe, lobe.split("_")[-1], f["size"], lobe.split("_")[1] + " lobe",
                           "calcified" if f["calcified"] else "solid", center=p), _core(sh))
        elif k == "emphysema":
            _emphysema(cv, a, f, rng, add)
        elif k == "pleural_effusion":
            _effusion(cv, a, body, f, add)
        elif k == "adrenal_nodule":
            side = f["side"]
            ad = np.asarray(a.organs[f"adrenal_gland_{side}"]["center"])
            p = ad + [(-1 if side == "right" else 1) * 0.15 * f["size"], 0.1 * f["size"], -0.1 * f["size"]]
            val = rng.uniform(-10, 6) if not a.contrast else rng.uniform(40, 65)
            # A nodule displaces its neighbours (liver, IVC, kidney, spleen), so it may paint over them.
            near = [0, ID[f"adrenal_gland_{side}"], ID["liver"], ID["inferior_vena_cava"], ID["spleen"],
                    ID[f"kidney_{side}"], ID["stomach"], ID["pancreas"]]
            sh = _blob(cv, p, f["size"], val, ID[f"adrenal_gland_{side}"], rng, 0.03, only=near)
            add(_entry(k, f"adrenal_gland_{side}", side, f["size"], "adrenal body", center=p), _core(sh))
        elif k == "aortic_calcification":
            _plaques(cv, a, shapes, f, rng, add)
        elif k == "aortic_aneurysm":
            _aneurysm(cv, a, shapes, f, rng, add)
        elif k == "bladder_wall_thickening":
            sh = shapes.get("urinary_bladder")
            if sh is not None:
                m = (sh.frac() >= 0.99) & (sh.frac(f["size"]) <= 0.01)
                add(_entry(k, "urinary_bladder", size=f["size"], location="diffuse"), (sh.sl, m))
    # A later finding (a pleural effusion, its atelectasis band) may paint over emphysema: its truth HU and
    # LAA core are the voxels still emphysematous once everything is painted (before noise, at <= -975 HU).
    for j, (i, core, kind) in enumerate(cores):
        if kind.startswith("laa:") and core is not None:
            sl, m = core
            cores[j] = (i, (sl, m & (cv.hu[sl] <= _EMPHYSEMA_HU) & (cv.lab[sl] == int(kind[4:]))), kind)
    return cores


def _gallstones(cv: Canvas, a: Anatomy, sh: Optional[Shape], f: dict, rng: np.random.Generator, add) -> None:
    if sh is None:
        return
    g = cv.grid
    wall = a.organs["gallbladder"]["wall"]
    y = g.points(sh.sl)[1]
    first = None
    for i in range(f["count"]):
        size = f["size"] if i == 0 else max(round(f["size"] * rng.uniform(0.3, 0.9)), 2.0)
        room = (sh.frac(wall + size / 2 - 1.0) >= 0.5) & (cv.lab[sh.sl] == ID["gallbladder"])
        if not room.any():
            room = (sh.frac(wall) >= 0.5) & (cv.lab[sh.sl] == ID["gallbladder"])
            if not room.any():
                break
        yy = np.broadcast_to(y, room.shape)[room]
        idx = np.argwhere(room)
        dep = idx[yy >= np.quantile(yy, 0.8)]  # stones are dependent: the most posterior part of the lumen
        ijk = dep[rng.integers(len(dep))] + [s.start for s in sh.sl]
        p = g.to_lps(ijk)
        kind = f["kind"]
        val = {"calcified": rng.uniform(300, 1000), "mixed": rng.uniform(110, 250), "rim": rng.uniform(400, 800)}[kind]
        st = _blob(cv, p, size, val, ID["gallbladder"], rng, 0.05, only=[ID["gallbladder"]])
        if kind == "rim" and size >= 8:
            _blob(cv, p, size * 0.6, rng.uniform(40, 80), ID["gallbladder"], rng, 0.0, only=[ID["gallbladder"]])
        first = first or (p, st)
    if first:
        # A rim stone's fully covered voxels are its repainted soft core: its peak is on the periphery.
        add(_entry("gallstones", "gallbladder", None, f["size"], "dependent", kind, f["count"] if f["count"] > 1
                   else None, first[0]), _core(first[1], 0.5 if kind == "rim" else 0.9), "max")


def _kidney_focal(cv: Canvas, a: Anatomy, f: dict, rng: np.random.Generator, add) -> None:
    side, k = f["side"], f["key"]
    c, semi, rot, sign = kidney_frame(a, side)
    lab = ID[f"kidney_{side}"]
    fz = {"upper": 0.55, "interpolar": 0.0, "lower": -0.55}[f["pole"]] + rng.uniform(-0.1, 0.1)
    medial = -sign
    if k == "renal_stone":
        # In a calyx or the pelvis, at the junction of sinus and medulla.
        p = c + rot @ np.array([medial * 0.3 * semi[0], -0.1 * semi[1], fz * semi[2] * 0.85])
        sh = _blob(cv, p, f["size"], rng.uniform(700, 1300), lab, rng, 0.05)
        kind = "max"
    else:
        # Cortical, often exophytic: centred near the lateral or anterior/posterior surface.
        th = rng.uniform(-1.0, 1.0)
        u = np.array([-medial * np.cos(th) * 0.8, np.sin(th) * 0.8, fz])
        u = u / np.linalg.norm(u)
        depth = rng.uniform(0.75, 1.0)
        p = c + rot @ (u * semi * depth)
        # An exophytic cyst displaces the fat and the soft organs next to the kidney (as an adrenal nodule does)
        # rather than being cut off by them, so a 40 mm cyst renders 40 mm; bone and great vessels stay.
        near = [lab, 0] + [ID[n] for n in _KIDNEY_NEIGHBOURS if n in ID]
        sh = _blob(cv, p, f["size"], rng.uniform(2, 15), lab, rng, 0.03, only=near)
        kind = "mean"
    loc = _kidney_pole(a, side, p)
    add(_entry(k, f"kidney_{side}", side, f["size"], loc, "Bosniak I" if k == "renal_cyst" else None, center=p),
        _core(sh, 0.99 if k == "renal_cyst" else 0.5), kind)


def _emphysema(cv: Canvas, a: Anatomy, f: dict, rng: np.random.Generator, add) -> None:
    """Centrilobular low-attenuation areas (< -950 HU), upper-lobe predominant."""
    g = cv.grid
    sev = f["severity"]
    upper = {"mild": (0.06, 0.10), "moderate": (0.12, 0.22), "severe": (0.25, 0.4)}[sev]
    other = {"mild": None, "moderate": (0.03, 0.07), "severe": (0.1, 0.18)}[sev]
    ids = np.isin(cv.lab, list(_LOBES))
    box = np.argwhere(ids)
    if not len(box):
        return
    sl = tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(box.min(0), box.max(0)))
    lo = [float(min(g.coords(ax)[s.start], g.coords(ax)[s.stop - 1])) for ax, s in enumerate(sl)]
    hi = [float(max(g.coords(ax)[s.start], g.coords(ax)[s.stop - 1])) for ax, s in enumerate(sl)]
    fld = SmoothField(rng, lo, hi, 6.0).on(g, sl)
    z = g.points(sl)[2]
    fld = fld + 1.2 * (z - hi[2]) / max(hi[2] - lo[2], 1.0)  # apical predominance
    lab = cv.lab[sl]
    hu = cv.hu[sl]
    for lid, name in _LOBES.items():
        rngf = upper if "upper" in name else other
        if rngf is None:
            continue
        m = lab == lid
        if m.sum() < 20:
            continue
        target = rng.uniform(*rngf)
        thr = np.quantile(fld[m], 1.0 - target)
        em = m & (fld > thr)
        hu[em] = _EMPHYSEMA_HU - 10.0 * np.clip(fld[em] - thr, 0, 2)
        add(_entry("emphysema", name, name.split("_")[-1], location="centrilobular, upper lobe predominant",
                   severity=sev), (sl, em), f"laa:{lid}")


def _effusion(cv: Canvas, a: Anatomy, body: BodyModel, f: dict, add) -> None:
    """A dependent (posterior) fluid crescent in one hemithorax with compressive atelectasis above it."""
    g, side = cv.grid, f["side"]
    lobes = [i for i, n in _LOBES.items() if n.endswith(side)]
    idx = np.argwhere(np.isin(cv.lab, lobes))
    if not len(idx):
        return
    sl = tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(idx.min(0), idx.max(0)))
    x, y, z = g.points(sl)
    cav = body.cavity_depth(g, sl) - 8.0
    zd = diaphragm_z(a, x, y)
    D = f["size"]
    # Thickest at the posterior costophrenic recess, tapering up the posterior gutter.
    height = 70.0 + 3.0 * D
    taper = np.clip(1.0 - (z - a.diaphragm[0]) / height, 0.0, 1.0) ** 0.5
    post = np.clip((y - (-10.0)) / 90.0, 0.0, 1.0) ** 0.8
    sxy = float(g.spacing[0])
    in_lung = np.isin(cv.lab[sl], lobes)

    def crescent(gain: float):
        depth = gain * D * taper * post
        return depth, profile(cav - depth, sxy) * (depth > 0.5) * (z > zd - 2)

    # The cavity's curve and the diaphragm leave the fluid thinner than the drawn depth D: raise the crescent
    # until its measured depth (as in the report) is D, so that truth, report and pixels agree.
    gain = 1.0
    for _ in range(4):
        depth, fl = crescent(gain)
        got = _axial_depth(fl * in_lung, g)
        if got <= 0 or abs(got - D) <= 0.5 * sxy:
            break
        gain = float(np.clip(gain * D / got, 1.0, 3.0))
    used = cv.paint(sl, fl, a.hu["fluid"] + 3.0, 0, only=lobes)
    band = np.clip(profile(cav - depth - 9.0, sxy) - fl, 0, 1) * 0.75
    cv.paint(sl, band, -250.0, None, only=lobes)
    m = used >= 0.99
    size = round(_axial_depth(used, g)) or D
    add(_entry("pleural_effusion", f"lung_lower_lobe_{side}", side, size, "dependent", f["severity"]), (sl, m))


def _axial_depth(frac: np.ndarray, g: Grid) -> float:
    """Maximal depth (mm) of a fluid layer on an axial image: twice its largest in-plane inscribed radius."""
    fluid = frac >= 0.5
    if not fluid.any():
        return 0.0
    from scipy import ndimage as ndi

    sx, sy = float(g.spacing[0]), float(g.spacing[1])
    padded = np.pad(fluid, ((1, 1), (1, 1), (0, 0)))
    best = max(float(ndi.distance_transform_edt(padded[:, :, k], sampling=(sx, sy)).max())
               for k in np.flatnonzero(fluid.any(axis=(0, 1))))
    # The distance runs to the nearest voxel centre outside: half a voxel more than the layer's half depth.
    return 2.0 * best - 0.5 * min(sx, sy)


def _plaques(cv: Canvas, a: Anatomy, shapes: dict, f: dict, rng: np.random.Generator, add) -> None:
    sh: Shape = shapes.get("aorta")
    if sh is None:
        return
    n = {"mild": rng.integers(3, 6), "moderate": rng.integers(6, 11), "severe": rng.integers(11, 18)}[f["severity"]]
    z = cv.grid.points(sh.sl)[2]
    ang = np.arctan2(sh.extra["off"][1], sh.extra["off"][0])
    shell = np.clip(sh.frac() - sh.frac(2.2), 0, 1)
    total = np.zeros(shell.shape, dtype=np.float32)
    top = 200.0 if f["severity"] == "severe" else 20.0
    bif = a.organs["aorta"]["bifurcation"]
    for _ in range(int(n)):
        z0 = rng.uniform(bif + 5, top)
        a0, w = rng.uniform(-np.pi, np.pi), rng.uniform(0.8, 2.0)
        da = np.angle(np.exp(1j * (ang - a0)))
        m = (np.abs(da) < w / 2) & (z > z0) & (z < z0 + rng.uniform(8, 25))
        total = np.maximum(total, shell * m)
    used = cv.paint(sh.sl, total, rng.uniform(500, 1000), ID["aorta"], only=[ID["aorta"], 0])
    densest = np.unravel_index(int(np.argmax(used)), used.shape)
    center = cv.grid.to_lps([densest[ax] + sh.sl[ax].start for ax in range(3)])
    add(_entry("aortic_calcification", "aorta", location="abdominal aorta" if top < 100 else
               "thoracic and abdominal aorta", severity=f["severity"], count=int(n), center=center),
        (sh.sl, used >= 0.5), "max")


def _aneurysm(cv: Canvas, a: Anatomy, shapes: dict, f: dict, rng: np.random.Generator, add) -> None:
    sh: Shape = shapes.get("aorta")
    an = a.organs["aorta"]["aneurysm"]
    if sh is None or an is None:
        return
    r0 = a.organs["aorta"]["radius"]
    z = cv.grid.points(sh.sl)[2]
    R = sh.extra["rad"]
    sac = (np.abs(z - an["z"]) < an["length"] / 2) & (R > r0 + 3.0)
    core = None
    if an["thrombus"]:
        rl = r0  # the flow lumen keeps about its normal calibre; the rest of the sac is thrombus
        ecc = np.maximum(R - rl, 0) * 0.7  # the residual lumen lies posteriorly, thrombus in front
        ox, oy = sh.extra["off"][0], sh.extra["off"][1] - ecc
        lumen = profile(np.sqrt(ox ** 2 + oy ** 2) - rl, float(cv.grid.spacing[0]))
        th = np.clip(sh.frac(1.5) - lumen, 0, 1) * sac
        used = cv.paint(sh.sl, th, rng.uniform(35, 60), ID["aorta"], only=[ID["aorta"]])
        core = (sh.sl, used >= 0.99)  # voxels another organ kept (only=) were never thrombus
    pts = shapes["aorta_path"][0]
    p = pts[int(np.argmin(np.abs(pts[:, 2] - an["z"])))]  # the centreline at the sac's middle
    # A thrombus thinner than a voxel is not seen, so neither truth nor report mentions it.
    seen = core is not None and bool(core[1].any())
    add(_entry("aortic_aneurysm", "aorta", None, f["size"], "infrarenal", "with mural thrombus" if seen
               else None, center=p), core if seen else None)


def measure(r, cores: list) -> None:
    """Fill each truth entry's measured values (HU after noise, organ lengths) from the final arrays."""
    _ID = ID
    hu, lab, g = r.hu, r.labels, r.grid
    for i, core, kind in cores:
        e = r.findings[i]
        if core is not None:
            sl, m = core
            vals = hu[sl][m]
            if vals.size:
                e["hu"] = round(float(vals.max() if kind == "max" else vals.mean()), 1)
            if kind.startswith("laa:"):  # low-attenuation area of the whole lobe, as emphysema is quantified
                lobe = hu[lab == int(kind[4:])]
                e["laa_pct"] = round(100.0 * float((lobe < -950).mean()), 1) if lobe.size else None
            continue
        if kind.startswith("organ:"):
            m = lab == _ID[kind[6:]]
            e["hu"] = round(float(np.median(hu[m])), 1) if m.any() else None
        elif kind == "cc:liver":
            ks = np.flatnonzero((lab == _ID["liver"]).any(axis=(0, 1)))
            e["size_mm"] = float(round((ks.max() - ks.min() + 1) * g.spacing[2])) if ks.size else None
        elif kind.startswith("length:"):
            e["size_mm"] = float(round(principal_length(lab == _ID[kind[7:]], g)))
        elif kind.startswith("pelvis:"):
            pass
    return None

