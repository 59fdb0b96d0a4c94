"""PNG plots of benchmark JSON: query latency vs N per filter selectivity, ingest per stage, ingest peak memory.

Usage: python benchmarks/plots.py --results bench-output --out docs/img
Reads ``query.json`` and ``ingest.json`` from ``--results`` (what benchmarks/run.py writes); a missing file or a
skipped part is reported and left out. Writes ``bench_query_latency.png``, ``bench_query_ratio.png``,
``bench_ingest_stages.png`` and, when the full-mode memory check ran, ``bench_ingest_memory.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

STYLE = {  # system -> (label, colour, marker, line style)
    "index vector (e2e)": ("ArchiveIndex.search(vector)", "#1f77b4", "o", "-"),
    "index text (e2e, cosine)": ("ArchiveIndex.search(text, rank='cosine')", "#17becf", "s", "-"),
    # JSON of the earlier script (rank="auto": a one-finding text searched only that finding's organs)
    "index text (e2e)": ("ArchiveIndex.search(text), rank='auto'", "#17becf", "s", ":"),
    "vector part": ("index: filter + vector search", "#2ca02c", "^", "-"),
    "index SQL filter (e2e)": ("search, filter via SQL", "#9467bd", "v", ":"),
    "numpy (mask, gather, matvec)": ("numpy brute force", "#7f7f7f", "D", "--"),
    "chroma (HNSW, where)": ("ChromaDB", "#d62728", "x", "-."),
    "lance (prefilter)": ("LanceDB", "#ff7f0e", "+", "-."),
}


def _load(folder: Path, name: str) -> Optional[Dict[str, Any]]:
    path = folder / f"{name}.json"
    if not path.exists():
        print(f"[plots] {path} not found: no {name} plots")
        return None
    return json.loads(path.read_text())


def _subtitle(res: Dict[str, Any]) -> str:
    m = res.get("machine", {})
    return f"{res.get('mode', '?')} mode, {m.get('cores')} cores ({m.get('cpu')}), {m.get('date')}"


def query_plots(res: Dict[str, Any], out: Path) -> List[Path]:
    """p50 latency vs N, one panel per selectivity, every system; a full float32 scan at the reference bandwidth."""
    sizes = res["sizes"]
    targets = sorted({r["target"] for s in sizes for r in s["rows"]}, reverse=True)
    fig, axes = plt.subplots(1, len(targets), figsize=(4.2 * len(targets), 4.2), sharey=True)
    axes = [axes] if len(targets) == 1 else list(axes)
    for ax, target in zip(axes, targets):
        series: Dict[str, List[tuple]] = {}
        floor = []
        for s in sizes:
            for r in s["rows"]:
                if r["target"] != target:
                    continue
                series.setdefault(r["system"], []).append((s["n"], r["p50_ms"]))
                if r["system"] == "index vector (e2e)":
                    series.setdefault("vector part", []).append((s["n"], r["vector_part"]["p50_ms"]))
                if r["system"].startswith("numpy") and r.get("floor_ms"):
                    floor.append((s["n"], r["floor_ms"]))
        for name, pts in series.items():
            label, colour, marker, ls = STYLE.get(name, (name, None, ".", "-"))
            xs, ys = zip(*sorted(pts))
            ax.plot(xs, ys, ls, marker=marker, color=colour, label=label)
        if floor:
            xs, ys = zip(*sorted(floor))
            ax.plot(xs, ys, color="black", lw=0.8, ls=(0, (1, 2)),
                    label="scan at 21 GB/s (reference, not measured here)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"filter keeps {target:.1%}")
        ax.set_xlabel("organ vectors N")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel(f"p50 latency, ms (k = {res.get('k', 10)})")
    axes[-1].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Filtered search, dim {res.get('dim')}: {_subtitle(res)}", fontsize=10)
    fig.tight_layout()
    p1 = out / "bench_query_latency.png"
    fig.savefig(p1, dpi=110)
    plt.close(fig)

    # Ratios: numpy p50 / system p50 (above 1 = faster than numpy), per selectivity, at the largest N.
    big = max(sizes, key=lambda s: s["n"])
    fig, ax = plt.subplots(figsize=(7.5, 4))
    systems = [s for s in STYLE if s != "vector part" and not s.startswith("numpy")]
    width = 0.8 / (len(systems) + 1)
    for j, name in enumerate(systems + ["vector part"]):
        xs, ys = [], []
        for i, target in enumerate(targets):
            r = next((r for r in big["rows"] if r["target"] == target and
                      r["system"] == ("index vector (e2e)" if name == "vector part" else name)), None)
            if r is None:
                continue
            v = r.get("numpy_over_vector_part_p50") if name == "vector part" else r.get("numpy_over_this_p50")
            if v:
                xs.append(i + j * width)
                ys.append(v)
        label, colour, _, _ = STYLE[name]
        if xs:  # a skipped peer has no bars and no legend entry
            ax.bar(xs, ys, width, color=colour, label=label)
    ax.axhline(1.0, color="black", lw=0.8)
    ax.axhline(10.0, color="black", lw=0.6, ls="--")
    ax.set_yscale("log")
    ax.set_xticks([i + 0.4 - width for i in range(len(targets))])
    ax.set_xticklabels([f"{t:.1%}" for t in targets])
    ax.set_xlabel("filter selectivity")
    ax.set_ylabel("numpy p50 / system p50 (higher is faster)")
    ax.set_title(f"Speed relative to numpy brute force at N = {big['n']:,} ({res.get('mode')} mode)", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    p2 = out / "bench_query_ratio.png"
    fig.savefig(p2, dpi=110)
    plt.close(fig)
    return [p1, p2]


def ingest_plots(res: Dict[str, Any], out: Path) -> List[Path]:
    """Stacked seconds per stage: ingest (workers 0 and 2), the floor, and the MONAI per-organ pipeline."""
    paths = []
    stages = ["read", "align", "preprocess", "encode", "write", "faiss"]
    colours = ["#1f77b4", "#aec7e8", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
    fig, ax = plt.subplots(figsize=(8, 4))
    bars = []
    s0 = res["ingest_serial"]
    bars.append(("ingest\nworkers=0", [(k, s0["timings"].get(k, 0.0)) for k in stages]))
    piped = res["ingest_piped"]
    bars.append(("ingest\nworkers=2 (wall)", [("wall", piped.get("median_seconds", piped["seconds"]))]))
    fl = res["floor"]
    bars.append(("floor: pydicom\n+ forward", [("read", fl["raw_read_stack_s"]), ("encode", fl["forward_s"])]))
    mon = res["monai"]["stages"]
    bars.append(("MONAI\nper-organ", [("read", mon["load_image"] + mon["load_mask"]),
                                      ("preprocess", mon["orientation"] + mon["spacing"] + mon["crops"]),
                                      ("encode", mon["encode"])]))
    seen = set()
    for i, (_, parts) in enumerate(bars):
        bottom = 0.0
        for k, v in parts:
            colour = "#7f7f7f" if k == "wall" else colours[stages.index(k)]
            label = None if k in seen else ("wall time (stages overlap)" if k == "wall" else k)
            seen.add(k)
            ax.bar(i, v, bottom=bottom, color=colour, label=label, width=0.6)
            bottom += v
    ax.set_xticks(range(len(bars)))
    ax.set_xticklabels([b[0] for b in bars], fontsize=8)
    ax.set_ylabel("seconds")
    ax.set_title(f"Ingest of {res['studies']} '{res['preset']}' DICOM studies: {_subtitle(res)}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    p = out / "bench_ingest_stages.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)
    mem = res.get("memory") or {}
    if mem and not mem.get("skipped"):
        ns = sorted(int(k) for k in mem)
        fig, ax = plt.subplots(figsize=(6, 3.5))
        if all("trace" in mem[str(n)] for n in ns):
            # Resident size over the run, as growth over the size before it: flat means no accumulation.
            for n in ns:
                tr = np.asarray(mem[str(n)]["trace"], dtype=float)
                ax.plot(tr[:, 0], tr[:, 1], lw=0.8, label=f"{n} studies (retained after: "
                        f"+{mem[str(n)]['retained_after_ingest_mb']:.0f} MiB)")
            ax.set_xlabel("fraction of the ingest's wall time")
            ax.set_ylabel("RSS growth over the start (MiB)")
            ax.set_title("Ingest resident memory over the run (a spike per encoder batch)", fontsize=9)
        else:  # JSON from before the trace was recorded
            ax.plot(ns, [mem[str(n)]["peak_rss_mb"] for n in ns], "o-", label="peak RSS (ingest process)")
            ax.plot(ns, [mem[str(n)]["rss_after_model_mb"] for n in ns], "s--", label="RSS after imports + model")
            ax.set_xscale("log")
            ax.set_xlabel("studies in the archive")
            ax.set_ylabel("MiB")
            ax.set_title("Ingest peak memory vs archive size", fontsize=10)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
        fig.tight_layout()
        p = out / "bench_ingest_memory.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default="bench-output", help="folder with query.json / ingest.json")
    ap.add_argument("--out", default="docs/img")
    args = ap.parse_args()
    folder, out = Path(args.results), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written: List[Path] = []
    q = _load(folder, "query")
    if q:
        written += query_plots(q, out)
    ing = _load(folder, "ingest")
    if ing:
        written += ingest_plots(ing, out)
    for p in written:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
