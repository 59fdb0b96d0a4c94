"""Where IVF starts beating Flat (index/ann.py: FLAT_MAX): the planner's filtered search on both, interleaved.

For each N (default 2e4, 5e4, 1e5, 2e5) at the model's dimension (128), clustered unit vectors rounded through
float16 (common.organ_table, as bench_query.py), the script builds the two FAISS indexes the library would hold:
``Flat`` and the automatic IVF (``IVF{nlist},Flat``, nlist ≈ 4·sqrt(N), trained and ``tune()``d to recall@10
>= 0.95 as ``ArchiveIndex.rebuild`` does), then runs the same queries through ``Planner.search`` (filter from
the in-memory mirror, path chosen by size: exact on the gathered subset, masked scan, or FAISS with a bitmap
and nprobe widened by 1/selectivity) against each index, query by query in turn (round robin, Flat first on
even queries and IVF first on odd ones, so that load from other processes and whatever the first call pays hit
both alike). Filters as in bench_query.py: none (100 %), two organs (10 %), organ x
sex x age window (1 %, 0.1 %). Half the queries are noisy cluster centres (common.query_vectors: near the data,
top-1 cosine ~0.8), half the model's text vectors of radiology phrases (far from these synthetic vectors, top-1
cosine ~0.3, as text queries are from organ vectors: the modality gap). Reports p50 per path over all queries,
the Flat/IVF ratio of p50s, IVF recall@10 against exact search over the same filter for each query kind, and the
paths taken.
``--threads`` reaches OpenBLAS (the planner's exact paths), OpenMP, torch and FAISS (common.py exports it before
numpy loads); the exact truth is computed untimed, so no numpy baseline is timed here.
This is a tuning measurement, not part of ``make bench`` (run.py runs ``bench_*.py`` only).
Usage: python benchmarks/ann_crossover.py [--quick] [--sizes 20000 50000 100000 200000] [--queries 40]
       [--rounds 3] [--recall-queries 300] [--threads N] [--json-out PATH]
"""

from __future__ import annotations

import argparse  # noqa: E402
import gc  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Dict, List  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402 - first: it exports --threads before numpy loads

import numpy as np  # noqa: E402
from bench_query import K, SELECTIVITIES, exact_ids, make_filters, query_texts  # noqa: E402


def build_pair(t: C.OrganTable, model: Any) -> Dict[str, Any]:
    """Mirror of ``t`` plus the Flat and the automatic IVF index over it (ids 1..N, as an index numbers them)."""
    from ctglip_sdk.index.ann import AnnIndex, _nlist_for, text_queries
    from ctglip_sdk.index.mirror import Mirror

    ids = np.arange(1, t.n + 1, dtype=np.int64)
    names = t.organ_names()
    mirror = Mirror(t.vectors.shape[1])
    mirror.load([(int(i), str(names[r]), float(t.age[r]), str(t.sex[r]), None, None, None, None)
                 for r, i in enumerate(ids)], t.vectors)
    flat = AnnIndex.build(t.vectors.shape[1], "Flat")
    flat.add(ids, t.vectors)
    factory = f"IVF{_nlist_for(t.n)},Flat"
    t0 = time.perf_counter()
    ivf = AnnIndex.build(t.vectors.shape[1], factory)
    ivf.train(t.vectors)
    for s in range(0, t.n, 65536):
        ivf.add(ids[s:s + 65536], t.vectors[s:s + 65536])
    ivf.tune(ids, t.vectors, target_recall=0.95, queries=text_queries(model))  # as ArchiveIndex._build_ann
    return {"view": mirror.view(), "flat": flat, "ivf": ivf, "factory": factory,
            "build_s": round(time.perf_counter() - t0, 2), **ivf.params, "tuned_recall": ivf.tuned_recall}


