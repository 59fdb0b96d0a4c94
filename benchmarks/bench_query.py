"""Filtered organ search: ArchiveIndex.search against numpy brute force, ChromaDB and LanceDB on the same data.

For each size N (quick: 1e4, 1e5; full: 1e4, 1e5, 1e6) the script draws N organ rows with clustered unit vectors
at the model's dimension (20 organs per study, a centre per (organ, finding), per-row noise; common.organ_table)
and study metadata (age uniform in [20, 90), sex 50/50). Vectors are rounded through float16 first, as the
index stores them, so that every system holds the same numbers and exact search is one truth.

The ArchiveIndex is built with the public ``ArchiveIndex.add_embeddings`` (ingest's own write path: float16
vector file, SQL rows in one transaction per batch, in-memory mirror, FAISS) from one ``SeriesEmbeddings`` per
synthetic study, because embedding 1e4..1e6 organs from DICOM would measure the encoder, not search
(bench_ingest.py does that); the FAISS type is the automatic one for the size (index/ann.py: ``choose_factory``,
re-chosen at the end of ``add_embeddings`` as at the end of an ingest) unless ``--factory`` is given, and the
index is then closed and reopened with ``ArchiveIndex.open`` (timed).

Filters on organ, sex and age hit ≈100 % / 10 % / 1 % / 0.1 % of the rows (each query draws its own organ and
age window). Per selectivity, k = 10:
- ``index text``: ``idx.search(text, rank="cosine")`` end to end (distinct texts, so the text encoder runs every
  time; warm-up queries are never timed, so no timed text is in the index's text cache), filter, vector search
  and the SQL metadata join of the hits. ``rank="cosine"`` because the default ``"auto"`` ranks a text that
  names one dictionary finding by that finding's margin *over the finding's organs only*: the "100 %" cell would
  search one organ (5 %) and the 10 % cells one of their two organs;
- ``index vector``: ``idx.search(vector)`` end to end without the text encoder; ``vector part`` is its
  filter + search time (``SearchResults.plan.timings_ms``), without the SQL join;
- ``index SQL filter``: the same with a non-mirrored key added that every row passes (``volume_ml >= 0``), which
  sends the filter to SQL (what any filter outside organ/age/sex/date/contrast/body part/split costs);
- ``numpy``: mask -> gather -> matvec -> argpartition on in-memory arrays (exact: the truth for recall@10), timed
  with 1 OpenBLAS thread (with 2, every matvec over ~2k rows waits for a descheduled thread on a busy machine:
  the scheduler, not numpy, would be timed); where OpenBLAS cannot be set, in 1,024-row blocks as the planner
  scores (the JSON's ``numpy_baseline`` says which);
- ``chroma``: embedded PersistentClient, HNSW (ip), ``where`` filter (up to ``--chroma-max-n``: quick 1e4,
  full 2e5; ingesting 1e6 would take ~7 min at ~2.4k vectors/s); ``lance``: embedded, ``prefilter=True``, with
  scalar indexes on the filter columns; flat (no vector index) in quick mode and above ``--lance-index-max-n``
  (2e5: building IVF_HNSW_SQ took 45 s at 1e5 on 2 cores, minutes at 1e6), IVF_HNSW_SQ from 1e5 in full mode.
Exact paths report GB/s (bytes of float32 vectors scanned / time) next to a reference bandwidth of 21 GB/s
measured once on these machines (domain/baselines.md; not measured by this run, so not a floor).
``--threads`` sets the OpenBLAS/OpenMP/torch/FAISS pools (common.py exports it before numpy loads).
``--workdir`` keeps the scratch folders there; only the folders this script creates (idx-N, chroma-N, lance-N)
are removed after each size, never other files of that folder.
Usage: python benchmarks/bench_query.py [--quick] [--json-out PATH] [--sizes 10000 100000] [--no-peers]
       [--factory IVF1024,Flat] [--chroma-max-n N] [--lance-max-n N] [--lance-index IVF_HNSW_SQ]
       [--lance-index-max-n N] [--threads N] [--workdir DIR]
"""

