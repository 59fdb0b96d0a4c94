"""Zero-shot scoring over stored organ vectors (organ·finding pairs per second) and text encoding (sentences/s).

1. ``ZeroShotClassifier.detect_arrays`` / ``detect_vectors`` with ``AbnormalityDictionary.default()`` on N stored
   organ vectors (quick: 20k, full: 200k; clustered rows of 20 organ classes, common.organ_table): the first call
   (prompt ensembles encoded) and the steady state (prompt vectors cached), in (organ, finding) pairs per second;
   target >= 1e4 pairs/s on 2 cores (issue 9).
2. ``ArchiveIndex.score()`` end to end on an index of the same rows (probabilities written to SQL), and a second
   call that finds nothing stale (the incremental check alone).
3. ``model.encode_text``: report-style sentences per second at batch 64 (the default) and one at a time (a query).
The cached ``detect_arrays`` and its baseline (a dense matmul + sigmoid) are timed interleaved, and the two
thread counts of one-at-a-time encoding too, the order alternating on each repeat so that neither always runs
first. Report parsing has its own script (bench_reports.py). Without the abnormality dictionary the scoring rows are
skipped with the reason.
Usage: python benchmarks/bench_score.py [--quick] [--json-out PATH] [--organs N] [--sentences M] [--threads N]
"""

from __future__ import annotations

import argparse  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Dict, List  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402 - first: it exports --threads before numpy loads

import numpy as np  # noqa: E402


def load_dictionary() -> tuple:
    """``(AbnormalityDictionary.default(), None)`` or ``(None, reason)`` when ctglip_sdk.reports lacks it."""
    try:
        from ctglip_sdk.reports import AbnormalityDictionary  # type: ignore[attr-defined]

        return AbnormalityDictionary.default(), None
    except (ImportError, AttributeError) as exc:
        return None, f"ctglip_sdk.reports.AbnormalityDictionary is not available yet ({type(exc).__name__}: {exc})"


def sentences(n: int, dictionary: Any, seed: int = 0) -> List[str]:
    """Report-style sentences: dictionary phrasings (or finding names) about organs, with sizes and sides."""
    rng = np.random.default_rng(seed)
    phrases: List[str] = []
    if dictionary is not None:
        for e in dictionary.findings():
            phrases += list(e.positives) + list(e.negatives)
    if not phrases:
        phrases = [f.replace("_", " ") for fs in C.ORGAN_FINDINGS.values() for f in fs]
    organs = [o.replace("_", " ") for o in C.STUDY_ORGANS]
    frames = ("{p}.", "There is {p} in the {o}.", "The {o} shows {p}, measuring {s} mm.", "No {p}.",
              "{p} of the {o} is again noted, {s} x {t} mm, unchanged from the prior examination.",
              "Findings in the {o}: {p}.")
    out = []
    for _ in range(n):
        f = frames[int(rng.integers(len(frames)))]
        out.append(f.format(p=phrases[int(rng.integers(len(phrases)))], o=organs[int(rng.integers(len(organs)))],
                            s=int(rng.integers(2, 90)), t=int(rng.integers(2, 90))))
    return out


def bench_text(model: Any, texts: List[str], single: int, repeats: int, threads: int) -> Dict[str, Any]:
    """Batched and one-at-a-time encoding; one at a time also with 1 intra-op thread, interleaved with the
    ``threads`` runs (a short forward pass split over threads waits on the slowest one at every op)."""
    import torch

    model.encode_text(texts[:64])  # warm-up
    batched = C.median_time(lambda: model.encode_text(texts, batch_size=64), repeats, warmup=0)
    per: Dict[int, List[float]] = {threads: [], 1: []}
    for i, t in enumerate(texts[:single]):
        for n in (list(per) if i % 2 == 0 else list(per)[::-1]):  # alternate which thread count goes first
            torch.set_num_threads(n)
            t0 = time.perf_counter()
            model.encode_text([t], batch_size=1)
            per[n].append(time.perf_counter() - t0)
    torch.set_num_threads(threads)
    return {"sentences": len(texts), "batch64_s": round(batched, 4), "batch64_sentences_per_s": round(len(texts) / batched, 1),
            "single": C.summarize(per[threads]).to_dict(),
            "single_sentences_per_s": round(1 / float(np.median(per[threads])), 1),
            "single_1thread": C.summarize(per[1]).to_dict(),
            "single_1thread_sentences_per_s": round(1 / float(np.median(per[1])), 1),
            "mean_words": round(float(np.mean([len(t.split()) for t in texts])), 1)}


