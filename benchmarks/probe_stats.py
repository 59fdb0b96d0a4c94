"""How much each finding can be read from the per-organ stats alone: truth-label probes, linear vs a small MLP.

Fits, for every finding, a classifier on one archive's organ stats (``PreparedStudy.stats`` as the projection
reads them: ``stats_columns``, standardised and clipped like the model) with labels from ``truth.jsonl``, and
scores AUC on a second archive, overall and per contrast phase. This is an upper reference for the trained
model's readout of the stats, not a model: it uses ground truth, which training never sees. A finding where the
MLP beats the linear probe is one where a nonlinear projection (``projection.hidden``) can gain.

Usage: python benchmarks/probe_stats.py --train data/train600 --test data/calib [--model ctglip-tiny]
       [--hidden 0 64] [--json-out probe.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch

import ctglip_sdk as cg
from ctglip_sdk.reports.dictionary import AbnormalityDictionary
from ctglip_sdk.training.cache import PreprocessCache
from ctglip_sdk.training.data import build_cache, read_manifest, read_truth
from ctglip_sdk.training.metrics import auc

Table = Tuple[np.ndarray, np.ndarray, List[set], np.ndarray]


def organ_table(model: Any, cache: PreprocessCache, root: Path) -> Table:
    """Stats rows [R, n_stats] of every organ of every study, their organ names, truth findings and phase."""
    records = read_manifest(root)
    build_cache(records, cache, workers=2, progress=True)
    truth = read_truth(root)
    rows, organs, labels, phase = [], [], [], []
    for rec in records:
        names = cache.names(rec.image, rec.mask, rec.series)  # header and stats only: the images are not needed here
        have = {(f.get("organ"), f.get("finding")) for f in truth.get(rec.study_uid, [])}
        rows.append(model.stats_columns(cache.stats(rec.image, rec.mask, rec.series)).numpy())
        organs += list(names)
        labels += [{k for (o, k) in have if o == name} for name in names]
        phase += [rec.contrast] * len(names)
    return np.concatenate(rows), np.asarray(organs), labels, np.asarray(phase)


def fit(z: np.ndarray, y: np.ndarray, hidden: int, epochs: int, seed: int) -> Callable[[np.ndarray], np.ndarray]:
    """Class-balanced logistic loss, full batch AdamW; ``hidden`` 0 is a linear probe."""
    torch.manual_seed(seed)
    x, t = torch.as_tensor(z, dtype=torch.float32), torch.as_tensor(y, dtype=torch.float32)
    net: torch.nn.Module = torch.nn.Linear(x.shape[1], 1) if not hidden else torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], hidden), torch.nn.GELU(), torch.nn.Linear(hidden, 1))
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-3)
    pos_weight = (len(t) - t.sum()) / t.sum().clamp_min(1)
    for _ in range(epochs):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x)[:, 0], t, pos_weight=pos_weight)
        loss.backward()
        opt.step()
    net.eval()
    return lambda q: net(torch.as_tensor(q, dtype=torch.float32))[:, 0].detach().numpy()


def probe(train: Table, test: Table, dictionary: Any, hidden: Sequence[int], epochs: int = 300,
          seed: int = 0, min_pos: int = 5) -> Dict[str, Dict[str, Any]]:
    """AUC on ``test`` of probes fitted on ``train``, per finding with enough positives in both."""
    xa, oa, la, _ = train
    xb, ob, lb, pb = test
    mu, sd = xa.mean(0), np.maximum(xa.std(0), 0.05)  # the model's own standardisation (set_stats_norm)
    za, zb = np.clip((xa - mu) / sd, -5, 5), np.clip((xb - mu) / sd, -5, 5)
    applies: Dict[str, set] = {}
    for organ in sorted(set(oa) | set(ob)):
        for entry in dictionary.for_organ(organ):
            applies.setdefault(entry.key, set()).add(organ)
    out: Dict[str, Dict[str, Any]] = {}
    for key, organs in sorted(applies.items()):
        ma, mb = np.isin(oa, sorted(organs)), np.isin(ob, sorted(organs))
        ya = np.array([key in la[i] for i in np.flatnonzero(ma)])
        yb = np.array([key in lb[i] for i in np.flatnonzero(mb)])
        if ya.sum() < min_pos or yb.sum() < min_pos:
            continue
        row: Dict[str, Any] = {"n_pos_train": int(ya.sum()), "n_pos_test": int(yb.sum())}
        for h in hidden:
            name = f"mlp{h}" if h else "linear"
            score = fit(za[ma], ya, h, epochs, seed)(zb[mb])
            row[name] = round(auc(score, yb), 3)
            for ph in sorted(set(pb[mb]) - {""}):
                sel = pb[mb] == ph
                if yb[sel].sum() >= 2 and (~yb[sel]).sum() >= 2:
                    row[f"{name}_{ph}"] = round(auc(score[sel], yb[sel]), 3)
        out[key] = row
    return out


def main() -> Dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", required=True, type=Path, help="archive the probes are fitted on")
    ap.add_argument("--test", required=True, type=Path, help="archive they are scored on")
    ap.add_argument("--model", default="ctglip-tiny", help="model config whose stats are read")
    ap.add_argument("--hidden", type=int, nargs="+", default=[0, 64], help="0 = linear; else MLP width")
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = cg.create(args.model, seed=0)
    cache = PreprocessCache.for_model(model)
    result = probe(organ_table(model, cache, args.train), organ_table(model, cache, args.test),
                   AbnormalityDictionary.default(), args.hidden, args.epochs)
    names = [f"mlp{h}" if h else "linear" for h in args.hidden]
    print("finding | n_pos train/test | " + " | ".join(names))
    for key, row in result.items():
        print(f"{key} | {row['n_pos_train']}/{row['n_pos_test']} | " + " | ".join(str(row[n]) for n in names))
    out = {"train": str(args.train), "test": str(args.test), "model": args.model, "findings": result}
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