from __future__ import annotations

import os

# LanceDB's Rust logger warns on every query that selects columns without `_distance` (hundreds of lines).
os.environ.setdefault("LANCEDB_LOG", "error")

import argparse  # noqa: E402
import gc  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections import Counter  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402 - first: it exports --threads before numpy loads

import numpy as np  # noqa: E402

K = 10
SELECTIVITIES = (1.0, 0.1, 0.01, 0.001)
AGE_LO, AGE_HI = 20.0, 90.0
#: Untimed warm-up queries per system and selectivity (their own filters and texts, see run_selectivity).
WARMUP = 2
NUMPY = "numpy (mask, gather, matvec)"
#: Rows per matvec of the numpy baseline when OpenBLAS's thread count cannot be set (the planner's block).
NUMPY_BLOCK = 1024


# ------------------------------------------------------------------------------------------------ filters
@dataclass(frozen=True)
class Filter:
    """One query's filter: organ codes (None = all), sex, and an age window; rendered for every system."""

    target: float
    organs: Optional[Tuple[int, ...]] = None
    sex: Optional[str] = None
    age: Optional[Tuple[float, float]] = None

    def mask(self, t: C.OrganTable) -> Optional[np.ndarray]:
        m: Optional[np.ndarray] = None
        if self.organs is not None:
            m = np.zeros(t.n, bool)
            for o in self.organs:
                m |= t.organ == o
        if self.sex is not None:
            x = t.sex == self.sex
            m = x if m is None else m & x
        if self.age is not None:
            x = (t.age >= self.age[0]) & (t.age <= self.age[1])
            m = x if m is None else m & x
        return m

    def organ_names(self) -> Optional[List[str]]:
        return None if self.organs is None else [C.STUDY_ORGANS[o] for o in self.organs]

    def where(self) -> Optional[Dict[str, Any]]:
        w: Dict[str, Any] = {}
        if self.sex is not None:
            w["sex"] = self.sex
        if self.age is not None:
            w["age"] = self.age
        return w or None

    def chroma_where(self) -> Optional[Dict[str, Any]]:
        parts: List[Dict[str, Any]] = []
        if self.organs is not None:
            parts.append({"organ": {"$in": self.organ_names()}})
        if self.sex is not None:
            parts.append({"sex": self.sex})
        if self.age is not None:
            parts += [{"age": {"$gte": self.age[0]}}, {"age": {"$lte": self.age[1]}}]
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else {"$and": parts}

    def sql(self) -> Optional[str]:
        parts = []
        if self.organs is not None:
            parts.append("organ IN (" + ", ".join(f"'{n}'" for n in self.organ_names()) + ")")
        if self.sex is not None:
            parts.append(f"sex = '{self.sex}'")
        if self.age is not None:
            parts.append(f"age >= {self.age[0]} AND age <= {self.age[1]}")
        return " AND ".join(parts) or None


def make_filters(target: float, n: int, rng: np.random.Generator) -> List[Filter]:
    """``n`` filters hitting about ``target`` of the rows (each organ is 5 %, each sex 50 %, ages uniform)."""
    n_org = len(C.STUDY_ORGANS)
    out = []
    for i in range(n):
        if target >= 1.0:
            out.append(Filter(target))
        elif target >= 0.1:  # two organ classes = 10 %
            a = int(rng.integers(n_org))
            out.append(Filter(target, organs=(a, (a + 1 + int(rng.integers(n_org - 1))) % n_org)))
        else:  # one organ (5 %) x one sex (50 %) x an age window of (target / 2.5 %) of the 70-year range
            width = (AGE_HI - AGE_LO) * target / 0.025
            lo = round(float(rng.uniform(AGE_LO, AGE_HI - width)), 1)
            out.append(Filter(target, organs=(int(rng.integers(n_org)),), sex="F" if i % 2 else "M",
                              age=(lo, round(lo + width, 1))))
    return out


