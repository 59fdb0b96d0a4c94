"""Archive ingest per stage against its floor (raw pydicom read + encoder forward) and a MONAI per-organ pipeline.

On one synthetic DICOM archive (quick: 2 'default' studies; full: 5 'clinical' studies, 512 x 512 x 265), with
the files page-cached and the model warmed up first:
1. ``ArchiveIndex.ingest`` with ``workers=0`` (stages one after the other: their sum is the wall time) and with
   ``workers=2`` (read/align/preprocess of the next studies overlap the encoder); per-stage seconds come from
   ``IngestReport.timings`` (read = DICOM read/decode, align = mask load + alignment checks, preprocess = crop
   box + resampling + HU windows + organ area weights, encode = network + pooling, write = vectors + SQL,
   faiss = FAISS update/persist);
2. the floor of the same studies: pydicom ``dcmread`` + ``pixel_array`` of every file, sort by position, stack,
   rescale to HU (float32), plus the encoder's forward pass (``forward_features``) on the same network input;
3. the baseline: MONAI ``LoadImage(PydicomReader)`` + ``LoadImage`` of the mask -> ``Orientation(RAS)`` ->
   ``Spacing`` (the model's 3.5 mm; bilinear/nearest) -> HU windows -> per organ ``SpatialCrop`` of its box
   (+ 20 mm margin; all boxes from one ``scipy.ndimage.find_objects`` pass, the cheapest way to get them) +
   ``Resize`` to a 32^3 cube -> batches of 16 through the same network -> mask pooling -> projection; warmed up
   on one study, then timed once per round with the others; its mean cosine to the one-pass vectors is printed
   next to its ratio: each organ is resized to the cube, so the network sees it at another scale and context than
   at the model's 3.5 mm grid, and a trained model's vectors differ (it is a speed baseline, not the same
   vectors);
4. an index ingested once, every file touched (same bytes), ingested again: seconds against the first ingest,
   and the content digest of every series alone (what decides that a touched series is unchanged);
5. full mode only: peak memory of ingesting 10 vs 100 'default' studies in a child process (resident size
   sampled every 20 ms during the ingest, against the size before it; and the process's ru_maxrss).
Every path runs once per round, the order rotating between rounds (load from other processes hits each alike);
the tables quote the median (``statistics.median``) of the rounds for ingest, floor and MONAI alike, and the
per-stage seconds of the run at the lower median (the median run itself with an odd number of rounds).
Targets (issue 9): ingest within 2x of the floor, >= 3x faster than the MONAI baseline, memory flat in the size.
Usage: python benchmarks/bench_ingest.py [--quick] [--json-out PATH] [--studies N] [--preset P]
"""

from __future__ import annotations

import os
import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Dict, List, Tuple  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402 - first: it exports --threads before numpy loads

import numpy as np  # noqa: E402

STAGE_NAMES = {"read": "read/decode", "align": "mask alignment", "preprocess": "resample (+box, windows, weights)",
               "encode": "encode (network + pooling)", "write": "write (vectors + SQL)", "faiss": "FAISS",
               "plan": "plan (manifest, fingerprints)"}


