"""Benchmark parse_report: reports per second on one core over synthetic archive reports, with and without caches.

Usage:
    python benchmarks/bench_reports.py [--n 200] [--warm-n 200] [--runs 7] [--seed 1] [--warm-seed 2]
        [--archive DIR --warm-archive DIR] [--source synth|composed] [--json-out bench-output/reports.json]

Reports are a synthetic archive's (what ``generate_archive(..., seed=S, preset="small")`` writes; rendered once,
about 1 s a report, and kept in ``--corpus-dir``), an archive's own (``--archive``), or dense reports composed from
the dictionary's phrases (``--source composed``). Each report is parsed once per pass; medians over ``--runs``:

- ``uncached`` (the issue-4 target, >= 2,000 reports/s): the caches of sentences and lines are emptied before
  every report, so every sentence is parsed from scratch. Memos of vocabulary items (matched phrase -> entry,
  heading title -> organs) stay, as in a process that has parsed a few reports.
- ``uncached_no_memos``: those memos emptied as well before every report (a freshly started process).
- ``warm_other_archive``: the sentence cache filled by every report of another archive (``--warm-seed``), then
  this archive parsed; ``hit_rate`` is the share of its sentences answered from the cache.
- ``steady_same_batch``: the batch parsed in a row from empty caches (sentences repeated within it hit).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

TARGET = 2000.0  # reports/s on one core, issue 4

HEADINGS = {
    "liver": ["Liver", "LIVER", "Liver and biliary tree", "Hepatobiliary"],
    "gallbladder": ["Gallbladder", "GALLBLADDER", "Biliary"],
    "kidney": ["Kidneys", "KIDNEYS AND URETERS", "Kidneys/ureters"],
    "pancreas": ["Pancreas", "PANCREAS"],
    "spleen": ["Spleen", "SPLEEN"],
    "lung": ["Lung bases", "Lower chest", "Lungs/pleura"],
    "adrenal_gland": ["Adrenals", "Adrenal glands"],
    "aorta": ["Vascular", "Aorta", "Vessels"],
    "urinary_bladder": ["Bladder", "Urinary bladder", "Pelvis"],
}


def compose_reports(n: int, seed: int = 0) -> List[str]:
    """``n`` dense reports built from the dictionary (about 10 organ sections, 12-20 sentences each)."""
    from ctglip_sdk.reports import AbnormalityDictionary

    d = AbnormalityDictionary.default()
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        style = rng.random()
        sections, impression = [], []
        for organ, titles in HEADINGS.items():
            entries = d.for_organ(organ)
            sentences = [rng.choice(d.normal_phrases(organ))]
            for e in entries:
                if rng.random() < 0.15:
                    text = rng.choice(e.positives)
                    sentences.append(text[0].upper() + text[1:] + ".")
                    impression.append(sentences[-1])
                elif rng.random() < 0.3:
                    sentences.append(rng.choice(e.negatives))
            body = " ".join(sentences)
            sections.append(f"{rng.choice(titles)}: {body}" if style < 0.7 else body)
        findings = "\n".join(sections) if style < 0.7 else " ".join(sections)
        items = [f"{i}. {s}" for i, s in enumerate(impression, 1)] or ["1. No acute abnormality."]
        out.append("CT ABDOMEN AND PELVIS WITH CONTRAST\nIndication: abdominal pain.\nTechnique: Axial images "
                   f"after IV contrast.\n\nFINDINGS:\n{findings}\n\nIMPRESSION:\n" + "\n".join(items) + "\n")
    return out


def synth_reports(n: int, seed: int, corpus_dir: Path, preset: str = "small") -> List[str]:
    """The first ``n`` reports of the synthetic archive (seed, preset), rendered once and kept in ``corpus_dir``."""
    from ctglip_sdk import __version__

    path = corpus_dir / f"synth-{preset}-seed{seed}.json"
    reports: List[str] = []
    if path.exists():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("preset") == preset and saved.get("seed") == seed:
            reports = saved["reports"]
    if len(reports) < n:
        from ctglip_sdk.synth import generate_patient  # numpy and the renderer, only when reports are missing

        t0 = time.perf_counter()
        print(f"rendering {n - len(reports)} synthetic studies for their reports (seed {seed}, once; ~1 s each)",
              file=sys.stderr)
        while len(reports) < n:  # the patient of an archive is (seed, index): as generate_archive writes it
            reports.append(generate_patient(seed, preset, index=len(reports), archive_seed=seed).report)
        corpus_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"preset": preset, "seed": seed, "sdk": __version__, "reports": reports}),
                        encoding="utf-8")
        print(f"  done in {time.perf_counter() - t0:.0f} s -> {path}", file=sys.stderr)
    return reports[:n]


def archive_reports(root: Path) -> List[str]:
    with open(root / "manifest.csv", newline="", encoding="utf-8") as fh:
        return [(root / row["report"]).read_text(encoding="utf-8") for row in csv.DictReader(fh)]


def _calibrate() -> float:
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        sum(range(10_000_000))
        best = min(best, time.perf_counter() - t)
    return best


_SENTENCE = re.compile(r"(?<=[.!?:])\s+|\n+")
_WORD = re.compile(r"[a-z0-9]+")


def _tokenize(report: str) -> int:
    """Same-run baseline: what any sentence-level parser does at least (split sentences, lower-case, find
    words, look each up in a set); parse_report's speed is also printed as a multiple of this."""
    n = 0
    for sent in _SENTENCE.split(report):
        n += sum(1 for w in _WORD.findall(sent.lower()) if w in _STOP)
    return n


