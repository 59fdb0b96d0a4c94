"""Run every benchmark script (quick or full mode), print a summary and collect their JSON in one folder.

Each `benchmarks/bench_*.py` accepts `--quick` and `--json-out PATH` and prints its own table (the other scripts
of this folder are not run here and need not). Unknown names in `--only`/`--skip` and unknown `--extra` keys are
usage errors (a typo used to run nothing, or everything without the extra arguments), and each script's old JSON
is deleted before it runs, so a failed run cannot leave the previous result in the summary. Benchmarks are
ratios against a baseline measured in the same run on the same data; medians are quoted (shared machines).
Full mode runs the sizes of issue 9 (query at 1e6, clinical ingest + memory, scoring at 2e5) for FULL_SET and
the other scripts in quick mode (their full modes belong to their own docs; ``--full-all`` runs them too), so
that ``make bench-full`` takes about half an hour on 2 cores (docs/performance.md, "Full mode").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

HERE = Path(__file__).resolve().parent
#: Benchmarks whose full mode is part of `make bench-full` (issue 9's full-mode sizes).
FULL_SET = ("query", "ingest", "score")


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def parse_extra(items: List[str]) -> Dict[str, List[str]]:
    """``NAME=ARGS`` pairs -> ``{name: [args...]}`` (ARGS split like a shell would)."""
    out: Dict[str, List[str]] = {}
    for item in items:
        name, sep, rest = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--extra expects NAME=ARGS (e.g. query='--lance-max-n 100000'), got {item!r}")
        out.setdefault(name, []).extend(shlex.split(rest))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small sizes, ≤ 5 minutes in all (default)")
    mode.add_argument("--full", action="store_true",
                      help=f"issue 9's sizes for {', '.join(FULL_SET)}; the others in quick mode (~30 min)")
    mode.add_argument("--full-all", action="store_true", help="every benchmark in full mode")
    ap.add_argument("--only", nargs="*", help="names of benchmarks to run (e.g. query reports)")
    ap.add_argument("--skip", nargs="*", default=[], help="names of benchmarks not to run")
    ap.add_argument("--extra", action="append", default=[], metavar="NAME=ARGS",
                    help="more arguments for one benchmark, e.g. --extra query='--lance-max-n 100000'")
    ap.add_argument("--out", default="bench-output", help="folder for the JSON results")
    args = ap.parse_args()
    extra = parse_extra(args.extra)
    out = Path(args.out)
    scripts = sorted(HERE.glob("bench_*.py"))
    known = [s.stem.removeprefix("bench_") for s in scripts]
    for flag, names in (("--only", args.only or []), ("--skip", args.skip), ("--extra", list(extra))):
        unknown = sorted(set(names) - set(known))
        if unknown:
            ap.error(f"{flag}: unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(known)}")
    out.mkdir(parents=True, exist_ok=True)
    if args.only:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in args.only]
    scripts = [s for s in scripts if s.stem.removeprefix("bench_") not in args.skip]
    mode_name = "full-all" if args.full_all else "full" if args.full else "quick"
    summary = {"machine": machine(), "mode": mode_name, "results": {}}
    failed = []
    t_all = time.perf_counter()
    for script in scripts:
        name = script.stem.removeprefix("bench_")
        full = args.full_all or (args.full and name in FULL_SET)
        json_out = out / f"{name}.json"
        json_out.unlink(missing_ok=True)  # a failed run must not leave the previous run's result to be read
        cmd = [sys.executable, str(script), "--json-out", str(json_out)] + ([] if full else ["--quick"])
        cmd += extra.get(name, [])
        note = "" if full or not args.full else " (quick mode: not in the full set; --full-all runs it full)"
        print(f"\n=== {name}: {' '.join(cmd[1:])}{note}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        summary["results"][name] = {"rc": rc, "seconds": round(time.perf_counter() - t0, 1),
                                    "mode": "full" if full else "quick"}
        if rc == 0 and json_out.exists():
            summary["results"][name]["data"] = json.loads(json_out.read_text())
        else:
            failed.append(name)
    summary["seconds"] = round(time.perf_counter() - t_all, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print("\nbenchmark       rc  mode   seconds")
    for name, r in summary["results"].items():
        print(f"{name:<15} {r['rc']:>2}  {r['mode']:<5} {r['seconds']:>8}")
    print(f"total {summary['seconds']} s; machine: {summary['machine']}; JSON in {out}/")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