def query_texts(filters: Sequence[Filter], rng: np.random.Generator, salt: str) -> List[str]:
    """Distinct radiology-style query texts (distinct so that the index's text cache never answers)."""
    out = []
    for i, f in enumerate(filters):
        organ = C.STUDY_ORGANS[f.organs[0]] if f.organs else C.STUDY_ORGANS[int(rng.integers(len(C.STUDY_ORGANS)))]
        keys = C.ORGAN_FINDINGS.get(organ, ("abnormality",))
        finding = keys[int(rng.integers(len(keys)))].replace("_", " ")
        out.append(f"{finding} of the {organ.replace('_', ' ')}, about {int(rng.integers(3, 60))} mm ({salt}{i})")
    return out


# ------------------------------------------------------------------------------------------------ systems
def exact_ids(t: C.OrganTable, q: np.ndarray, f: Filter, block: Optional[int] = None) -> Tuple[np.ndarray, int]:
    """numpy brute force: mask -> gather -> matvec -> top-k; returns (row numbers best first, rows scanned).

    ``block``: score in matvecs of that many rows (the baseline's fallback when OpenBLAS cannot be pinned).
    """
    m = f.mask(t)
    base = None if m is None else np.flatnonzero(m)
    if block is None:
        s = t.vectors @ q if base is None else t.vectors[base] @ q
    else:
        n_rows = t.n if base is None else base.size
        s = np.empty(n_rows, np.float32)
        for b in range(0, n_rows, block):
            s[b:b + block] = (t.vectors[b:b + block] if base is None else t.vectors[base[b:b + block]]) @ q
    n = s.shape[0]
    if n == 0:
        return np.zeros(0, np.int64), 0
    kk = min(K, n)
    top = np.argpartition(-s, kk - 1)[:kk] if kk < n else np.arange(n)
    top = top[np.argsort(-s[top])]
    return (top if base is None else base[top]), n


def build_chroma(folder: Path, t: C.OrganTable) -> Tuple[Any, float]:
    import chromadb

    client = chromadb.PersistentClient(path=str(folder))
    col = client.create_collection("bench-organs", configuration={"hnsw": {"space": "ip"}})
    names = t.organ_names()
    step = min(5000, int(getattr(client, "get_max_batch_size", lambda: 5000)()))
    t0 = time.perf_counter()
    for s in range(0, t.n, step):
        e = min(t.n, s + step)
        col.add(ids=[str(i) for i in range(s, e)], embeddings=t.vectors[s:e],
                metadatas=[{"organ": str(names[i]), "age": float(t.age[i]), "sex": str(t.sex[i])} for i in range(s, e)])
    return col, time.perf_counter() - t0


def build_lance(folder: Path, t: C.OrganTable, index_type: Optional[str]) -> Tuple[Any, float, str]:
    import lancedb
    import pyarrow as pa

    db = lancedb.connect(str(folder))
    t0 = time.perf_counter()
    data = pa.table({"id": pa.array(np.arange(t.n, dtype=np.int64)), "organ": pa.array(t.organ_names().astype(str)),
                     "age": pa.array(t.age), "sex": pa.array(t.sex.astype(str)),
                     "vector": pa.FixedSizeListArray.from_arrays(pa.array(t.vectors.ravel()), t.vectors.shape[1])})
    tbl = db.create_table("organs", data)
    desc = "flat (no vector index)"
    if index_type:
        tbl.create_index(metric="dot", index_type=index_type)
        desc = f"{index_type} (defaults)"
    with warnings.catch_warnings():  # create_scalar_index is deprecated in favour of config objects; same index
        warnings.simplefilter("ignore")
        for col, kind in (("organ", "BITMAP"), ("sex", "BITMAP"), ("age", "BTREE")):
            tbl.create_scalar_index(col, index_type=kind)
    return tbl, time.perf_counter() - t0, desc + ", scalar indexes on organ/sex/age"


