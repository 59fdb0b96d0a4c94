"""Shared helpers of the benchmark scripts: timing (p50/p99), clustered organ vectors, machine info, tables, JSON.

Benchmarks quote medians and ratios measured side by side in one run: these machines are shared and noisy.
"""

from __future__ import annotations

import datetime as dt
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

from thread_pools import (THREAD_VARS, _openblas_calls, blas_limit, blas_threads,  # noqa: E402,F401
                          pin_threads_before_numpy,
                          set_threads, threads_from_argv)

pin_threads_before_numpy()

import numpy as np  # noqa: E402 - after the thread variables are set

#: Memory-copy bandwidth measured once on these machines (domain/baselines.md): a reference for the GB/s that a
#: flat scan reaches, not a floor that this run measured (a scan of cached vectors can exceed it, a busy one not).
BANDWIDTH_GBS = 21.0

#: 20 TotalSegmentator v1 classes per synthetic study (each 5 % of the rows): the organs the shared finding
#: vocabulary covers, plus a few common ones without findings.
STUDY_ORGANS: Tuple[str, ...] = (
    "liver", "gallbladder", "kidney_left", "kidney_right", "pancreas", "spleen", "adrenal_gland_left",
    "adrenal_gland_right", "aorta", "urinary_bladder", "lung_upper_lobe_left", "lung_lower_lobe_left",
    "lung_upper_lobe_right", "lung_middle_lobe_right", "lung_lower_lobe_right", "stomach", "inferior_vena_cava",
    "esophagus", "vertebrae_L1", "heart_myocardium",
)

#: Finding keys of the shared vocabulary (COMMON.md) per v1 class; organs absent here have only "normal".
ORGAN_FINDINGS: Dict[str, Tuple[str, ...]] = {
    "liver": ("liver_cyst", "hepatic_steatosis", "hepatomegaly", "liver_calcification", "liver_mass"),
    "gallbladder": ("gallstones", "gallbladder_wall_thickening"),
    "pancreas": ("pancreatic_atrophy", "pancreatic_cyst", "pancreatic_duct_dilation"),
    "spleen": ("splenomegaly", "splenic_calcification"),
    "aorta": ("aortic_calcification", "aortic_aneurysm"),
    "urinary_bladder": ("bladder_wall_thickening",),
    **{k: ("renal_cyst", "renal_stone", "hydronephrosis", "renal_atrophy") for k in ("kidney_left", "kidney_right")},
    **{k: ("adrenal_nodule",) for k in ("adrenal_gland_left", "adrenal_gland_right")},
    **{k: ("lung_nodule", "emphysema", "pleural_effusion") for k in
       ("lung_upper_lobe_left", "lung_lower_lobe_left", "lung_upper_lobe_right", "lung_middle_lobe_right",
        "lung_lower_lobe_right")},
}


