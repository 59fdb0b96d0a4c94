"""encode_organs throughput of ctglip-tiny on one synthetic study: volumes/s, organs/s, channels_last_3d on vs off.

Uses the synthetic archive's 'default' preset when ctglip_sdk.synth provides generate_archive, else an ellipsoid
phantom of the same geometry (128 x 128 x 133 voxels, 3 x 3 x 5 mm). Medians over repeats, interleaving the
variants with the order alternating on each repeat (baseline first, then variant first) so that load from other
processes and whatever the first call of a repeat pays hit both alike. On CUDA the comparison is bf16 autocast vs
fp32. Each variant is timed twice: ``encode_organs`` end to end (preprocessing included, which is most of it on
CPU) and the network alone (``forward_features`` on the already prepared image), where the variants differ.
Usage: python benchmarks/bench_encode.py [--quick] [--json-out PATH] [--device cpu|cuda] [--threads N]
"""

from __future__ import annotations

import argparse
import atexit
import copy
import csv
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402 - first: it exports --threads before numpy (and torch) load

import numpy as np  # noqa: E402
import torch  # noqa: E402

import ctglip_sdk as cg  # noqa: E402
from ctglip_sdk.organs import label_map  # noqa: E402
from ctglip_sdk.volume import Segmentation, Volume  # noqa: E402

# (name, RAS centre mm relative to L1, semi-axes mm, HU) from docs of the synthetic anatomy (ct-facts.md);
# LPS x/y are negated to RAS.
_ORGANS = [
    ("liver", (80, 30, 60), (85, 65, 65), 60), ("spleen", (-95, -40, 40), (35, 22, 55), 50),
    ("kidney_right", (65, -45, -25), (30, 22, 55), 150), ("kidney_left", (-65, -45, 0), (30, 22, 55), 150),
    ("adrenal_gland_right", (35, -25, 45), (6, 4, 12), 20), ("adrenal_gland_left", (-35, -25, 35), (6, 4, 12), 20),
    ("pancreas", (-25, 12, 0), (55, 12, 12), 80), ("gallbladder", (55, 70, -10), (20, 20, 40), 10),
    ("aorta", (-15, 20, -30), (11, 11, 90), 180), ("inferior_vena_cava", (20, 15, -20), (12, 10, 100), 150),
    ("stomach", (-50, 40, 60), (40, 30, 45), 20), ("urinary_bladder", (0, 40, -270), (45, 35, 35), 10),
    ("heart_myocardium", (-20, 60, 180), (55, 45, 50), 40),
    ("lung_lower_lobe_right", (90, -20, 120), (60, 70, 60), -860),
    ("lung_lower_lobe_left", (-90, -20, 120), (60, 70, 60), -860),
    ("lung_upper_lobe_right", (90, 0, 230), (55, 60, 60), -860),
    ("lung_upper_lobe_left", (-90, 0, 230), (55, 60, 60), -860), ("vertebrae_L1", (0, 0, 0), (22, 16, 15), 200),
    ("vertebrae_L2", (0, 0, -35), (22, 16, 15), 200), ("vertebrae_L3", (0, 0, -70), (22, 16, 15), 200),
    ("small_bowel", (0, 75, -120), (80, 40, 60), 30), ("colon", (0, 65, -60), (110, 40, 40), -100),
]