# ------------------------------------------------------------------------------------------------ one size
def run_size(n: int, args: argparse.Namespace, model: Any, work: Path) -> Dict[str, Any]:
    rng = np.random.default_rng(args.seed + n)
    t0 = time.perf_counter()
    t = C.organ_table(n, model.embed_dim, seed=args.seed)
    t.vectors[:] = t.vectors.astype(np.float16).astype(np.float32)  # what the index stores (float16 file)
    gen_s = time.perf_counter() - t0
    out: Dict[str, Any] = {"n": n, "dim": int(model.embed_dim), "generate_s": round(gen_s, 2), "rows": []}
    print(f"\n## N = {n:,} organ vectors x {model.embed_dim} (generated in {gen_s:.1f} s)", flush=True)

    from ctglip_sdk.index import ArchiveIndex

    folder = work / f"idx-{n}"
    out["index_build"] = C.build_index(folder, model, t, factory=args.factory)
    t0 = time.perf_counter()
    idx = ArchiveIndex.open(folder, model=model)
    out["index_build"]["open_s"] = round(time.perf_counter() - t0, 3)
    view = idx.mirror.view()
    if view.n != n or view.ids[0] != 1 or view.ids[-1] != n:
        raise RuntimeError(f"index holds {view.n} organs with ids {view.ids[:1]}..{view.ids[-1:]}, expected 1..{n}")
    print(f"index: write {out['index_build']['write_batch_s']} s ({out['index_build']['rows_per_s']:,} rows/s), "
          f"FAISS {out['index_build']['faiss']}, build {out['index_build']['faiss_build_s']} s, "
          f"open {out['index_build']['open_s']} s", flush=True)

    peers: Dict[str, Any] = {}
    out["peers"] = {}
    if args.no_peers:
        out["peers"]["chroma"] = C.skip("chroma", "--no-peers")
        out["peers"]["lance"] = C.skip("lance", "--no-peers")
    else:
        if n > args.chroma_max_n:
            out["peers"]["chroma"] = C.skip("chroma", f"N = {n:,} > --chroma-max-n {args.chroma_max_n:,} (Chroma "
                                            "ingests ≈2.4k vectors/s here; raise the flag to include it)")
        else:
            try:
                col, secs = build_chroma(work / f"chroma-{n}", t)
                peers["chroma"] = col
                out["peers"]["chroma"] = {"ingest_s": round(secs, 2), "vectors_per_s": round(n / secs)}
                print(f"chroma: ingest {secs:.1f} s ({n / secs:,.0f} vectors/s)", flush=True)
            except ImportError as exc:
                out["peers"]["chroma"] = C.skip("chroma", f"not installed ({exc}); pip install '.[bench]'")
        if n > args.lance_max_n:
            out["peers"]["lance"] = C.skip("lance", f"N = {n:,} > --lance-max-n {args.lance_max_n:,} (raise the "
                                           "flag to include it)")
        else:
            try:
                itype = args.lance_index if (args.lance_index and args.lance_index_min_n <= n
                                             <= args.lance_index_max_n) else None
                if args.lance_index and n > args.lance_index_max_n:
                    print(f"[lance] N = {n:,} > --lance-index-max-n {args.lance_index_max_n:,}: flat scan, no "
                          f"{args.lance_index} index (its build took 45 s at 1e5 here; raise the flag to build it)",
                          flush=True)
                tbl, secs, desc = build_lance(work / f"lance-{n}", t, itype)
                peers["lance"] = tbl
                out["peers"]["lance"] = {"build_s": round(secs, 2), "index": desc}
                print(f"lance: build {secs:.1f} s ({desc})", flush=True)
            except ImportError as exc:
                out["peers"]["lance"] = C.skip("lance", f"not installed ({exc}); pip install '.[bench]'")

    for target in SELECTIVITIES:
        out["rows"] += run_selectivity(t, idx, model, peers, target, args, rng)
    idx.close()
    del idx, peers
    gc.collect()
    remove_size_folders(work, n)
    return out


def size_folders(work: Path, n: int) -> List[Path]:
    """The scratch folders :func:`run_size` creates for size ``n`` inside ``work`` (and nothing else there)."""
    return [work / f"{kind}-{n}" for kind in ("idx", "chroma", "lance")]


def remove_size_folders(work: Path, n: int) -> None:
    """Free the disk of one size before the next: only this script's folders, since ``work`` may be a user's
    ``--workdir`` holding other files (the whole folder used to be removed)."""
    for folder in size_folders(work, n):
        shutil.rmtree(folder, ignore_errors=True)


