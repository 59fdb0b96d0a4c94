"""Is the readout the limit? A trained model's zero-shot AUC against more readout and truth-label probes.

For a trained model (default: the bundled ``ctglip-tiny-synthetic``) this computes the vision projection's
inputs (pooled organ features + standardised stats, :func:`ctglip_sdk.training.readout.projection_inputs`) on a
training archive and on one or more held-out archives, then scores every finding on the held-out archives
(AUC against ``truth.jsonl``, overall and per contrast phase) for:

- the model as it is;
- the model after ``N`` more readout epochs (:func:`~ctglip_sdk.training.readout.fit_readout` continued from
  its projection, report labels as in training), for each ``--more-epochs N``;
- truth-label probes fitted on the training archive's inputs (linear and a 64-unit MLP per finding, as
  ``probe_stats.py`` fits them), on the stats columns alone and on the whole input.

A probe with *truth* labels is an upper reference for what a readout of these inputs can reach; where the
model already scores what the probes score, a better readout cannot lift the finding, only better inputs can.

Usage: python benchmarks/probe_readout.py --train data/train600 --test data/calib data/dev8888 \
       [--model ctglip-tiny-synthetic] [--more-epochs 100 200] [--findings pancreatic_cyst lung_nodule] [--json F]
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json  # noqa: E402
from probe_stats import fit  # noqa: E402

import ctglip_sdk as cg  # noqa: E402
from ctglip_sdk.model.zeroshot import ZeroShotClassifier  # noqa: E402
from ctglip_sdk.reports.dictionary import AbnormalityDictionary  # noqa: E402
from ctglip_sdk.training.cache import PreprocessCache  # noqa: E402
from ctglip_sdk.training.data import annotate_report, build_cache, read_manifest, read_truth  # noqa: E402
from ctglip_sdk.training.metrics import auc  # noqa: E402
from ctglip_sdk.training.readout import fit_readout, projection_inputs  # noqa: E402

Table = Dict[str, Any]


def archive_table(model: Any, root: Path, dictionary: Any, workers: int) -> Table:
    """Projection inputs, report labels, truth findings and contrast phase of every organ of an archive."""
    cache = PreprocessCache.for_model(model)
    records = read_manifest(root)
    build_cache(records, cache, workers=workers, progress=True)
    texts = [annotate_report(r.report.read_text(encoding="utf-8"), dictionary) for r in records]
    data = projection_inputs(model, records, cache, texts, progress=True)
    truth = read_truth(root)
    found: List[set] = []
    phase: List[str] = []
    for rec in records:
        have = {(f.get("organ"), f.get("finding")) for f in truth.get(rec.study_uid, [])}
        names = cache.names(rec.image, rec.mask, rec.series)  # the header only; projection_inputs read the tensors
        found += [{k for (o, k) in have if o == name} for name in names]
        phase += [rec.contrast] * len(names)
    return {"data": data, "truth": found, "phase": np.asarray(phase)}


def _aucs(score: np.ndarray, y: np.ndarray, phase: np.ndarray) -> Dict[str, Any]:
    row: Dict[str, Any] = {"auc": round(auc(score, y), 3), "n_pos": int(y.sum())}
    for ph in sorted(set(phase) - {""}):
        sel = phase == ph
        if y[sel].sum() >= 2 and (~y[sel]).sum() >= 2:
            row[ph] = round(auc(score[sel], y[sel]), 3)
    return row


def model_scores(model: Any, table: Table, dictionary: Any) -> Dict[str, Dict[str, Any]]:
    """Zero-shot AUC per finding (with >= 3 positives) of the model's current projection on a table."""
    data = table["data"]
    with torch.no_grad():
        vectors = F.normalize(model.vision_proj(data.inputs.to(model.device)), dim=-1).cpu().numpy()
    rows, keys, logits = ZeroShotClassifier(model, dictionary).detect_logits(data.organs, vectors)
    keys_a = np.asarray(keys)
    out: Dict[str, Dict[str, Any]] = {}
    for key in sorted(set(keys)):
        r = rows[keys_a == key]
        y = np.array([key in table["truth"][i] for i in r])
        if y.sum() >= 3 and (~y).sum() >= 3:
            out[key] = _aucs(logits[keys_a == key], y, table["phase"][r])
    return out


