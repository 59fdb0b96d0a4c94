"""CUDA paths in one short run: bf16 training steps with the readout stage, GPU encoding against the CPU, faiss-gpu.

Install the package first (``pip install -e .`` or ``make venv``, plus faiss-gpu for the FAISS stage): the script
imports ``ctglip_sdk`` and calls ``ctglip_sdk.training.train``. Stages, each wrapped so that one failure keeps the
others' results (the JSON is rewritten after every stage, so a run cut short still leaves what it measured):
1. ``archive``: a small default-preset archive (``--patients``), generated with ``os.cpu_count()`` workers;
2. ``train``: ``ctglip-tiny`` for ``--steps`` steps on CUDA with bf16 autocast, then the readout stage;
3. ``encode``: the bundled model on the GPU and on the CPU over ``--encode`` studies, vectors compared;
4. ``faiss``: when FAISS sees GPUs, ``IndexFlatIP`` over ``--faiss-n`` random unit vectors (default 10^6 x 128)
   on the GPU against the same flat index on the CPU for ``--faiss-queries`` queries: recall@10 and seconds;
   skipped with the reason when FAISS has no GPU support.
Each stage records ``torch.cuda.max_memory_allocated`` (peak reset before it) and the dtypes that the
convolution and linear layers actually produced (a global forward hook: ``bfloat16`` when autocast was on).

``--cpu-dry-run`` runs every stage on the CPU in place of CUDA (the FAISS stage with a CPU index standing in for
the GPU one), so that the script can be checked on a machine without a GPU before spending device time:
``python benchmarks/gpu_check.py --cpu-dry-run --steps 2 --patients 2 --encode 1 --faiss-n 20000``.

Expected runtime at the defaults on one H100/H200: about 3 minutes (the first three stages took 1.5 min on an
H200 on 2026-12-04; the FAISS stage adds generating 512 MB of vectors and a few seconds of search), under the
8 minutes a 15-minute device budget leaves after the machine starts. Usage on a GPU machine:
``python benchmarks/gpu_check.py --json-out gpu_check.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import numpy as np
import torch

import ctglip_sdk as cg

K = 10


@contextlib.contextmanager
def observe(device: str) -> Iterator[Dict[str, Any]]:
    """Record, for the body, the peak CUDA memory and the output dtypes of conv/linear layers (what autocast did)."""
    rec: Dict[str, Any] = {}
    dtypes: Counter = Counter()

    def hook(module: torch.nn.Module, _inputs: Any, output: Any) -> None:
        if isinstance(module, (torch.nn.Linear, torch.nn.modules.conv._ConvNd)) and torch.is_tensor(output):
            dtypes[str(output.dtype).replace("torch.", "")] += 1

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    try:
        yield rec
    finally:
        handle.remove()
        rec["layer_output_dtypes"] = dict(dtypes)
        rec["autocast_dtype"] = "bfloat16" if dtypes.get("bfloat16") else "float16" if dtypes.get("float16") else \
            "none (float32 layers)"
        rec["max_memory_allocated_mb"] = (round(torch.cuda.max_memory_allocated() / 2**20, 1) if device == "cuda"
                                          else None)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def stage_archive(root: Path, patients: int) -> Dict[str, Any]:
    t0 = time.perf_counter()
    cg.synth.generate_archive(root / "archive", n_patients=patients, seed=5, preset="default", fmt="nifti",
                              progress=False, workers=os.cpu_count() or 1)
    return {"patients": patients, "workers": os.cpu_count(), "seconds": round(time.perf_counter() - t0, 2)}


def stage_train(root: Path, steps: int, device: str, readout_epochs: int) -> Dict[str, Any]:
    from ctglip_sdk.training import TrainConfig, train

    cfg = TrainConfig(model="ctglip-tiny", max_steps=steps, device=device, bf16=True, batch_size=4,
                      warmup_steps=2, calibrate=False, train_split="all", log_every=5, readout_epochs=readout_epochs,
                      cache_dir=str(root / "cache"), checkpoint_every=max(steps, 1))
    with observe(device) as rec:
        summary = train(root / "archive", root / "run", cfg, progress=False)
    model = cg.load(root / "run" / "model")
    return {"steps": summary["steps"], "seconds_per_step": round(summary["train_seconds"] / max(steps, 1), 4),
            "cache_seconds": summary["cache_seconds"], "last_loss": summary["last_loss"],
            "loss_finite": math.isfinite(summary["last_loss"]), "readout": summary.get("readout"),
            "weights_float32": all(p.dtype == torch.float32 for p in model.parameters()), **rec}


def stage_encode(root: Path, n: int, device: str) -> Dict[str, Any]:
    from ctglip_sdk.training.data import read_manifest

    cpu, gpu = cg.load("ctglip-tiny-synthetic", device="cpu"), cg.load("ctglip-tiny-synthetic", device=device)
    cos: List[float] = []
    diff: List[float] = []
    times: Dict[str, List[float]] = {"cpu": [], "cuda": []}
    with observe(device) as rec:
        for i, r in enumerate(read_manifest(root / "archive")[:n]):
            vol = cg.load_volume(r.image)
            seg = cg.load_segmentation(r.mask, like=vol)
            out = {}
            pairs = (("cpu", cpu), ("cuda", gpu))
            for name, model in (pairs if i % 2 == 0 else pairs[::-1]):  # alternate which device goes first
                dev = "cpu" if name == "cpu" else device
                model.encode_organs(vol, seg)  # warm-up: first calls pay for kernels and caches
                _sync(dev)
                t = time.perf_counter()
                out[name] = model.encode_organs(vol, seg)
                _sync(dev)
                times[name].append(time.perf_counter() - t)
            if out["cpu"].names != out["cuda"].names:
                raise RuntimeError(f"organ names differ: {out['cpu'].names[:3]} vs {out['cuda'].names[:3]}")
            a, b = out["cpu"].vectors, out["cuda"].vectors
            cos.append(float(np.min(np.sum(a * b, axis=1))))
            diff.append(float(np.abs(a - b).max()))
    return {"studies": len(cos), "min_cosine_cpu_vs_cuda": min(cos), "max_abs_diff": max(diff),
            "seconds_per_study": {k: round(statistics.median(v), 4) for k, v in times.items()}, **rec}


def stage_faiss(n: int, dim: int, queries: int, dry_run: bool) -> Dict[str, Any]:
    """Flat inner-product search of ``n`` random unit vectors on the GPU(s) against the CPU: recall@10 and time."""
    try:
        from ctglip_sdk.faiss_backend import gpu_count, import_faiss

        faiss = import_faiss()
        gpus = gpu_count()
    except Exception as exc:  # noqa: BLE001 - faiss is optional here: say why and go on
        return {"skipped": True, "reason": f"faiss unavailable ({type(exc).__name__}: {exc})"}
    if gpus < 1 and not dry_run:
        return {"skipped": True, "reason": "FAISS sees no GPU (a CPU-only faiss build, or faiss-gpu without CUDA)",
                "faiss_gpus": gpus}
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((n, dim), dtype=np.float32)
    xb /= np.linalg.norm(xb, axis=1, keepdims=True)
    xq = xb[rng.choice(n, queries, replace=False)] + 0.1 * rng.standard_normal((queries, dim), dtype=np.float32)
    xq /= np.linalg.norm(xq, axis=1, keepdims=True)
    cpu = faiss.IndexFlatIP(dim)
    cpu.add(xb)
    t0 = time.perf_counter()
    gpu = faiss.index_cpu_to_all_gpus(cpu) if gpus >= 1 else cpu  # dry run: the CPU index stands in
    to_gpu_s = time.perf_counter() - t0
    out: Dict[str, Any] = {"n": n, "dim": dim, "queries": queries, "faiss_gpus": gpus,
                           "gpu_index": "IndexFlatIP via index_cpu_to_all_gpus" if gpus >= 1 else
                           "cpu stand-in (--cpu-dry-run: FAISS has no GPU here)", "to_gpu_s": round(to_gpu_s, 3)}
    gpu.search(xq[:1], K)  # warm-up: kernels, scratch memory
    times: Dict[str, List[float]] = {"cpu": [], "gpu": []}
    found: Dict[str, Any] = {}
    for rnd in range(3):  # the order alternates: neither index always searches first
        for name in (("cpu", "gpu") if rnd % 2 == 0 else ("gpu", "cpu")):
            t = time.perf_counter()
            _d, ids = (cpu if name == "cpu" else gpu).search(xq, K)
            times[name].append(time.perf_counter() - t)
            found[name] = ids
    hits = [len(set(a) & set(b)) / K for a, b in zip(found["gpu"], found["cpu"])]
    out.update({"recall@10_gpu_vs_cpu": round(float(np.mean(hits)), 4),
                "search_s": {k: round(statistics.median(v), 4) for k, v in times.items()},
                "cpu_over_gpu": round(statistics.median(times["cpu"]) / max(statistics.median(times["gpu"]), 1e-9), 2)})
    return out


def run_stage(out: Dict[str, Any], name: str, fn: Callable[[], Dict[str, Any]], json_out: Optional[str]) -> bool:
    """Run one stage into ``out[name]``; a failure is recorded (type, message, traceback tail), not raised.
    The JSON is rewritten after every stage. Returns whether the stage succeeded."""
    t0 = time.perf_counter()
    try:
        out[name] = fn()
        ok = True
    except Exception as exc:  # noqa: BLE001 - one failed stage must not lose the others' results
        out[name] = {"failed": True, "error": f"{type(exc).__name__}: {exc}",
                     "traceback": traceback.format_exc().splitlines()[-8:]}
        ok = False
    if isinstance(out[name], dict):
        out[name]["stage_seconds"] = round(time.perf_counter() - t0, 2)
    print(f"[gpu_check] {name}: {'ok' if ok else 'FAILED ' + out[name]['error']} "
          f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)
    if json_out:
        Path(json_out).write_text(json.dumps(out, indent=1, default=str))
    return ok


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--patients", type=int, default=8)
    ap.add_argument("--encode", type=int, default=3, help="studies encoded on both devices")
    ap.add_argument("--readout-epochs", type=int, default=5)
    ap.add_argument("--faiss-n", type=int, default=1_000_000, help="vectors of the FAISS GPU/CPU comparison")
    ap.add_argument("--faiss-dim", type=int, default=128)
    ap.add_argument("--faiss-queries", type=int, default=16)
    ap.add_argument("--cpu-dry-run", action="store_true",
                    help="run every stage on the CPU in place of CUDA (checks the script without a GPU)")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args(argv)
    device = "cpu" if args.cpu_dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device visible to torch (--cpu-dry-run checks the script on the CPU)")
    out: Dict[str, Any] = {
        "torch": torch.__version__, "cpu_dry_run": args.cpu_dry_run,
        "device": "cpu (dry run)" if args.cpu_dry_run else torch.cuda.get_device_name(0),
        "bf16_supported": None if args.cpu_dry_run else torch.cuda.is_bf16_supported(),
        "settings": {k: v for k, v in vars(args).items() if k != "json_out"}}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if run_stage(out, "archive", lambda: stage_archive(root, args.patients), args.json_out):
            run_stage(out, "train", lambda: stage_train(root, args.steps, device, args.readout_epochs), args.json_out)
            run_stage(out, "encode", lambda: stage_encode(root, args.encode, device), args.json_out)
        else:
            out["train"] = out["encode"] = {"skipped": True, "reason": "no archive (its stage failed)"}
    run_stage(out, "faiss", lambda: stage_faiss(args.faiss_n, args.faiss_dim, args.faiss_queries, args.cpu_dry_run),
              args.json_out)
    out["seconds"] = round(time.perf_counter() - t_all, 1)
    out["failed_stages"] = [k for k, v in out.items() if isinstance(v, dict) and v.get("failed")]
    text = json.dumps(out, indent=1, default=str)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text)
    return out


if __name__ == "__main__":
    sys.exit(1 if main()["failed_stages"] else 0)
