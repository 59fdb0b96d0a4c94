"""Benchmark parse_report: reports per second on one core over varied structured and free-text reports.

Usage:
    python benchmarks/bench_reports.py [--n 2000] [--runs 5] [--archive DIR] [--out bench-output/reports.json]

Reports are composed from the default dictionary's own descriptions (organ headings or running prose, normal
and abnormal organs, an impression that repeats the findings), or read from an archive's manifest.csv.
``median_reports_per_s`` is the steady state of a batch (sentences seen before in the batch come from the
parser's cache, as in a real archive where normal phrasings repeat); ``median_reports_per_s_no_cache`` empties
the cache before every report, i.e. every sentence is parsed from scratch.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import List

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
    """``n`` varied reports built from the dictionary (about 10 organ sections, 12-20 sentences each)."""
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


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="reports per run")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--archive", type=Path, help="use the reports of this archive instead of composed ones")
    ap.add_argument("--out", "--json-out", dest="out", type=Path, default=Path("bench-output/reports.json"))
    ap.add_argument("--quick", action="store_true", help="fewer reports and runs (benchmarks/run.py --quick)")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.runs = min(args.n, 500), min(args.runs, 3)
    if hasattr(os, "sched_setaffinity"):  # one core, as the target says
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    t0 = time.perf_counter()
    from ctglip_sdk.reports import parse_report

    parse_report("Liver: normal.")  # builds and caches the default vocabulary
    cold_s = time.perf_counter() - t0
    # an archive's reports are used once each (repeating whole reports would only measure the cache)
    reports = archive_reports(args.archive)[: args.n] if args.archive else compose_reports(args.n, args.seed)
    from ctglip_sdk.reports.parser import clear_caches

    rates, cold_rates, n_findings = [], [], 0
    for _ in range(args.runs):
        clear_caches()
        start = time.perf_counter()
        n_findings = sum(len(parse_report(r)) for r in reports)
        rates.append(len(reports) / (time.perf_counter() - start))
        # every sentence unseen: the cache of repeated sentences is emptied before each report
        start = time.perf_counter()
        subset = reports[: max(1, len(reports) // 5)]
        spent = 0.0
        for r in subset:
            clear_caches()
            t = time.perf_counter()
            parse_report(r)
            spent += time.perf_counter() - t
        cold_rates.append(len(subset) / spent)
    result = {
        "benchmark": "parse_report",
        "source": str(args.archive) if args.archive else "composed",
        "reports_per_run": len(reports),
        "runs": args.runs,
        "median_reports_per_s": round(statistics.median(rates), 1),
        "all_reports_per_s": [round(r, 1) for r in rates],
        "median_reports_per_s_no_cache": round(statistics.median(cold_rates), 1),
        "mean_chars": round(sum(map(len, reports)) / len(reports)),
        "mean_findings": round(n_findings / len(reports), 2),
        "cold_start_s": round(cold_s, 3),
        # pure-Python reference loop on the same core, to compare numbers taken on different machines
        "calibration_sum_range_1e7_s": round(_calibrate(), 3),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cores_used": 1,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