# ---------------------------------------------------------------------------------------------- machine
def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo ("unknown" elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(threads: Optional[int] = None) -> Dict[str, Any]:
    """Cores, CPU model, memory, load, library versions and the date (UTC): what a result must carry."""
    info: Dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cores": os.cpu_count(), "cpu": cpu_model(),
        "python": platform.python_version(), "numpy": np.__version__, "threads": threads,
        "blas_threads": blas_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    try:
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    for mod in ("torch", "faiss", "sqlalchemy", "chromadb", "lancedb", "monai", "pydicom"):
        m = sys.modules.get(mod)
        if m is not None:
            info[mod] = getattr(m, "__version__", "?")
    return info


def interleaved_times(fns: Mapping[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> Dict[str, List[float]]:
    """Seconds of each ``fns[k]()`` over ``repeats`` rounds, one call of every function per round.

    The order alternates (reversed every other round) so that neither the baseline nor the variant always runs
    first: whatever the first call of a round pays (caches evicted by the other, clock ramp-up, load from other
    processes) falls on both alike.
    """
    names = list(fns)
    for _ in range(warmup):
        for k in names:
            fns[k]()
    times: Dict[str, List[float]] = {k: [] for k in names}
    for r in range(repeats):
        for k in (names if r % 2 == 0 else names[::-1]):
            t = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t)
    return times


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MiB): Linux VmHWM, since ru_maxrss survives exec and a
    child benchmark process would report its parent's size; ru_maxrss (KiB on Linux) elsewhere."""
    from ctglip_sdk.training.runinfo import peak_rss_mb as own_peak

    peak = own_peak()
    return float(peak) if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ---------------------------------------------------------------------------------------------- timing
@dataclass
class Stats:
    """Latency summary of repeated calls, in milliseconds."""

    n: int
    p50: float
    p99: float
    mean: float
    min: float

    def to_dict(self) -> Dict[str, float]:
        return {"n": self.n, "p50_ms": round(self.p50, 4), "p99_ms": round(self.p99, 4),
                "mean_ms": round(self.mean, 4), "min_ms": round(self.min, 4)}


def summarize(seconds: Sequence[float]) -> Stats:
    """p50/p99/mean/min in ms (p99 by linear interpolation; with < 100 samples it is close to the max)."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    if ms.size == 0:
        return Stats(0, float("nan"), float("nan"), float("nan"), float("nan"))
    return Stats(int(ms.size), float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), float(ms.mean()),
                 float(ms.min()))


def time_calls(fn: Callable[[Any], Any], args: Sequence[Any], warmup: int = 2) -> Tuple[List[float], List[Any]]:
    """Call ``fn(a)`` for each ``a`` (after ``warmup`` untimed calls on the first args); returns (seconds, outputs).

    The garbage collector is paused while timing so that one collection does not land in one system's p99.
    """
    for a in list(args)[:warmup]:
        fn(a)
    times, outs = [], []
    was = gc.isenabled()
    gc.disable()
    try:
        for a in args:
            t = time.perf_counter()
            out = fn(a)
            times.append(time.perf_counter() - t)
            outs.append(out)
    finally:
        if was:
            gc.enable()
    return times, outs


def median_time(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def recall_at_k(found: Iterable[Sequence[int]], truth: Iterable[Sequence[int]], k: int) -> float:
    """Mean |found ∩ truth| / min(k, |truth|) over queries (1.0 when the truth is empty)."""
    vals = []
    for f, t in zip(found, truth):
        t = list(t)[:k]
        if not t:
            vals.append(1.0)
            continue
        vals.append(len(set(list(f)[:k]) & set(t)) / len(t))
    return float(np.mean(vals)) if vals else float("nan")


# ---------------------------------------------------------------------------------------------- data
@dataclass
class OrganTable:
    """Synthetic organ rows: one study = one row per organ of STUDY_ORGANS, with the study's age and sex.

    ``vectors`` are unit float32 rows drawn around a centre per (organ, finding): organs are far apart, findings
    within an organ are closer, and each row has its own noise (real organ embeddings are clustered this way;
    uniform noise would make every approximate index look broken).
    """

    organ: np.ndarray        # int16 codes into STUDY_ORGANS
    finding: np.ndarray      # int16 codes into finding_names (0 = normal)
    age: np.ndarray          # float32 years, uniform in [20, 90)
    sex: np.ndarray          # '<U1' 'M'/'F'
    study: np.ndarray        # int32 study number
    vectors: np.ndarray      # float32 [N, D] unit rows
    centres: np.ndarray      # float32 [n_organs, n_findings, D] unit (organ, finding) centres
    finding_names: Tuple[str, ...]

    @property
    def n(self) -> int:
        return int(self.organ.size)

    def organ_names(self) -> np.ndarray:
        return np.asarray(STUDY_ORGANS, dtype=object)[self.organ]


def organ_table(n: int, dim: int, seed: int = 0, prevalence: float = 0.15, chunk: int = 200_000) -> OrganTable:
    """``n`` organ rows (rounded up to whole studies, then cut to ``n``) with clustered unit vectors.

    Example:
        >>> t = organ_table(1000, 32)
        >>> t.vectors.shape, round(float(np.linalg.norm(t.vectors[0])), 3)
        ((1000, 32), 1.0)
    """
    rng = np.random.default_rng(seed)
    n_org = len(STUDY_ORGANS)
    finding_names = ("normal",) + tuple(sorted({f for fs in ORGAN_FINDINGS.values() for f in fs}))
    fcode = {f: i for i, f in enumerate(finding_names)}
    # Centres: organ directions far apart (random in D dims are nearly orthogonal), findings a partial step away.
    organ_dir = _unit(rng.standard_normal((n_org, dim)))
    centres = np.zeros((n_org, len(finding_names), dim), np.float32)
    for o in range(n_org):
        centres[o] = _unit(organ_dir[o] + 0.6 * _unit(rng.standard_normal((len(finding_names), dim))))
        centres[o, 0] = organ_dir[o]
    n_studies = -(-n // n_org)
    study = np.repeat(np.arange(n_studies, dtype=np.int32), n_org)[:n]
    organ = np.tile(np.arange(n_org, dtype=np.int16), n_studies)[:n]
    age_s = rng.uniform(20.0, 90.0, n_studies).astype(np.float32)
    sex_s = np.where(rng.random(n_studies) < 0.5, "F", "M")
    finding = np.zeros(n, np.int16)
    has = rng.random(n) < prevalence
    for o, name in enumerate(STUDY_ORGANS):
        keys = ORGAN_FINDINGS.get(name, ())
        rows = np.flatnonzero(has & (organ == o))
        if keys and rows.size:
            finding[rows] = np.asarray([fcode[k] for k in keys], np.int16)[rng.integers(0, len(keys), rows.size)]
    vectors = np.empty((n, dim), np.float32)
    # Per-row noise with a per-cluster spread: some clusters are tight, some loose (as organs differ in variety).
    spread = rng.uniform(0.5, 0.9, (n_org, len(finding_names))).astype(np.float32)
    for s in range(0, n, chunk):
        o, f = organ[s:s + chunk], finding[s:s + chunk]
        noise = rng.standard_normal((o.size, dim)).astype(np.float32) / np.sqrt(dim)
        vectors[s:s + chunk] = _unit(centres[o, f] + spread[o, f][:, None] * noise)
    return OrganTable(organ, finding, age_s[study], sex_s[study], study, vectors, centres, finding_names)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def query_vectors(table: OrganTable, organs: Sequence[int], rng: np.random.Generator, noise: float = 0.5) -> np.ndarray:
    """One query per organ code: a random (organ, finding) centre of that organ plus noise (a text query of a
    trained model lands near the cluster it names, not exactly on it)."""
    out = np.empty((len(organs), table.vectors.shape[1]), np.float32)
    for i, o in enumerate(organs):
        keys = ORGAN_FINDINGS.get(STUDY_ORGANS[o], ())
        f = 0 if not keys or rng.random() < 0.3 else table.finding_names.index(keys[rng.integers(len(keys))])
        out[i] = table.centres[o, f] + noise * rng.standard_normal(out.shape[1]) / np.sqrt(out.shape[1])
    return _unit(out)


# ---------------------------------------------------------------------------------------------- index
def table_records(t: OrganTable) -> Iterator[Any]:
    """One ``SeriesEmbeddings`` per synthetic study of ``t``, with its metadata (a generator: memory holds one)."""
    from ctglip_sdk.index import SeriesEmbeddings

    starts = np.flatnonzero(np.r_[True, t.study[1:] != t.study[:-1]])
    ends = np.r_[starts[1:], t.n]
    names = t.organ_names()
    for s0, s1 in zip(starts, ends):
        s = int(t.study[s0])
        uid = f"2.25.1000{s}"
        m = int(s1 - s0)
        yield SeriesEmbeddings(
            series_uid=f"{uid}.1", organs=list(names[s0:s1]), vectors=t.vectors[s0:s1],
            volumes_ml=np.full(m, 100.0), study_uid=uid, patient_id=f"BENCH{s:08d}", sex=str(t.sex[s0]),
            age=float(t.age[s0]), study_date=dt.date(2015, 1, 1) + dt.timedelta(days=s % 3000),
            description="CT chest abdomen pelvis", contrast="portal_venous" if s % 3 else "none",
            body_part="chest_abdomen_pelvis", split="train", image=f"images/{s}", mask=f"masks/{s}.nii.gz",
            archive_root="/synthetic", shape=(128, 128, 133), spacing=(3.0, 3.0, 5.0))


def build_index(folder: Path, model: Any, t: OrganTable, batch_studies: int = 256,
                factory: Optional[str] = None) -> Dict[str, Any]:
    """Write ``t`` into a new ArchiveIndex with the public ``add_embeddings`` (ingest's write path); timings.

    ``factory`` None = the automatic FAISS type for the size (chosen at the end of ``add_embeddings``, as at the
    end of an ingest), else that factory string (``create(factory=...)``: built once, at the end).
    """
    from ctglip_sdk.index import ArchiveIndex

    t0 = time.perf_counter()
    idx = ArchiveIndex.create(folder, model=model, factory=factory)
    rep = idx.add_embeddings(table_records(t), config_hash=model.config_hash, batch_size=batch_studies,
                             source="synthetic://bench_query")
    if rep.organs_added != t.n:
        raise RuntimeError(f"add_embeddings stored {rep.organs_added} organs, expected {t.n}: {rep.summary()}")
    ann = idx.ann.describe() if idx.ann is not None else {}
    idx.close()
    t_write, t_faiss = rep.timings["write"], rep.timings["faiss"]
    return {"create_and_write_s": round(time.perf_counter() - t0 - t_faiss, 3), "write_batch_s": round(t_write, 3),
            "check_s": round(rep.timings["plan"], 3), "rows_per_s": round(t.n / max(t_write, 1e-9)),
            "faiss_build_s": round(t_faiss, 3), "faiss": ann}


# ---------------------------------------------------------------------------------------------- model
def load_model(prefer: str = "ctglip-tiny-synthetic", fallback: str = "ctglip-tiny") -> Tuple[Any, str]:
    """The bundled trained model when this install has it, else ``fallback`` with random weights (fine for speed).

    Returns ``(model, description)``; the description says which one, for the output.
    """
    import ctglip_sdk as cg

    try:
        names = {m if isinstance(m, str) else getattr(m, "name", str(m)) for m in cg.list_models()}
        info = cg.model.model_info(prefer) if prefer in names else None
        if info and info.get("has_weights"):
            return cg.load(prefer), f"{prefer} (bundled trained weights)"
    except cg.CTGlipError:
        pass
    return cg.create(fallback, seed=0), f"{fallback} (random weights: speed only)"


# ---------------------------------------------------------------------------------------------- output
def fmt(v: Any, digits: int = 3) -> str:
    """Compact number formatting for tables (3 significant digits; '-' for None/NaN)."""
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    v = float(v)
    if v != v:
        return "-"
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: Optional[str] = None) -> str:
    """Print (and return) a Markdown table; cells are formatted with :func:`fmt`."""
    cells = [[fmt(c) for c in r] for r in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h)) for i, h in enumerate(headers)]
    lines = []
    if title:
        lines.append(f"\n{title}")
    lines.append("| " + " | ".join(str(h).ljust(w) for h, w in zip(headers, widths)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells:
        lines.append("| " + " | ".join(c.rjust(w) for c, w in zip(r, widths)) + " |")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def run_command(cmd: List[str]) -> str:
    """Run a CLI step as a subprocess (what a user would type), echo it, and stop the script if it fails."""
    print("$", " ".join(cmd), flush=True)
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        sys.stderr.write(res.stderr[-4000:])
        raise SystemExit(f"command failed ({res.returncode}): {' '.join(cmd)}")
    return res.stdout


def write_json(path: Optional[str], payload: Mapping[str, Any]) -> None:
    """Write ``payload`` as indented JSON (numpy scalars converted); no-op when ``path`` is None."""
    if not path:
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(payload, indent=2, default=_json_default))
    print(f"JSON written to {p}", flush=True)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return None if o != o else float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def skip(name: str, reason: str) -> Dict[str, str]:
    """Print why a row is skipped and return the JSON record of it."""
    print(f"[skip] {name}: {reason}", flush=True)
    return {"skipped": True, "reason": reason}
