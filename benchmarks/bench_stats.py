"""Per-organ stats cost with and without the extended focal descriptors, on one synthetic study per preset.

Times ``model.prepare`` (resampling plus every organ stat) of ctglip-tiny with ``preprocess.focal_extended`` off
(the baseline) and on, interleaved with the order alternating on each repeat (off first, then on first), so that
load from other processes and whatever the first call of a repeat pays hit both alike, and prints medians and
the ratio on/off. Usage: python benchmarks/bench_stats.py [--quick] [--presets default clinical] [--repeats 5]
[--threads N] [--json-out P]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402 - first: it exports --threads before numpy (and torch) load

import ctglip_sdk as cg  # noqa: E402


def _study(preset: str, seed: int, root: Path):
    """One generated study of a preset, loaded like a user's files (NIfTI volume and label mask)."""
    from ctglip_sdk.training.data import read_manifest

    cg.synth.generate_archive(root / preset, n_patients=1, seed=seed, preset=preset, fmt="nifti", progress=False,
                              overwrite=True)
    rec = read_manifest(root / preset)[0]
    vol = cg.load_volume(rec.image)
    return vol, cg.load_segmentation(rec.mask, like=vol)


def main() -> Dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["default", "clinical"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--quick", action="store_true",
                    help="the small preset, 2 repeats (benchmarks/run.py passes it; every bench_*.py takes it)")
    args = ap.parse_args()
    if args.quick:
        args.presets, args.repeats = ["small"], min(args.repeats, 2)
    C.set_threads(args.threads)
    base = cg.create("ctglip-tiny", overrides={"preprocess": {"focal_extended": False}}, seed=0)
    ext = cg.create("ctglip-tiny", overrides={"preprocess": {"focal_extended": True}}, seed=0)
    assert ext.config.preprocess.n_stats > base.config.preprocess.n_stats
    out: Dict[str, Any] = {"threads": args.threads, "blas_threads": C.blas_threads(), "repeats": args.repeats,
                           "order": "alternating", "presets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets:
            vol, seg = _study(preset, args.seed, Path(tmp))
            # one warm-up each (imports, allocator), then the order alternates on each repeat
            times = C.interleaved_times({"off": lambda: base.prepare(vol, seg), "on": lambda: ext.prepare(vol, seg)},
                                        args.repeats, warmup=1)
            med = {k: statistics.median(v) for k, v in times.items()}
            out["presets"][preset] = {"shape": list(vol.array.shape), "median_s_off": med["off"],
                                      "median_s_on": med["on"], "ratio_on_off": med["on"] / med["off"]}
            print(f"{preset:9s} {tuple(vol.array.shape)}: prepare {med['off']:.2f} s -> {med['on']:.2f} s with "
                  f"focal_extended (x{med['on'] / med['off']:.2f}, medians of {args.repeats})")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
