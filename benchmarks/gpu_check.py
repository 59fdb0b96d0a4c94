"""CUDA paths in one short run: bf16 training steps with the readout stage, and GPU encoding against the CPU.

Generates a small default-preset archive, trains ``ctglip-tiny`` for a few steps on CUDA (bf16 autocast) with a
readout stage, then encodes studies with the bundled model on the GPU and on the CPU and compares the vectors.
Prints one JSON object (also written to ``--json-out``). Usage on a GPU machine:
``python benchmarks/gpu_check.py --steps 20 --json-out gpu_check.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch

import ctglip_sdk as cg


def _train(root: Path, steps: int) -> Dict[str, Any]:
    from ctglip_sdk.training import TrainConfig, train

    cfg = TrainConfig(model="ctglip-tiny", max_steps=steps, device="cuda", bf16=True, batch_size=4,
                      warmup_steps=2, calibrate=False, train_split="all", log_every=5, readout_epochs=5,
                      cache_dir=str(root / "cache"), checkpoint_every=max(steps, 1))
    summary = train(root / "archive", root / "run", cfg, progress=False)
    model = cg.load(root / "run" / "model")
    return {"steps": summary["steps"], "seconds_per_step": round(summary["train_seconds"] / max(steps, 1), 4),
            "cache_seconds": summary["cache_seconds"], "last_loss": summary["last_loss"],
            "loss_finite": math.isfinite(summary["last_loss"]), "readout": summary.get("readout"),
            "weights_float32": all(p.dtype == torch.float32 for p in model.parameters())}


def _encode(root: Path, n: int) -> Dict[str, Any]:
    from ctglip_sdk.training.data import read_manifest

    cpu, gpu = cg.load("ctglip-tiny-synthetic", device="cpu"), cg.load("ctglip-tiny-synthetic", device="cuda")
    cos: List[float] = []
    diff: List[float] = []
    times: Dict[str, List[float]] = {"cpu": [], "cuda": []}
    for rec in read_manifest(root / "archive")[:n]:
        vol = cg.load_volume(rec.image)
        seg = cg.load_segmentation(rec.mask, like=vol)
        out = {}
        for name, model in (("cpu", cpu), ("cuda", gpu)):
            model.encode_organs(vol, seg)  # warm-up: first calls pay for kernels and caches
            if name == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            out[name] = model.encode_organs(vol, seg)
            if name == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - t)
        assert out["cpu"].names == out["cuda"].names
        a, b = out["cpu"].vectors, out["cuda"].vectors
        cos.append(float(np.min(np.sum(a * b, axis=1))))
        diff.append(float(np.abs(a - b).max()))
    return {"studies": n, "min_cosine_cpu_vs_cuda": min(cos), "max_abs_diff": max(diff),
            "seconds_per_study": {k: round(statistics.median(v), 4) for k, v in times.items()}}


def main() -> Dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--patients", type=int, default=8)
    ap.add_argument("--encode", type=int, default=3, help="studies encoded on both devices")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device visible to torch")
    out: Dict[str, Any] = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0),
                           "bf16_supported": torch.cuda.is_bf16_supported()}
    try:
        from ctglip_sdk.faiss_backend import gpu_count

        out["faiss_gpus"] = gpu_count()
    except Exception as exc:  # noqa: BLE001 - reported, not fatal: faiss-gpu is optional
        out["faiss_gpus"] = f"unavailable ({type(exc).__name__}: {exc})"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cg.synth.generate_archive(root / "archive", n_patients=args.patients, seed=5, preset="default",
                                  fmt="nifti", progress=False)
        out["train"] = _train(root, args.steps)
        out["encode"] = _encode(root, args.encode)
    text = json.dumps(out, indent=1)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text)
    return out


if __name__ == "__main__":
    main()