def manifest_rows(root: Path) -> List[Dict[str, str]]:
    with open(root / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def make_archive(root: Path, n: int, preset: str, seed: int, workers: int) -> float:
    """Generate (or reuse) a synthetic DICOM archive; returns the seconds spent generating."""
    import ctglip_sdk as cg

    if (root / "manifest.csv").exists() and len(manifest_rows(root)) == n:
        return 0.0
    t0 = time.perf_counter()
    cg.synth.generate_archive(root, n, seed=seed, fmt="dicom", preset=preset, progress=False, workers=workers,
                              overwrite=True)
    return time.perf_counter() - t0


def page_cache(root: Path) -> int:
    """Read every file once so that all paths below read from the page cache alike; returns bytes."""
    total = 0
    for p in root.rglob("*"):
        if p.is_file():
            total += len(p.read_bytes())
    return total


# ------------------------------------------------------------------------------------------------ floor
def raw_dicom_stack(folder: Path) -> np.ndarray:
    """pydicom read of every file + sort by position along the slice normal + stack + rescale -> float32 HU."""
    import pydicom

    dss = [pydicom.dcmread(str(f)) for f in sorted(folder.iterdir()) if f.is_file()]
    normal = np.cross(*np.asarray(dss[0].ImageOrientationPatient, float).reshape(2, 3))
    dss.sort(key=lambda d: float(np.dot(normal, np.asarray(d.ImagePositionPatient, float))))
    arr = np.stack([d.pixel_array for d in dss]).astype(np.float32)
    slope, icpt = float(getattr(dss[0], "RescaleSlope", 1)), float(getattr(dss[0], "RescaleIntercept", 0))
    return arr * slope + icpt


def floor_inputs(root: Path, rows: List[Dict[str, str]], model: Any) -> List[Dict[str, Any]]:
    """Per study: the DICOM folder and the network input the model builds for it (what the floor's forward runs)."""
    import torch

    import ctglip_sdk as cg

    out = []
    for r in rows:
        vol = cg.load_volume(root / r["image"])
        seg = cg.load_segmentation(root / r["mask"], like=vol)
        with torch.inference_mode():
            prep = model.prepare(vol, seg)
        out.append({"folder": root / r["image"], "x": prep.image[None], "volume_shape": list(vol.shape),
                    "network_input": list(prep.image.shape), "organs": len(prep.names)})
    return out


def floor_once(inputs: List[Dict[str, Any]], model: Any, batch: int = 8) -> Dict[str, float]:
    """One pass of the floor over every study: raw pydicom read + stack, then the encoder's forward pass, both
    one study at a time and with same-shape studies batched (as ingest batches them); the floor takes the faster."""
    import torch

    t0 = time.perf_counter()
    for s in inputs:
        raw_dicom_stack(s["folder"])
    t1 = time.perf_counter()
    with torch.inference_mode():
        for s in inputs:
            model.forward_features(s["x"])
    t2 = time.perf_counter()
    groups: Dict[Tuple[int, ...], List[Any]] = {}
    for s in inputs:
        groups.setdefault(tuple(s["x"].shape), []).append(s["x"])
    with torch.inference_mode():
        for xs in groups.values():
            for b in range(0, len(xs), batch):
                model.forward_features(torch.cat(xs[b:b + batch]))
    t3 = time.perf_counter()
    return {"raw_read_stack_s": t1 - t0, "forward_per_study_s": t2 - t1, "forward_batched_s": t3 - t2,
            "forward_s": min(t2 - t1, t3 - t2)}


# ------------------------------------------------------------------------------------------------ ingest
def run_ingest(root: Path, model: Any, folder: Path, workers: int) -> Dict[str, Any]:
    from ctglip_sdk.index import ArchiveIndex

    shutil.rmtree(folder, ignore_errors=True)
    t0 = time.perf_counter()
    idx = ArchiveIndex.create(folder, model=model)
    create_s = time.perf_counter() - t0
    rep = idx.ingest(root, workers=workers, progress=False)
    idx.close()
    if rep.n_errors:
        raise RuntimeError(f"ingest failed for {rep.n_errors} series: {rep.errors[:2]}")
    return {"workers": workers, "seconds": round(rep.seconds, 4), "create_s": round(create_s, 4), "ok": rep.ok,
            "organs": rep.organs_added, "timings": {k: round(v, 4) for k, v in rep.timings.items()},
            "studies_per_s": round(rep.ok / rep.seconds, 3), "organs_per_s": round(rep.organs_added / rep.seconds, 1)}


def touched_reingest(root: Path, model: Any, folder: Path) -> Dict[str, Any]:
    """Every file of the archive touched (new times, same bytes), then ingested again into the same index: the
    series are hashed (index/content.py), not embedded again. Also the digest pass alone over every series."""
    from ctglip_sdk.index import ArchiveIndex
    from ctglip_sdk.index.content import item_digest
    from ctglip_sdk.index.layout import plan_archive

    shutil.rmtree(folder, ignore_errors=True)
    idx = ArchiveIndex.create(folder, model=model)
    try:
        idx.ingest(root, workers=2, progress=False)
        for dirpath, _dirs, files in os.walk(root):
            for f in files:
                st = os.stat(os.path.join(dirpath, f))
                os.utime(os.path.join(dirpath, f), (st.st_atime, st.st_mtime + 10))
        rep = idx.ingest(root, workers=2, progress=False)
    finally:
        idx.close()
    if rep.ok or rep.n_errors:
        raise RuntimeError(f"touched re-ingest embedded {rep.ok} series and failed {rep.n_errors}")
    items, _errors = plan_archive(root)
    t0 = time.perf_counter()
    for it in items:
        item_digest(root, it)
    return {"seconds": round(rep.seconds, 4), "skipped": rep.skipped,
            "digest_all_s": round(time.perf_counter() - t0, 4)}


# ------------------------------------------------------------------------------------------------ MONAI
def monai_pipeline(root: Path, rows: List[Dict[str, str]], model: Any, cube: int, batch: int) -> Dict[str, Any]:
    """LoadImage -> Orientation -> Spacing -> per-organ SpatialCrop + Resize -> same network -> pooling."""
    import torch
    import torch.nn.functional as F
    from monai.transforms import LoadImage, Orientation, Resize, Spacing, SpatialCrop
    from monai.data import set_track_meta
    from scipy import ndimage

    cfg = model.config.preprocess
    stride, div = model.vision.feature_stride, model.vision.size_divisor
    cube = int(math.ceil(cube / div) * div)
    load_img = LoadImage(reader="PydicomReader", image_only=True, ensure_channel_first=True)
    load_seg = LoadImage(reader="NibabelReader", image_only=True, ensure_channel_first=True)
    orient = Orientation(axcodes="RAS")
    sp_img = Spacing(pixdim=tuple(cfg.spacing), mode="bilinear")
    sp_seg = Spacing(pixdim=tuple(cfg.spacing), mode="nearest")
    margin = [int(math.ceil(cfg.margin_mm / s)) for s in cfg.spacing]
    resize_img = Resize((cube,) * 3, mode="trilinear")
    resize_seg = Resize((cube,) * 3, mode="nearest")
    stages = {"load_image": 0.0, "load_mask": 0.0, "orientation": 0.0, "spacing": 0.0, "crops": 0.0, "encode": 0.0}
    organs = 0
    vectors: Dict[Tuple[str, int], np.ndarray] = {}
    t_all = time.perf_counter()
    for r in rows:
        t0 = time.perf_counter()
        img = load_img(str(root / r["image"]))
        t1 = time.perf_counter()
        seg = load_seg(str(root / r["mask"]))
        t2 = time.perf_counter()
        img, seg = orient(img), orient(seg)
        t3 = time.perf_counter()
        img, seg = sp_img(img), sp_seg(seg)
        t4 = time.perf_counter()
        stages["load_image"] += t1 - t0
        stages["load_mask"] += t2 - t1
        stages["orientation"] += t3 - t2
        stages["spacing"] += t4 - t3
        hu = img.as_tensor().float()
        chans = [((hu.clamp(lo, hi) - lo) / (hi - lo)) for lo, hi in cfg.hu_windows]
        x = torch.cat(chans, 0)
        lab = seg.as_tensor().round().long()
        lab_np = lab[0].numpy().astype(np.int32)
        boxes = ndimage.find_objects(lab_np)  # every organ's box in one pass
        ids = [i + 1 for i, b in enumerate(boxes) if b is not None]
        hist = None
        if cfg.n_stats:  # the model's per-organ stats (HU histogram, descriptors), here on the resampled grid
            from ctglip_sdk.model.preprocess import organ_stats

            voxel_ml = float(np.prod(cfg.spacing)) / 1000.0
            hist = organ_stats(lab_np, hu[0].numpy(), int(lab_np.max()), cfg, voxel_ml, tuple(cfg.spacing))
        crops, masks = [], []
        set_track_meta(False)  # plain tensors for the crops: MetaTensor bookkeeping per crop costs more than them
        for lid in ids:
            b = boxes[lid - 1]
            lo = [max(0, sl.start - m) for sl, m in zip(b, margin)]
            hi = [min(n, sl.stop + m) for sl, m, n in zip(b, margin, lab_np.shape)]
            crop = SpatialCrop(roi_start=lo, roi_end=hi)
            crops.append(torch.as_tensor(resize_img(crop(x))))
            masks.append(torch.as_tensor(resize_seg((crop(lab) == lid).float())))
        set_track_meta(True)
        t5 = time.perf_counter()
        stages["crops"] += t5 - t4
        with torch.inference_mode():
            for b in range(0, len(crops), batch):
                xb = torch.stack(crops[b:b + batch])
                mb = torch.stack(masks[b:b + batch])
                feats = model.forward_features(xb)
                w = F.avg_pool3d(mb, stride)  # area weights on the feature grid
                st = None if hist is None else torch.from_numpy(hist[[i - 1 for i in ids[b:b + batch]]])[:, None]
                v = model.project_vision(model.pool_organs(feats, w, st))[:, 0]
                for j, lid in enumerate(ids[b:b + batch]):
                    vectors[(r["series_uid"], lid)] = v[j].numpy()
        stages["encode"] += time.perf_counter() - t5
        organs += len(ids)
    total = time.perf_counter() - t_all
    return {"seconds": round(total, 4), "stages": {k: round(v, 4) for k, v in stages.items()}, "organs": organs,
            "cube": cube, "batch": batch, "network_voxels_per_organ": cube ** 3, "_vectors": vectors}


def agreement(root: Path, rows: List[Dict[str, str]], model: Any, monai_vecs: Dict[Tuple[str, int], np.ndarray]) -> float:
    """Mean cosine between the one-pass organ vectors and the MONAI per-organ crop vectors (same model)."""
    import ctglip_sdk as cg
    from ctglip_sdk.organs import label_map

    ids = {v: k for k, v in label_map("totalseg_v1").items()}
    cos = []
    for r in rows:
        vol = cg.load_volume(root / r["image"])
        emb = model.encode_organs(vol, cg.load_segmentation(root / r["mask"], like=vol))
        for name, v in zip(emb.names, emb.vectors):
            m = monai_vecs.get((r["series_uid"], ids.get(name, -1)))
            if m is not None:
                cos.append(float(np.dot(v, m) / (np.linalg.norm(v) * np.linalg.norm(m))))
    return round(float(np.mean(cos)), 4) if cos else float("nan")


def median_run(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The run whose stages are shown: the lower median by wall time (the median run for an odd count), with
    ``median_seconds`` (statistics.median of all runs, the figure quoted) and which run it is."""
    secs = [r["seconds"] for r in runs]
    low = statistics.median_low(secs)
    pick = dict(runs[secs.index(low)])
    pick.update(median_seconds=round(statistics.median(secs), 4), stages_from_run=secs.index(low) + 1,
                stages_from_run_seconds=low)
    return pick


# ------------------------------------------------------------------------------------------------ memory
def _rss_mb() -> float:
    """Current resident memory of this process (MiB), from /proc (0 where there is none)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def child_ingest(archive: str, threads: int) -> int:
    """Child process of the memory check: ingest ``archive`` into a temp index, print memory as JSON.

    ``ru_maxrss`` is a high-water mark that loading the model (torch, weights) may already set above what ingest
    needs, which would make any archive size look flat; so the resident size is also sampled every 20 ms during
    the ingest itself and reported against the resident size just before it.
    """
    import threading

    C.set_threads(threads)
    model, _ = C.load_model()
    from ctglip_sdk.index import ArchiveIndex

    base_peak = C.peak_rss_mb()
    folder = Path(tempfile.mkdtemp(prefix="bench-ingest-mem-"))
    samples: List[Tuple[float, float]] = []  # (seconds since the ingest began, RSS MiB)
    stop = threading.Event()

    def sample() -> None:
        t0 = time.perf_counter()
        while not stop.is_set():
            samples.append((time.perf_counter() - t0, _rss_mb()))
            stop.wait(0.02)

    try:
        idx = ArchiveIndex.create(folder / "idx", model=model)
        before = _rss_mb()
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            rep = idx.ingest(archive, workers=2, progress=False)
        finally:
            stop.set()
            sampler.join()
        after = _rss_mb()  # the index is still open: what a process that goes on holds
        idx.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    rss = np.array([r for _, r in samples] or [before])
    end = max(samples[-1][0], 1e-9) if samples else 1.0
    # The resident size is a sawtooth (a spike per encoder batch), so its maximum grows with the number of
    # batches even when nothing accumulates: report the peak of each tenth of the run as well, and what stays.
    tenths = [round(float(max([r for t, r in samples if k / 10 <= t / end <= (k + 1) / 10] or [before])) - before, 1)
              for k in range(10)]
    step = max(1, len(samples) // 400)
    print(json.dumps({"peak_rss_mb": round(C.peak_rss_mb(), 1), "rss_after_model_mb": round(base_peak, 1),
                      "rss_before_ingest_mb": round(before, 1), "ingest_peak_rss_mb": round(float(rss.max()), 1),
                      "ingest_growth_mb": round(float(rss.max()) - before, 1),
                      "ingest_median_growth_mb": round(float(np.median(rss)) - before, 1),
                      "retained_after_ingest_mb": round(after - before, 1), "peak_growth_by_tenth_mb": tenths,
                      "trace": [[round(t / end, 4), round(r - before, 1)] for t, r in samples[::step]],
                      "samples": len(samples), "studies": rep.ok, "organs": rep.organs_added,
                      "seconds": round(rep.seconds, 2)}))
    return 0


def memory_check(work: Path, sizes: List[int], seed: int, threads: int) -> Dict[str, Any]:
    out = {}
    for n in sizes:
        arch = work / f"mem-archive-{n}"
        gen = make_archive(arch, n, "default", seed, workers=threads)
        proc = subprocess.run([sys.executable, __file__, "--_child-ingest", str(arch), "--threads", str(threads)],
                              capture_output=True, text=True, check=True)
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        res["generate_s"] = round(gen, 1)
        out[str(n)] = res
        print(f"memory: {n} studies -> peak RSS during ingest {res['ingest_peak_rss_mb']} MiB (+"
              f"{res['ingest_growth_mb']} MiB over the {res['rss_before_ingest_mb']} MiB before it; median +"
              f"{res['ingest_median_growth_mb']}; retained after it +{res['retained_after_ingest_mb']}; peak by tenth "
              f"of the run {res['peak_growth_by_tenth_mb']}; process peak {res['peak_rss_mb']} MiB) "
              f"({res['organs']} organs, {res['seconds']} s)", flush=True)
    return out


# ------------------------------------------------------------------------------------------------ main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 'default' studies, no memory check")
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--studies", type=int, default=None)
    ap.add_argument("--preset", default=None, help="synthetic preset (quick: default, full: clinical)")
    ap.add_argument("--memory-sizes", type=int, nargs="*", default=None, help="archive sizes for peak memory")
    ap.add_argument("--monai-cube", type=int, default=32, help="side of the per-organ crop cube (voxels at 3.5 mm)")
    ap.add_argument("--monai-batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=None, help="repeats of ingest and floor (quick 2, full 3)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None, help="keep archives here (reused between runs)")
    ap.add_argument("--_child-ingest", dest="child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.child:
        return child_ingest(args.child, args.threads)
    quick = args.quick
    n = args.studies or (2 if quick else 5)
    preset = args.preset or ("default" if quick else "clinical")
    mem_sizes = args.memory_sizes if args.memory_sizes is not None else ([] if quick else [10, 100])
    rounds = args.rounds or (2 if quick else 3)
    C.set_threads(args.threads)
    import monai  # noqa: F401 - version in machine_info
    import pydicom  # noqa: F401
    import torch

    model, model_desc = C.load_model()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-ingest-"))
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    print(f"bench_ingest ({'quick' if quick else 'full'}): {n} '{preset}' DICOM studies, model {model_desc}, "
          f"{args.threads} threads, {rounds} rounds", flush=True)
    try:
        root = work / f"archive-{preset}-{n}"
        gen_s = make_archive(root, n, preset, args.seed, workers=min(args.threads, n))
        rows = manifest_rows(root)
        cached = page_cache(root)
        print(f"archive: generated in {gen_s:.1f} s, {cached / 2**20:.0f} MiB (now page-cached)", flush=True)
        inputs = floor_inputs(root, rows, model)  # also warms the model up
        monai_pipeline(root, rows[:1], model, args.monai_cube, args.monai_batch)  # warm-up: imports, readers
        serials: List[Dict[str, Any]] = []
        pipeds: List[Dict[str, Any]] = []
        floors: List[Dict[str, float]] = []
        monais: List[Dict[str, Any]] = []
        paths: List[Callable[[], None]] = [
            lambda: serials.append(run_ingest(root, model, work / "idx-serial", workers=0)),
            lambda: pipeds.append(run_ingest(root, model, work / "idx-piped", workers=2)),
            lambda: floors.append(floor_once(inputs, model)),
            lambda: monais.append(monai_pipeline(root, rows, model, args.monai_cube, args.monai_batch)),
        ]
        for r in range(rounds):  # every path once per round, the order rotated: no path always runs first
            for k in range(len(paths)):
                paths[(k + r) % len(paths)]()
        touched = [touched_reingest(root, model, work / "idx-touched") for _ in range(rounds)]
        cos = agreement(root, rows, model, monais[0]["_vectors"])
        mon = median_run(monais)
        mon.pop("_vectors")
        mon["runs_s"] = [m["seconds"] for m in monais]
        memory = memory_check(work, mem_sizes, args.seed, args.threads) if mem_sizes else \
            C.skip("memory 10 vs 100 studies", "quick mode (full mode runs it)")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)

    # One median for every path (statistics.median: the mean of the middle two with an even number of rounds);
    # the per-stage seconds are those of one real run, the lower median (see median_run).
    serial, piped = median_run(serials), median_run(pipeds)
    fl = {k: float(statistics.median([f[k] for f in floors])) for k in floors[0]}
    floor_s = fl["raw_read_stack_s"] + fl["forward_s"]
    floor = {"raw_read_stack_s": round(fl["raw_read_stack_s"], 4), "forward_s": round(fl["forward_s"], 4),
             "forward_per_study_s": round(fl["forward_per_study_s"], 4),
             "forward_batched_s": round(fl["forward_batched_s"], 4),
             "floor_s": round(floor_s, 4), "rounds": [{k: round(v, 4) for k, v in f.items()} for f in floors],
             "per_study": [{k: v for k, v in s.items() if k not in ("folder", "x")} for s in inputs]}
    s_med, p_med, m_med = serial["median_seconds"], piped["median_seconds"], mon["median_seconds"]
    best = min(s_med, p_med)
    t_med = float(statistics.median([t["seconds"] for t in touched]))
    d_med = float(statistics.median([t["digest_all_s"] for t in touched]))
    ratios = {"ingest_over_floor": round(best / floor_s, 3), "monai_over_ingest": round(m_med / best, 3),
              "serial_over_piped": round(s_med / p_med, 3), "monai_cosine_to_one_pass": cos,
              "touched_reingest_over_ingest": round(t_med / p_med, 4), "digest_over_ingest": round(d_med / p_med, 4)}
    stage_rows = []
    for k in ("plan", "read", "align", "preprocess", "encode", "write", "faiss"):
        stage_rows.append([STAGE_NAMES[k], serial["timings"].get(k, 0.0), piped["timings"].get(k, 0.0)])
    stage_rows.append(["wall time of that run", serial["seconds"], piped["seconds"]])
    stage_rows.append(["median wall time (all runs)", s_med, p_med])
    stage_rows.append(["all runs", " ".join(f"{r['seconds']:.2f}" for r in serials),
                       " ".join(f"{r['seconds']:.2f}" for r in pipeds)])
    C.print_table([f"stage (s, summed over studies; run {serial['stages_from_run']}/{piped['stages_from_run']} of "
                   f"{rounds}, the lower median)", "workers=0", "workers=2"], stage_rows,
                  title=f"ArchiveIndex.ingest: {len(rows)} studies, {serial['organs']} organs, volume "
                        f"{inputs[0]['volume_shape']}, network input {inputs[0]['network_input']}")
    C.print_table(["path", "seconds", "ratio to floor"], [
        ["floor: pydicom raw read + stack", floor["raw_read_stack_s"], None],
        ["floor: encoder forward (faster of per study / batched)", floor["forward_s"], None],
        ["floor total", floor_s, 1.0],
        ["ingest workers=0", s_med, s_med / floor_s],
        ["ingest workers=2", p_med, p_med / floor_s],
        [f"MONAI per-organ pipeline (cosine to ingest's vectors {cos})", m_med, m_med / floor_s],
    ], title=f"Floor and baseline (same studies, page-cached; medians of {rounds} rounds, statistics.median)")
    C.print_table(["MONAI stage", "seconds"], [[k, v] for k, v in mon["stages"].items()] + [["total", mon["seconds"]]],
                  title=f"MONAI baseline (run {mon['stages_from_run']} of {rounds}, the lower median): {mon['organs']} "
                        f"organ crops resized to {mon['cube']}^3, batch {mon['batch']}; mean cosine to the one-pass "
                        f"vectors {cos}")
    C.print_table(["path", "seconds", "ratio to ingest workers=2"], [
        ["ingest workers=2 (median)", p_med, 1.0],
        ["ingest again after touching every file (same bytes)", t_med, t_med / p_med],
        ["content digest of every series alone", d_med, d_med / p_med],
    ], title=f"Touched is not changed (index/content.py; medians of {rounds} rounds)")
    print(f"ratios: ingest/floor {ratios['ingest_over_floor']} (target <= 2), MONAI/ingest "
          f"{ratios['monai_over_ingest']} (target >= 3; MONAI's vectors agree with ingest's at mean cosine {cos}: "
          "other crops, other vectors)", flush=True)
    payload = {"benchmark": "ingest", "mode": "quick" if quick else "full", "machine": C.machine_info(args.threads),
               "model": model_desc, "preset": preset, "studies": len(rows), "generate_s": round(gen_s, 1),
               "command": " ".join([Path(sys.executable).name, *sys.argv]), "rounds": rounds,
               "ingest_serial": serial, "ingest_piped": piped,
               "ingest_runs": {"workers0": [r["seconds"] for r in serials], "workers2": [r["seconds"] for r in pipeds]},
               "floor": floor, "monai": mon, "monai_cosine_to_one_pass": cos, "touched": touched,
               "ratios": ratios, "memory": memory, "torch": torch.__version__,
               "seconds": round(time.perf_counter() - t_start, 1), "peak_rss_mb": round(C.peak_rss_mb())}
    C.write_json(args.json_out, payload)
    print(f"bench_ingest done in {payload['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
