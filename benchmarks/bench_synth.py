"""Synthetic archive speed: 40 'default' patients written as DICOM, against the 60 s target on 2 cores.

Two measurements on the same machine and seed:
1. per patient (one process): generating the phantom (render + report) and writing it (DICOM series, mask NIfTI,
   report); medians per patient;
2. the whole archive with ``generate_archive`` (``--workers``, default 2 = the target's 2 cores), wall clock,
   and its ratio to the target (scaled by the number of patients in ``--quick`` mode) and to the same run's
   baseline: writing the same files from memory (median write time × patients / workers).
Also the 'small' preset's per-patient time (unit-test data; target well under 0.3 s).
Usage: python benchmarks/bench_synth.py [--quick] [--json-out PATH] [--patients N] [--workers W]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ctglip_sdk.synth import generate_archive, generate_patient
from ctglip_sdk.synth.writers import write_dicom_series, write_mask

TARGET_S = 60.0
TARGET_N = 40


def per_patient(root: Path, n: int, preset: str, seed: int = 0) -> dict:
    gen, write = [], []
    for i in range(n):
        t0 = time.perf_counter()
        p = generate_patient(seed, preset, index=i, archive_seed=seed)
        t1 = time.perf_counter()
        hu = p.volume.array.astype(np.int16)
        write_dicom_series(root / p.identity.patient_id, hu, p.volume.affine, p.identity, p.meta)
        write_mask(root / f"{p.identity.patient_id}.nii.gz", p.segmentation.array, p.volume.affine)
        (root / f"{p.identity.patient_id}.txt").write_text(p.report)
        t2 = time.perf_counter()
        gen.append(t1 - t0)
        write.append(t2 - t1)
    tot = [g + w for g, w in zip(gen, write)]
    return {"n": n, "generate_median_s": round(statistics.median(gen), 3),
            "write_median_s": round(statistics.median(write), 3), "per_patient_median_s": round(statistics.median(tot), 3),
            "per_patient_max_s": round(max(tot), 3), "shape": list(p.volume.shape)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="10 patients instead of 40")
    ap.add_argument("--patients", type=int, default=None)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    n = args.patients or (10 if args.quick else TARGET_N)
    target = TARGET_S * n / TARGET_N
    out: dict = {"preset": "default", "fmt": "dicom", "patients": n, "workers": args.workers, "cores": os.cpu_count(),
                 "target_s": round(target, 1)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        out["per_patient"] = per_patient(tmp / "loop", n, "default")
        out["small_preset"] = per_patient(tmp / "small", 5 if args.quick else 10, "small")
        t0 = time.perf_counter()
        generate_archive(tmp / "archive", n, seed=0, fmt="dicom", preset="default", progress=False,
                         workers=args.workers)
        total = time.perf_counter() - t0
    out["archive_total_s"] = round(total, 2)
    out["ratio_vs_target"] = round(total / target, 3)
    # Same-run baseline: writing the same files from arrays already in memory, spread over the workers (the
    # floor of any generator that writes this archive on this machine and disk).
    pp = out["per_patient"]
    floor = pp["write_median_s"] * n / max(args.workers, 1)
    out["baseline_write_only_s"] = round(floor, 2)
    out["ratio_vs_write_baseline"] = round(total / floor, 2)
    print(f"default preset {pp['shape']}: median {pp['per_patient_median_s']:.2f} s/patient "
          f"(generate {pp['generate_median_s']:.2f} s + write {pp['write_median_s']:.2f} s), max {pp['per_patient_max_s']:.2f} s")
    print(f"small preset: median {out['small_preset']['generate_median_s']:.3f} s to generate, "
          f"{out['small_preset']['per_patient_median_s']:.3f} s with writing")
    print(f"generate_archive({n} patients, workers={args.workers}): {total:.1f} s; target {target:.0f} s; "
          f"ratio {out['ratio_vs_target']:.2f} ({'meets' if total <= target else 'misses'} the target); "
          f"{out['ratio_vs_write_baseline']:.1f}x the same run's write-only baseline ({floor:.1f} s)")
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
