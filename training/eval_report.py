"""An evaluation's files: metrics.json, the Markdown report (results.md) and the ROC-curve PNG."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

__all__ = ["write_reports", "markdown_table"]

log = logging.getLogger(__name__)


def write_reports(metrics: Dict[str, Any], out: Path, curves: Dict[str, Tuple[np.ndarray, np.ndarray]]) -> None:
    """metrics.json, results.md (summary + per-finding table) and roc.png (one panel per finding)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out / "results.md").write_text(markdown_table(metrics))
    if curves:
        _plot_roc(curves, metrics, out / "roc.png")
    else:  # no finding has both classes here: an earlier run's curves must not pass for this run's
        (out / "roc.png").unlink(missing_ok=True)


def _fmt(v: Any) -> str:
    return "–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def _bins_table(rows: Dict[str, Dict[str, Dict[str, Any]]], bins: List[str], caption: str) -> List[str]:
    """Markdown lines of a finding x bin table of ``{auc, n_pos}`` cells (none when ``rows`` is empty)."""
    if not rows:
        return []
    lines = ["", caption, "", "| finding | " + " | ".join(bins) + " |", "|---|" + "---|" * len(bins)]
    for key, v in rows.items():
        cells = [f"{_fmt(v[b]['auc'])} ({v[b]['n_pos']})" if b in v else "–" for b in bins]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return lines


def markdown_table(metrics: Dict[str, Any]) -> str:
    """The evaluation as Markdown: a summary table and one row per finding."""
    r = metrics["retrieval"]
    lines = [f"# Evaluation of {metrics['model']} on {metrics['split']} "
             f"(archive seed {metrics['archive_seed']}, {metrics['n_studies']} studies, {metrics['n_organs']} organs)",
             "", "| organ top-1 | organ top-1 (within study) | mean AUC | min AUC | mean F1 | mean F1 at the model's "
             "thresholds | R@1 | R@5 | R@10 | mAP |",
             "|---|---|---|---|---|---|---|---|---|---|",
             "| " + " | ".join(_fmt(metrics[k]) for k in ("organ_top1", "organ_top1_within_study", "auc_mean",
                                                          "auc_min", "f1_mean", "f1_mean_model_thresholds"))
             + " | " + " | ".join(_fmt(r.get(k)) for k in ("r@1", "r@5", "r@10", "map")) + " |",
             *(["", "**F1 is in-sample:** its thresholds were chosen on studies that are also scored here "
                f"(val split {metrics['val_split']!r} of the same archive)."] if metrics.get("thresholds_in_sample")
               else []),
             *(["", f"**F1 at the model's thresholds is in-sample** for "
                f"{metrics['model_calibration']['scored_studies_among_them']} scored studies: the model was "
                "calibrated on them."] if (metrics.get("model_calibration") or {}).get("scored_studies_among_them")
               else []),
             *(["", f"Left out {len(metrics['skipped_studies'])} unreadable studies (`skipped_studies` in the "
                f"JSON): " + "; ".join(f"{s['study_uid']}: {s['reason']}" for s in metrics["skipped_studies"][:5])]
               if metrics.get("skipped_studies") else []),
             *(["", f"Left out {len(metrics['val_skipped_studies'])} unreadable studies of the val split "
                f"(`val_skipped_studies`): " + "; ".join(f"{s['study_uid']}: {s['reason']}"
                                                         for s in metrics["val_skipped_studies"][:5])]
               if metrics.get("val_skipped_studies") else []),
             *(["", "**Not scored:** positives on organs the masks lack (`unscored_positives`): "
                + ", ".join(f"{k} {n}" for k, n in metrics["unscored_positives"].items())]
               if metrics.get("unscored_positives") else []),
             "", "| finding | AUC | F1 | threshold | F1 at 0.5 (model's threshold) | positives | negatives |",
             "|---|---|---|---|---|---|---|"]
    for key, v in sorted(metrics["per_finding"].items()):
        lines.append(f"| {key} | {_fmt(v['auc'])} | {_fmt(v['f1'])} | {_fmt(v['threshold'])} | "
                     f"{_fmt(v['f1_at_model_threshold'])} | {v['n_pos']} | {v['n_neg']} |")
    from ctglip_sdk.training.evaluation import size_bin_names  # noqa: PLC0415 - evaluation imports this module

    sized = {k: v["auc_by_size"] for k, v in sorted(metrics["per_finding"].items()) if v.get("auc_by_size")}
    seen = {b for v in sized.values() for b in v}
    lines += _bins_table(sized, [b for b in size_bin_names() if b in seen],
                         "AUC of focal findings by lesion size (positives in the bin against every negative; "
                         "positives in brackets):")
    phased = {k: v["auc_by_contrast"] for k, v in sorted(metrics["per_finding"].items()) if v.get("auc_by_contrast")}
    lines += _bins_table(phased, sorted({g for v in phased.values() for g in v}),
                         "AUC by contrast phase (the manifest's `contrast` column; positives and negatives of that "
                         "phase; positives in brackets):")
    return "\n".join(lines) + "\n"


def _plot_roc(curves: Dict[str, Tuple[np.ndarray, np.ndarray]], metrics: Dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed (pip install 'ctglip-sdk[viz]'): no ROC plot written")
        return
    keys = sorted(curves)
    cols = min(5, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), squeeze=False)
    for ax, key in zip(axes.ravel(), keys):
        fpr, tpr = curves[key]
        ax.plot(fpr, tpr, lw=1.5)
        ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=0.8)
        a = metrics["per_finding"][key]["auc"]
        ax.set_title(f"{key}\nAUC {_fmt(a)}", fontsize=8)
        ax.set_xlim(0, 1), ax.set_ylim(0, 1.01)
        ax.tick_params(labelsize=6)
    for ax in axes.ravel()[len(keys):]:
        ax.axis("off")
    fig.suptitle(f"{metrics['model']}: ROC per finding ({metrics['split']}, seed {metrics['archive_seed']})",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