def bench_scoring(model: Any, dictionary: Any, table: C.OrganTable, repeats: int) -> Dict[str, Any]:
    import ctglip_sdk as cg

    names = table.organ_names().tolist()
    zs = cg.ZeroShotClassifier(model, dictionary=dictionary)
    t0 = time.perf_counter()
    rows, keys, prob = zs.detect_arrays(names, table.vectors)
    cold = time.perf_counter() - t0
    pairs = int(rows.size)
    objs = C.median_time(lambda: zs.detect_vectors(names, table.vectors), max(1, repeats // 2), warmup=0)
    n_keys = len(set(keys))
    # Same-run baseline: the arithmetic floor of scoring, a dense float32 matmul of every organ with a positive
    # and a negative prompt vector of every finding plus a sigmoid (no organ routing, no bookkeeping).
    prompts = np.random.default_rng(0).standard_normal((table.vectors.shape[1], 2 * n_keys)).astype(np.float32)
    vecs = np.ascontiguousarray(table.vectors, dtype=np.float32)

    def floor() -> None:
        z = vecs @ prompts
        1.0 / (1.0 + np.exp(-(z[:, 0::2] - z[:, 1::2])))

    # Interleaved with the order alternating on each repeat: the variant and its baseline share the same load.
    times = C.interleaved_times({"detect_arrays": lambda: zs.detect_arrays(names, table.vectors), "baseline": floor},
                                repeats, warmup=1)
    warm, floor_s = statistics.median(times["detect_arrays"]), statistics.median(times["baseline"])
    return {"_classifier": zs, "organs": table.n, "pairs": pairs, "findings": n_keys, "cold_s": round(cold, 4),
            "baseline_dense_matmul_s": round(floor_s, 4), "ratio_vs_baseline": round(warm / floor_s, 2),
            "cold_pairs_per_s": round(pairs / cold), "detect_arrays_s": round(warm, 4),
            "detect_arrays_pairs_per_s": round(pairs / warm), "detect_vectors_s": round(objs, 4),
            "detect_vectors_pairs_per_s": round(pairs / objs)}


def bench_index_score(model: Any, zs: Any, table: C.OrganTable, work: Path) -> Dict[str, Any]:
    """idx.score() over an index holding ``table`` (built with ``add_embeddings``, common.build_index), with the
    classifier whose prompt vectors are already cached (the steady state after an ingest)."""
    from ctglip_sdk.index import ArchiveIndex

    C.build_index(work / "idx-score", model, table)
    idx = ArchiveIndex.open(work / "idx-score", model=model)
    try:
        idx._zeroshot = zs  # the index's own model is a copy with the same weights: same prompt vectors
        t0 = time.perf_counter()
        first = idx.score()
        t1 = time.perf_counter()
        again = idx.score()
        t2 = time.perf_counter()
    finally:
        idx.close()
    return {"organs": table.n, "scored": first["scored"], "seconds": round(t1 - t0, 3),
            "pairs_per_s": round(first["scored"] / (t1 - t0)), "rescore_noop_s": round(t2 - t1, 3),
            "rescore_scored": again["scored"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20k organs, 512 sentences")
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--organs", type=int, default=None)
    ap.add_argument("--index-organs", type=int, default=None, help="organs in the idx.score() index")
    ap.add_argument("--sentences", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    quick = args.quick
    n = args.organs or (20_000 if quick else 200_000)
    n_idx = args.index_organs or (20_000 if quick else 100_000)
    m = args.sentences or (512 if quick else 4096)
    repeats = 3 if quick else 5
    logging.basicConfig(level=logging.WARNING)
    C.set_threads(args.threads)
    model, model_desc = C.load_model()
    dictionary, why = load_dictionary()
    t_start = time.perf_counter()
    print(f"bench_score ({'quick' if quick else 'full'}): model {model_desc}, {args.threads} threads", flush=True)

    text = bench_text(model, sentences(m, dictionary, args.seed), single=48 if quick else 256, repeats=repeats,
                      threads=args.threads)
    C.print_table(["text encoding", "sentences", "seconds", "sentences/s", "p50 ms", "p99 ms"], [
        ["batch 64", text["sentences"], text["batch64_s"], text["batch64_sentences_per_s"], None, None],
        [f"one at a time, {args.threads} threads", text["single"]["n"], None, text["single_sentences_per_s"],
         text["single"]["p50_ms"], text["single"]["p99_ms"]],
        ["one at a time, 1 thread", text["single_1thread"]["n"], None, text["single_1thread_sentences_per_s"],
         text["single_1thread"]["p50_ms"], text["single_1thread"]["p99_ms"]],
    ], title=f"model.encode_text (mean {text['mean_words']} words per sentence)")

    scoring: Dict[str, Any]
    index_score: Dict[str, Any]
    if dictionary is None:
        scoring = C.skip("zero-shot scoring", why)
        index_score = C.skip("idx.score()", why)
    else:
        table = C.organ_table(n, model.embed_dim, seed=args.seed)
        scoring = bench_scoring(model, dictionary, table, repeats)
        work = Path(tempfile.mkdtemp(prefix="bench-score-"))
        try:
            idx_table = table if n_idx == n else C.organ_table(n_idx, model.embed_dim, seed=args.seed)
            idx_table.vectors[:] = idx_table.vectors.astype(np.float16).astype(np.float32)
            index_score = bench_index_score(model, scoring.pop("_classifier"), idx_table, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        C.print_table(["path", "organs", "pairs", "seconds", "pairs/s", "vs 1e4 target"], [
            ["detect_arrays, first call (prompts encoded)", scoring["organs"], scoring["pairs"], scoring["cold_s"],
             scoring["cold_pairs_per_s"], scoring["cold_pairs_per_s"] / 1e4],
            ["detect_arrays (prompt vectors cached)", scoring["organs"], scoring["pairs"], scoring["detect_arrays_s"],
             scoring["detect_arrays_pairs_per_s"], scoring["detect_arrays_pairs_per_s"] / 1e4],
            ["detect_vectors (Detection objects)", scoring["organs"], scoring["pairs"], scoring["detect_vectors_s"],
             scoring["detect_vectors_pairs_per_s"], scoring["detect_vectors_pairs_per_s"] / 1e4],
            ["ArchiveIndex.score() (prompts cached, SQL writes included)", index_score["organs"], index_score["scored"],
             index_score["seconds"], index_score["pairs_per_s"], index_score["pairs_per_s"] / 1e4],
            ["ArchiveIndex.score() again (nothing stale)", index_score["organs"], index_score["rescore_scored"],
             index_score["rescore_noop_s"], None, None],
        ], title=f"Zero-shot scoring over stored vectors ({scoring['findings']} findings, dictionary "
                 f"{getattr(dictionary, 'version', '?')})")
    payload = {"benchmark": "score", "mode": "quick" if quick else "full", "machine": C.machine_info(args.threads),
               "model": model_desc, "command": " ".join([Path(sys.executable).name, *sys.argv]),
               "dictionary_version": getattr(dictionary, "version", None), "text_encoding": text,
               "zero_shot": scoring, "index_score": index_score, "target_pairs_per_s": 1e4,
               "seconds": round(time.perf_counter() - t_start, 1)}
    C.write_json(args.json_out, payload)
    if "ratio_vs_baseline" in scoring:
        print(f"detect_arrays (cached prompts) takes {scoring['ratio_vs_baseline']:.1f}x the same run's baseline: "
              f"a dense numpy matmul + sigmoid of all {scoring['organs']} organs x {scoring['findings']} findings "
              f"({scoring['baseline_dense_matmul_s']} s)")
    print(f"bench_score done in {payload['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
