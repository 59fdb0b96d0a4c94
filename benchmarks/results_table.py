"""The paper's comparison: {CLIP, CT-GLIP} x {CNN, ViT} (+ CT-GLIP without the dictionary) on a held-out archive.

Every model is trained with the project's own `ctglip train` and scored with `ctglip eval` (subprocesses, so the
numbers are what a user reproduces). Finished runs are kept: rerunning the script skips trained models and
stored evaluations, so it can be stopped and continued, but only when they answer the same request: each run
folder holds a ``request.json`` (steps, objective, overrides, config hash of --cnn-config or of the ViT derived
from it, training archive) and each evaluation an ``evals/NAME.request.json`` (sha256 of the trained weights,
held-out archive, split). A run whose request differs, or that an earlier version of this script made without
one, is moved aside to ``runs/NAME.replaced-<time>`` (nothing is deleted) and trained again; a stale evaluation
is redone.

    python benchmarks/results_table.py --train-archive data/train --heldout-archive data/heldout --out results/
    python benchmarks/results_table.py ... --make-archives --train-patients 200 --heldout-patients 150

The tiny ViT (`ctglip-tiny-vit`, written to OUT/ctglip-tiny-vit.json) is a 4-layer, width-128 3-D ViT with
8^3 patches at 3.5 mm (28 mm cells); it costs several times the tiny CNN per step, so its pair runs with
`--vit-steps` (state the budget next to the table).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import run_command  # noqa: E402
from seeds_table import _sha256  # noqa: E402


def config_hash(config: Any) -> str:
    """Config hash of a registered name, a config .json path, or a config dict (what the run trains)."""
    from ctglip_sdk.model import get_config
    from ctglip_sdk.model.config import CTGlipConfig

    if isinstance(config, dict):
        return CTGlipConfig.from_json(json.dumps(config)).config_hash
    if str(config).endswith(".json"):
        return CTGlipConfig.from_json(Path(config).read_text()).config_hash
    return get_config(str(config)).config_hash


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def reuse_or_move(run_dir: Path, request: Dict[str, Any]) -> bool:
    """Whether ``run_dir`` (finished or not) was made for ``request``; a folder made for another request, or
    without a request.json, is renamed aside (kept) so that the run starts afresh. Returns True to reuse."""
    if not run_dir.exists():
        return False
    if _read_json(run_dir / "request.json") == json.loads(json.dumps(request)):
        return True
    aside = run_dir.with_name(f"{run_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir.rename(aside)
    print(f"{run_dir}: trained for another request (--steps, --cnn-config, archive...) or by an earlier script; "
          f"moved to {aside.name}, training again", flush=True)
    return False


def tiny_vit_config(cnn_config: str = "ctglip-tiny") -> Dict[str, object]:
    """The tiny ViT: ctglip-tiny's text tower, preprocessing and organ pooling with a 3-D ViT image tower.

    Derived from the registered ctglip-tiny so the CNN/ViT rows differ only in the image tower.
    """
    from ctglip_sdk.model import get_config
    from ctglip_sdk.model.config import CTGlipConfig

    if cnn_config.endswith(".json"):
        cfg = CTGlipConfig.from_json(Path(cnn_config).read_text()).to_dict()
    else:
        cfg = get_config(cnn_config).to_dict()
    cfg.update(name="ctglip-tiny-vit",
               description="Tiny 3-D ViT (4 layers, width 128, 8^3 patches at 3.5 mm = 28 mm cells) for the "
                           "CNN/ViT comparison on CPU; text tower, preprocessing and pooling as ctglip-tiny.")
    cfg["vision"] = {"arch": "vit", "channels": [128], "depth": 4, "patch_size": 8, "feature_stride": 8,
                     "out_channels": 64, "num_heads": 4, "mlp_ratio": 2.0, "pos_grid": [14, 10, 24]}
    return cfg


#: name -> (tower, objective, extra --set overrides)
VARIANTS: Dict[str, tuple] = {
    "clip-cnn": ("cnn", "clip", []),
    "ctglip-cnn": ("cnn", "ctglip", []),
    "ctglip-cnn-nodict": ("cnn", "ctglip", ["w_abnormality=0"]),
    "clip-vit": ("vit", "clip", []),
    "ctglip-vit": ("vit", "ctglip", []),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-archive", required=True)
    ap.add_argument("--heldout-archive", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--make-archives", action="store_true", help="generate missing archives (default preset)")
    ap.add_argument("--train-patients", type=int, default=200)
    ap.add_argument("--heldout-patients", type=int, default=150)
    ap.add_argument("--train-seed", type=int, default=0)
    ap.add_argument("--heldout-seed", type=int, default=1001)
    ap.add_argument("--steps", type=int, default=600, help="optimizer steps of the CNN runs")
    ap.add_argument("--vit-steps", type=int, default=200, help="optimizer steps of the ViT runs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cnn-config", default="ctglip-tiny",
                    help="registered name or model config .json of the CNN rows (the ViT copies its text/preprocessing)")
    ap.add_argument("--only", nargs="*", choices=sorted(VARIANTS), help="subset of variants")
    ap.add_argument("--split", default="all", help="held-out studies to score (thresholds: training val split)")
    args = ap.parse_args()

    exe = [sys.executable, "-m", "ctglip_sdk.cli.main"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path, n, seed in ((args.train_archive, args.train_patients, args.train_seed),
                          (args.heldout_archive, args.heldout_patients, args.heldout_seed)):
        if not (Path(path) / "manifest.csv").is_file():
            if not args.make_archives:
                raise SystemExit(f"{path}: no archive (pass --make-archives to generate it)")
            run_command(exe + ["synth", path, "--patients", str(n), "--seed", str(seed), "--format", "nifti",
                        "--preset", "default"])
    vit_cfg = out / "ctglip-tiny-vit.json"
    vit_dict = tiny_vit_config(args.cnn_config)
    vit_cfg.write_text(json.dumps(vit_dict, indent=2) + "\n")
    hashes = {"cnn": config_hash(args.cnn_config), "vit": config_hash(vit_dict)}
    train_meta = _read_json(Path(args.train_archive) / "synth.json") or {}

    rows = {}
    for name in args.only or list(VARIANTS):
        tower, objective, extra = VARIANTS[name]
        run_dir = out / "runs" / name
        eval_file = out / "evals" / f"{name}.json"
        steps = args.steps if tower == "cnn" else args.vit_steps
        request = {"steps": steps, "objective": objective, "overrides": extra, "config_hash": hashes[tower],
                   "train_archive": str(args.train_archive), "train_archive_seed": train_meta.get("seed"),
                   "train_archive_patients": train_meta.get("n_patients"), "seed": 0}
        reused = reuse_or_move(run_dir, request)
        if not reused or not (run_dir / "model" / "model.safetensors").is_file():
            sets = [f"objective={objective}", f"max_steps={steps}", f"threads={args.threads}", "seed=0", *extra]
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "request.json").write_text(json.dumps(request, indent=2) + "\n")  # before: --resume checks it
            t0 = time.perf_counter()
            run_command(exe + ["train", "--archive", args.train_archive, "--model",
                        args.cnn_config if tower == "cnn" else str(vit_cfg), "--out", str(run_dir), "--json",
                        "--no-progress", "--resume"] + [a for s in sets for a in ("--set", s)])
            (run_dir / "wall_seconds.txt").write_text(f"{time.perf_counter() - t0:.0f}\n")
        eval_request = {"weights_sha256": _sha256(run_dir / "model" / "model.safetensors"),
                        "heldout_archive": str(args.heldout_archive), "split": args.split,
                        "val_archive": str(args.train_archive)}
        eval_req_file = out / "evals" / f"{name}.request.json"
        if eval_file.is_file() and _read_json(eval_req_file) != eval_request:
            eval_file.unlink()  # the model was retrained, or another held-out archive or split: score again
        if not eval_file.is_file():
            eval_file.parent.mkdir(parents=True, exist_ok=True)
            text = run_command(exe + ["eval", "--model", str(run_dir / "model"), "--archive", args.heldout_archive,
                               "--split", args.split, "--val-archive", args.train_archive, "--val-split", "val",
                               "--out", str(out / "evals" / name), "--json"])
            eval_file.write_text(text)
            eval_req_file.write_text(json.dumps(eval_request, indent=2) + "\n")
        m = json.loads(eval_file.read_text())
        summary = json.loads((run_dir / "summary.json").read_text())
        rows[name] = {"tower": tower, "objective": objective, "steps": summary["steps"],
                      "train_seconds": summary["train_seconds"], "organ_top1": m["organ_top1"],
                      "auc_mean": m["auc_mean"], "auc_min": m["auc_min"], "f1_mean": m["f1_mean"],
                      "map": m["retrieval"]["map"], "archive_seed": m["archive_seed"]}

    def fmt(v):
        return "–" if v is None else f"{v:.3f}"

    lines = ["| model | image tower | steps | train s | organ top-1 | mean AUC | min AUC | mean F1 | retrieval mAP |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        label = {"clip": "CLIP", "ctglip": "CT-GLIP"}[r["objective"]] + (" (no dictionary)" if "nodict" in name else "")
        lines.append(f"| {label} | {r['tower'].upper()} | {r['steps']} | {r['train_seconds']:.0f} | "
                     f"{fmt(r['organ_top1'])} | {fmt(r['auc_mean'])} | {fmt(r['auc_min'])} | {fmt(r['f1_mean'])} | "
                     f"{fmt(r['map'])} |")
    table = "\n".join(lines) + "\n"
    (out / "results_table.md").write_text(table)
    (out / "results_table.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
