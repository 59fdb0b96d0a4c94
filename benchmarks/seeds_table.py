"""A model's zero-shot metrics on several fresh synthetic archives (one per seed), with their mean and spread.

One held-out seed can flatter or sink a model by a few hundredths (the weakest findings have 12-40 positives),
so the bundled model is judged on several. Focal findings also get their AUC by lesion size, pooled over seeds.
Every archive is made by `ctglip synth` and scored by `ctglip eval` (subprocesses: the numbers are what a user
reproduces; `--in-process` runs the same `evaluate` in this process and encodes the calibration archive once);
archives and evaluations already on disk are reused only when they answer the same request: an archive whose
synth.json records the same seed, patients and preset, and an evaluation whose ``request.json`` records the same
model (config hash and sha256 of the weights file, for a folder or a registered name alike), the same archive and
the same calibration archive and split; anything else is made again.

    python benchmarks/seeds_table.py --model ctglip-tiny-synthetic --calib-archive data/calib --out seeds/
    python benchmarks/seeds_table.py --model runs/x/model --seeds 1001 4242 5150 --patients 150 100 100 \
        --calib-archive data/calib --out seeds/ --json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fmt, print_table, run_command, write_json  # noqa: E402

BARS = {"organ_top1": 0.95, "auc_mean": 0.95, "auc_min": 0.85, "f1_mean": 0.80}


def archive_matches(root: Path, seed: int, patients: int, preset: str) -> bool:
    """Whether ROOT holds a synthetic archive of this seed, size and preset (its synth.json says so)."""
    try:
        meta = json.loads((root / "synth.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    name = meta.get("preset", {}).get("name") if isinstance(meta.get("preset"), dict) else meta.get("preset")
    return (root / "manifest.csv").is_file() and (meta.get("seed"), meta.get("n_patients"), name) == \
        (seed, patients, preset)


def _archive(out: Path, seed: int, patients: int, preset: str, workers: int) -> Path:
    root = out / f"archive_{seed}"
    if not archive_matches(root, seed, patients, preset):  # another --patients or --preset: make it again
        run_command([sys.executable, "-m", "ctglip_sdk.cli.main", "synth", str(root), "--patients", str(patients),
                     "--seed", str(seed), "--format", "nifti", "--preset", preset, "--workers", str(workers),
                     "--json", "--overwrite"])
    return root


def _sha256(path: Path) -> Optional[str]:
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_identity(model: str) -> Dict[str, Optional[str]]:
    """The registered config hash, and the sha256 of config.json and of the weights file, of a model folder or a
    registered name (its bundled folder).

    A registered name's bundled weights can change under the same name (a reinstall, a retrained bundle), so the
    name alone does not identify what was evaluated; a folder's file times do not either (a copy keeps old ones).
    config.json also holds the calibration and the weights' checksum, which change what eval reports.
    """
    folder: Optional[Path] = Path(model) if Path(model).is_dir() else None
    config_hash: Optional[str] = None
    if folder is None:
        try:
            from ctglip_sdk.model import model_info

            info = model_info(model)
            config_hash = info["config_hash"]
            folder = Path(info["weights"]) if info.get("weights") else None
        except Exception:  # noqa: BLE001 - an unknown name: nothing to compare, so nothing is reused
            return {"config_hash": None, "config_json_sha256": None, "weights_sha256": None}
    return {"config_hash": config_hash,
            "config_json_sha256": _sha256(folder / "config.json") if folder is not None else None,
            "weights_sha256": _sha256(folder / "model.safetensors") if folder is not None else None}


def request_record(model: str, archive: Path, calib: str, calib_split: str) -> Dict[str, Any]:
    """What an evaluation answers (stored next to its metrics.json as request.json)."""
    try:
        synth = json.loads((archive / "synth.json").read_text())
    except (OSError, json.JSONDecodeError):
        synth = {}
    preset = synth.get("preset")
    return {"model": model_identity(model), "archive": str(archive), "archive_seed": synth.get("seed"),
            "archive_patients": synth.get("n_patients"),
            "archive_preset": preset.get("name") if isinstance(preset, dict) else preset,
            "calib_archive": calib, "calib_split": calib_split}


class _InProcess:
    """`--in-process`: one loaded model and one encoding of the calibration archive for every seed (the same
    `evaluate` that `ctglip eval` runs, so the same numbers; ~200 fewer studies to encode per seed)."""

    def __init__(self, model: str, calib: str, calib_split: str, workers: int = 0) -> None:
        import ctglip_sdk as cg
        from ctglip_sdk.training.evaluation import encode_split, read_splits

        self.model = cg.load(model)
        self.model.eval()
        self.calib, self.calib_split, self.workers = calib, calib_split, workers
        self.val = encode_split(self.model, read_splits(calib, calib_split), workers=workers)

    def __call__(self, archive: Path, out: Path) -> None:
        from ctglip_sdk.training.evaluation import evaluate

        evaluate(self.model, archive, split="all", val_split=self.calib_split, val_archive=self.calib, out_dir=out,
                 val_embeddings=self.val, workers=self.workers)


def _evaluate(model: str, archive: Path, out: Path, calib: str, calib_split: str,
              in_process: "_InProcess | None" = None, workers: int = 0) -> Dict[str, Any]:
    metrics = out / "metrics.json"
    request = request_record(model, archive, calib, calib_split)
    if metrics.is_file() and not _same_request(metrics, request):
        metrics.unlink()  # other weights, config, archive or calibration: evaluate again
    if not metrics.is_file():
        if in_process is not None:
            in_process(archive, out)
        else:
            run_command([sys.executable, "-m", "ctglip_sdk.cli.main", "eval", "--model", model, "--archive",
                         str(archive), "--split", "all", "--val-archive", calib, "--val-split", calib_split, "--out",
                         str(out), "--workers", str(workers), "--json"])
        (out / "request.json").write_text(json.dumps(request, indent=2) + "\n")
    return json.loads(metrics.read_text())


def _same_request(metrics: Path, request: Dict[str, Any]) -> bool:
    """Whether an earlier evaluation answers this one: its request.json equals ``request`` (model config hash and
    weights sha256, archive seed/patients/preset, calibration archive and split). An evaluation without a
    request.json (older script) or of a model that cannot be identified is never reused."""
    try:
        cached = json.loads((metrics.parent / "request.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if not any(request["model"].values()):
        return False
    return cached == json.loads(json.dumps(request))


def summarize(per_seed: Dict[int, Dict[str, Any]]) -> Dict[str, Any]:
    """Mean, min and max of the headline metrics over seeds, and each finding's AUC per seed."""
    keys = ["organ_top1", "auc_mean", "auc_min", "f1_mean", "f1_mean_model_thresholds"]
    agg = {}
    for k in keys:
        vals = [float(m[k]) for m in per_seed.values() if m.get(k) is not None]
        if vals:
            agg[k] = {"mean": statistics.fmean(vals), "min": min(vals), "max": max(vals)}
    maps = [float(m["retrieval"]["map"]) for m in per_seed.values() if m["retrieval"].get("map") is not None]
    if maps:
        agg["map"] = {"mean": statistics.fmean(maps)}
    findings = sorted({f for m in per_seed.values() for f, v in m["per_finding"].items() if v.get("auc") is not None})
    auc = {f: {s: m["per_finding"].get(f, {}).get("auc") for s, m in per_seed.items()} for f in findings}
    # A bar is met "on every seed" only if the worst seed meets it: the reading the bars ask for.
    met = {k: all(m.get(k) is not None and float(m[k]) >= b for m in per_seed.values()) for k, b in BARS.items()}
    return {"aggregate": agg, "per_finding_auc": auc, "auc_by_size": pool_auc_by_size(per_seed),
            "auc_by_contrast": pool_auc_bins(per_seed, "auc_by_contrast"), "bars_met_on_every_seed": met}


