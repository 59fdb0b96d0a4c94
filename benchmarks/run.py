"""Run every benchmark script (quick or full mode), print a summary and collect their JSON in one folder.

Each `benchmarks/bench_*.py` accepts `--quick` and `--json-out PATH` and prints its own table. Benchmarks are
ratios against a baseline measured in the same run on the same data; medians are quoted (shared machines).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small sizes, ≤ 5 minutes in all (default)")
    mode.add_argument("--full", action="store_true", help="the sizes quoted in docs/performance.md")
    ap.add_argument("--only", nargs="*", help="names of benchmarks to run (e.g. query reports)")
    ap.add_argument("--out", default="bench-output", help="folder for the JSON results")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scripts = sorted(HERE.glob("bench_*.py"))
    if args.only:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in args.only]
    summary = {"machine": machine(), "mode": "full" if args.full else "quick", "results": {}}
    failed = []
    for script in scripts:
        name = script.stem.removeprefix("bench_")
        json_out = out / f"{name}.json"
        cmd = [sys.executable, str(script), "--json-out", str(json_out)] + ([] if args.full else ["--quick"])
        print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        summary["results"][name] = {"rc": rc, "seconds": round(time.perf_counter() - t0, 1)}
        if rc == 0 and json_out.exists():
            summary["results"][name]["data"] = json.loads(json_out.read_text())
        else:
            failed.append(name)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print("\nbenchmark       rc  seconds")
    for name, r in summary["results"].items():
        print(f"{name:<15} {r['rc']:>2}  {r['seconds']:>7}")
    print(f"machine: {summary['machine']}; JSON in {out}/")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