def run_selectivity(t: C.OrganTable, idx: Any, model: Any, peers: Dict[str, Any], target: float,
                    args: argparse.Namespace, rng: np.random.Generator) -> List[Dict[str, Any]]:
    nq = args.queries
    # Queries nq.. nq+WARMUP-1 are the warm-up: own filters and texts, never timed, so that no timed text is
    # already in the index's text cache (warming up on the first timed queries made two of them cache hits).
    filters = make_filters(target, nq + WARMUP, rng)
    qv = C.query_vectors(t, [f.organs[0] if f.organs else int(rng.integers(len(C.STUDY_ORGANS))) for f in filters], rng)
    texts = query_texts(filters, rng, salt=f"{t.n}-{target}-")
    tv = model.encode_text(texts[:nq])  # the vectors idx.search(text, rank="cosine") uses (for its exact truth)
    masks = [f.mask(t) for f in filters[:nq]]
    sel = float(np.mean([1.0 if m is None else m.mean() for m in masks]))
    truth = [exact_ids(t, q, f)[0] for q, f in zip(qv, filters)]
    truth_t = [exact_ids(t, q, f)[0] for q, f in zip(tv, filters)]
    bytes_per_row = t.vectors.shape[1] * 4
    blas_get, blas_set = C._openblas_calls()
    block = None if blas_set is not None else NUMPY_BLOCK

    def idx_call(q: Any, f: Filter, extra: Optional[Dict[str, Any]] = None, rank: str = "auto") -> Any:
        where = dict(f.where() or {}, **(extra or {})) or None
        return idx.search(q, k=K, organ=f.organ_names(), where=where, rank=rank)

    systems: Dict[str, Tuple[Callable[[int], Any], int]] = {
        NUMPY: (lambda i: exact_ids(t, qv[i], filters[i], block), nq),
        "index vector (e2e)": (lambda i: idx_call(qv[i], filters[i]), nq),
        # rank="cosine": "auto" would rank a one-finding text over that finding's organs only (not this filter)
        "index text (e2e, cosine)": (lambda i: idx_call(texts[i], filters[i], rank="cosine"), args.text_queries),
        "index SQL filter (e2e)": (lambda i: idx_call(qv[i], filters[i], {"volume_ml": (0, None)}), args.sql_queries),
    }
    if "chroma" in peers:
        col = peers["chroma"]
        systems["chroma (HNSW, where)"] = (lambda i: col.query(query_embeddings=[qv[i]], n_results=K,
                                                               where=filters[i].chroma_where()), args.peer_queries)
    if "lance" in peers:
        tbl = peers["lance"]

        def lance(i: int) -> Any:
            s = tbl.search(qv[i]).metric("dot").limit(K).select(["id", "organ", "age", "sex"])
            w = filters[i].sql()
            if w:
                s = s.where(w, prefilter=True)
            return s.to_arrow()

        systems["lance (prefilter)"] = (lance, args.peer_queries)

    times: Dict[str, List[float]] = {k: [] for k in systems}
    results: Dict[str, List[Any]] = {k: [] for k in systems}
    threads = blas_get() if blas_get is not None else None
    for name, (fn, m) in systems.items():  # warm-up on the untimed queries: imports, caches, thread pools
        for i in range(nq, nq + WARMUP):
            fn(i)
    order = list(systems)
    gc.disable()
    try:
        for i in range(nq):  # round robin, reversed every other query: load hits every system alike
            for name in (order if i % 2 == 0 else order[::-1]):
                fn, m = systems[name]
                if i >= m:
                    continue
                if name == NUMPY and blas_set is not None:
                    blas_set(1)  # set outside the timed call
                t0 = time.perf_counter()
                r = fn(i)
                times[name].append(time.perf_counter() - t0)
                if name == NUMPY and blas_set is not None and threads is not None:
                    blas_set(threads)
                results[name].append(r)
    finally:
        gc.enable()

    rows = []
    np_p50 = C.summarize(times[NUMPY]).p50
    for name in systems:
        st = C.summarize(times[name])
        m = len(times[name])
        row: Dict[str, Any] = {"system": name, "target": target, "selectivity": round(sel, 5), **st.to_dict()}
        res = results[name]
        if name.startswith("numpy"):
            found = [r[0] for r in res]
            scanned = np.mean([r[1] for r in res])
            row["recall@10"] = 1.0
            row["numpy_baseline"] = "1 BLAS thread" if block is None else f"{block}-row blocks"
            row["bytes_scanned"] = int(scanned * bytes_per_row)
        elif name.startswith("index"):
            found = [np.asarray(r.crop_ids, np.int64) - 1 for r in res]
            plans = [r.plan for r in res]
            row["strategy"] = Counter(p.strategy for p in plans).most_common(1)[0][0]
            row["filter_source"] = Counter(p.source for p in plans).most_common(1)[0][0]
            row["recall@10"] = C.recall_at_k(found, (truth_t if "text" in name else truth)[:m], K)
            vec_part = [(p.timings_ms.get("filter", 0) + p.timings_ms.get("search", 0)) / 1e3 for p in plans]
            hyd = [p.timings_ms.get("hydrate", 0) / 1e3 for p in plans]
            row["vector_part"] = C.summarize(vec_part).to_dict()
            row["hydrate_p50_ms"] = round(C.summarize(hyd).p50, 4)
            flat = idx.ann is not None and idx.ann.kind == "flat"
            if row["strategy"] in ("exact", "scan") or (row["strategy"] == "faiss" and flat):
                # FAISS Flat (with or without a bitmap) scans every row: an exact path too.
                rows_read = np.mean([p.n_candidates if p.strategy == "exact" else 0 if p.strategy == "empty"
                                     else p.n_total for p in plans])
                row["bytes_scanned"] = int(rows_read * bytes_per_row)
        elif name.startswith("chroma"):
            found = [np.asarray([int(x) for x in r["ids"][0]], np.int64) for r in res]
            row["recall@10"] = C.recall_at_k(found, truth[:m], K)
        else:
            found = [np.asarray(r.column("id").to_numpy(), np.int64) for r in res]
            row["recall@10"] = C.recall_at_k(found, truth[:m], K)
        if "bytes_scanned" in row:
            base = row["vector_part"]["p50_ms"] if "vector_part" in row else st.p50
            row["bandwidth_gbs"] = round(row["bytes_scanned"] / (base / 1e3) / 1e9, 2) if base > 0 else None
            row["floor_ms"] = round(row["bytes_scanned"] / (C.BANDWIDTH_GBS * 1e9) * 1e3, 4)  # at the reference
        row["numpy_over_this_p50"] = round(np_p50 / st.p50, 3) if st.p50 > 0 else None
        rows.append(row)
    index_row = next(r for r in rows if r["system"] == "index vector (e2e)")
    index_row["numpy_over_vector_part_p50"] = round(np_p50 / index_row["vector_part"]["p50_ms"], 3) \
        if index_row["vector_part"]["p50_ms"] > 0 else None
    for r in rows:
        if r["system"].startswith(("chroma", "lance")):
            r["this_over_index_vector_p50"] = round(r["p50_ms"] / index_row["p50_ms"], 3)
    return rows