_STOP = frozenset("no the of and with or is are in a an to without".split())


def _rate(parse: Callable[[str], object], reports: List[str], before_each: Optional[Callable[[], None]]) -> float:
    """Reports per second of one pass (the time of ``before_each`` not counted)."""
    if before_each is None:
        start = time.perf_counter()
        for r in reports:
            parse(r)
        return len(reports) / (time.perf_counter() - start)
    spent = 0.0
    for r in reports:
        before_each()
        t = time.perf_counter()
        parse(r)
        spent += time.perf_counter() - t
    return len(reports) / spent


def _summary(rates: List[float]) -> Dict[str, object]:
    return {"median_reports_per_s": round(statistics.median(rates), 1), "runs": [round(r, 1) for r in rates]}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="reports measured (each parsed once per pass)")
    ap.add_argument("--warm-n", type=int, default=200, help="reports of the other archive that warm the cache")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--seed", type=int, default=1, help="synthetic archive measured")
    ap.add_argument("--warm-seed", type=int, default=2, help="synthetic archive that warms the cache")
    ap.add_argument("--source", choices=("synth", "composed"), default="synth")
    ap.add_argument("--archive", type=Path, help="measure this archive's reports (manifest.csv) instead")
    ap.add_argument("--warm-archive", type=Path, help="warm the cache with this archive's reports")
    ap.add_argument("--corpus-dir", type=Path, default=Path("bench-output/report-corpus"),
                    help="where rendered synthetic reports are kept between runs")
    ap.add_argument("--out", "--json-out", dest="out", type=Path, default=Path("bench-output/reports.json"))
    ap.add_argument("--quick", action="store_true", help="fewer reports and runs (benchmarks/run.py --quick)")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.warm_n, args.runs = min(args.n, 60), min(args.warm_n, 60), min(args.runs, 5)
    if args.seed == args.warm_seed and not args.archive:
        ap.error("--warm-seed must differ from --seed (the point is sentences not seen before)")
    if args.archive and args.warm_archive and args.archive.resolve() == args.warm_archive.resolve():
        ap.error("--warm-archive must be another archive than --archive (the point is sentences not seen before)")
    if hasattr(os, "sched_setaffinity"):  # one core, as the target says
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None

    if args.archive:
        reports, source = archive_reports(args.archive)[: args.n], str(args.archive)
    elif args.source == "composed":
        reports, source = compose_reports(args.n, args.seed), f"composed (seed {args.seed})"
    else:
        reports, source = synth_reports(args.n, args.seed, args.corpus_dir), f"synthetic archive (seed {args.seed})"
    if args.warm_archive:
        warm, warm_source = archive_reports(args.warm_archive)[: args.warm_n], str(args.warm_archive)
    elif args.source == "composed" and not args.archive:
        warm, warm_source = compose_reports(args.warm_n, args.warm_seed), f"composed (seed {args.warm_seed})"
    else:
        warm = synth_reports(args.warm_n, args.warm_seed, args.corpus_dir)
        warm_source = f"synthetic archive (seed {args.warm_seed})"

    t0 = time.perf_counter()
    from ctglip_sdk.reports import analyse, parse_report
    from ctglip_sdk.reports.parser import cache_stats, clear_caches

    parse_report("Liver: normal.")  # builds and caches the default vocabulary
    cold_s = time.perf_counter() - t0

    def memos() -> None:
        clear_caches(memos=True)

    # What the reports are: sentences and findings (untimed), and the hit rates of the two cached passes.
    clear_caches()
    n_sentences = sum(len(analyse(r)) for r in reports)
    n_findings = sum(len(parse_report(r)) for r in reports)
    clear_caches()
    for r in warm:
        parse_report(r)
    warmed = cache_stats()["sentences"]
    for r in reports:
        parse_report(r)
    stats = cache_stats()
    if stats["sentences"] >= stats["max_sentences"]:
        raise SystemExit("the sentence cache overflowed during the hit-rate pass; use smaller --n/--warm-n")
    warm_hits = 1 - (stats["sentences"] - warmed) / n_sentences
    clear_caches()
    for r in reports:
        parse_report(r)
    batch_hits = 1 - cache_stats()["sentences"] / n_sentences

    rates: Dict[str, List[float]] = {"uncached": [], "uncached_no_memos": [], "warm_other_archive": [],
                                     "steady_same_batch": []}
    for _ in range(args.runs):  # the four passes interleaved, so that each run sees the same machine
        rates["uncached"].append(_rate(parse_report, reports, clear_caches))
        rates["uncached_no_memos"].append(_rate(parse_report, reports, memos))
        clear_caches()
        for r in warm:
            parse_report(r)
        rates["warm_other_archive"].append(_rate(parse_report, reports, None))
        clear_caches()
        rates["steady_same_batch"].append(_rate(parse_report, reports, None))
    baseline = [_rate(_tokenize, reports, None) for _ in range(args.runs)]
    uncached = statistics.median(rates["uncached"])
    result = {
        "benchmark": "parse_report",
        "source": source,
        "reports": len(reports),
        "runs": args.runs,
        "target": {"reports_per_s": TARGET, "judged_on": "uncached", "met": uncached >= TARGET},
        "uncached": _summary(rates["uncached"]),
        "uncached_no_memos": _summary(rates["uncached_no_memos"]),
        "warm_other_archive": {**_summary(rates["warm_other_archive"]), "warmed_by": warm_source,
                               "warm_reports": len(warm), "hit_rate": round(warm_hits, 3)},
        "steady_same_batch": {**_summary(rates["steady_same_batch"]), "hit_rate": round(batch_hits, 3)},
        "mean_chars": round(sum(map(len, reports)) / len(reports)),
        "mean_sentences": round(n_sentences / len(reports), 2),
        "mean_findings": round(n_findings / len(reports), 2),
        "baseline_tokenize": _summary(baseline),
        # how many times slower than the same run's regex tokenization pass (lower is better)
        "uncached_vs_baseline": round(statistics.median(baseline) / uncached, 1),
        "cold_start_s": round(cold_s, 3),
        # pure-Python reference loop on the same core, to compare numbers taken on different machines
        "calibration_sum_range_1e7_s": round(_calibrate(), 3),
        "load_average_before_after": [load_before[0] if load_before else None,
                                      os.getloadavg()[0] if hasattr(os, "getloadavg") else None],
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cores_used": 1,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"\nparse_report on {source}: {len(reports)} reports, {result['mean_sentences']} sentences each")
    for name in rates:
        extra = f" (hit rate {result[name]['hit_rate']:.0%})" if "hit_rate" in result[name] else ""
        print(f"  {name:20s} {result[name]['median_reports_per_s']:8.0f} reports/s{extra}")
    print(f"  {'baseline_tokenize':20s} {result['baseline_tokenize']['median_reports_per_s']:8.0f} reports/s "
          f"(regex sentence split + word lookup); uncached is {result['uncached_vs_baseline']:.0f}x slower")
    print(f"  target {TARGET:.0f} reports/s judged on 'uncached': {'met' if result['target']['met'] else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