def phantom(seed: int = 0):
    """Ellipsoid phantom with the 'default' preset's geometry."""
    rng = np.random.default_rng(seed)
    shape, spacing = (128, 128, 133), (3.0, 3.0, 5.0)
    origin = np.array([-shape[0] * 1.5, -shape[1] * 1.5, -330.0])
    aff = np.diag([*spacing, 1.0])
    aff[:3, 3] = origin
    axes = [origin[a] + spacing[a] * np.arange(shape[a], dtype=np.float32) for a in range(3)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    hu = np.full(shape, -1000.0, np.float32)
    hu[(x / 170) ** 2 + (y / 120) ** 2 < 1] = -90.0
    lab = np.zeros(shape, np.uint8)
    ids = {v: k for k, v in label_map("totalseg_v1").items()}
    for name, c, r, val in _ORGANS:
        m = ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2 < 1
        lab[m] = ids[name]
        hu[m] = val
    hu += rng.normal(0, 12, shape).astype(np.float32)
    return Volume(hu, aff, {"source": "phantom"}), Segmentation(lab, label_map("totalseg_v1"), aff), "phantom"


def synthetic_study():
    """One 'default'-preset study from the synthetic archive, or the phantom when synth is not available."""
    try:
        gen = getattr(cg.synth, "generate_archive")
        root = Path(tempfile.mkdtemp(prefix="bench-encode-"))
        atexit.register(shutil.rmtree, root, True)  # the one-study archive is not left in /tmp
        try:
            gen(root, n_patients=1, seed=0, fmt="nifti", preset="default")
        except TypeError:
            gen(root, n_patients=1, seed=0, fmt="nifti")
        row = next(csv.DictReader(open(root / "manifest.csv", newline="")))
        vol = cg.load_volume(root / row["image"])
        return vol, cg.load_segmentation(root / row["mask"], like=vol), "synth-default"
    except (AttributeError, ImportError, StopIteration, OSError, KeyError, cg.CTGlipError) as exc:
        print(f"synthetic archive unavailable ({type(exc).__name__}: {exc}); using the ellipsoid phantom",
              file=sys.stderr)
        return phantom()


def median_times(fns: Dict[str, Callable[[], Any]], repeats: int) -> Dict[str, float]:
    """Medians of :func:`common.interleaved_times` (one warm-up each, order alternating on each repeat)."""
    return {k: statistics.median(v) for k, v in C.interleaved_times(fns, repeats, warmup=1).items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="ctglip-tiny")
    args = ap.parse_args()
    C.set_threads(args.threads)
    repeats = 5 if args.quick else 15
    vol, seg, source = synthetic_study()
    model = cg.create(args.model, seed=0, device=args.device)
    n_organs = len(model.encode_organs(vol, seg).names)
    prep = model.prepare(vol, seg)

    # Two models with the same weights, one per variant: toggling formats between calls would re-pack weights.
    other = copy.deepcopy(model)

    def run(m: Any) -> Callable[[], None]:
        def fn() -> None:
            m.encode_organs(vol, seg)
            if args.device == "cuda":
                torch.cuda.synchronize()
        return fn

    x = prep.image[None].to(model.device)  # the prepared network input: the network part alone

    def net(m: Any) -> Callable[[], None]:
        def fn() -> None:
            with torch.inference_mode():
                m.forward_features(x)
            if args.device == "cuda":
                torch.cuda.synchronize()
        return fn

    if args.device == "cuda":
        model.cuda_bf16, other.cuda_bf16 = False, True
        base, alt = "fp32", "bf16"
    else:
        other.set_channels_last(True)
        base, alt = "contiguous", "channels_last_3d"
    med = median_times({base: run(model), alt: run(other)}, repeats)
    net_med = median_times({base: net(model), alt: net(other)}, repeats)
    prep_s = median_times({"prepare": lambda: model.prepare(vol, seg)}, repeats)["prepare"]
    result = {
        "benchmark": "encode_organs", "model": args.model, "device": args.device, "threads": args.threads,
        "study": source, "volume_shape": list(vol.shape), "spacing_mm": [round(s, 3) for s in vol.spacing],
        "organs": n_organs, "network_input": list(prep.image.shape), "feature_grid": list(prep.grid),
        "repeats": repeats, "median_s": {k: round(v, 4) for k, v in med.items()},
        "volumes_per_s": {k: round(1 / v, 2) for k, v in med.items()},
        "organs_per_s": {k: round(n_organs / v, 1) for k, v in med.items()},
        "prepare_median_s": round(prep_s, 4), "speedup": {f"{alt}_vs_{base}": round(med[base] / med[alt], 3)},
        "network_median_s": {k: round(v, 4) for k, v in net_med.items()},
        "network_speedup": {f"{alt}_vs_{base}": round(net_med[base] / net_med[alt], 3)},
        "order": "alternating", "blas_threads": C.blas_threads(),
        "torch": torch.__version__,
    }
    print(f"{args.model} on {args.device} ({args.threads} threads), {source} study {vol.shape}, {n_organs} organs; "
          f"network input {tuple(prep.image.shape)}, feature grid {prep.grid}")
    for k, v in med.items():
        print(f"  {k:>18}: {v * 1000:8.1f} ms/study  {1 / v:6.2f} volumes/s  {n_organs / v:8.1f} organs/s  "
              f"(network alone {net_med[k] * 1000:.1f} ms)")
    print(f"  preprocessing (stats, box, resampling, area weights): {prep_s * 1000:.1f} ms")
    print(f"  speed-up {alt} vs {base}: {med[base] / med[alt]:.2f}x end to end, "
          f"{net_med[base] / net_med[alt]:.2f}x for the network alone")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