def run_size(n: int, args: argparse.Namespace, model: Any) -> Dict[str, Any]:
    from ctglip_sdk.index.filters import parse_where
    from ctglip_sdk.index.planner import Planner

    t = C.organ_table(n, args.dim, seed=args.seed)
    t.vectors[:] = t.vectors.astype(np.float16).astype(np.float32)
    pair = build_pair(t, model)
    view, planner = pair["view"], Planner()
    rng = np.random.default_rng(args.seed + n)
    out: Dict[str, Any] = {"n": n, "dim": args.dim, "rows": [],
                           **{k: v for k, v in pair.items() if k not in ("view", "flat", "ivf")}}
    # Unfiltered recall on many text queries (batch, untimed): the per-cell samples below are small.
    texts = query_texts(make_filters(1.0, args.recall_queries, rng), rng, salt=f"recall-{n}-")
    q = np.ascontiguousarray(model.encode_text(texts), dtype=np.float32)
    truth = np.argsort(-(q @ t.vectors.T), axis=1)[:, :K] + 1
    _s, found = pair["ivf"].search(q, K)
    out["ivf_text_recall@10_unfiltered"] = round(C.recall_at_k(found, truth, K), 4)
    out["recall_queries"] = args.recall_queries
    for target in SELECTIVITIES:
        filters = make_filters(target, args.queries, rng)
        half = args.queries // 2
        qv = C.query_vectors(t, [f.organs[0] if f.organs else int(rng.integers(len(C.STUDY_ORGANS)))
                                 for f in filters[:half]], rng)
        qv = np.concatenate([qv, model.encode_text(query_texts(filters[half:], rng, salt=f"{n}-{target}-"))])
        qv = np.ascontiguousarray(qv, dtype=np.float32)
        conds = [parse_where(f.where()) for f in filters]
        truth = [exact_ids(t, q, f)[0] + 1 for q, f in zip(qv, filters)]  # rows -> ids
        times: Dict[str, List[float]] = {"flat": [], "ivf": []}
        found: Dict[str, List[np.ndarray]] = {"flat": [], "ivf": []}
        plans: Dict[str, Counter] = {"flat": Counter(), "ivf": Counter()}
        for kind in ("flat", "ivf"):  # warm-up
            planner.search(view, pair[kind], qv[0], K, filters[0].organ_names(), conds[0], sql_ids=lambda: None)
        gc.disable()
        try:
            for rnd in range(args.rounds):
                for i, (q, f, c) in enumerate(zip(qv, filters, conds)):
                    for kind in (("flat", "ivf") if (i + rnd) % 2 == 0 else ("ivf", "flat")):
                        t0 = time.perf_counter()
                        _s, ids, plan = planner.search(view, pair[kind], q, K, f.organ_names(), c,
                                                       sql_ids=lambda: None)
                        times[kind].append(time.perf_counter() - t0)
                        if len(found[kind]) < len(qv):
                            found[kind].append(ids)
                            plans[kind][plan.strategy] += 1
        finally:
            gc.enable()
        p50 = {k: C.summarize(v).p50 for k, v in times.items()}
        row = {"target": target, "flat_p50_ms": round(p50["flat"], 4), "ivf_p50_ms": round(p50["ivf"], 4),
               "flat_over_ivf": round(p50["flat"] / p50["ivf"], 2),
               "ivf_recall@10_near": round(C.recall_at_k(found["ivf"][:half], truth[:half], K), 4),
               "ivf_recall@10_text": round(C.recall_at_k(found["ivf"][half:], truth[half:], K), 4),
               "flat_recall@10": round(C.recall_at_k(found["flat"], truth, K), 4),
               "flat_plan": dict(plans["flat"]), "ivf_plan": dict(plans["ivf"])}
        out["rows"].append(row)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[20_000, 50_000, 100_000, 200_000])
    ap.add_argument("--queries", type=int, default=40, help="queries per selectivity")
    ap.add_argument("--rounds", type=int, default=3, help="times each query is timed (medians over all)")
    ap.add_argument("--recall-queries", type=int, default=300, help="text queries of the unfiltered recall check")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--quick", action="store_true", help="one size of 20,000, 10 queries, 1 round, 30 recall queries")
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.queries, args.rounds, args.recall_queries = [20_000], 10, 1, 30
    C.set_threads(args.threads)
    import faiss  # noqa: F401 - version in machine_info

    model, model_desc = C.load_model()
    args.dim = int(model.embed_dim)  # text queries come from the model: its dimension (ctglip-tiny: 128)

    t_start = time.perf_counter()
    sizes, table = [], []
    for n in args.sizes:
        res = run_size(n, args, model)
        sizes.append(res)
        for r in res["rows"]:
            table.append([n, res["factory"], res["nprobe"], res["build_s"], f"{r['target']:.1%}", r["flat_p50_ms"],
                          r["ivf_p50_ms"], r["flat_over_ivf"], r["ivf_recall@10_near"], r["ivf_recall@10_text"],
                          "/".join(f"{k}:{v}" for k, v in r["flat_plan"].items()),
                          "/".join(f"{k}:{v}" for k, v in r["ivf_plan"].items())])
        print(f"N = {n:,}: {res['factory']} nprobe {res['nprobe']} (tuned recall {res['tuned_recall']}), "
              f"build + tune {res['build_s']} s; unfiltered recall@10 of {res['recall_queries']} text queries "
              f"{res['ivf_text_recall@10_unfiltered']}", flush=True)
    C.print_table(["N", "IVF", "nprobe", "IVF build s", "filter", "Flat p50 ms", "IVF p50 ms", "Flat/IVF",
                   "IVF recall near", "IVF recall text", "Flat plans", "IVF plans"], table,
                  title=f"Planner.search, Flat vs automatic IVF, d = {args.dim}, k = {K}, {args.queries} queries x "
                        f"{args.rounds} rounds per cell, interleaved (order alternating); model {model_desc}; "
                        f"{args.threads} threads (OpenBLAS {C.blas_threads()})")
    C.write_json(args.json_out, {"benchmark": "ann_crossover", "machine": C.machine_info(args.threads),
                                 "model": model_desc, "command": " ".join([Path(sys.executable).name, *sys.argv]),
                                 "sizes": sizes, "seconds": round(time.perf_counter() - t_start, 1)})
    print(f"done in {time.perf_counter() - t_start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