# ------------------------------------------------------------------------------------------------ main
def print_size(res: Dict[str, Any]) -> None:
    table = []
    for r in res["rows"]:
        vp = r.get("vector_part", {})
        table.append([f"{r['target']:.1%}", r["system"], f"{r['selectivity']:.3%}", r["n"], r["p50_ms"], r["p99_ms"],
                      vp.get("p50_ms"), vp.get("p99_ms"), r.get("recall@10"), r.get("strategy", "-"),
                      r.get("bandwidth_gbs"), r.get("numpy_over_this_p50")])
    C.print_table(["filter", "system", "actual sel.", "queries", "p50 ms", "p99 ms", "vector part p50",
                   "vector part p99", "recall@10", "plan", "GB/s", "numpy/this"], table,
                  title=f"N = {res['n']:,} (k = {K}; 'vector part' = the index's filter + search, no SQL join; "
                        f"numpy: {res['rows'][0].get('numpy_baseline', '?')}; text: rank='cosine')")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N = 1e4, 1e5; fewer queries; Chroma at 1e4 only")
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--sizes", type=int, nargs="*", default=None)
    ap.add_argument("--queries", type=int, default=None, help="queries per selectivity (index and numpy)")
    ap.add_argument("--peer-queries", type=int, default=None, help="queries per selectivity for Chroma/LanceDB")
    ap.add_argument("--text-queries", type=int, default=None, help="queries per selectivity with text")
    ap.add_argument("--sql-queries", type=int, default=None, help="queries per selectivity on the SQL filter path")
    ap.add_argument("--chroma-max-n", type=int, default=None,
                    help="largest N ingested into Chroma (quick 1e4, full 2e5; 0 = skip Chroma)")
    ap.add_argument("--lance-max-n", type=int, default=None,
                    help="largest N loaded into LanceDB (default: every size; 0 = skip LanceDB)")
    ap.add_argument("--lance-index", default=None, help="LanceDB vector index type ('' = none)")
    ap.add_argument("--lance-index-min-n", type=int, default=100_000, help="smallest N given a LanceDB index")
    ap.add_argument("--lance-index-max-n", type=int, default=200_000,
                    help="largest N given a LanceDB index; above it LanceDB scans flat (exact)")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--factory", default=None, help="FAISS factory of the index (default: automatic by size)")
    ap.add_argument("--threads", type=int, default=2, help="BLAS/OpenMP/torch/FAISS threads (numpy baseline: 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None,
                    help="scratch folder (default: a temp folder, removed); in a given folder only the script's "
                         "own idx-N/chroma-N/lance-N folders are removed")
    args = ap.parse_args()
    quick = args.quick
    args.sizes = args.sizes or ([10_000, 100_000] if quick else [10_000, 100_000, 1_000_000])
    args.queries = args.queries or (50 if quick else 200)
    args.text_queries = args.text_queries or (20 if quick else 100)
    args.peer_queries = args.peer_queries or (20 if quick else 50)
    args.sql_queries = args.sql_queries or (10 if quick else 30)
    if args.chroma_max_n is None:
        args.chroma_max_n = 10_000 if quick else 200_000
    if args.lance_max_n is None:
        args.lance_max_n = max(args.sizes)
    if args.lance_index is None:
        args.lance_index = None if quick else "IVF_HNSW_SQ"
    args.lance_index = args.lance_index or None
    logging.basicConfig(level=logging.WARNING)
    C.set_threads(args.threads)
    model, model_desc = C.load_model()
    import faiss  # noqa: F401 - so that machine_info records its version

    for mod in ("chromadb", "lancedb", "sqlalchemy"):
        try:
            __import__(mod)
        except ImportError:
            pass
    print(f"bench_query ({'quick' if quick else 'full'}): model {model_desc}, dim {model.embed_dim}, "
          f"{args.threads} threads (OpenBLAS now {C.blas_threads()}), sizes {args.sizes}", flush=True)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-query-"))
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    sizes = []
    try:
        for n in args.sizes:
            res = run_size(n, args, model, work)
            print_size(res)
            sizes.append(res)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    payload = {"benchmark": "query", "mode": "quick" if quick else "full", "machine": C.machine_info(args.threads),
               "model": model_desc, "dim": int(model.embed_dim), "k": K, "bandwidth_reference_gbs": C.BANDWIDTH_GBS,
               "queries": {"index_numpy": args.queries, "text": args.text_queries, "peers": args.peer_queries,
                           "sql": args.sql_queries},
               "command": " ".join([Path(sys.executable).name, *sys.argv]),
               "seconds": round(time.perf_counter() - t_start, 1), "sizes": sizes,
               "peak_rss_mb": round(C.peak_rss_mb())}
    C.write_json(args.json_out, payload)
    print(f"bench_query done in {payload['seconds']} s (peak RSS {payload['peak_rss_mb']} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
