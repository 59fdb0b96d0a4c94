"""How visible is a focal finding in the pixels? A location-known and a scan observer on a synthetic archive.

The zero-shot bar "no finding below AUC 0.85" (issue 6) is missed on small pancreatic cysts and lung nodules.
This script asks what simple observers that see the pixels can reach on the same archive, without any model:

- **location known** (an upper reference no detector reaches): the organ's HU residual (HU minus the organ's
  median) averaged over a ball at the lesion's truth centre, with the radius closest to 0.4 x its diameter,
  against balls of the same radius at random spots of the organ in studies without the finding (same phase);
- **scan** (location unknown): per study, the darkest (``--polarity bright``: brightest) ball anywhere in the
  organ that lies at least 60 % inside it, for each radius.

Only the organ's voxels count in a ball, and with ``--floor-hu`` voxels below it are left out too (for the
pancreas -30 HU: the mask's edge voxels that share gas or fat with a neighbour would otherwise be the darkest
spots of every pancreas). AUC is reported overall, per contrast phase and per lesion size.

Usage: python benchmarks/detectability.py --archive data/oracle --finding pancreatic_cyst --organs pancreas \
       --floor-hu -30 [--json out.json]
       python benchmarks/detectability.py --archive A --finding lung_nodule --polarity bright \
       --organs lung_upper_lobe_left,lung_lower_lobe_left,lung_upper_lobe_right,lung_middle_lobe_right,lung_lower_lobe_right
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage as ndi
from scipy.signal import fftconvolve
from scipy.stats import rankdata
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json  # noqa: E402

import ctglip_sdk as cg  # noqa: E402

SIZE_BINS = ((0, 6), (6, 10), (10, 20), (20, 1000))
MIN_INSIDE = 0.6  # the generator places a pancreatic cyst with >= 60 % of its sphere in the organ


def auc(pos: Sequence[float], neg: Sequence[float]) -> Optional[float]:
    """Mann-Whitney AUC (ties count half); None when a side is empty."""
    if not len(pos) or not len(neg):
        return None
    x = np.r_[np.asarray(pos, float), np.asarray(neg, float)]
    r = rankdata(x)
    n1, n0 = len(pos), len(neg)
    return float((r[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def ball(radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """A ball kernel of ``radius_mm`` on an anisotropic grid (at least its centre voxel)."""
    h = np.ceil(radius_mm / spacing).astype(int)
    g = np.mgrid[tuple(slice(-n, n + 1) for n in h)].astype(float)
    d2 = sum((g[a] * spacing[a]) ** 2 for a in range(3))
    k = (d2 <= radius_mm ** 2).astype(np.float32)
    k[tuple(h)] = 1.0
    return k


def study_maps(hu: np.ndarray, organ: np.ndarray, spacing: np.ndarray, radii: Sequence[float],
               floor_hu: Optional[float]) -> Tuple[Tuple[slice, ...], Dict[float, Tuple[np.ndarray, np.ndarray]]]:
    """Per radius: the ball-mean residual and the ball's fraction inside the organ, on the organ's box."""
    box = ndi.find_objects(organ.astype(np.int8))[0]
    pad = int(np.ceil(max(radii) / spacing.min())) + 1
    box = tuple(slice(max(s.start - pad, 0), min(s.stop + pad, n)) for s, n in zip(box, organ.shape))
    h, m = hu[box].astype(np.float32), organ[box]
    med = float(np.median(hu[organ]))
    use = m & (h > floor_hu) if floor_hu is not None else m
    w = use.astype(np.float32)
    out = {}
    for r in radii:
        k = ball(r, spacing)
        num = fftconvolve((h - med) * w, k, "same")
        den = fftconvolve(w, k, "same")
        inside = fftconvolve(m.astype(np.float32), k, "same") / k.sum()
        out[r] = (num / np.maximum(den, 1e-3), np.where(m & (den > 0.5), inside, 0.0))
    return box, out


def run(archive: Path, finding: str, organs: Sequence[str], polarity: str, radii: Sequence[float],
        floor_hu: Optional[float], spots: int, seed: int, limit: Optional[int]) -> Dict[str, Any]:
    sign = -1.0 if polarity == "dark" else 1.0  # scores: larger = more lesion-like
    rng = np.random.default_rng(seed)
    rows = list(csv.DictReader(open(archive / "manifest.csv", newline="")))
    truth = {t["study_uid"]: t for t in map(json.loads, open(archive / "truth.jsonl"))}
    rows = rows[:limit] if limit else rows
    known_pos: List[Tuple[float, str, float]] = []            # (size, phase, score)
    known_neg: Dict[Tuple[float, str], List[float]] = {}       # (radius, phase) -> scores
    scans: List[Tuple[bool, float, str, Dict[float, float]]] = []
    for row in tqdm(rows, desc="studies", unit="study"):
        vol = cg.load_volume(archive / row["image"])
        seg = cg.load_segmentation(archive / row["mask"], like=vol)
        ids = [i for i, name in seg.labels.items() if name in organs]
        organ = np.isin(seg.array, ids)
        if organ.sum() < 20:
            continue
        sp = np.asarray(vol.spacing, float)
        box, maps = study_maps(vol.array, organ, sp, radii, floor_hu)
        lesions = [f for f in truth[row["study_uid"]]["findings"] if f["finding"] == finding]
        phase = row.get("contrast", "")
        scan = {}
        for r, (mean, inside) in maps.items():
            ok = inside >= MIN_INSIDE
            scan[r] = float((sign * mean[ok]).max()) if ok.any() else float("-inf")
        scans.append((bool(lesions), max((f["size_mm"] or 0.0 for f in lesions), default=0.0), phase, scan))
        inv = np.linalg.inv(vol.affine)
        for f in lesions:
            if not f.get("center_ras_mm"):
                continue
            ijk = np.round(inv @ np.r_[f["center_ras_mm"], 1.0])[:3].astype(int) - [s.start for s in box]
            r = min(radii, key=lambda x: abs(x - 0.4 * float(f["size_mm"] or 0.0)))
            mean = maps[r][0]
            if all(0 <= v < n for v, n in zip(ijk, mean.shape)):
                known_pos.append((float(f["size_mm"] or 0.0), phase, float(sign * mean[tuple(ijk)])))
        if not lesions:
            for r, (mean, inside) in maps.items():
                cand = np.argwhere(inside >= MIN_INSIDE)
                for c in cand[rng.choice(len(cand), min(spots, len(cand)), replace=False)]:
                    known_neg.setdefault((r, phase), []).append(float(sign * mean[tuple(c)]))
    return summarize(finding, known_pos, known_neg, scans, radii, rng)


def summarize(finding: str, known_pos: List[Tuple[float, str, float]], known_neg: Dict[Tuple[float, str], List[float]],
              scans: List[Tuple[bool, float, str, Dict[float, float]]], radii: Sequence[float],
              rng: np.random.Generator) -> Dict[str, Any]:
    """AUCs overall, per phase and per size bin, for the location-known and the scan observers."""
    phases = sorted({p for _, _, p, _ in scans})

    def known(sel) -> Optional[float]:
        pos, neg = [], []
        for size, phase, s in known_pos:
            if sel(size, phase):
                pos.append(s)
                r = min(radii, key=lambda x: abs(x - 0.4 * size))
                pool = known_neg.get((r, phase), [])
                neg.extend(rng.choice(pool, min(20, len(pool)), replace=False) if pool else [])
        return auc(pos, neg)

    def scan(r: float, sel) -> Optional[float]:
        pos = [s[r] for has, size, phase, s in scans if has and sel(size, phase)]
        neg = [s[r] for has, size, phase, s in scans if not has and sel(None, phase)]  # no size: every negative
        return auc(pos, neg)

    def table(fn) -> Dict[str, Any]:
        out: Dict[str, Any] = {"all": fn(lambda s, p: True)}
        out.update({f"phase:{ph}": fn(lambda s, p, ph=ph: p == ph) for ph in phases})
        out.update({f"size:{lo}-{hi}": fn(lambda s, p, lo=lo, hi=hi: s is None or lo <= s < hi) for lo, hi in SIZE_BINS})
        return out

    npos = sum(1 for has, *_ in scans if has)
    return {"finding": finding, "studies": len(scans), "positives": npos, "negatives": len(scans) - npos,
            "lesions_with_centre": len(known_pos),
            "location_known": table(known),
            "scan": {str(r): table(lambda sel, r=r: scan(r, sel)) for r in radii}}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archive", type=Path, required=True)
    ap.add_argument("--finding", required=True)
    ap.add_argument("--organs", required=True, help="comma-separated TotalSegmentator v1 names")
    ap.add_argument("--polarity", choices=("dark", "bright"), default="dark")
    ap.add_argument("--radii", type=float, nargs="+", default=[2.5, 4.0, 6.0, 9.0])
    ap.add_argument("--floor-hu", type=float, default=None, help="leave out voxels below this HU")
    ap.add_argument("--spots", type=int, default=10, help="random spots per negative study")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="first N studies only")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    res = run(a.archive, a.finding, a.organs.split(","), a.polarity, a.radii, a.floor_hu, a.spots, a.seed, a.limit)
    res.update(archive=str(a.archive), polarity=a.polarity, floor_hu=a.floor_hu)
    fmt = lambda v: "  -  " if v is None else f"{v:.3f}"  # noqa: E731
    cols = list(res["location_known"])
    print(f"{res['finding']}: {res['positives']} positive / {res['negatives']} negative studies")
    print(f"{'observer':<22}" + "".join(f"{c:>20}" for c in cols))
    print(f"{'location known':<22}" + "".join(f"{fmt(res['location_known'][c]):>20}" for c in cols))
    for r, t in res["scan"].items():
        print(f"{'scan, ball ' + r + ' mm':<22}" + "".join(f"{fmt(t[c]):>20}" for c in cols))
    if a.json:
        write_json(a.json, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
