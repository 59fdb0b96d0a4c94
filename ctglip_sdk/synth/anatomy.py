"""Per-patient anatomy plan: demographics, contrast phase, tissue HU and organ geometry drawn from normal ranges."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import numpy as np

from ctglip_sdk.organs import V1

__all__ = ["Anatomy", "sample_anatomy", "ID", "vertebra_levels", "vertebral_body", "vertebral_bodies_near", "outline",
           "diaphragm_z"]

#: TotalSegmentator v1 class name -> label id.
ID: Dict[str, int] = {name: i for i, name in V1.items()}

# Body cross-section keypoints (z mm from L1 centre; lateral semi-axis, AP semi-axis, AP centre) for an
# average adult; scaled per patient. From pelvis (hips wide) through abdomen to the upper chest.
_OUTLINE = np.array([
    [-340, 168, 105, -6], [-250, 170, 110, -6], [-160, 162, 112, -10], [-60, 150, 114, -15], [0, 150, 114, -16],
    [80, 158, 114, -14], [180, 165, 112, -8], [260, 160, 104, -4], [340, 148, 94, 0]], dtype=np.float64)


# Spine AP course (z, y) in mm: the sacrum curves backwards, the lumbar spine forwards, the thoracic backwards.
_SPINE = np.array([[-340, 70], [-250, 55], [-200, 28], [-150, -8], [-90, -10], [0, 0], [100, 6], [200, 16],
                   [300, 30], [360, 36]], dtype=np.float64)


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _n(rng: np.random.Generator, mean: float, sd: float, lo: float, hi: float) -> float:
    return float(np.clip(rng.normal(mean, sd), lo, hi))


@dataclass
class Anatomy:
    """Everything drawn for one patient before rendering (mm in the LPS patient frame, HU per tissue).

    Diffuse findings edit this plan (organ size, attenuation, wall thickness) before it is rendered.
    """

    sex: str
    age: int
    contrast: bool
    hu: Dict[str, float]
    scale: float                       # body size factor
    ap: float                          # AP / lateral habitus factor
    fat_mm: float                      # subcutaneous fat thickness (abdomen)
    muscle_mm: float
    noise_sd: float                    # image noise at 5 mm slices
    shift: np.ndarray                  # global jitter of organ positions
    organs: Dict[str, dict] = field(default_factory=dict)
    diaphragm: Tuple[float, float, float] = (20.0, 90.0, 75.0)  # base z, right dome height, left dome height
    levels: Dict[str, Tuple[float, float]] = field(default_factory=dict)  # vertebra -> (z centre, height)
    curve: float = 1.0                 # strength of kyphosis / lordosis

    def spine_y(self, z):
        """AP position (mm) of the vertebral body centres at height z: lumbar lordosis, thoracic kyphosis."""
        y = np.interp(np.asarray(z) / self.scale, _SPINE[:, 0], _SPINE[:, 1]) * self.scale
        return y * self.curve


def vertebra_levels(scale: float) -> Dict[str, Tuple[float, float]]:
    """Centre z and body height (mm) of L5..T1 with L1 at z = 0 (lumbar ≈ 35 mm per level, thoracic ≈ 26)."""
    out: Dict[str, Tuple[float, float]] = {}
    for n in range(1, 6):  # L1 (z = 0) downwards
        out[f"L{n}"] = (-(n - 1) * 35.0 * scale, 26.0 * scale)
    z = 17.5 * scale
    for n in range(12, 0, -1):
        h = (17.0 + 0.5 * n) * scale
        z += (h + 6.0 * scale) / 2.0
        out[f"T{n}"] = (z, h)
        z += (h + 6.0 * scale) / 2.0
    return out


def vertebral_body(name: str, scale: float) -> Tuple[float, float]:
    """Lateral and AP semi-axes (mm) of a vertebral body: thoracic bodies widen caudally, lumbar ones are broad."""
    lumbar = name.startswith("L")
    n = int(name[1:])
    w = (24.0 if lumbar else 13.0 + 0.8 * n) * scale
    dpt = (17.0 if lumbar else 11.0 + 0.45 * n) * scale
    return w, dpt


def vertebral_bodies_near(a: Anatomy, z: float) -> List[Tuple[float, float, float]]:
    """The vertebral bodies whose centres bracket height z, as render_spine paints them: (y centre, lateral and
    AP semi-axes) in mm, each a z-aligned elliptic cylinder centred at x = 0.

    Both neighbours count, since either body (or the disc between them) may reach z.
    """
    names = list(a.levels)
    zc = np.array([a.levels[n][0] for n in names]) + a.shift[2] * 0.3  # the spine is shifted as render_spine does
    order = np.argsort(zc)
    i = int(np.searchsorted(zc[order], z))
    out = []
    for j in (i - 1, i):
        if 0 <= j < len(names):
            k = int(order[j])
            out.append((float(a.spine_y(zc[k])), *vertebral_body(names[k], a.scale)))
    return out


def outline(a: Anatomy, z: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Body cross-section at heights z: centre x, centre y, lateral and AP semi-axes (mm)."""
    zz = z / a.scale
    ax = np.interp(zz, _OUTLINE[:, 0], _OUTLINE[:, 1]) * a.scale
    ay = np.interp(zz, _OUTLINE[:, 0], _OUTLINE[:, 2]) * a.scale * a.ap
    cy = np.interp(zz, _OUTLINE[:, 0], _OUTLINE[:, 3]) * a.scale
    # Extra subcutaneous fat widens the abdomen and hips more than the chest.
    fat = a.fat_mm * np.interp(zz, [-340, -150, 0, 120, 340], [1.0, 1.1, 1.0, 0.7, 0.5])
    return np.zeros_like(ax), cy - 0.3 * fat, ax + fat, ay + fat


