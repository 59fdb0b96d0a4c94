"""Training throughput: the preprocessing cache against loading + preprocessing each study, and s/step per objective.

Baseline: what a loader without the cache does per study (read the scan and mask, resample, window, area
weights); measured against reading the cached entry, on the same studies in the same run. Then a few
optimizer steps of each objective (CT-GLIP, CLIP) with `ctglip_sdk.training.train`; medians of per-step times.
CT-GLIP also runs with `channels_last=true`, printed as a ratio to the same run in the default layout.
The variants run in rounds (quick: 2 rounds of 3 steps, full: 3 of 5), the order reversed every other round, and
each variant's median is over the step times of all its rounds: run one after another, the first variant paid
for whatever the machine did first (the review measured 24.6 s/step for it against 6.6 for the second).

    python benchmarks/bench_train.py --quick --json-out bench-output/train.json
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402 - first: it exports --threads before numpy (and torch) load


def _step_seconds(metrics_path: Path) -> List[float]:
    """Seconds of each logged step after the first (the first also pays for the run's start)."""
    times = [json.loads(line)["time_s"] for line in metrics_path.read_text().splitlines() if line.strip()]
    return [b - a for a, b in zip(times, times[1:])]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small preset, 8 patients, 6 steps (about a minute)")
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=None, help="rounds of every variant (quick 2, full 3)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per variant and round (quick 3, full 5)")
    args = ap.parse_args()

    C.set_threads(args.threads)
    import ctglip_sdk as cg
    from ctglip_sdk.model.preprocess import prepare_study
    from ctglip_sdk.training import TrainConfig, train
    from ctglip_sdk.training.cache import PreprocessCache
    from ctglip_sdk.training.data import build_cache, read_manifest

    preset, n_patients, steps, batch = ("small", 8, 3, 2) if args.quick else ("default", 24, 5, 4)
    steps = args.steps or steps
    rounds = args.rounds or (2 if args.quick else 3)
    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    atexit.register(shutil.rmtree, work, True)  # ~170 MB of archive and cache per run: never left behind
    archive = work / "archive"
    cg.synth.generate_archive(archive, n_patients=n_patients, seed=0, preset=preset, fmt="nifti", progress=False)
    records = read_manifest(archive)
    model = cg.create("ctglip-tiny", seed=0)

    # Baseline: load + preprocess every time.
    t_raw = []
    for r in records:
        t0 = time.perf_counter()
        vol = cg.load_volume(r.image)
        seg = cg.load_segmentation(r.mask, like=vol)
        prepare_study(vol, seg, None, model.config.preprocess, model.vision.feature_stride, model.vision.size_divisor)
        t_raw.append(time.perf_counter() - t0)
    cache = PreprocessCache.for_model(model, work / "cache")
    t0 = time.perf_counter()
    build_cache(records, cache, progress=False)
    build_s = time.perf_counter() - t0
    t_cached = []
    for r in records:
        t0 = time.perf_counter()
        cache.load(r.image, r.mask, r.series)
        t_cached.append(time.perf_counter() - t0)

    variants: Dict[str, Dict[str, Any]] = {"ctglip": {}, "ctglip_channels_last": {"channels_last": True},
                                            "clip": {"objective": "clip"}}
    step_s: Dict[str, List[float]] = {k: [] for k in variants}
    train_s: Dict[str, List[float]] = {k: [] for k in variants}
    for rnd in range(rounds):  # the order reversed every other round: no variant always runs first
        for name in (list(variants) if rnd % 2 == 0 else list(variants)[::-1]):
            cfg = TrainConfig(max_steps=steps, batch_size=batch, log_every=1, checkpoint_every=steps, warmup_steps=1,
                              cache_dir=str(work / "cache"), threads=args.threads, seed=0, **variants[name])
            out = work / f"run_{name}_{rnd}"
            summary = train(archive, out, cfg, progress=False)
            step_s[name] += _step_seconds(out / "metrics.jsonl")
            train_s[name].append(summary["train_seconds"])
            shutil.rmtree(out, ignore_errors=True)  # checkpoints: the disk of one run at a time
    runs = {name: {"median_step_s": round(statistics.median(step_s[name]), 3) if step_s[name] else float("nan"),
                   "step_s": [round(x, 3) for x in step_s[name]], "studies_per_step": batch,
                   "train_seconds": train_s[name]} for name in variants}

    result = {
        "preset": preset, "n_studies": len(records), "threads": args.threads, "blas_threads": C.blas_threads(),
        "rounds": rounds, "steps_per_round": steps, "order": "reversed every other round",
        "load_and_preprocess_ms_median": round(1000 * statistics.median(t_raw), 1),
        "cache_read_ms_median": round(1000 * statistics.median(t_cached), 1),
        "cache_speedup": round(statistics.median(t_raw) / max(statistics.median(t_cached), 1e-9), 1),
        "cache_build_s": round(build_s, 2), "runs": runs,
        "channels_last_step_ratio": round(runs["ctglip_channels_last"]["median_step_s"]
                                          / max(runs["ctglip"]["median_step_s"], 1e-9), 3),
    }
    print(f"{'stage':<40} {'value':>10}")
    print(f"{'load + preprocess / study (ms)':<40} {result['load_and_preprocess_ms_median']:>10}")
    print(f"{'cached read / study (ms)':<40} {result['cache_read_ms_median']:>10}")
    print(f"{'cache speed-up (x)':<40} {result['cache_speedup']:>10}")
    for name, r in runs.items():
        print(f"{name + ' s/step (' + str(batch) + ' studies)':<40} {r['median_step_s']:>10}")
    print(f"{'channels_last / default step (x)':<40} {result['channels_last_step_ratio']:>10}")
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
