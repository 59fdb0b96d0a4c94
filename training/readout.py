"""Readout stage: refit the vision projection on frozen pooled organ features with the zero-shot decision loss."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from ctglip_sdk import organs as vocab
from ctglip_sdk.training.cache import PreprocessCache
from ctglip_sdk.training.data import StudyRecord, StudyText
from ctglip_sdk.training.losses import finding_decision_loss, organ_identity_loss
from ctglip_sdk.training.objectives import decision_labels, organ_uncertain

__all__ = ["ReadoutInputs", "projection_inputs", "fit_readout", "run_readout"]

log = logging.getLogger(__name__)


@dataclass
class ReadoutInputs:
    """What the vision projection reads for every organ of the training studies, and the reports' labels."""

    inputs: torch.Tensor                # [R, projection input width]: pooled features + standardised stats
    organs: List[str]                   # [R] organ class names
    present: List[Tuple[str, ...]]      # [R] findings the report states for that organ
    uncertain: List[Tuple[str, ...]]    # [R] findings it hedges on (ignored, as in training)


@torch.no_grad()
def projection_inputs(model: Any, records: Sequence[StudyRecord], cache: PreprocessCache,
                      texts: Sequence[StudyText], progress: bool = False) -> ReadoutInputs:
    """Run the (frozen) image tower once over every cached study and keep the projection's inputs per organ."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    rows: List[torch.Tensor] = []
    organs: List[str] = []
    present: List[Tuple[str, ...]] = []
    uncertain: List[Tuple[str, ...]] = []
    dev = model.device
    try:
        for rec, st in zip(tqdm(records, desc="readout inputs", unit="study", disable=not progress), texts):
            study = cache.load(rec.image, rec.mask, rec.series)
            feats = model.forward_features(study.image[None].to(dev, torch.float32))
            gx, gy, gz = study.grid
            rows.append(model.pool_sparse(feats[0, :, :gx, :gy, :gz], study.rows.to(dev), study.cols.to(dev),
                                          study.vals.to(dev), len(study.names),
                                          None if study.stats is None else study.stats.to(dev)).float().cpu())
            organs += list(study.names)
            present += [tuple(st.present.get(o, ())) for o in study.names]
            uncertain += [tuple(st.uncertain.get(o, ())) for o in study.names]
    finally:
        model.train(was_training)
    width = next(m for m in model.vision_proj.modules() if isinstance(m, torch.nn.Linear)).in_features
    inputs = torch.cat(rows) if rows else torch.zeros(0, width)
    return ReadoutInputs(inputs, organs, present, uncertain)


def fit_readout(model: Any, data: ReadoutInputs, dictionary: Any, *, epochs: int, lr: float,
                weight_decay: float = 0.01, w_identity: float = 0.5, batch_size: int = 4096, seed: int = 0,
                progress: bool = False, unspecified: str = "absent") -> Dict[str, float]:
    """Refit ``model.vision_proj`` alone (text tower, image tower and temperature frozen) for ``epochs`` passes.

    Loss: the finding-balanced zero-shot decision loss against the *inference* prompt ensembles (the logit
    ``ZeroShotClassifier.detect`` computes) with labels from the reports, plus ``w_identity`` x the organ
    identity loss against the organ-name ensembles so that organ recognition holds. Why a separate stage: in
    the joint run every training organ is seen ~7 times in 1,000 steps, too few for a nonlinear projection to
    fit rare focal findings; refitting it on cached features costs seconds per epoch.

    Returns the first and last epoch's mean loss.
    """
    from tqdm.auto import tqdm

    from ctglip_sdk.model.zeroshot import ZeroShotClassifier

    zs = ZeroShotClassifier(model, dictionary)
    keys = sorted(e.key for e in zs.dictionary.findings())
    prompts = [zs.finding_prompts(k) for k in keys]
    dev = model.device
    pos = torch.from_numpy(zs.prompt_ensembles([p for p, _ in prompts])).to(dev)
    neg = torch.from_numpy(zs.prompt_ensembles([n for _, n in prompts])).to(dev)
    names = torch.from_numpy(zs.prompt_ensembles([zs.organ_prompts(o) for o in vocab.ORGANS])).to(dev)
    organ_index = {o: i for i, o in enumerate(vocab.ORGANS)}
    # The joint objective's labels, over the findings the zero-shot classifier scores on each organ.
    labels = torch.tensor([decision_labels(keys, zs.findings_for(o), p,
                                           organ_uncertain(u, zs.findings_for(o), p, unspecified))
                           for o, p, u in zip(data.organs, data.present, data.uncertain)],
                          dtype=torch.int64).reshape(len(data.organs), len(keys))
    name_t = torch.tensor([organ_index.get(o, -1) for o in data.organs], dtype=torch.int64)
    scale = model.temperature_scale().detach()
    proj = model.vision_proj
    opt = torch.optim.AdamW(proj.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(int(seed))
    n = data.inputs.shape[0]
    losses: List[float] = []
    proj.train()
    for _ in tqdm(range(epochs), desc="readout", unit="epoch", disable=not progress):
        total, count = 0.0, 0
        for idx in torch.randperm(n, generator=gen).split(batch_size):
            emb = F.normalize(proj(data.inputs[idx].to(dev)), dim=-1)
            loss = finding_decision_loss(emb, pos, neg, labels[idx].to(dev), scale, "finding")
            known = name_t[idx] >= 0
            if w_identity > 0 and bool(known.any()):
                loss = loss + w_identity * organ_identity_loss(emb[known.to(dev)], names, name_t[idx][known].to(dev),
                                                               scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, count = total + float(loss.detach()) * len(idx), count + len(idx)
        losses.append(total / max(count, 1))
    proj.eval()
    return {"first_loss": round(losses[0], 6) if losses else float("nan"),
            "last_loss": round(losses[-1], 6) if losses else float("nan")}


def run_readout(model: Any, records: Sequence[StudyRecord], cache: PreprocessCache, texts: Sequence[StudyText],
                cfg: Any, dictionary: Any, progress: bool = False) -> Dict[str, Any]:
    """The readout stage of ``train``: projection inputs of every training organ, then :func:`fit_readout`."""
    t0 = time.perf_counter()
    data = projection_inputs(model, records, cache, texts, progress)
    t1 = time.perf_counter()
    with torch.enable_grad():
        out = fit_readout(model, data, dictionary, epochs=cfg.readout_epochs, lr=cfg.readout_lr,
                          weight_decay=cfg.weight_decay, w_identity=cfg.w_identity, seed=cfg.seed, progress=progress,
                          unspecified=cfg.unspecified_abnormality)
    out.update({"epochs": cfg.readout_epochs, "organs": len(data.organs), "inputs_seconds": round(t1 - t0, 1),
                "fit_seconds": round(time.perf_counter() - t1, 1)})
    log.info("readout: %d epochs over %d organs, loss %.4f -> %.4f", cfg.readout_epochs, len(data.organs),
             out["first_loss"], out["last_loss"])
    return out
