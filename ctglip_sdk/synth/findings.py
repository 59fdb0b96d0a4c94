"""The abnormality catalogue: finding keys, default prevalence, and per-patient sampling of sizes and severities."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional

import numpy as np

from ctglip_sdk.errors import ConfigError
from ctglip_sdk.synth.anatomy import Anatomy
from ctglip_sdk.synth.presets import Preset

__all__ = ["FindingSpec", "FINDINGS", "DEFAULT_PREVALENCE", "sample_findings", "apply_to_anatomy"]


@dataclass(frozen=True)
class FindingSpec:
    """One finding of the shared vocabulary: key, organ group, display name, default prevalence."""

    key: str
    organ: str
    name: str
    prevalence: float
    age_related: bool = False


_SPECS = [
    FindingSpec("liver_cyst", "liver", "hepatic cyst", 0.22, True),
    FindingSpec("hepatic_steatosis", "liver", "hepatic steatosis", 0.2),
    FindingSpec("hepatomegaly", "liver", "hepatomegaly", 0.12),
    FindingSpec("liver_calcification", "liver", "hepatic calcification", 0.15),
    FindingSpec("liver_mass", "liver", "hepatic mass", 0.12, True),
    FindingSpec("gallstones", "gallbladder", "cholelithiasis", 0.18, True),
    FindingSpec("gallbladder_wall_thickening", "gallbladder", "gallbladder wall thickening", 0.12),
    FindingSpec("renal_cyst", "kidney", "renal cyst", 0.22, True),
    FindingSpec("renal_stone", "kidney", "nephrolithiasis", 0.18),
    FindingSpec("hydronephrosis", "kidney", "hydronephrosis", 0.12),
    FindingSpec("renal_atrophy", "kidney", "renal atrophy", 0.12, True),
    FindingSpec("pancreatic_atrophy", "pancreas", "pancreatic atrophy", 0.12, True),
    FindingSpec("pancreatic_cyst", "pancreas", "pancreatic cyst", 0.12, True),
    FindingSpec("pancreatic_duct_dilation", "pancreas", "pancreatic duct dilation", 0.12),
    FindingSpec("splenomegaly", "spleen", "splenomegaly", 0.15),
    FindingSpec("splenic_calcification", "spleen", "splenic calcification", 0.15),
    FindingSpec("lung_nodule", "lung", "pulmonary nodule", 0.22, True),
    FindingSpec("emphysema", "lung", "emphysema", 0.18, True),
    FindingSpec("pleural_effusion", "lung", "pleural effusion", 0.15),
    FindingSpec("adrenal_nodule", "adrenal_gland", "adrenal nodule", 0.15, True),
    FindingSpec("aortic_calcification", "aorta", "aortic calcification", 0.25, True),
    FindingSpec("aortic_aneurysm", "aorta", "abdominal aortic aneurysm", 0.1, True),
    FindingSpec("bladder_wall_thickening", "urinary_bladder", "bladder wall thickening", 0.12),
]

#: Finding key -> spec, in the order reports list them.
FINDINGS: Dict[str, FindingSpec] = {s.key: s for s in _SPECS}
#: Default probability of each finding per patient (age-related ones are scaled by age, see sample_findings).
DEFAULT_PREVALENCE: Dict[str, float] = {s.key: s.prevalence for s in _SPECS}


def _lognormal(rng: np.random.Generator, median: float, lo: float, hi: float, sigma: float = 0.55) -> float:
    return float(np.clip(median * np.exp(rng.normal(0, sigma)), lo, hi))


def _size(rng: np.random.Generator, p: Preset, median: float, lo: float, hi: float) -> float:
    # Sizes below what the grid resolves are raised to the preset's floor (the truth records what was drawn).
    return round(max(_lognormal(rng, median, lo, hi), p.min_lesion_mm, lo), 0)


def _sides(rng: np.random.Generator, bilateral: float) -> List[str]:
    if rng.random() < bilateral:
        return ["right", "left"]
    return ["right" if rng.random() < 0.5 else "left"]


def _severity(rng: np.random.Generator, weights=(0.5, 0.35, 0.15)) -> str:
    return str(rng.choice(["mild", "moderate", "severe"], p=list(weights)))


def sample_findings(rng: np.random.Generator, a: Anatomy, p: Preset,
                    prevalence: Optional[Mapping[str, float]] = None,
                    force: Optional[Iterable[str]] = None) -> List[dict]:
    """Draw the findings of one patient with their sizes, sides and severities.

    Args:
        rng: the patient's findings generator.
        a: the anatomy (age scales age-related default prevalences: ×0.4 at 30 up to ×1.6 at 80+).
        p: the preset (sets the smallest lesion size).
        prevalence: key -> probability, overriding the defaults for the keys it names (used as given).
        force: exactly these findings instead of random draws (tests, montage).

    Example:
        >>> from ctglip_sdk.synth.anatomy import sample_anatomy
        >>> from ctglip_sdk.synth.presets import PRESETS
        >>> r = np.random.default_rng(0)
        >>> plan = sample_findings(r, sample_anatomy(r), PRESETS["small"], force=["splenomegaly"])
        >>> [f["key"] for f in plan], 142 <= plan[0]["length"] <= 195
        (['splenomegaly'], True)
    """
    prevalence = dict(prevalence or {})
    unknown = sorted(set(prevalence) - set(FINDINGS))
    if unknown:
        raise ConfigError(f"unknown finding keys in prevalence: {unknown}; known: {sorted(FINDINGS)}")
    bad = {k: v for k, v in prevalence.items() if not 0.0 <= float(v) <= 1.0}
    if bad:
        raise ConfigError(f"prevalence must be probabilities in [0, 1], got {bad}")
    draws = {k: rng.random() for k in FINDINGS}  # one draw per key whatever the settings: stable streams
    if force is not None:
        forced = list(force)
        unknown = sorted(set(forced) - set(FINDINGS))
        if unknown:
            raise ConfigError(f"unknown finding keys: {unknown}; known: {sorted(FINDINGS)}")
        keys = [k for k in FINDINGS if k in forced]
    else:
        age_factor = 0.4 + 1.2 * float(np.clip((a.age - 30) / 50.0, 0, 1))
        keys = []
        for k, spec in FINDINGS.items():
            if k in prevalence:
                prob = float(prevalence[k])
            else:
                prob = min(spec.prevalence * (age_factor if spec.age_related else 1.0), 0.95)
            if draws[k] < prob:
                keys.append(k)
    return [f for k in keys for f in _draw(rng, k, a, p)]


def _draw(rng: np.random.Generator, key: str, a: Anatomy, p: Preset) -> List[dict]:
    """Parameters of one finding (a list: bilateral findings give one item per side)."""
    px = p.pixel_mm
    if key == "liver_cyst":
        return [{"key": key, "size": _size(rng, p, 13, 3, 50), "count": int(rng.choice([1, 1, 1, 2, 3]))}]
    if key == "hepatic_steatosis":
        return [{"key": key, "severity": _severity(rng)}]
    if key == "hepatomegaly":
        return [{"key": key, "length": float(rng.uniform(168, 205))}]
    if key == "liver_calcification":
        return [{"key": key, "size": _size(rng, p, 5, 2, 10), "count": int(rng.choice([1, 1, 2]))}]
    if key == "liver_mass":
        return [{"key": key, "size": _size(rng, p, 32, 10, 80)}]
    if key == "gallstones":
        return [{"key": key, "size": _size(rng, p, 10, 2, 30), "count": int(rng.choice([1, 1, 2, 3, 5, 8])),
                 "kind": str(rng.choice(["calcified", "calcified", "mixed", "rim"]))}]
    if key == "gallbladder_wall_thickening":
        return [{"key": key, "size": round(float(max(rng.uniform(4.5, 10), 1.3 * px)), 0),
                 "fluid": bool(rng.random() < 0.3)}]
    if key == "renal_cyst":
        return [{"key": key, "side": s, "size": _size(rng, p, 16, 5, 50),
                 "pole": str(rng.choice(["upper", "interpolar", "lower"]))} for s in _sides(rng, 0.2)]
    if key == "renal_stone":
        return [{"key": key, "side": s, "size": _size(rng, p, 5, 2, 15),
                 "pole": str(rng.choice(["upper", "interpolar", "lower", "lower"]))} for s in _sides(rng, 0.2)]
    if key == "hydronephrosis":
        sev = _severity(rng, (0.5, 0.35, 0.15))
        lo, hi = {"mild": (12, 15), "moderate": (16, 24), "severe": (26, 36)}[sev]
        return [{"key": key, "side": s, "severity": sev, "size": round(float(rng.uniform(lo, hi)), 0)}
                for s in _sides(rng, 0.12)]
    if key == "renal_atrophy":
        return [{"key": key, "side": _sides(rng, 0.0)[0], "length": float(rng.uniform(70, 86))}]
    if key == "pancreatic_atrophy":
        return [{"key": key, "severity": _severity(rng, (0.45, 0.4, 0.15))}]
    if key == "pancreatic_cyst":
        return [{"key": key, "size": _size(rng, p, 13, 5, 30), "part": str(rng.choice(["head", "body", "tail"]))}]
    if key == "pancreatic_duct_dilation":
        return [{"key": key, "size": round(float(max(rng.uniform(6, 10), 1.5 * px)), 0)}]
    if key == "splenomegaly":
        return [{"key": key, "length": float(rng.uniform(142, 195))}]
    if key == "splenic_calcification":
        return [{"key": key, "size": _size(rng, p, 3, 1, 5), "count": int(rng.integers(2, 9))}]
    if key == "lung_nodule":
        n = 1 if rng.random() < 0.8 else 2
        return [{"key": key, "size": _size(rng, p, 7, 3, 30), "calcified": bool(rng.random() < 0.15)}
                for _ in range(n)]
    if key == "emphysema":
        return [{"key": key, "severity": _severity(rng, (0.45, 0.4, 0.15))}]
    if key == "pleural_effusion":
        out = []
        for s in _sides(rng, 0.3):
            sev = str(rng.choice(["small", "small", "moderate", "large"]))
            lo, hi = {"small": (12, 25), "moderate": (26, 45), "large": (46, 70)}[sev]
            out.append({"key": key, "side": s, "severity": sev, "size": round(float(rng.uniform(lo, hi)), 0)})
        return out
    if key == "adrenal_nodule":
        return [{"key": key, "side": _sides(rng, 0.0)[0], "size": round(float(rng.uniform(10, 30)), 0)}]
    if key == "aortic_calcification":
        return [{"key": key, "severity": _severity(rng, (0.45, 0.35, 0.2))}]
    if key == "aortic_aneurysm":
        return [{"key": key, "size": round(_lognormal(rng, 38, 31, 65, 0.25), 0), "length": float(rng.uniform(50, 95)),
                 "thrombus": bool(rng.random() < 0.7)}]
    if key == "bladder_wall_thickening":
        return [{"key": key, "size": round(float(max(rng.uniform(5, 12), 1.5 * px)), 0)}]
    raise ConfigError(f"no renderer for finding {key!r}")  # pragma: no cover - the catalogue covers every key


def apply_to_anatomy(a: Anatomy, plan: List[dict], rng: np.random.Generator) -> None:
    """Change the organs themselves for diffuse findings (size, attenuation, walls) before rendering."""
    o, h = a.organs, a.hu
    for f in plan:
        k = f["key"]
        if k == "hepatic_steatosis":
            sev = f["severity"]
            if a.contrast:  # liver < spleen − 25 in the portal venous phase
                drop = {"mild": (32, 42), "moderate": (43, 58), "severe": (60, 80)}[sev]
                target = h["spleen"] - rng.uniform(*drop)
            else:  # liver < spleen − 10; < 40 HU moderate
                draws = {"mild": rng.uniform(13, 18), "moderate": rng.uniform(22, 34), "severe": rng.uniform(-5, 18)}
                target = draws[sev]  # all three drawn, as before, so the patient's later draws do not move
                if sev == "mild":
                    # Mild means 40–45 HU; a spleen under 51 HU leaves no room below spleen − 10, so it is
                    # raised (normal spleens are 40–60 HU unenhanced).
                    target = 40.5 + (draws["mild"] - 13.0) / 5.0 * 4.5
                    h["spleen"] = max(h["spleen"], target + 10.5 + (draws["mild"] - 13.0) / 5.0 * 4.0)
            o["liver"]["delta"] = float(target - h["liver"])
        elif k == "hepatomegaly":
            o["liver"]["cc_target"] = f["length"]
            o["liver"]["scale"] = 1.06
        elif k == "splenomegaly":
            o["spleen"]["length"] = f["length"]
            o["spleen"]["amp"] = 0.03
        elif k == "renal_atrophy":
            ko = o[f"kidney_{f['side']}"]
            ko.update(length=f["length"], cortex=float(rng.uniform(2.5, 4.0)), sinus=1.1, amp=0.03)
        elif k == "hydronephrosis":
            ko = o[f"kidney_{f['side']}"]
            ko.update(pelvis=f["size"], calyces=f["severity"] != "mild", sinus=max(ko.get("sinus", 1.0), 1.1))
        elif k == "pancreatic_atrophy":
            pc = o["pancreas"]
            pc["radii"] = pc["radii"] * {"mild": 0.7, "moderate": 0.6, "severe": 0.5}[f["severity"]]
            pc["fatty"] = {"mild": 0.35, "moderate": 0.5, "severe": 0.65}[f["severity"]]
        elif k == "pancreatic_duct_dilation":
            o["pancreas"]["duct"] = f["size"] / 2.0
            o["pancreas"]["radii"] = np.maximum(o["pancreas"]["radii"], f["size"] / 2.0 + 6.0)
        elif k in ("gallbladder_wall_thickening", "gallstones"):
            gb = o["gallbladder"]
            gb["present"] = True
            gb["semi"] = [max(gb["semi"][0], 16.0), max(gb["semi"][1], 16.0), max(gb["semi"][2], 34.0)]
            if k == "gallbladder_wall_thickening":
                gb["wall"] = f["size"]
                gb["fluid"] = f["fluid"]
        elif k == "bladder_wall_thickening":
            bl = o["urinary_bladder"]
            bl["wall"] = f["size"]
            bl["semi"] = [max(v, m) for v, m in zip(bl["semi"], (48.0, 40.0, 34.0))]
        elif k == "aortic_aneurysm":
            # Infrarenal: the sac starts below the renal arteries (z ≈ -20) and ends above the bifurcation.
            zc = min(float(rng.uniform(-90, -60)) * a.scale, -20.0 - f["length"] / 2)
            o["aorta"]["aneurysm"] = {"z": zc, "length": f["length"], "diameter": f["size"], "thrombus": f["thrombus"]}
            o["aorta"]["bifurcation"] = min(o["aorta"]["bifurcation"], zc - f["length"] / 2 - 10)
