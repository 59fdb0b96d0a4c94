"""`ctglip train` and `ctglip eval`: thin wrappers over ctglip_sdk.training.train / evaluate."""

from __future__ import annotations

import os
from typing import Optional, Tuple

import click

from ctglip_sdk.cli.output import echo_json, print_table


@click.command("train")
@click.option("--archive", required=True, type=click.Path(exists=True, file_okay=False),
              help="Archive folder (manifest.csv, images, masks, reports).")
@click.option("--model", "model", default=None,
              help="Registered model config to train (e.g. ctglip-tiny) or a model folder to fine-tune.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Run folder: checkpoints/, metrics.jsonl, train_config.json and the trained model/.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="JSON (or YAML) file of training options.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override one training option, e.g. --set max_steps=200 --set objective=clip (repeatable).")
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in --out.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
def train_command(archive: str, model: Optional[str], out: str, config_path: Optional[str],
                  overrides: Tuple[str, ...], resume: bool, no_progress: bool, as_json: bool) -> None:
    """Train a CT-GLIP model (or the CLIP baseline) on an archive.

    Options come from defaults, then --config, then --model, then each --set. Multi-GPU:
    `torchrun --nproc_per_node=N -m ctglip_sdk.cli.main train ...`.

    The preprocessing cache (preprocessed pixels of every training scan) is kept outside OUT, in
    $CTGLIP_CACHE_DIR, else $XDG_CACHE_HOME/ctglip/preprocess, else ~/.cache/ctglip/preprocess, and reused by
    later runs; with patient data, put it where the archive's access rules apply (--set cache_dir=PATH) and delete it when the scans may not be kept.
    """
    from ctglip_sdk.training import TrainConfig, train

    cfg = TrainConfig.from_sources(config_path, overrides, model=model)
    summary = train(archive, out, cfg, resume=resume, progress=not no_progress)
    if _world_size() > 1 and os.environ.get("RANK", "0").strip() not in ("", "0"):
        return  # under torchrun every rank returns a summary; rank 0 prints the run's (one JSON document)
    if as_json:
        echo_json(summary)
        return
    print_table([{"key": k, "value": v} for k, v in summary.items() if not isinstance(v, dict)])


@click.command("eval")
@click.option("--model", "model", required=True, help="Model folder or registered name (e.g. ctglip-tiny-synthetic).")
@click.option("--archive", required=True, type=click.Path(exists=True, file_okay=False), help="Archive folder.")
@click.option("--split", default="test", show_default=True,
              help="Split to evaluate: a name, a comma-separated list (train,test) or 'all'.")
@click.option("--val-split", default="val", show_default=True,
              help="Split on which each finding's decision threshold is chosen; it must hold studies. "
                   "'none': threshold 0.5 for every finding.")
@click.option("--val-archive", type=click.Path(exists=True, file_okay=False), default=None,
              help="Take --val-split from this archive (e.g. the training archive) instead.")
@click.option("--out", "out", type=click.Path(file_okay=False), default=None,
              help="Write metrics.json, results.md and roc.png here.")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Threads that read and preprocess studies ahead of the network (same results; 2 on 2 cores).")
@click.option("--labels", type=click.Choice(["truth", "reports"]), default="truth", show_default=True,
              help="Ground truth: a synthetic archive's truth.jsonl, or what each study's report states "
                   "(archives of your own; uncertain statements are left out).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
def eval_command(model: str, archive: str, split: str, val_split: str, val_archive: Optional[str], out: Optional[str],
                 workers: int, labels: str, as_json: bool) -> None:
    """Zero-shot evaluation: organ recognition, abnormality AUC/F1 and text->organ retrieval."""
    from ctglip_sdk.training import evaluate

    # 'none' is the CLI's spelling of val_split=None (no threshold search), since an empty split is an error.
    chosen_val = None if val_split.strip().lower() == "none" else val_split
    metrics = evaluate(model, archive, split=split, val_split=chosen_val, out_dir=out, val_archive=val_archive,
                       workers=workers, labels=labels)
    if as_json:
        echo_json(metrics)
        return
    rows = [{"metric": k, "value": metrics[k]} for k in ("model", "archive_seed", "organ_top1", "auc_mean",
                                                           "auc_min", "f1_mean", "f1_mean_model_thresholds")]
    rows += [{"metric": f"retrieval {k}", "value": v} for k, v in metrics["retrieval"].items()]
    print_table(rows)
    click.echo("")
    print_table([{"finding": f, **v} for f, v in sorted(metrics["per_finding"].items())],
                columns=["finding", "auc", "f1", "f1_at_model_threshold", "n_pos", "n_neg"])


@click.command("calibrate")
@click.option("--model", "model", required=True, help="Model folder or registered name to calibrate.")
@click.option("--archive", required=True, type=click.Path(exists=True, file_okay=False),
              help="Archive with held-out studies (not used for training or for testing).")
@click.option("--split", default="val", show_default=True, help="Split to calibrate on: a name, a list or 'all'.")
@click.option("--labels", type=click.Choice(["reports", "truth"]), default="reports", show_default=True,
              help="Where positives come from: the studies' reports, or a synthetic archive's truth.jsonl.")
@click.option("--min-positives", type=click.IntRange(min=1), default=3, show_default=True,
              help="Findings with fewer positive organs in the split keep the model's previous offset (0 with "
                   "--reset).")
@click.option("--reset", is_flag=True,
              help="Start from no offsets: findings not calibrated on this split get 0 instead of their old offset.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False),
              help="Folder for the calibrated copy of the model (weights unchanged, thresholds in config.json).")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Threads that read and preprocess studies ahead of the network (same results; 2 on 2 cores).")
@click.option("--json", "as_json", is_flag=True, help="Print the chosen offsets as JSON.")
def calibrate_command(model: str, archive: str, split: str, labels: str, min_positives: int, reset: bool, out: str,
                      workers: int, as_json: bool) -> None:
    """Choose each finding's decision threshold on held-out studies and save it with the model.

    Zero-shot probabilities of the saved model then put each finding's F1-best threshold at 0.5, so
    `score`, `cohort` and `detect` decide with thresholds that were measured, not a fixed 0.5.
    """
    import ctglip_sdk as cg
    from ctglip_sdk.training import calibrate
    from ctglip_sdk.training.calibration import summary_rows

    loaded = cg.load(model)
    report = calibrate(loaded, archive, split, labels=labels, min_positives=min_positives, workers=workers,
                       reset=reset)
    loaded.save_pretrained(out)
    report["model_dir"] = out
    if as_json:
        echo_json(report)
        return
    print_table(summary_rows(report), columns=["finding", "offset", "f1", "n_pos", "n_neg"])
    kept = report["kept_offsets"]
    click.echo(f"\ncalibrated {len(report['offsets']) - len(kept)} findings on {report['n_studies']} studies"
               + (f" and kept {len(kept)} previous offsets (--reset sets them to 0)" if kept else "") + f" -> {out}")


def _world_size() -> int:
    """torchrun's WORLD_SIZE (1 when unset or unreadable): a RANK without it is no distributed run."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1") or 1)
    except ValueError:
        return 1