def diaphragm_z(a: Anatomy, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Height of the diaphragm surface: two domes (right higher) falling to the posterior recesses."""
    base, right, left = a.diaphragm
    xs, ys = 62.0 * a.scale, -10.0 * a.scale
    sx, sy = 55.0 * a.scale, 75.0 * a.scale
    gy = np.exp(-((y - ys) ** 2) / (2 * sy * sy))
    return base + gy * (right * np.exp(-((x + xs) ** 2) / (2 * sx * sx)) + left * np.exp(-((x - xs) ** 2) / (2 * sx * sx)))


def _hu_table(rng: np.random.Generator, contrast: bool, age: int, sex: str) -> Dict[str, float]:
    """Tissue attenuation for one patient and phase (ct-facts.md ranges; '≈' values are working estimates)."""
    h: Dict[str, float] = {}
    h["fat"] = _u(rng, -110, -90)
    h["lung"] = _u(rng, -895, -860)
    h["fluid"] = _u(rng, 3, 15)           # bile, urine, CSF, effusion, simple cysts
    h["bile"] = _u(rng, 2, 16)
    h["urine"] = _u(rng, 2, 14)
    h["air"] = -1000.0
    h["skin"] = _u(rng, 30, 60)
    # Cancellous bone density falls ≈ 2.5 HU/year after 30 (faster in women after 50).
    dens = 226.0 - 2.5 * max(age - 30, 0) - (1.0 * max(age - 50, 0) if sex == "F" else 0.0)
    h["cancellous"] = float(np.clip(dens + rng.normal(0, 12), 70, 260))
    h["cortical"] = _u(rng, 800, 1300) - 2.0 * max(age - 50, 0)
    h["disc"] = _u(rng, 70, 100)
    h["cartilage"] = _u(rng, 90, 160)
    h["csf"] = _u(rng, 4, 15)
    if not contrast:
        h["spleen"] = _u(rng, 46, 54)
        h["liver"] = float(np.clip(h["spleen"] + _u(rng, 7, 11), 55, 65))
        h["kidney"] = _u(rng, 31, 39)
        h["medulla"] = h["kidney"] - _u(rng, 0, 4)
        h["pancreas"] = _u(rng, 41, 49)
        h["blood"] = _u(rng, 37, 48)
        h["ivc"] = h["blood"] + _u(rng, -2, 2)
        h["portal"] = h["blood"] + _u(rng, -2, 2)
        h["pulm_art"] = h["blood"]
        h["myocardium"] = h["blood"] + _u(rng, 2, 8)
        h["muscle"] = _u(rng, 42, 53)
        h["adrenal"] = _u(rng, 25, 38)          # ≈
        h["bowel_wall"] = _u(rng, 35, 45)       # ≈
        h["mucosa"] = h["bowel_wall"]
        h["uterus"] = _u(rng, 35, 50)           # ≈
    else:
        h["liver"] = _u(rng, 102, 118)
        h["spleen"] = _u(rng, 112, 128)
        h["kidney"] = _u(rng, 155, 195)
        h["medulla"] = h["kidney"] - _u(rng, 20, 40)
        h["pancreas"] = _u(rng, 75, 105)
        h["blood"] = _u(rng, 155, 195)          # aorta and heart
        h["ivc"] = _u(rng, 150, 185)
        h["portal"] = _u(rng, 162, 198)
        h["pulm_art"] = h["blood"] + _u(rng, -10, 5)
        h["myocardium"] = _u(rng, 95, 125)      # ≈
        h["muscle"] = _u(rng, 57, 68)
        h["adrenal"] = _u(rng, 60, 85)          # ≈
        h["bowel_wall"] = _u(rng, 80, 110)      # ≈
        h["mucosa"] = h["bowel_wall"] + 15
        h["uterus"] = _u(rng, 80, 110)          # ≈
    h["prostate"] = h["muscle"] - 5
    return h


def sample_anatomy(rng: np.random.Generator, sex: str | None = None, age: int | None = None,
                   contrast: bool | None = None) -> Anatomy:
    """Draw demographics, phase, tissue HU and the geometry of every organ for one patient.

    Example:
        >>> a = sample_anatomy(np.random.default_rng(0))
        >>> 45 <= a.hu["liver"] <= 120
        True
    """
    sex = sex or ("F" if rng.random() < 0.5 else "M")
    age = int(age if age is not None else np.clip(round(rng.normal(60, 14)), 20, 92))
    contrast = bool(rng.random() < 0.6) if contrast is None else bool(contrast)
    male = sex == "M"
    scale = _n(rng, 1.03 if male else 0.95, 0.035, 0.88, 1.1)
    a = Anatomy(
        sex=sex, age=age, contrast=contrast, hu=_hu_table(rng, contrast, age, sex), scale=scale,
        ap=_n(rng, 1.0, 0.06, 0.85, 1.15), fat_mm=_u(rng, 6, 28) + (8.0 if not male else 0.0),
        muscle_mm=_u(rng, 6, 11) * (1.0 if male else 0.8) * (1.0 - 0.004 * max(age - 50, 0)),
        noise_sd=_u(rng, 10, 15), shift=rng.normal(0, 4, 3),
    )
    s = scale
    a.diaphragm = (_u(rng, 12, 28) * s, _u(rng, 80, 98) * s, _u(rng, 65, 82) * s)
    a.levels = vertebra_levels(s)
    a.curve = _n(rng, 1.0, 0.2, 0.6, 1.4)
    o = a.organs
    sh = a.shift

    def jit(p, sd=5.0):
        return (np.asarray(p, dtype=np.float64) * s + sh + rng.normal(0, sd, 3)).tolist()

    # Liver: target volume 1.4 L (F) / 1.7 L (M), smaller with age; two overlapping lobes, top cut by the diaphragm.
    o["liver"] = {"center": jit([-85, -22, 58]), "volume_ml": _n(rng, 1700 if male else 1400, 150, 1100, 2100)
                  * (1.0 - 0.003 * max(age - 60, 0)), "left": jit([-12, -55, 68], 6), "amp": 0.09}
    o["spleen"] = {"center": jit([80, 33, 24]), "length": _n(rng, 105, 8, 90, 120),
                   "yaw": _u(rng, -65, -45), "pitch": _u(rng, 15, 30), "amp": 0.05}
    for side, sign, z in (("right", -1, -25), ("left", 1, -6)):
        kid_len = _n(rng, 110 if male else 106, 6, 100, 120) * (1.0 - 0.002 * max(age - 60, 0))
        o[f"kidney_{side}"] = {"center": jit([sign * 62, 47, z]), "length": kid_len, "cortex": _u(rng, 6, 9),
                               "tilt": _u(rng, 10, 20), "yaw": _u(rng, 20, 35), "pelvis": _u(rng, 4, 8),
                               "amp": 0.05}
        o[f"adrenal_gland_{side}"] = {"center": jit([sign * 35, 25, 45 if side == "right" else 35], 3),
                                      "radius": _u(rng, 3.3, 4.0)}
    o["pancreas"] = {"points": [jit(p, 3) for p in ([-24, -52, -36], [-32, -58, -18], [-5, -68, -8], [35, -56, 6],
                                                   [78, 0, 22])],
                     "radii": np.array([12, 16.5, 14, 13.5, 11]) * _u(rng, 0.85, 1.1) * (1 - 0.003 * max(age - 50, 0)),
                     "duct": _u(rng, 1.0, 1.7), "fatty": 0.0}
    o["gallbladder"] = {"center": jit([-55, -68, -8]), "semi": [_u(rng, 13, 19), _u(rng, 13, 19), _u(rng, 30, 42)],
                        "wall": _u(rng, 1.5, 2.5), "present": rng.random() > 0.04}
    o["stomach"] = {"points": [jit(p, 4) for p in ([40, 5, 92], [55, 0, 75], [68, -35, 48], [55, -70, 22],
                                                   [20, -85, 5], [-12, -70, 0])],
                    "radii": np.array([16, 36, 32, 27, 20, 13]) * _u(rng, 0.8, 1.1), "gas": _u(rng, 0.2, 0.8),
                    "content": _u(rng, 5, 35)}
    bladder_ml = _u(rng, 100, 500)
    b = (bladder_ml * 3 / (4 * np.pi * 1.2 * 0.85)) ** (1 / 3) * 10
    o["urinary_bladder"] = {"center": jit([0, -42, -250]), "semi": [1.2 * b, b, 0.85 * b], "wall": _u(rng, 1.5, 2.5)}
    o["heart"] = {"center": jit([26, -50, 168]), "semi": [_u(rng, 62, 70), _u(rng, 46, 52), _u(rng, 42, 48)],
                  "yaw": _u(rng, 30, 45), "pitch": _u(rng, -30, -15)}
    o["aorta"] = {"radius": _u(rng, 9.5, 11.5) * (1 + 0.003 * max(age - 40, 0)), "x": _u(rng, 10, 20) * s,
                  "y": _u(rng, -34, -26) * s, "bifurcation": _u(rng, -120, -100) * s, "aneurysm": None,
                  "plaques": []}
    o["ivc"] = {"radius": _u(rng, 9, 12), "x": _u(rng, -30, -22) * s}
    o["bowel"] = {"seed": int(rng.integers(2 ** 31)), "gas": _u(rng, 0.05, 0.5), "stool": _u(rng, 0.2, 0.9)}
    o["lung"] = {"apex": _u(rng, 285, 305) * s, "mediastinum": _u(rng, 22, 30) * s}
    o["breast"] = {"size": _u(rng, 20, 55) if not male else 0.0}
    return a