def pool_auc_bins(per_seed: Dict[int, Dict[str, Any]], field: str) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Each finding's per-bin AUC (``field``: "auc_by_size" or "auc_by_contrast") over seeds: the mean of the
    seeds' bin AUCs weighted by their positives.

    (Each seed's bin AUC has its own negatives, so this is a weighted mean, not one AUC of pooled predictions.)
    """
    acc: Dict[str, Dict[str, List[float]]] = {}
    for m in per_seed.values():
        for f, v in m["per_finding"].items():
            for b, x in (v.get(field) or {}).items():
                if x.get("auc") is None:
                    continue
                slot = acc.setdefault(f, {}).setdefault(b, [0.0, 0])
                slot[0] += float(x["auc"]) * x["n_pos"]
                slot[1] += x["n_pos"]
    return {f: {b: {"auc": a / n, "n_pos": n} for b, (a, n) in bins.items() if n} for f, bins in acc.items()}


def pool_auc_by_size(per_seed: Dict[int, Dict[str, Any]]) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Each focal finding's per-size AUC over seeds, weighted by positives (:func:`pool_auc_bins`)."""
    return pool_auc_bins(per_seed, "auc_by_size")


def _print_bins(rows: Dict[str, Dict[str, Dict[str, float]]], bins: List[str], title: str) -> None:
    """A finding x bin table of pooled ``{auc, n_pos}`` cells (nothing when ``rows`` is empty)."""
    if rows:
        print_table(["finding"] + bins, [[f] + [f"{fmt(v[b]['auc'])} ({v[b]['n_pos']})" if b in v else "-"
                                                for b in bins] for f, v in sorted(rows.items())], title=title)


def main(argv: Sequence[str] = ()) -> Dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ctglip-tiny-synthetic", help="model folder or registered name")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1001, 4242, 5150])
    ap.add_argument("--patients", type=int, nargs="+", default=[150, 100, 100],
                    help="patients per archive (one value for all, or one per seed)")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--calib-archive", required=True, help="archive whose studies choose the F1 thresholds")
    ap.add_argument("--calib-split", default="all")
    ap.add_argument("--out", default="seeds", help="archives and evaluations are kept here and reused")
    ap.add_argument("--workers", type=int, default=2,
                    help="synth processes, and threads reading studies ahead of the encoder")
    ap.add_argument("--in-process", action="store_true",
                    help="evaluate in this process, encoding the calibration archive once for all seeds")
    ap.add_argument("--json", dest="json_path", nargs="?", const="-", help="also write JSON (to a file or stdout)")
    args = ap.parse_args(list(argv) or None)
    if len(args.patients) not in (1, len(args.seeds)):
        ap.error("--patients takes one value or one per seed")
    patients = args.patients * len(args.seeds) if len(args.patients) == 1 else args.patients
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # Evaluations are stored per model: a folder is named by itself, or by its run when it is a run's "model/".
    mp = Path(args.model)
    tag = (mp.parent.name if mp.name == "model" else mp.name) if mp.exists() else args.model
    per_seed = {}
    runner = None
    for seed, n in zip(args.seeds, patients):
        archive = _archive(out, seed, n, args.preset, args.workers)
        dest = out / f"eval_{tag}_{seed}"
        fresh = (dest / "metrics.json").is_file() and _same_request(
            dest / "metrics.json", request_record(args.model, archive, args.calib_archive, args.calib_split))
        if args.in_process and runner is None and not fresh:
            runner = _InProcess(args.model, args.calib_archive, args.calib_split, args.workers)
        per_seed[seed] = _evaluate(args.model, archive, dest, args.calib_archive, args.calib_split, runner,
                                   args.workers)
    summary = summarize(per_seed)
    rows = [[seed, m["organ_top1"], m["auc_mean"], m["auc_min"], m["f1_mean"], m.get("f1_mean_model_thresholds"),
             m["retrieval"]["map"]] for seed, m in per_seed.items()]
    agg = summary["aggregate"]
    rows.append(["mean"] + [agg[k]["mean"] if k in agg else None
                            for k in ("organ_top1", "auc_mean", "auc_min", "f1_mean", "f1_mean_model_thresholds",
                                      "map")])
    print_table(["seed", "organ top-1", "mean AUC", "min AUC", "mean F1", "F1 @0.5", "mAP"],
                [[r[0]] + [fmt(v) for v in r[1:]] for r in rows], title=f"{args.model} on fresh archives")
    weak = {f: v for f, v in summary["per_finding_auc"].items()
            if any(a is not None and a < 0.9 for a in v.values())}
    if weak:
        print_table(["finding"] + [str(s) for s in args.seeds],
                    [[f] + [fmt(v.get(s)) for s in args.seeds] for f, v in weak.items()],
                    title="findings below AUC 0.90 on some seed")
    from ctglip_sdk.training.evaluation import size_bin_names

    _print_bins(summary["auc_by_size"], size_bin_names(),
                "AUC of focal findings by lesion size, over seeds (positives)")
    phased = {f: v for f, v in summary["auc_by_contrast"].items() if f in weak}
    _print_bins(phased, sorted({g for v in phased.values() for g in v}),
                "AUC by contrast phase of the findings above, over seeds (positives)")
    print("bars met on every seed:", json.dumps(summary["bars_met_on_every_seed"]))
    payload = {"model": args.model, "seeds": args.seeds, "patients": patients, "calib_archive": args.calib_archive,
               "per_seed": {s: {k: m[k] for k in ("organ_top1", "auc_mean", "auc_min", "f1_mean",
                                                  "f1_mean_model_thresholds", "retrieval")}
                            for s, m in per_seed.items()}, **summary}
    if args.json_path == "-":
        print(json.dumps(payload, indent=2, default=str))
    elif args.json_path:
        write_json(args.json_path, payload)
    return payload


if __name__ == "__main__":
    main(sys.argv[1:])