def probe_scores(train: Table, test: Table, dictionary: Any, findings: Sequence[str], n_stats: int,
                 epochs: int = 300) -> Dict[str, Dict[str, Any]]:
    """Truth-label probes per finding: {finding: {"stats|all linear|mlp64": aucs}} on ``test``."""
    xa, xb = train["data"].inputs.numpy(), test["data"].inputs.numpy()
    oa, ob = np.asarray(train["data"].organs), np.asarray(test["data"].organs)
    out: Dict[str, Dict[str, Any]] = {}
    for key in findings:
        organs = sorted({o for o in set(oa) | set(ob) if key in {e.key for e in dictionary.for_organ(o)}})
        ma, mb = np.isin(oa, organs), np.isin(ob, organs)
        ya = np.array([key in train["truth"][i] for i in np.flatnonzero(ma)])
        yb = np.array([key in test["truth"][i] for i in np.flatnonzero(mb)])
        if ya.sum() < 5 or yb.sum() < 3:
            continue
        row: Dict[str, Any] = {}
        for cols, sl in (("stats", slice(xa.shape[1] - n_stats, None)), ("all", slice(None))):
            a, b = xa[:, sl], xb[:, sl]
            # The model's own standardisation of the stats (set_stats_norm); pooled features get the same.
            mu, sd = a.mean(0), np.maximum(a.std(0), 0.05)
            za, zb = np.clip((a - mu) / sd, -5, 5), np.clip((b - mu) / sd, -5, 5)
            for hidden in (0, 64):
                score = fit(za[ma], ya, hidden, epochs, 0)(zb[mb])
                row[f"{cols} {'mlp64' if hidden else 'linear'}"] = _aucs(score, yb, test["phase"][mb])
        out[key] = row
    return out


def _summary(per: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    a = {k: v["auc"] for k, v in per.items()}
    worst = min(a, key=a.get)
    return {"auc_mean": round(float(np.mean(list(a.values()))), 4), "auc_min": a[worst], "weakest": worst}


def main() -> Dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ctglip-tiny-synthetic", help="registered name or local model folder")
    ap.add_argument("--train", required=True, type=Path, help="archive the model (and the probes) were fitted on")
    ap.add_argument("--test", required=True, type=Path, nargs="+", help="held-out archives to score")
    ap.add_argument("--more-epochs", type=int, nargs="*", default=[100], help="readout epochs added to the model's")
    ap.add_argument("--findings", nargs="*", default=["pancreatic_cyst", "lung_nodule", "liver_mass"],
                    help="findings to probe with truth labels")
    ap.add_argument("--readout-lr", type=float, default=3e-4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2, help="processes for the preprocessing cache")
    ap.add_argument("--json", dest="json_out", default=None, help="write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dictionary = AbnormalityDictionary.default()
    model = cg.load(args.model)
    model.eval()
    train = archive_table(model, args.train, dictionary, args.workers)
    tests = {str(p): archive_table(model, p, dictionary, args.workers) for p in args.test}
    n_stats = model.config.preprocess.n_stats
    base = copy.deepcopy(model.vision_proj.state_dict())
    result: Dict[str, Any] = {"model": args.model, "train": str(args.train), "variants": {}, "probes": {}}
    result["variants"]["as is"] = {name: model_scores(model, t, dictionary) for name, t in tests.items()}
    for extra in args.more_epochs:
        model.vision_proj.load_state_dict(base)
        with torch.enable_grad():
            fit_readout(model, train["data"], dictionary, epochs=extra, lr=args.readout_lr, progress=True)
        model.eval()
        result["variants"][f"+{extra} readout epochs"] = {n: model_scores(model, t, dictionary) for n, t in tests.items()}
    model.vision_proj.load_state_dict(base)
    for name, t in tests.items():
        result["probes"][name] = probe_scores(train, t, dictionary, args.findings, n_stats)
    for name in tests:
        print(f"\n{name}")
        for variant, per in result["variants"].items():
            s = _summary(per[name])
            cols = " ".join(f"{k} {per[name][k]['auc']}" for k in args.findings if k in per[name])
            print(f"  model {variant}: mean AUC {s['auc_mean']} min {s['auc_min']} ({s['weakest']}) | {cols}")
        for key, row in result["probes"][name].items():
            print(f"  truth probe {key} (n_pos {next(iter(row.values()))['n_pos']}): "
                  + " | ".join(f"{k} {v['auc']}" for k, v in row.items()))
    if args.json_out:
        write_json(args.json_out, result)
    return result


if __name__ == "__main__":
    main()
